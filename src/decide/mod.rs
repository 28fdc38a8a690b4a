//! The decision for one Event: skip it, or which labels and annotations it must carry, and
//! the [`Changes`] that get it there.
//!
//! The changes touch only `metadata.labels` and `metadata.annotations`, correct our own keys
//! when their values are wrong, and are empty when the event already carries everything:
//! reviewing a patched event again changes nothing.

pub mod changes;

use std::borrow::Cow;
use std::fmt;

pub use changes::{Change, Changes, MapChanges};

use crate::classify::{KindSource, ScopeResolver, Verdict};
use crate::config::Config;
use crate::event::{EventView, StringMap};
use crate::labels::safe_label_value;
use crate::route::EventFacts;

/// What the webhook does with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Labels were missing or wrong: a patch is returned.
    Patched,
    /// A cluster-scoped event that already carries the right labels.
    Unchanged,
    /// Not ours to label (see [`SkipReason`]).
    Skipped,
    /// Not about a cluster-scoped object, yet it carried clusterscope's labels (written while
    /// its kind was misjudged): a patch removes them.
    Unlabelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Patched => "patched",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::Unlabelled => "unlabelled",
        }
    }
}

/// Why an object was allowed without a patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// DELETE or CONNECT: nothing to label.
    Operation,
    /// The request is not about an Event.
    NotAnEvent,
    /// The request carries no object.
    NoObject,
    /// The event has neither `involvedObject` nor `regarding`.
    NoReference,
    /// The reference names no kind.
    NoKind,
    /// The involved object has a namespace.
    Namespaced,
    /// No namespace, but the kind is known to be namespaced.
    NamespacedKind,
    /// A copy made by the mirror.
    Mirror,
    /// No namespace and a kind nobody knows yet: API discovery has not answered, so whether
    /// the kind is cluster-scoped is not known. The mirror labels it once discovery answers.
    DiscoveryPending,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Operation => "operation",
            SkipReason::NotAnEvent => "not-an-event",
            SkipReason::NoObject => "no-object",
            SkipReason::NoReference => "no-involved-object",
            SkipReason::NoKind => "no-kind",
            SkipReason::Namespaced => "namespaced",
            SkipReason::NamespacedKind => "namespaced-kind",
            SkipReason::Mirror => "mirror-copy",
            SkipReason::DiscoveryPending => "discovery-pending",
        }
    }
}

impl SkipReason {
    /// Why, in words (`namespace`: the involved object's, for [`SkipReason::Namespaced`]).
    pub fn words(self, namespace: &str) -> String {
        match self {
            SkipReason::Namespaced => format!(
                "its involved object has a namespace ({namespace:?}): events about it already live with it"
            ),
            SkipReason::NamespacedKind => "its kind is namespaced (built-in table): the missing namespace is the producer's omission".to_owned(),
            SkipReason::NoReference => "it names no involvedObject or regarding".to_owned(),
            SkipReason::NoKind => "its reference names no kind".to_owned(),
            SkipReason::Mirror => "it is a copy clusterscope made".to_owned(),
            SkipReason::Operation => "DELETE and CONNECT are not labelled".to_owned(),
            SkipReason::NotAnEvent => "the object is not an Event".to_owned(),
            SkipReason::NoObject => "there is no object".to_owned(),
            SkipReason::DiscoveryPending => {
                "its kind is not known yet (discovery has not answered)".to_owned()
            }
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event about a cluster-scoped object, as classified and routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub group: String,
    pub kind: String,
    /// The value of the kind label (equal to `kind` unless that is not a valid label value).
    pub kind_label: String,
    pub name: String,
    /// The event's reason (for metrics).
    pub reason: String,
    pub channel: Option<String>,
    pub kind_source: KindSource,
}

impl Classified {
    /// The kind's name in the built-in table, if it is one of its kinds (metrics keep those
    /// apart from custom kinds, which come from request data and are bounded).
    pub fn builtin_kind(&self) -> Option<&'static str> {
        crate::classify::BUILTIN_KINDS
            .iter()
            .find(|(_, k, _)| *k == self.kind)
            .map(|(_, k, _)| *k)
    }
}

/// The decision for one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: Outcome,
    pub skip: Option<SkipReason>,
    pub classified: Option<Classified>,
    /// Empty unless `outcome` is [`Outcome::Patched`] or [`Outcome::Unlabelled`].
    pub changes: Changes,
    /// The event's name when the request did not carry one (`generateName*`).
    pub event_name: Option<String>,
}

