//! Mirror copies: a valid copy of an event about a cluster-scoped object, stored in a
//! channel's namespace.
//!
//! The API server refuses an event outside `default`/`kube-system` whose involved object has
//! no namespace (`legacyValidateEvent`), so the copy's `involvedObject.namespace` is the
//! copy's own namespace; that also keeps copies out of `kubectl describe node`. The copy's
//! name is derived from the source's namespace and name alone, so retries, restarts and
//! several replicas always aim at the same object, and a source re-created after the event
//! TTL is followed by the same copy.

use std::collections::BTreeMap;
use std::hash::Hasher;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::{Channel, Config, Keys};
use crate::decide::Classified;
use crate::labels::MAX_SUBDOMAIN_LEN;
use crate::owners::How;

pub mod budget;
pub mod controller;
pub mod copies;
pub mod outputs;
pub mod sink;
pub mod sync;

/// A stored event as a reference: where it is stored (namespace, name, uid), as deliveries
/// name their source.
pub fn source_reference(
    source: &k8s_openapi::api::core::v1::Event,
) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Event".to_owned()),
        namespace: Some(
            source
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
        ),
        name: Some(source.metadata.name.clone().unwrap_or_default()),
        uid: source.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The name of the copy of `source_namespace/source_name`: the source name and a hash of
/// where it lives, at most 253 characters, a valid DNS subdomain when the source name is.
///
/// A source name that fits whole is unique in its namespace, so a short hash only has to tell
/// `default` from `kube-system`. A name cut to fit is not: there the hash is 64 bits wide, so
/// that nobody can craft a second long name whose copy lands on another's (and
/// [`is_copy_of`] refuses to overwrite one that did).
pub fn copy_name(source_namespace: &str, source_name: &str) -> String {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(source_namespace.as_bytes());
    hasher.write(b"/");
    hasher.write(source_name.as_bytes());
    let hash = hasher.finish();
    let short = format!("{:08x}", hash as u32);
    let suffix = if source_name.len() + 1 + short.len() <= MAX_SUBDOMAIN_LEN {
        short
    } else {
        format!("{hash:016x}")
    };
    crate::labels::with_suffix(source_name, MAX_SUBDOMAIN_LEN, '.', &suffix).unwrap_or(suffix)
}

/// Where a copy goes, and how it got there.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub namespace: &'a str,
    /// The delivery label: `channel` (the channel's namespace), `owner`, `node`, `selector`,
    /// `subscription`.
    pub how: How,
    /// Why this namespace (for rule deliveries), as an annotation.
    pub why: Option<&'a str>,
    /// The Subscription that asked for it (its label), for `subscription` deliveries.
    pub subscription: Option<&'a str>,
}

impl<'a> Placement<'a> {
    /// The channel's own namespace.
    pub fn channel(namespace: &'a str) -> Self {
        Placement {
            namespace,
            how: How::Channel,
            why: None,
            subscription: None,
        }
    }
}

