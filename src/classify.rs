//! Is the object an event is about cluster-scoped?
//!
//! The primary signal is the reference itself: an object with a namespace is namespaced. For a
//! reference without one, the kind confirms it: a built-in table of current Kubernetes kinds
//! (every cluster-scoped kind, and the common namespaced ones so that a malformed reference
//! to, say, a Pod without a namespace is not mistaken for a cluster-scoped object), plus what
//! API discovery teaches the resolver at run time ([`ScopeResolver::learn`]). A kind that
//! nobody knows counts as cluster-scoped: custom resources are the usual case.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use crate::event::ObjectRef;

/// Where an object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Namespaced,
}

/// How the scope of a kind was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindSource {
    /// The built-in table of Kubernetes kinds.
    Builtin,
    /// API discovery of the cluster.
    Discovered,
    /// Nobody knows the kind; it was judged by the missing namespace alone.
    Unknown,
}

const C: Scope = Scope::Cluster;
const N: Scope = Scope::Namespaced;

/// The built-in kinds by name, each with whether it is namespaced (for configuration warnings).
pub fn builtin_kind_names() -> Vec<(&'static str, bool)> {
    BUILTIN_KINDS
        .iter()
        .map(|(_, kind, scope)| (*kind, *scope == Scope::Namespaced))
        .collect()
}

/// Built-in kinds: (API group, kind, scope). Cluster-scoped entries are every cluster-scoped
/// kind of current Kubernetes; namespaced entries are the ones events are commonly about.
pub const BUILTIN_KINDS: &[(&str, &str, Scope)] = &[
    ("", "Node", C),
    ("", "Namespace", C),
    ("", "PersistentVolume", C),
    ("", "ComponentStatus", C),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
        C,
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
        C,
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicy",
        C,
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
        C,
    ),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy", C),
    (
        "admissionregistration.k8s.io",
        "MutatingAdmissionPolicyBinding",
        C,
    ),
    ("apiextensions.k8s.io", "CustomResourceDefinition", C),
    ("apiregistration.k8s.io", "APIService", C),
    ("authentication.k8s.io", "TokenReview", C),
    ("authentication.k8s.io", "SelfSubjectReview", C),
    ("authorization.k8s.io", "SubjectAccessReview", C),
    ("authorization.k8s.io", "SelfSubjectAccessReview", C),
    ("authorization.k8s.io", "SelfSubjectRulesReview", C),
    ("certificates.k8s.io", "CertificateSigningRequest", C),
    ("certificates.k8s.io", "ClusterTrustBundle", C),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema", C),
    (
        "flowcontrol.apiserver.k8s.io",
        "PriorityLevelConfiguration",
        C,
    ),
    ("internal.apiserver.k8s.io", "StorageVersion", C),
    ("networking.k8s.io", "IngressClass", C),
    ("networking.k8s.io", "IPAddress", C),
    ("networking.k8s.io", "ServiceCIDR", C),
    ("node.k8s.io", "RuntimeClass", C),
    ("rbac.authorization.k8s.io", "ClusterRole", C),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding", C),
    ("resource.k8s.io", "DeviceClass", C),
    ("resource.k8s.io", "ResourceSlice", C),
    ("resource.k8s.io", "DeviceTaintRule", C),
    ("scheduling.k8s.io", "PriorityClass", C),
    ("storage.k8s.io", "StorageClass", C),
    ("storage.k8s.io", "CSIDriver", C),
    ("storage.k8s.io", "CSINode", C),
    ("storage.k8s.io", "VolumeAttachment", C),
    ("storage.k8s.io", "VolumeAttributesClass", C),
    ("storagemigration.k8s.io", "StorageVersionMigration", C),
    ("", "Binding", N),
    ("", "ConfigMap", N),
    ("", "Endpoints", N),
    ("", "Event", N),
    ("", "LimitRange", N),
    ("", "PersistentVolumeClaim", N),
    ("", "Pod", N),
    ("", "PodTemplate", N),
    ("", "ReplicationController", N),
    ("", "ResourceQuota", N),
    ("", "Secret", N),
    ("", "Service", N),
    ("", "ServiceAccount", N),
    ("apps", "ControllerRevision", N),
    ("apps", "DaemonSet", N),
    ("apps", "Deployment", N),
    ("apps", "ReplicaSet", N),
    ("apps", "StatefulSet", N),
    ("authorization.k8s.io", "LocalSubjectAccessReview", N),
    ("autoscaling", "HorizontalPodAutoscaler", N),
    ("batch", "CronJob", N),
    ("batch", "Job", N),
    ("coordination.k8s.io", "Lease", N),
    ("coordination.k8s.io", "LeaseCandidate", N),
    ("discovery.k8s.io", "EndpointSlice", N),
    ("events.k8s.io", "Event", N),
    ("networking.k8s.io", "Ingress", N),
    ("networking.k8s.io", "NetworkPolicy", N),
    ("policy", "PodDisruptionBudget", N),
    ("rbac.authorization.k8s.io", "Role", N),
    ("rbac.authorization.k8s.io", "RoleBinding", N),
    ("resource.k8s.io", "ResourceClaim", N),
    ("resource.k8s.io", "ResourceClaimTemplate", N),
    ("storage.k8s.io", "CSIStorageCapacity", N),
];