impl Decision {
    pub fn skipped(reason: SkipReason) -> Self {
        Decision {
            outcome: Outcome::Skipped,
            skip: Some(reason),
            classified: None,
            changes: Changes::default(),
            event_name: None,
        }
    }
}

/// Desired entries of a string map: `Some(value)` to hold, `None` to be absent.
type Desired<'k, 'v> = [(&'k str, Option<Cow<'v, str>>)];

fn borrowed_entry((k, v): &(String, String)) -> (&str, Option<Cow<'_, str>>) {
    (k.as_str(), Some(Cow::Borrowed(v.as_str())))
}

/// The changes that make `current` hold every `(key, Some(value))` of `desired` and none of
/// the `(key, None)`.
fn diff_map(current: Option<&StringMap<'_>>, desired: &Desired<'_, '_>) -> MapChanges {
    let entries = desired
        .iter()
        .filter_map(|(key, want)| {
            let have = current.and_then(|c| c.get(key));
            let change = match (have, want) {
                (None, Some(v)) => Change::Add(v.to_string()),
                (Some(h), Some(v)) if h != v.as_ref() => Change::Replace(v.to_string()),
                (Some(_), None) => Change::Remove,
                _ => return None,
            };
            Some(((*key).to_owned(), change))
        })
        .collect();
    MapChanges {
        missing: current.is_none(),
        entries,
    }
}