/// The copy of `source` for `channel` in `target`, with the labels and annotations of
/// `classified`. `None` when the source has no name.
pub fn make_copy(
    source: &Event,
    classified: &Classified,
    channel: &Channel,
    config: &Config,
    target: Placement<'_>,
) -> Option<Event> {
    let namespace = target.namespace.to_owned();
    let source_name = source.metadata.name.as_deref().filter(|n| !n.is_empty())?;
    let source_namespace = source.metadata.namespace.as_deref().unwrap_or("default");
    let keys = &config.keys;

    let mut labels: BTreeMap<String, String> = source.metadata.labels.clone().unwrap_or_default();
    labels.insert(keys.scope.clone(), "cluster".to_owned());
    labels.insert(keys.kind.clone(), classified.kind_label.clone());
    labels.insert(keys.channel.clone(), channel.name.clone());
    labels.insert(keys.mirror.clone(), "true".to_owned());
    labels.insert(keys.delivery.clone(), target.how.as_str().to_owned());
    if let Some(name) = target.subscription {
        labels.insert(keys.subscription.clone(), name.to_owned());
    }
    labels.extend(channel.labels.iter().cloned());

    let mut annotations: BTreeMap<String, String> =
        source.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(
        keys.involved_object.clone(),
        crate::route::involved_object(&classified.group, &classified.kind, &classified.name),
    );
    annotations.insert(keys.source_namespace.clone(), source_namespace.to_owned());
    annotations.insert(keys.source_name.clone(), source_name.to_owned());
    if let Some(uid) = source.metadata.uid.as_deref().filter(|u| !u.is_empty()) {
        annotations.insert(keys.source_uid.clone(), uid.to_owned());
    }
    if let Some(why) = target.why {
        annotations.insert(keys.delivered_because.clone(), why.to_owned());
    }
    annotations.extend(channel.annotations.iter().cloned());

    let mut copy = source.clone();
    copy.metadata = ObjectMeta {
        name: Some(copy_name(source_namespace, source_name)),
        namespace: Some(namespace.clone()),
        labels: Some(labels),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    };
    copy.involved_object.namespace = Some(namespace);
    Some(copy)
}

/// The source a copy names in its annotations: (namespace, name).
pub fn source_of<'a>(copy: &'a Event, keys: &Keys) -> Option<(&'a str, &'a str)> {
    let annotations = copy.metadata.annotations.as_ref()?;
    Some((
        annotations.get(&keys.source_namespace)?.as_str(),
        annotations.get(&keys.source_name)?.as_str(),
    ))
}

/// True when `stored` (whatever holds the copy's name) is clusterscope's copy of the same
/// source as `wanted`: it carries the mirror label and names the same source. A re-created
/// source (a new uid under the same name) still owns its copy.
pub fn is_copy_of(stored: &Event, wanted: &Event, keys: &Keys) -> bool {
    stored
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(&keys.mirror))
        && source_of(stored, keys).is_some()
        && source_of(stored, keys) == source_of(wanted, keys)
}