/// The API group of an `apiVersion` (`v1` → `""`, `apps/v1` → `apps`); `None` when empty.
pub fn group_of(api_version: &str) -> Option<&str> {
    match api_version.split_once('/') {
        Some((group, _)) => Some(group),
        None if api_version.is_empty() => None,
        None => Some(""),
    }
}

/// Where API discovery stands; it decides how a kind nobody knows is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryState {
    /// No cluster: the built-in table alone; an unknown kind counts as cluster-scoped.
    Off,
    /// A cluster is connected but discovery has not answered yet: an unknown kind is
    /// undetermined (it may be a namespaced custom resource).
    Pending,
    /// Discovery answered at least once: an unknown kind really is unknown to the cluster.
    Answered,
    /// Discovery did not answer in time: unknown kinds count as cluster-scoped until it does.
    TimedOut,
}

impl DiscoveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryState::Off => "off",
            DiscoveryState::Pending => "pending",
            DiscoveryState::Answered => "answered",
            DiscoveryState::TimedOut => "timed-out",
        }
    }
}

/// The verdict on one event's reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// About a cluster-scoped object of this group and kind.
    Cluster {
        group: String,
        kind: String,
        source: KindSource,
    },
    /// The reference names a namespace: a namespaced object.
    HasNamespace,
    /// No namespace, but the kind is known to be namespaced (a malformed reference).
    NamespacedKind { group: String, kind: String },
    /// The reference names no kind at all.
    NoKind,
    /// No namespace and a kind nobody knows, while discovery has not answered yet.
    Undetermined { group: String, kind: String },
}

/// Resolves the scope of a group and kind: discovery first, then the built-in table.
#[derive(Debug)]
pub struct ScopeResolver {
    /// group → kind → scope, as API discovery reported it.
    learned: RwLock<HashMap<String, HashMap<String, Scope>>>,
    state: tokio::sync::watch::Sender<DiscoveryState>,
}

impl Default for ScopeResolver {
    fn default() -> Self {
        Self::with_state(DiscoveryState::Off)
    }
}

impl ScopeResolver {
    /// A resolver without discovery (the built-in table alone).
    pub fn new() -> Self {
        Self::default()
    }

    /// A resolver for a connected cluster: unknown kinds stay undetermined until the first
    /// [`Self::learn`] (or [`Self::give_up_waiting`]).
    pub fn awaiting_discovery() -> Self {
        Self::with_state(DiscoveryState::Pending)
    }

    fn with_state(state: DiscoveryState) -> Self {
        ScopeResolver {
            learned: RwLock::default(),
            state: tokio::sync::watch::Sender::new(state),
        }
    }

    pub fn discovery_state(&self) -> DiscoveryState {
        *self.state.borrow()
    }

    /// Discovery did not answer in time: judge unknown kinds as cluster-scoped from now on
    /// (until it answers). No effect once it has answered.
    pub fn give_up_waiting(&self) {
        self.state.send_if_modified(|s| {
            let pending = *s == DiscoveryState::Pending;
            if pending {
                *s = DiscoveryState::TimedOut;
            }
            pending
        });
    }

