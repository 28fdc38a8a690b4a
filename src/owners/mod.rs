//! Delivery by ownership: which namespaces own or use a cluster-scoped object, from live
//! cluster state trimmed to what the rules need.
//!
//! The rules, with the real API's field semantics:
//! - a PersistentVolume belongs to the namespace in its `spec.claimRef` (set by the persistent
//!   volume controller on bind, kept while the volume is Released);
//! - a VolumeAttachment, to the claim namespace of the volume in `spec.source.persistentVolumeName`;
//! - a Namespace, to itself;
//! - a Node (and the CSINode of the same name), opt-in, to the namespaces of the pods bound to
//!   it (`spec.nodeName`) that have not terminated (phase other than Succeeded and Failed),
//!   at most a configured number of them;
//! - a namespace selector, to every namespace whose labels match.
//!
//! **No leak:** a namespace is a destination only if, in the state the decision reads, it
//! exists, is not being deleted, and the rule ties the object to it. `tests/owners.rs` checks
//! that invariant (and that nothing the rules allow is missed) over random clusters.
//!
//! A namespace being deleted gets nothing: the API server refuses new objects in it, and its
//! events are going away with it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kube::core::{Selector, SelectorExt};

pub mod live;
mod reach;

pub use reach::{Reach, Rule};

/// The cluster state shared by whatever keeps it and whoever resolves against it.
pub type SharedOwnerState = std::sync::Arc<std::sync::RwLock<OwnerState>>;

/// A volume's claim, as its `spec.claimRef` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
}

/// A namespace, as far as delivery cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    pub labels: BTreeMap<String, String>,
    /// `metadata.deletionTimestamp` set or phase Terminating.
    pub terminating: bool,
}

/// Numbers by name (a resource or a kind), for metrics.
pub type Counts = Vec<(String, usize)>;

/// What a custom rule's field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldHolds {
    /// A namespace: the object belongs there (with `owners`).
    Namespace,
    /// The name of a Node: the object goes where the node's events go (with `nodePods`).
    Node,
}

/// How an object is tied to a namespace, as a tenant's Subscription names it.
#[derive(
    serde::Serialize,
    serde::Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    Owned,
    Nodes,
}

impl Relation {
    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Owned => "owned",
            Relation::Nodes => "nodes",
        }
    }

    /// The built-in kinds it covers, as (group, kind).
    pub fn builtin_kinds(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Relation::Owned => &[
                ("", "PersistentVolume"),
                ("storage.k8s.io", "VolumeAttachment"),
                ("", "Namespace"),
            ],
            Relation::Nodes => &[("", "Node"), ("storage.k8s.io", "CSINode")],
        }
    }

    /// What a custom rule's field must name for this relation.
    pub fn follows(self) -> FieldHolds {
        match self {
            Relation::Owned => FieldHolds::Namespace,
            Relation::Nodes => FieldHolds::Node,
        }
    }

    /// Whether it covers `kind`: a built-in kind of its, or a custom kind one of the admin's
    /// `ownerRules` ties to what it follows.
    pub fn covers(self, kind: &str, owner_rules: &[CustomRule]) -> bool {
        self.builtin_kinds().iter().any(|(_, k)| *k == kind)
            || owner_rules
                .iter()
                .any(|r| r.kind == kind && r.follows == self.follows())
    }
}

/// A configured rule for a custom cluster-scoped kind (`ownerRules` in the configuration):
/// which field of its objects names a namespace or a Node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomRule {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The plural resource name (`nodeclaims`).
    pub resource: String,
    /// The field's path, split at the dots (`status.nodeName` → `[status, nodeName]`).
    pub field: Vec<String>,
    pub follows: FieldHolds,
}

impl CustomRule {
    /// The field as written.
    pub fn field_path(&self) -> String {
        self.field.join(".")
    }

    /// The string at the rule's field of `object` (its JSON without metadata); `None` when
    /// the field is missing or not a non-empty string.
    pub fn value_in<'a>(&self, object: &'a serde_json::Value) -> Option<&'a str> {
        self.field
            .iter()
            .try_fold(object, |v, step| v.get(step))?
            .as_str()
            .filter(|s| !s.is_empty())
    }
}

/// What is known of the objects of one custom rule's kind: name → the field's value.
#[derive(Debug, Clone)]
pub struct CustomObjects {
    pub rule: CustomRule,
    pub values: HashMap<String, String>,
    /// Objects skipped because the field is missing or not a string.
    pub skipped: std::collections::HashSet<String>,
}