/// True when `stored` (a copy read back) already says what `wanted` says: the fields a
/// source changes over its life, and our labels and annotations.
pub fn copy_is_current(stored: &Event, wanted: &Event) -> bool {
    crate::delivery::says(stored) == crate::delivery::says(wanted)
        && stored.metadata.labels == wanted.metadata.labels
        && stored.metadata.annotations == wanted.metadata.annotations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::KindSource;
    use crate::labels::check_dns1123_subdomain;

    fn config() -> Config {
        Config::from_yaml(
            "channels:\n  - name: nodes\n    namespace: team-infra\n    labels: {team: infra}\nroutes:\n  - channel: nodes\n",
            "t",
        )
        .unwrap()
    }

    fn classified() -> Classified {
        Classified {
            group: String::new(),
            kind: "Node".into(),
            kind_label: "Node".into(),
            name: "node1".into(),
            reason: "NodeNotReady".into(),
            channel: Some("nodes".into()),
            kind_source: KindSource::Builtin,
        }
    }

    fn source() -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node1.187a3c5e2f9b1d04", "namespace": "default", "uid": "u-1",
                          "resourceVersion": "77", "labels": {"app": "x"},
                          "managedFields": [{"manager": "kubelet"}]},
            "involvedObject": {"kind": "Node", "name": "node1", "uid": "node1"},
            "reason": "NodeNotReady", "message": "m", "count": 3, "type": "Normal",
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:05:00Z",
            "source": {"component": "kubelet", "host": "node1"}
        }))
        .unwrap()
    }

    /// The copy of `source` for the first channel, in its namespace.
    fn channel_copy(source: &Event, config: &Config) -> Option<Event> {
        let target = Placement::channel("team-infra");
        make_copy(source, &classified(), &config.channels[0], config, target)
    }

    #[test]
    fn copy_is_valid_and_labelled() {
        let config = config();
        let copy = channel_copy(&source(), &config).unwrap();
        let m = &copy.metadata;
        assert_eq!(m.namespace.as_deref(), Some("team-infra"));
        assert_eq!(
            copy.involved_object.namespace.as_deref(),
            Some("team-infra")
        );
        assert!(m.uid.is_none() && m.resource_version.is_none() && m.managed_fields.is_none());
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels["clusterscope.dev/mirror"], "true");
        assert_eq!(labels["clusterscope.dev/channel"], "nodes");
        assert_eq!(labels["team"], "infra");
        assert_eq!(labels["app"], "x");
        let ann = m.annotations.as_ref().unwrap();
        assert_eq!(ann["clusterscope.dev/source-namespace"], "default");
        assert_eq!(
            ann["clusterscope.dev/source-name"],
            "node1.187a3c5e2f9b1d04"
        );
        assert_eq!(ann["clusterscope.dev/source-uid"], "u-1");
        assert_eq!(ann["clusterscope.dev/involved-object"], "core/Node/node1");
        assert_eq!(copy.count, Some(3));
        assert!(copy_is_current(&copy, &copy));
    }

    #[test]
    fn copy_names_are_deterministic_distinct_and_valid() {
        let a = copy_name("default", "node1.abc");
        assert_eq!(a, copy_name("default", "node1.abc"));
        assert_ne!(a, copy_name("kube-system", "node1.abc"));
        assert!(a.starts_with("node1.abc."));
        let long = "a".repeat(253);
        let n = copy_name("default", &long);
        assert!(n.len() <= 253);
        assert!(check_dns1123_subdomain(&n).is_ok(), "{n}");
    }

    #[test]
    fn cut_names_get_a_wide_hash_so_crafted_collisions_do_not_land_on_one_copy() {
        // Two long names that share the kept head and whose 32-bit hashes collide: easy to
        // find (a birthday search over ~2^16 names), so a short suffix would put both sources
        // under one copy name.
        let head = "n".repeat(240);
        let short = |name: &str| {
            let mut h = fnv::FnvHasher::default();
            h.write(b"default/");
            h.write(name.as_bytes());
            h.finish() as u32
        };
        let mut seen = std::collections::HashMap::new();
        let mut pair = None;
        for i in 0..2_000_000u32 {
            let name = format!("{head}.{i:08x}");
            if let Some(other) = seen.insert(short(&name), name.clone()) {
                pair = Some((other, name));
                break;
            }
        }
        let (a, b) = pair.expect("a 32-bit collision among 2 million names");
        assert_ne!(copy_name("default", &a), copy_name("default", &b));
        for n in [copy_name("default", &a), copy_name("default", &b)] {
            assert!(n.len() <= 253 && check_dns1123_subdomain(&n).is_ok(), "{n}");
            assert_eq!(n.rsplit('.').next().map(str::len), Some(16), "{n}");
        }
        // Names that fit keep the short suffix (and the names copies already have).
        assert_eq!(
            copy_name("default", "node1.abc")
                .rsplit('.')
                .next()
                .map(str::len),
            Some(8)
        );
    }

    #[test]
    fn ownership_is_the_mirror_label_and_the_same_source() {
        let config = config();
        let wanted = channel_copy(&source(), &config).unwrap();
        let keys = &config.keys;
        assert!(is_copy_of(&wanted, &wanted, keys));
        let mut recreated = wanted.clone();
        recreated
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys.source_uid.clone(), "another-uid".into());
        assert!(
            is_copy_of(&recreated, &wanted, keys),
            "same source name, new uid"
        );
        let mut foreign = wanted.clone();
        foreign.metadata.labels = None;
        assert!(!is_copy_of(&foreign, &wanted, keys), "no mirror label");
        let mut other = wanted.clone();
        other
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys.source_name.clone(), "someone-else".into());
        assert!(!is_copy_of(&other, &wanted, keys), "another source");
    }

    #[test]
    fn no_copy_without_a_name() {
        let config = self::config();
        let mut nameless = source();
        nameless.metadata.name = None;
        assert!(channel_copy(&nameless, &config).is_none());
    }
}