    /// Waits until discovery has answered, for at most `timeout`; the state then.
    pub async fn wait_for_discovery(&self, timeout: Duration) -> DiscoveryState {
        match tokio::time::timeout(timeout, self.settled()).await {
            Ok(state) => state,
            Err(_) => self.discovery_state(),
        }
    }

    /// Waits until unknown kinds can be judged: discovery answered or was given up on.
    pub async fn settled(&self) -> DiscoveryState {
        let mut rx = self.state.subscribe();
        match rx.wait_for(|s| *s != DiscoveryState::Pending).await {
            Ok(state) => *state,
            // The sender lives in `self`: it cannot be dropped while we borrow it.
            Err(_) => self.discovery_state(),
        }
    }

    /// Replaces what discovery taught so far with `kinds` (group, kind, scope).
    pub fn learn<I>(&self, kinds: I)
    where
        I: IntoIterator<Item = (String, String, Scope)>,
    {
        let mut map: HashMap<String, HashMap<String, Scope>> = HashMap::new();
        for (group, kind, scope) in kinds {
            map.entry(group).or_default().insert(kind, scope);
        }
        *crate::locks::write(&self.learned) = map;
        self.state.send_replace(DiscoveryState::Answered);
    }

    fn learned(&self, group: &str, kind: &str) -> Option<Scope> {
        let guard = crate::locks::read(&self.learned);
        guard.get(group).and_then(|kinds| kinds.get(kind)).copied()
    }

    /// The scope of `kind` in `group`, and where that came from.
    pub fn scope_of(&self, group: &str, kind: &str) -> Option<(Scope, KindSource)> {
        if let Some(scope) = self.learned(group, kind) {
            return Some((scope, KindSource::Discovered));
        }
        BUILTIN_KINDS
            .iter()
            .find(|(g, k, _)| *g == group && *k == kind)
            .map(|(_, _, scope)| (*scope, KindSource::Builtin))
    }