/// What the rules need to know of the cluster (names only, no objects).
#[derive(Debug, Clone, Default)]
pub struct OwnerState {
    /// Custom kinds with a rule: (group, kind) → their objects' field values.
    pub custom: HashMap<(String, String), CustomObjects>,
    /// PersistentVolume name → its claim.
    pub volumes: HashMap<String, Claim>,
    /// VolumeAttachment name → the PersistentVolume it attaches.
    pub attachments: HashMap<String, String>,
    pub namespaces: HashMap<String, Namespace>,
    /// Node name → namespace → pods on it that have not terminated.
    pub pods_on_node: HashMap<String, BTreeMap<String, u32>>,
    /// `namespace/name` of each counted pod → its node (to move or drop it on a change).
    pod_nodes: HashMap<String, String>,
}

/// Node → pod namespaces delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePods {
    /// Event types delivered (`Warning` by default).
    pub types: Vec<String>,
    /// Namespaces per event at most; the rest are cut (counted, logged).
    pub max_namespaces: usize,
}

impl Default for NodePods {
    fn default() -> Self {
        NodePods {
            types: vec!["Warning".to_owned()],
            max_namespaces: 50,
        }
    }
}

/// A channel's delivery rules beyond its fixed namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// PersistentVolume, VolumeAttachment and Namespace events go to their owner namespace.
    pub owners: bool,
    pub node_pods: Option<NodePods>,
    /// Namespaces that opt in by their labels.
    pub namespace_selector: Option<Selector>,
}

impl Rules {
    pub fn any(&self) -> bool {
        self.owners || self.node_pods.is_some() || self.namespace_selector.is_some()
    }
}

/// How a copy got to its namespace (the value of the delivery label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum How {
    /// The channel's own namespace.
    Channel,
    Owner,
    Node,
    Selector,
    /// A tenant's Subscription in that namespace.
    Subscription,
}

impl How {
    pub fn as_str(self) -> &'static str {
        match self {
            How::Channel => "channel",
            How::Owner => "owner",
            How::Node => "node",
            How::Selector => "selector",
            How::Subscription => "subscription",
        }
    }
}

/// One namespace an event goes to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub namespace: String,
    pub how: How,
    /// For humans: "PersistentVolume pv-7 is claimed by PersistentVolumeClaim team-a/data".
    pub why: String,
}

/// The destinations of one event, and how many namespaces a cap left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    pub destinations: Vec<Destination>,
    pub cut: usize,
}

/// The involved object as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    /// API group, empty for the core group.
    pub group: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
}

/// The destinations found so far for one object: each open namespace once, in the order
/// found.
struct Found<'c> {
    cluster: &'c OwnerState,
    seen: BTreeSet<String>,
    out: Resolution,
}

impl Found<'_> {
    fn add(&mut self, namespace: &str, how: How, why: String) {
        if self.cluster.open(namespace) && self.seen.insert(namespace.to_owned()) {
            self.out.destinations.push(Destination {
                namespace: namespace.to_owned(),
                how,
                why,
            });
        }
    }
}

impl OwnerState {
    /// Records where a pod runs: `node` is `None` for a pod not bound to a node or terminated
    /// (Succeeded or Failed), which no longer counts.
    pub fn set_pod(&mut self, namespace: &str, name: &str, node: Option<&str>) {
        let key = format!("{namespace}/{name}");
        if let Some(old) = self.pod_nodes.get(&key) {
            if Some(old.as_str()) == node {
                return;
            }
            let old = old.clone();
            self.uncount(&old, namespace);
            self.pod_nodes.remove(&key);
        }
        if let Some(node) = node {
            *self
                .pods_on_node
                .entry(node.to_owned())
                .or_default()
                .entry(namespace.to_owned())
                .or_default() += 1;
            self.pod_nodes.insert(key, node.to_owned());
        }
    }