/// The decision for an event that is not about a cluster-scoped object: skipped, and if it
/// carries clusterscope's labels or annotation (or the extras of the channel its label names,
/// with the configured values), a patch that removes them so a misjudged event heals.
fn not_ours(event: &EventView<'_>, config: &Config, reason: SkipReason) -> Decision {
    let keys = &config.keys;
    let mut decision = Decision::skipped(reason);
    let labels = event.labels();
    let annotations = event.annotations();
    let ours = |map: Option<&StringMap<'_>>, key: &str| map.is_some_and(|m| m.contains_key(key));
    let mut stale_labels: Vec<(&str, Option<Cow<'_, str>>)> =
        [&keys.scope, &keys.kind, &keys.channel]
            .into_iter()
            .filter(|k| ours(labels, k))
            .map(|k| (k.as_str(), None))
            .collect();
    let mut stale_annotations: Vec<(&str, Option<Cow<'_, str>>)> = [&keys.involved_object]
        .into_iter()
        .filter(|k| ours(annotations, k))
        .map(|k| (k.as_str(), None))
        .collect();
    let channel = labels
        .and_then(|l| l.get(&keys.channel))
        .and_then(|name| config.channel(name));
    if let Some(ch) = channel {
        let same = |map: Option<&StringMap<'_>>, (k, v): &(String, String)| {
            map.and_then(|m| m.get(k)).is_some_and(|have| have == v)
        };
        stale_labels.extend(
            ch.labels
                .iter()
                .filter(|e| same(labels, e))
                .map(|(k, _)| (k.as_str(), None)),
        );
        stale_annotations.extend(
            ch.annotations
                .iter()
                .filter(|e| same(annotations, e))
                .map(|(k, _)| (k.as_str(), None)),
        );
    }
    decision.changes = Changes {
        metadata_missing: false,
        labels: diff_map(labels, &stale_labels),
        annotations: diff_map(annotations, &stale_annotations),
    };
    if !decision.changes.is_empty() {
        decision.outcome = Outcome::Unlabelled;
    }
    decision
}

/// The namespaces that can hold events about cluster-scoped objects (API server validation):
/// the sources. Copies are never written there (`check-config` refuses such a channel).
pub const SOURCE_NAMESPACES: [&str; 2] = ["default", "kube-system"];

/// The stored sources read from [`SOURCE_NAMESPACES`]: only events whose involved object has no
/// namespace; everything else is not ours.
pub const SOURCE_FIELD_SELECTOR: &str = "involvedObject.namespace=";

/// Decides what to do with an Event that is being created or updated in `namespace` (the
/// request's namespace, or the event's own; empty when unknown).
///
/// The mirror label marks a copy only where copies are written: in a source namespace anyone
/// who may create events could set it, so there it is ignored and the event is judged as any.
pub fn decide(
    event: &EventView<'_>,
    namespace: &str,
    config: &Config,
    resolver: &ScopeResolver,
) -> Decision {
    let namespace = if namespace.is_empty() {
        event.metadata.as_ref().map_or("", |m| m.namespace())
    } else {
        namespace
    };
    if !SOURCE_NAMESPACES.contains(&namespace)
        && event
            .labels()
            .is_some_and(|l| l.contains_key(&config.keys.mirror))
    {
        return Decision::skipped(SkipReason::Mirror);
    }
    let Some(reference) = event.reference() else {
        return not_ours(event, config, SkipReason::NoReference);
    };
    let (group, kind, kind_source) = match resolver.classify(reference) {
        Verdict::Cluster {
            group,
            kind,
            source,
        } => (group, kind, source),
        Verdict::HasNamespace => return not_ours(event, config, SkipReason::Namespaced),
        Verdict::NamespacedKind { .. } => {
            return not_ours(event, config, SkipReason::NamespacedKind);
        }
        Verdict::NoKind => return not_ours(event, config, SkipReason::NoKind),
        // Not known yet either way: leave the event as it is.
        Verdict::Undetermined { .. } => return Decision::skipped(SkipReason::DiscoveryPending),
    };
    let classified = Classified {
        kind_label: safe_label_value(&kind).into_owned(),
        name: reference.name().to_owned(),
        reason: event.reason().to_owned(),
        channel: None,
        kind_source,
        group,
        kind,
    };
    labelled(event, classified, config)
}

/// The decision for an event about a cluster-scoped object: its route, and the changes
/// that make it carry clusterscope's labels and annotation (and its channel's extras).
fn labelled(event: &EventView<'_>, mut classified: Classified, config: &Config) -> Decision {
    let keys = &config.keys;
    let channel = config.route(&EventFacts {
        group: &classified.group,
        kind: &classified.kind,
        name: &classified.name,
        reason: event.reason(),
        type_: event.type_(),
        reporter: event.reporter(),
        message: event.message(),
    });
    let mut labels: Vec<(&str, Option<Cow<'_, str>>)> = vec![
        (&keys.scope, Some(Cow::Borrowed("cluster"))),
        (&keys.kind, Some(Cow::Borrowed(&classified.kind_label))),
        (
            &keys.channel,
            channel.map(|c| Cow::Borrowed(c.name.as_str())),
        ),
    ];
    let involved =
        crate::route::involved_object(&classified.group, &classified.kind, &classified.name);
    let mut annotations: Vec<(&str, Option<Cow<'_, str>>)> =
        vec![(&keys.involved_object, Some(Cow::Owned(involved)))];
    if let Some(ch) = channel {
        labels.extend(ch.labels.iter().map(borrowed_entry));
        annotations.extend(ch.annotations.iter().map(borrowed_entry));
    }
    let changes = Changes {
        metadata_missing: event.metadata.is_none(),
        labels: diff_map(event.labels(), &labels),
        annotations: diff_map(event.annotations(), &annotations),
    };
    classified.channel = channel.map(|c| c.name.clone());
    Decision {
        outcome: if changes.is_empty() {
            Outcome::Unchanged
        } else {
            Outcome::Patched
        },
        skip: None,
        classified: Some(classified),
        changes,
        event_name: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn decide_json(json: &str) -> Decision {
        let ev: EventView = serde_json::from_str(json).unwrap();
        decide(
            &ev,
            "default",
            &Config::embedded_default(),
            &ScopeResolver::new(),
        )
    }

    fn paths(d: &Decision) -> Vec<String> {
        changes::tests::paths(&d.changes)
    }

    #[test]
    fn missing_label_map_is_added_whole() {
        let d = decide_json(
            r#"{"metadata":{"name":"e"},"involvedObject":{"kind":"Node","name":"n1"}}"#,
        );
        assert_eq!(d.outcome, Outcome::Patched);
        assert_eq!(
            paths(&d),
            ["add /metadata/labels", "add /metadata/annotations"]
        );
        assert_eq!(d.classified.unwrap().channel.as_deref(), Some("nodes"));
    }

    #[test]
    fn keys_are_escaped_and_wrong_values_replaced() {
        let d = decide_json(
            r#"{"metadata":{"labels":{"clusterscope.dev/kind":"Pod","clusterscope.dev/scope":"cluster"},"annotations":{}},
                "involvedObject":{"kind":"Node","name":"n1"}}"#,
        );
        assert_eq!(
            paths(&d),
            [
                "replace /metadata/labels/clusterscope.dev~1kind",
                "add /metadata/labels/clusterscope.dev~1channel",
                "add /metadata/annotations/clusterscope.dev~1involved-object",
            ]
        );
    }

    #[test]
    fn already_labelled_is_unchanged() {
        let d = decide_json(
            r#"{"metadata":{"labels":{"clusterscope.dev/kind":"Node","clusterscope.dev/scope":"cluster","clusterscope.dev/channel":"nodes"},
                "annotations":{"clusterscope.dev/involved-object":"core/Node/n1"}},
                "involvedObject":{"kind":"Node","name":"n1"}}"#,
        );
        assert_eq!(d.outcome, Outcome::Unchanged);
        assert!(d.changes.is_empty());
    }

    #[test]
    fn no_metadata_at_all() {
        let d = decide_json(r#"{"involvedObject":{"kind":"Node","name":"n1"}}"#);
        assert_eq!(paths(&d), ["add /metadata"]);
    }

    #[test]
    fn unrouted_event_loses_a_stale_channel_label() {
        let config = Config::from_yaml(
            "channels: [{name: a}]\nroutes: [{channel: a, match: {kinds: [Node]}}]\n",
            "t",
        )
        .unwrap();
        let ev: EventView = serde_json::from_str(
            r#"{"metadata":{"labels":{"clusterscope.dev/channel":"a"}},"involvedObject":{"kind":"Namespace","name":"ns"}}"#,
        )
        .unwrap();
        let d = decide(&ev, "default", &config, &ScopeResolver::new());
        assert!(
            paths(&d).contains(&"remove /metadata/labels/clusterscope.dev~1channel".to_owned())
        );
        assert_eq!(d.classified.unwrap().channel, None);
    }

    #[test]
    fn skips() {
        let skip = |json: &str| decide_json(json).skip;
        assert_eq!(
            skip(r#"{"involvedObject":{"kind":"Pod","namespace":"a","name":"p"}}"#),
            Some(SkipReason::Namespaced)
        );
        assert_eq!(
            skip(r#"{"involvedObject":{"kind":"Pod","apiVersion":"v1","name":"p"}}"#),
            Some(SkipReason::NamespacedKind)
        );
        assert_eq!(skip(r#"{"reason":"x"}"#), Some(SkipReason::NoReference));
        assert_eq!(
            skip(r#"{"involvedObject":{"name":"x"}}"#),
            Some(SkipReason::NoKind)
        );
        // The mirror label counts only outside the source namespaces.
        let copy = r#"{"metadata":{"labels":{"clusterscope.dev/mirror":"true"}},"involvedObject":{"kind":"Node","namespace":"team-a"}}"#;
        let ev: EventView = serde_json::from_str(copy).unwrap();
        let config = Config::embedded_default();
        let resolver = ScopeResolver::new();
        assert_eq!(
            decide(&ev, "team-a", &config, &resolver).skip,
            Some(SkipReason::Mirror)
        );
        let disguised = r#"{"metadata":{"namespace":"default","labels":{"clusterscope.dev/mirror":"true"}},"involvedObject":{"kind":"Node"}}"#;
        let ev: EventView = serde_json::from_str(disguised).unwrap();
        for ns in ["default", "kube-system", ""] {
            let d = decide(&ev, ns, &config, &resolver);
            assert_eq!(d.outcome, Outcome::Patched, "in {ns:?}");
        }
    }

    #[test]
    fn a_misjudged_event_loses_our_labels_and_nothing_else() {
        let config = Config::from_yaml(
            "channels: [{name: crs, labels: {team: infra}, annotations: {owner: infra}}]\nroutes: [{channel: crs}]\n",
            "t",
        )
        .unwrap();
        let labelled = r#"{"metadata":{"labels":{"app":"w","team":"other","clusterscope.dev/scope":"cluster","clusterscope.dev/kind":"Widget","clusterscope.dev/channel":"crs"},
                "annotations":{"note":"keep","owner":"infra","clusterscope.dev/involved-object":"example.com/Widget/w1"}},
                "involvedObject":{"apiVersion":"example.com/v1","kind":"Widget","name":"w1"}}"#;
        let ev: EventView = serde_json::from_str(labelled).unwrap();
        // While the kind was unknown it was judged cluster-scoped; discovery says namespaced.
        let resolver = ScopeResolver::new();
        resolver.learn([(
            "example.com".into(),
            "Widget".into(),
            crate::classify::Scope::Namespaced,
        )]);
        let d = decide(&ev, "default", &config, &resolver);
        assert_eq!(d.outcome, Outcome::Unlabelled);
        assert_eq!(d.skip, Some(SkipReason::NamespacedKind));
        assert!(d.classified.is_none());
        assert_eq!(
            paths(&d),
            [
                "remove /metadata/labels/clusterscope.dev~1scope",
                "remove /metadata/labels/clusterscope.dev~1kind",
                "remove /metadata/labels/clusterscope.dev~1channel",
                "remove /metadata/annotations/clusterscope.dev~1involved-object",
                // The channel's extra annotation with its configured value; the `team`
                // label holds another value: not ours, kept.
                "remove /metadata/annotations/owner",
            ]
        );
        // Healed: nothing more to do.
        let mut healed: Value = serde_json::from_str(labelled).unwrap();
        json_patch::patch(&mut healed, &d.changes.json_patch()).unwrap();
        let text = healed.to_string();
        let ev: EventView = serde_json::from_str(&text).unwrap();
        let again = decide(&ev, "default", &config, &resolver);
        assert_eq!(again.outcome, Outcome::Skipped);
        assert!(again.changes.is_empty());
        assert_eq!(healed["metadata"]["labels"]["app"], "w");
        assert_eq!(healed["metadata"]["annotations"]["note"], "keep");
    }

    #[test]
    fn an_unknown_kind_waits_for_discovery() {
        let ev: EventView = serde_json::from_str(
            r#"{"metadata":{"labels":{"clusterscope.dev/scope":"cluster"}},"involvedObject":{"apiVersion":"example.com/v1","kind":"Widget","name":"w1"}}"#,
        )
        .unwrap();
        let config = Config::embedded_default();
        let pending = ScopeResolver::awaiting_discovery();
        let d = decide(&ev, "default", &config, &pending);
        assert_eq!(d.skip, Some(SkipReason::DiscoveryPending));
        assert!(d.changes.is_empty(), "nothing is removed on a guess either");
        pending.give_up_waiting();
        assert_eq!(
            decide(&ev, "default", &config, &pending).outcome,
            Outcome::Patched
        );
    }

    #[test]
    fn odd_kind_gets_a_safe_label() {
        let d =
            decide_json(r#"{"metadata":{},"involvedObject":{"kind":"My Weird/Kind","name":"x"}}"#);
        let c = d.classified.unwrap();
        assert_ne!(c.kind_label, c.kind);
        assert!(crate::labels::check_label_value(&c.kind_label).is_ok());
    }
}