    /// For a reference without `apiVersion`: the core kind of that name, else the one built-in
    /// group that has a kind of that name.
    fn group_for_bare_kind(&self, kind: &str) -> Option<&'static str> {
        let mut groups = BUILTIN_KINDS
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(g, _, _)| *g);
        let first = groups.next()?;
        if first.is_empty() {
            return Some(first);
        }
        let rest: Vec<&str> = groups.collect();
        if rest.iter().all(|g| *g == first) {
            Some(first)
        } else {
            rest.into_iter().find(|g| g.is_empty())
        }
    }

    /// Classifies the object an event is about.
    pub fn classify(&self, reference: &ObjectRef<'_>) -> Verdict {
        if !reference.namespace().is_empty() {
            return Verdict::HasNamespace;
        }
        let kind = reference.kind();
        if kind.is_empty() {
            return Verdict::NoKind;
        }
        let group = group_of(reference.api_version())
            .or_else(|| self.group_for_bare_kind(kind))
            .unwrap_or("");
        match self.scope_of(group, kind) {
            Some((Scope::Namespaced, _)) => Verdict::NamespacedKind {
                group: group.to_owned(),
                kind: kind.to_owned(),
            },
            Some((Scope::Cluster, source)) => Verdict::Cluster {
                group: group.to_owned(),
                kind: kind.to_owned(),
                source,
            },
            None if self.discovery_state() == DiscoveryState::Pending => Verdict::Undetermined {
                group: group.to_owned(),
                kind: kind.to_owned(),
            },
            None => Verdict::Cluster {
                group: group.to_owned(),
                kind: kind.to_owned(),
                source: KindSource::Unknown,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r<'a>(api_version: &'a str, kind: &'a str, namespace: &'a str) -> ObjectRef<'a> {
        ObjectRef::new(api_version, kind, namespace, "x")
    }

    #[test]
    fn groups() {
        assert_eq!(group_of("v1"), Some(""));
        assert_eq!(group_of("storage.k8s.io/v1"), Some("storage.k8s.io"));
        assert_eq!(group_of(""), None);
    }

    #[test]
    fn node_without_api_version_is_core_and_cluster_scoped() {
        let res = ScopeResolver::new();
        assert_eq!(
            res.classify(&r("", "Node", "")),
            Verdict::Cluster {
                group: String::new(),
                kind: "Node".into(),
                source: KindSource::Builtin
            }
        );
    }

    #[test]
    fn bare_non_core_kind_finds_its_unique_group() {
        let res = ScopeResolver::new();
        assert_eq!(
            res.classify(&r("", "ClusterRole", "")),
            Verdict::Cluster {
                group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                source: KindSource::Builtin
            }
        );
        // Event exists in "" and events.k8s.io: the core one wins.
        assert!(matches!(
            res.classify(&r("", "Event", "")),
            Verdict::NamespacedKind { group, .. } if group.is_empty()
        ));
    }

    #[test]
    fn namespace_wins_over_kind() {
        let res = ScopeResolver::new();
        assert_eq!(
            res.classify(&r("v1", "Node", "team-a")),
            Verdict::HasNamespace
        );
    }

    #[test]
    fn namespaced_kind_without_namespace_is_not_cluster_scoped() {
        let res = ScopeResolver::new();
        assert!(matches!(
            res.classify(&r("v1", "Pod", "")),
            Verdict::NamespacedKind { .. }
        ));
    }

    #[test]
    fn unknown_kind_counts_as_cluster_scoped_until_discovery_says_otherwise() {
        let res = ScopeResolver::new();
        let widget = r("example.com/v1", "Widget", "");
        assert!(matches!(
            res.classify(&widget),
            Verdict::Cluster {
                source: KindSource::Unknown,
                ..
            }
        ));
        res.learn([("example.com".into(), "Widget".into(), Scope::Namespaced)]);
        assert!(matches!(
            res.classify(&widget),
            Verdict::NamespacedKind { .. }
        ));
        res.learn([("example.com".into(), "Widget".into(), Scope::Cluster)]);
        assert!(matches!(
            res.classify(&widget),
            Verdict::Cluster {
                source: KindSource::Discovered,
                ..
            }
        ));
    }

    #[test]
    fn unknown_kind_is_undetermined_until_discovery_answers_or_times_out() {
        let widget = r("example.com/v1", "Widget", "");
        let res = ScopeResolver::awaiting_discovery();
        assert!(matches!(
            res.classify(&widget),
            Verdict::Undetermined { .. }
        ));
        // Known kinds need no discovery.
        assert!(matches!(
            res.classify(&r("", "Node", "")),
            Verdict::Cluster { .. }
        ));
        res.learn([("example.com".into(), "Widget".into(), Scope::Namespaced)]);
        assert_eq!(res.discovery_state(), DiscoveryState::Answered);
        assert!(matches!(
            res.classify(&widget),
            Verdict::NamespacedKind { .. }
        ));
        assert!(matches!(
            res.classify(&r("example.com/v1", "Gadget", "")),
            Verdict::Cluster {
                source: KindSource::Unknown,
                ..
            }
        ));

        let res = ScopeResolver::awaiting_discovery();
        res.give_up_waiting();
        assert_eq!(res.discovery_state(), DiscoveryState::TimedOut);
        assert!(matches!(
            res.classify(&widget),
            Verdict::Cluster {
                source: KindSource::Unknown,
                ..
            }
        ));
        // A late answer still counts.
        res.learn([("example.com".into(), "Widget".into(), Scope::Namespaced)]);
        assert_eq!(res.discovery_state(), DiscoveryState::Answered);
        res.give_up_waiting();
        assert_eq!(res.discovery_state(), DiscoveryState::Answered);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_discovery_ends_on_the_answer_or_the_timeout() {
        let res = std::sync::Arc::new(ScopeResolver::awaiting_discovery());
        let start = tokio::time::Instant::now();
        assert_eq!(
            res.wait_for_discovery(Duration::from_secs(5)).await,
            DiscoveryState::Pending
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        let learner = res.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            learner.learn([]);
        });
        assert_eq!(
            res.wait_for_discovery(Duration::from_secs(60)).await,
            DiscoveryState::Answered
        );
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }

    #[test]
    fn no_kind() {
        assert_eq!(
            ScopeResolver::new().classify(&r("v1", "", "")),
            Verdict::NoKind
        );
    }
}