    /// Forgets a deleted pod.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        self.set_pod(namespace, name, None);
    }

    /// Pods counted.
    pub fn pods(&self) -> usize {
        self.pod_nodes.len()
    }

    /// Objects known by resource (`persistentvolumes`, ..., `<resource>.<group>` for custom
    /// kinds), and custom objects skipped by kind (`<Kind>.<group>`), for metrics.
    pub fn counts(&self) -> (Counts, Counts) {
        let mut known = vec![
            ("persistentvolumes".to_owned(), self.volumes.len()),
            ("volumeattachments".to_owned(), self.attachments.len()),
            ("namespaces".to_owned(), self.namespaces.len()),
            ("pods".to_owned(), self.pods()),
        ];
        let mut skipped = Vec::new();
        for c in self.custom.values() {
            known.push((
                format!("{}.{}", c.rule.resource, c.rule.group),
                c.values.len(),
            ));
            skipped.push((format!("{}.{}", c.rule.kind, c.rule.group), c.skipped.len()));
        }
        (known, skipped)
    }

    /// Forgets every pod (before a re-list).
    pub fn clear_pods(&mut self) {
        self.pod_nodes.clear();
        self.pods_on_node.clear();
    }

    fn uncount(&mut self, node: &str, namespace: &str) {
        if let Some(namespaces) = self.pods_on_node.get_mut(node) {
            if let Some(n) = namespaces.get_mut(namespace) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    namespaces.remove(namespace);
                }
            }
            if namespaces.is_empty() {
                self.pods_on_node.remove(node);
            }
        }
    }

    /// Whether `namespace` can receive copies: it exists and is not being deleted.
    pub fn open(&self, namespace: &str) -> bool {
        self.namespaces
            .get(namespace)
            .is_some_and(|n| !n.terminating)
    }

    /// Where an event of `type_` about `object` goes under `rules`, one destination per
    /// namespace (the first rule to name it wins), sorted by namespace within each rule.
    pub fn resolve(&self, rules: &Rules, object: Object<'_>, type_: &str) -> Resolution {
        let mut found = Found {
            cluster: self,
            seen: BTreeSet::new(),
            out: Resolution::default(),
        };
        let rule = self.custom_rule(object);
        let [owners, node_pods, selector] = rules.gate(object, type_, rule);
        let custom = self.custom_value(object);
        if owners {
            self.owners_of(object, custom.as_ref(), &mut found);
        }
        if let Some(np) = rules.node_pods.as_ref().filter(|_| node_pods) {
            self.pods_of_node(np, object, custom.as_ref(), &mut found);
        }
        if let Some(sel) = rules.namespace_selector.as_ref().filter(|_| selector) {
            self.selected(sel, &mut found);
        }
        found.out
    }

    /// The admin's rule for `object`'s kind, if it has one.
    fn custom_rule(&self, object: Object<'_>) -> Option<&CustomRule> {
        if self.custom.is_empty() {
            return None;
        }
        self.custom
            .get(&(object.group.to_owned(), object.kind.to_owned()))
            .map(|c| &c.rule)
    }

    /// What a custom rule reads of `object`: whom it follows, the value, and the field.
    fn custom_value(&self, object: Object<'_>) -> Option<(FieldHolds, &str, String)> {
        if self.custom.is_empty() {
            return None;
        }
        let c = self
            .custom
            .get(&(object.group.to_owned(), object.kind.to_owned()))?;
        let value = c.values.get(object.name)?;
        Some((c.rule.follows, value.as_str(), c.rule.field_path()))
    }

    /// `owners: true`: the namespace that owns the object (a claim, a namespace, or the one a
    /// custom object names).
    fn owners_of(
        &self,
        object: Object<'_>,
        custom: Option<&(FieldHolds, &str, String)>,
        found: &mut Found<'_>,
    ) {
        if let Some((namespace, why)) = self.owner(object) {
            found.add(&namespace, How::Owner, why);
        }
        if let Some((FieldHolds::Namespace, namespace, field)) = custom {
            let why = format!(
                "{} {} names namespace {namespace} in {field}",
                object.kind, object.name
            );
            found.add(namespace, How::Owner, why);
        }
    }

    /// `nodePods`: the namespaces of the pods on the object's Node (a Node, or a custom
    /// object that names one), `max_namespaces` at most (the rest counted as cut).
    fn pods_of_node(
        &self,
        node_pods: &NodePods,
        object: Object<'_>,
        custom: Option<&(FieldHolds, &str, String)>,
        found: &mut Found<'_>,
    ) {
        // A custom object that names a Node goes where that node's events go.
        let (node, via) = match custom {
            Some((FieldHolds::Node, node, field)) => (
                Some(*node),
                format!(
                    "{} {} runs on Node {node} ({field}), which",
                    object.kind, object.name
                ),
            ),
            _ => (node_of(object), format!("{} {}", object.kind, object.name)),
        };
        let Some(namespaces) = node.and_then(|n| self.pods_on_node.get(n)) else {
            return;
        };
        let open: Vec<(&String, &u32)> = namespaces
            .iter()
            .filter(|(ns, pods)| **pods > 0 && self.open(ns))
            .collect();
        found.out.cut += open.len().saturating_sub(node_pods.max_namespaces);
        for (ns, pods) in open.into_iter().take(node_pods.max_namespaces) {
            let why = format!(
                "{via} runs {pods} pod{} of namespace {ns}",
                if *pods == 1 { "" } else { "s" }
            );
            found.add(ns, How::Node, why);
        }
    }

    /// `namespaceSelector`: the namespaces whose labels match, by name.
    fn selected(&self, selector: &Selector, found: &mut Found<'_>) {
        let mut matching: Vec<&String> = self
            .namespaces
            .iter()
            .filter(|(_, n)| selector.matches(&n.labels))
            .map(|(name, _)| name)
            .collect();
        matching.sort();
        for ns in matching {
            let why = format!("namespace {ns} matches the channel's namespaceSelector");
            found.add(ns, How::Selector, why);
        }
    }

    /// The owner namespace of a PersistentVolume, VolumeAttachment or Namespace, and why.
    fn owner(&self, object: Object<'_>) -> Option<(String, String)> {
        let claimed = |pv: &str| {
            self.volumes.get(pv).map(|c| {
                (
                    c.namespace.clone(),
                    format!("PersistentVolumeClaim {}/{}", c.namespace, c.name),
                )
            })
        };
        match (object.group, object.kind) {
            ("", "PersistentVolume") => claimed(object.name).map(|(ns, claim)| {
                (
                    ns,
                    format!("PersistentVolume {} is claimed by {claim}", object.name),
                )
            }),
            ("storage.k8s.io", "VolumeAttachment") => {
                let pv = self.attachments.get(object.name)?;
                claimed(pv).map(|(ns, claim)| {
                    (
                        ns,
                        format!(
                            "VolumeAttachment {} attaches PersistentVolume {pv}, claimed by {claim}",
                            object.name
                        ),
                    )
                })
            }
            ("", "Namespace") => Some((
                object.name.to_owned(),
                format!("the event is about namespace {}", object.name),
            )),
            _ => None,
        }
    }
}

/// The node a Node or CSINode event is about.
fn node_of<'a>(object: Object<'a>) -> Option<&'a str> {
    match (object.group, object.kind) {
        ("", "Node") | ("storage.k8s.io", "CSINode") => Some(object.name),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> OwnerState {
        let mut c = OwnerState::default();
        for (name, terminating, team) in [
            ("team-a", false, "a"),
            ("team-b", false, "b"),
            ("going", true, "a"),
        ] {
            c.namespaces.insert(
                name.into(),
                Namespace {
                    labels: BTreeMap::from([("team".to_owned(), team.to_owned())]),
                    terminating,
                },
            );
        }
        c.volumes.insert(
            "pv-7".into(),
            Claim {
                namespace: "team-a".into(),
                name: "data".into(),
            },
        );
        c.volumes.insert(
            "pv-gone".into(),
            Claim {
                namespace: "going".into(),
                name: "old".into(),
            },
        );
        c.attachments.insert("va-1".into(), "pv-7".into());
        c.pods_on_node.insert(
            "node1".into(),
            BTreeMap::from([
                ("team-a".to_owned(), 2),
                ("team-b".to_owned(), 1),
                ("going".to_owned(), 1),
                ("missing".to_owned(), 1),
            ]),
        );
        c
    }

    fn obj<'a>(group: &'a str, kind: &'a str, name: &'a str) -> Object<'a> {
        Object { group, kind, name }
    }

    fn owners() -> Rules {
        Rules {
            owners: true,
            ..Rules::default()
        }
    }

    fn namespaces(r: &Resolution) -> Vec<&str> {
        r.destinations
            .iter()
            .map(|d| d.namespace.as_str())
            .collect()
    }

    #[test]
    fn volumes_and_attachments_go_to_the_claim_namespace_with_a_reason() {
        let c = cluster();
        let r = c.resolve(&owners(), obj("", "PersistentVolume", "pv-7"), "Warning");
        assert_eq!(namespaces(&r), ["team-a"]);
        assert_eq!(
            r.destinations[0].why,
            "PersistentVolume pv-7 is claimed by PersistentVolumeClaim team-a/data"
        );
        assert_eq!(r.destinations[0].how, How::Owner);
        let r = c.resolve(
            &owners(),
            obj("storage.k8s.io", "VolumeAttachment", "va-1"),
            "Normal",
        );
        assert_eq!(namespaces(&r), ["team-a"]);
        assert!(
            r.destinations[0]
                .why
                .contains("attaches PersistentVolume pv-7")
        );
        // Unknown volume, or claimed from a namespace being deleted: nowhere.
        for pv in ["pv-unknown", "pv-gone"] {
            let r = c.resolve(&owners(), obj("", "PersistentVolume", pv), "Warning");
            assert!(r.destinations.is_empty(), "{pv}: {r:?}");
        }
        // The kind must be the real one: a custom kind named PersistentVolume is not.
        let r = c.resolve(
            &owners(),
            obj("example.com", "PersistentVolume", "pv-7"),
            "Warning",
        );
        assert!(r.destinations.is_empty());
    }

    #[test]
    fn a_namespace_gets_its_own_events_unless_it_is_being_deleted() {
        let c = cluster();
        let r = c.resolve(&owners(), obj("", "Namespace", "team-b"), "Normal");
        assert_eq!(namespaces(&r), ["team-b"]);
        for ns in ["going", "nowhere"] {
            assert!(
                c.resolve(&owners(), obj("", "Namespace", ns), "Normal")
                    .destinations
                    .is_empty()
            );
        }
    }

    #[test]
    fn node_events_reach_the_open_namespaces_of_its_pods_by_type_and_up_to_the_cap() {
        let c = cluster();
        let rules = Rules {
            node_pods: Some(NodePods::default()),
            ..Rules::default()
        };
        let r = c.resolve(&rules, obj("", "Node", "node1"), "Warning");
        assert_eq!(namespaces(&r), ["team-a", "team-b"]);
        assert_eq!(
            r.destinations[0].why,
            "Node node1 runs 2 pods of namespace team-a"
        );
        assert!(
            c.resolve(&rules, obj("", "Node", "node1"), "Normal")
                .destinations
                .is_empty()
        );
        let r = c.resolve(&rules, obj("storage.k8s.io", "CSINode", "node1"), "Warning");
        assert_eq!(namespaces(&r), ["team-a", "team-b"]);
        let capped = Rules {
            node_pods: Some(NodePods {
                max_namespaces: 1,
                ..NodePods::default()
            }),
            ..Rules::default()
        };
        let r = c.resolve(&capped, obj("", "Node", "node1"), "Warning");
        assert_eq!((namespaces(&r), r.cut), (vec!["team-a"], 1));
        // Owners alone do not deliver Node events.
        assert!(
            c.resolve(&owners(), obj("", "Node", "node1"), "Warning")
                .destinations
                .is_empty()
        );
    }

    #[test]
    fn a_node_with_5000_pods_in_2000_namespaces_is_cut_to_the_cap() {
        let mut c = OwnerState::default();
        for i in 0..2_000 {
            c.namespaces
                .insert(format!("ns-{i:04}"), Namespace::default());
        }
        for i in 0..5_000 {
            c.set_pod(
                &format!("ns-{:04}", i % 2_000),
                &format!("pod-{i}"),
                Some("big"),
            );
        }
        let rules = Rules {
            node_pods: Some(NodePods::default()),
            ..Rules::default()
        };
        let r = c.resolve(&rules, obj("", "Node", "big"), "Warning");
        assert_eq!((r.destinations.len(), r.cut), (50, 1_950));
        assert_eq!(r.destinations[0].namespace, "ns-0000", "sorted by name");
        assert_eq!(r.destinations[49].namespace, "ns-0049");
    }

    #[test]
    fn custom_kinds_follow_their_configured_field() {
        let mut c = cluster();
        let rule = |kind: &str, field: &str, follows| CustomRule {
            group: "example.com".into(),
            version: "v1".into(),
            kind: kind.into(),
            resource: format!("{}s", kind.to_lowercase()),
            field: field.split('.').map(str::to_owned).collect(),
            follows,
        };
        for (kind, field, follows, name, value) in [
            (
                "Disk",
                "spec.claimRef.namespace",
                FieldHolds::Namespace,
                "disk-1",
                "team-b",
            ),
            (
                "Disk",
                "spec.claimRef.namespace",
                FieldHolds::Namespace,
                "disk-2",
                "going",
            ),
            (
                "NodeClaim",
                "status.nodeName",
                FieldHolds::Node,
                "nc-1",
                "node1",
            ),
        ] {
            c.custom
                .entry(("example.com".into(), kind.into()))
                .or_insert_with(|| CustomObjects {
                    rule: rule(kind, field, follows),
                    values: HashMap::new(),
                    skipped: Default::default(),
                })
                .values
                .insert(name.into(), value.into());
        }
        let r = c.resolve(&owners(), obj("example.com", "Disk", "disk-1"), "Warning");
        assert_eq!(namespaces(&r), ["team-b"]);
        assert_eq!(
            r.destinations[0].why,
            "Disk disk-1 names namespace team-b in spec.claimRef.namespace"
        );
        // A namespace being deleted, or an object not seen: nowhere.
        for name in ["disk-2", "disk-9"] {
            let r = c.resolve(&owners(), obj("example.com", "Disk", name), "Warning");
            assert!(r.destinations.is_empty(), "{name}: {r:?}");
        }
        let nodes = Rules {
            node_pods: Some(NodePods::default()),
            ..Rules::default()
        };
        let r = c.resolve(&nodes, obj("example.com", "NodeClaim", "nc-1"), "Warning");
        assert_eq!(namespaces(&r), ["team-a", "team-b"]);
        assert_eq!(
            r.destinations[0].why,
            "NodeClaim nc-1 runs on Node node1 (status.nodeName), which runs 2 pods of namespace team-a"
        );
        // Each field works with its own rule only.
        assert!(
            c.resolve(
                &owners(),
                obj("example.com", "NodeClaim", "nc-1"),
                "Warning"
            )
            .destinations
            .is_empty()
        );
        assert!(
            c.resolve(&nodes, obj("example.com", "Disk", "disk-1"), "Warning")
                .destinations
                .is_empty()
        );
        // The field's value is read as a string only.
        let r = rule("Disk", "spec.claimRef.namespace", FieldHolds::Namespace);
        let doc =
            |v: serde_json::Value| serde_json::json!({"spec": {"claimRef": {"namespace": v}}});
        assert_eq!(r.value_in(&doc("team-a".into())), Some("team-a"));
        assert_eq!(r.value_in(&doc(7.into())), None);
        assert_eq!(r.value_in(&doc("".into())), None);
        assert_eq!(r.value_in(&serde_json::json!({"spec": {}})), None);
    }

    #[test]
    fn pods_are_counted_where_they_run_and_move_and_leave_cleanly() {
        let mut c = OwnerState::default();
        c.set_pod("team-a", "web-1", Some("node1"));
        c.set_pod("team-a", "web-2", Some("node1"));
        c.set_pod("team-b", "db-1", Some("node1"));
        c.set_pod("team-b", "pending", None);
        assert_eq!(c.pods(), 3);
        assert_eq!(c.pods_on_node["node1"]["team-a"], 2);
        // Moved (re-created elsewhere under the same name), finished, deleted.
        c.set_pod("team-a", "web-1", Some("node2"));
        c.set_pod("team-a", "web-2", None);
        c.remove_pod("team-b", "db-1");
        assert_eq!(c.pods(), 1);
        assert!(
            !c.pods_on_node.contains_key("node1"),
            "{:?}",
            c.pods_on_node
        );
        assert_eq!(c.pods_on_node["node2"]["team-a"], 1);
        c.clear_pods();
        assert!(c.pods_on_node.is_empty() && c.pods() == 0);
    }

    #[test]
    fn a_selector_reaches_matching_open_namespaces_once_each() {
        let c = cluster();
        let selector: Selector = [("team", "a")].into_iter().collect();
        let rules = Rules {
            owners: true,
            namespace_selector: Some(selector),
            ..Rules::default()
        };
        let r = c.resolve(&rules, obj("", "PersistentVolume", "pv-7"), "Warning");
        // team-a both owns the volume and matches: one copy, as owner.
        assert_eq!(namespaces(&r), ["team-a"]);
        assert_eq!(r.destinations[0].how, How::Owner);
        let r = c.resolve(&rules, obj("", "Node", "node9"), "Warning");
        assert_eq!(namespaces(&r), ["team-a"]);
        assert_eq!(r.destinations[0].how, How::Selector);
    }
}
