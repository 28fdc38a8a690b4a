//! Tenant self-service: the namespaced `Subscription` through which a team asks, in its own
//! namespace, for the events about cluster-scoped objects that concern it, and the ceiling the
//! cluster admin sets on what subscriptions may ask ([`crate::config::Subscriptions`]).
//!
//! A subscription never widens what a namespace sees: it names a relation (`owned`: the
//! volumes its claims hold, their attachments, the namespace itself, custom kinds the admin's
//! `ownerRules` tie to a namespace; `nodes`: the Nodes and CSINodes that run its pods, custom
//! kinds the rules tie to a Node), and delivery puts an event only where that relation ties its
//! object at delivery time. What it asks beyond the admin's ceiling makes it `Accepted=False`
//! with a reason; it is never partly honoured in silence.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, Subscriptions};
use crate::owners::CustomRule;
pub use crate::owners::Relation;

pub mod controller;
pub mod status;
mod subscribers;

pub use subscribers::{Accepted, SharedSubscriptions, Subscribers, Wanted, relation_rules};

/// What a team asks for in its namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "clusterscope.dev",
    version = "v1alpha1",
    kind = "Subscription",
    namespaced,
    status = "SubscriptionStatus",
    shortname = "csub",
    category = "clusterscope",
    doc = "A team's request, in its own namespace, for copies of the events about cluster-scoped objects that concern it (the Nodes its pods run on, the volumes its claims hold), within the ceiling the cluster admin sets. Its status says whether it is accepted, and how many copies were delivered.",
    printcolumn = r#"{"name":"Relation","type":"string","jsonPath":".spec.relation"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Delivered","type":"integer","jsonPath":".status.delivered"}"#,
    printcolumn = r#"{"name":"Last delivery","type":"date","jsonPath":".status.lastDelivery"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 63").message("the name is at most 63 characters (it is a label value on the copies)"),
)]
#[x_kube(
    validation = Rule::new("self.relation != 'nodes' || !has(self.kinds) || self.kinds.all(k, !(k in ['PersistentVolume', 'VolumeAttachment', 'Namespace']))")
        .message("relation nodes covers Nodes, CSINodes and custom kinds tied to a Node, not PersistentVolume, VolumeAttachment or Namespace: use relation owned"),
    validation = Rule::new("self.relation != 'owned' || !has(self.kinds) || !self.kinds.exists(k, k in ['Node', 'CSINode'])")
        .message("relation owned does not cover Node or CSINode: use relation nodes"),
)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    /// How an object is tied to this namespace: `owned` (volumes its claims hold, their
    /// attachments, the namespace itself, custom kinds the admin's ownerRules tie to a
    /// namespace) or `nodes` (the Nodes and CSINodes running this namespace's pods, custom
    /// kinds tied to a Node).
    pub relation: Relation,
    /// Kinds as the API writes them (`Node`, `PersistentVolume`); empty: every kind the
    /// relation covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = r"^[A-Z][A-Za-z0-9]{0,62}$")))]
    pub kinds: Vec<String>,
    /// Event types; empty: both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub types: Vec<EventType>,
    /// Reasons: exact (`FailedMount`) or a prefix ending in `*` (`Failed*`); empty: every
    /// reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(regex(pattern = r"^[A-Za-z0-9_.:-]{1,128}\*?$"))
    )]
    pub reasons: Vec<String>,
    /// Also record the delivered events in the history database (when the admin allows it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history: bool,
}

/// An event type a subscription may ask for.
pub use crate::event::EventType;

/// What the controller says of a subscription.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// The generation these conditions speak of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (within the admin's ceiling, or why not) and `Ready` (delivering).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Copies delivered for it since it was accepted.
    #[serde(default)]
    pub delivered: u64,
    /// When it last delivered (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<String>,
}

/// A status condition, as `metav1.Condition` writes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase, for programs.
    pub reason: String,
    /// For people.
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Why a subscription is not accepted: the `Accepted=False` condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the cluster admin has not enabled subscriptions (configuration: subscriptions)")]
    Disabled,
    #[error("relation {0} is not allowed here (configuration: subscriptions.relations allows {1})")]
    Relation(&'static str, String),
    #[error(
        "kind {kind} is not among those subscriptions may ask for (configuration: subscriptions.kinds allows {allowed})"
    )]
    Kind { kind: String, allowed: String },
    #[error("relation {relation} does not tie kind {kind} to a namespace (it covers {covered})")]
    NotCovered {
        relation: &'static str,
        kind: String,
        covered: String,
    },
    #[error("history is not allowed for subscriptions (configuration: subscriptions.history)")]
    History,
    #[error(
        "this namespace has {cap} subscriptions already, the most the cluster admin allows (configuration: subscriptions.maxPerNamespace); this one comes after them"
    )]
    NamespaceLimit { cap: usize },
}

impl Refusal {
    /// Every reason a refusal can give.
    pub const REASONS: [&'static str; 6] = [
        "SubscriptionsDisabled",
        "RelationNotAllowed",
        "KindNotAllowed",
        "KindNotCovered",
        "HistoryNotAllowed",
        "NamespaceLimit",
    ];

    /// The condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Disabled => "SubscriptionsDisabled",
            Refusal::Relation(..) => "RelationNotAllowed",
            Refusal::Kind { .. } => "KindNotAllowed",
            Refusal::NotCovered { .. } => "KindNotCovered",
            Refusal::History => "HistoryNotAllowed",
            Refusal::NamespaceLimit { .. } => "NamespaceLimit",
        }
    }
}

/// Whether `spec` is within the admin's ceiling; `rank` is its place among its namespace's
/// subscriptions (oldest first: 0 for the oldest), so that a namespace over its cap keeps its
/// oldest ones.
pub fn accept(
    spec: &SubscriptionSpec,
    ceiling: Option<&Subscriptions>,
    owner_rules: &[CustomRule],
    rank: usize,
) -> Result<(), Refusal> {
    let ceiling = ceiling.ok_or(Refusal::Disabled)?;
    if !ceiling.relations.contains(&spec.relation) {
        let allowed: Vec<&str> = ceiling.relations.iter().map(|r| r.as_str()).collect();
        return Err(Refusal::Relation(spec.relation.as_str(), listed(&allowed)));
    }
    for kind in &spec.kinds {
        if !ceiling.kinds.is_empty() && !ceiling.kinds.contains(kind) {
            return Err(Refusal::Kind {
                kind: kind.clone(),
                allowed: listed(&ceiling.kinds),
            });
        }
        if !spec.relation.covers(kind, owner_rules) {
            let mut covered: Vec<&str> = spec
                .relation
                .builtin_kinds()
                .iter()
                .map(|(_, k)| *k)
                .collect();
            covered.extend(
                owner_rules
                    .iter()
                    .filter(|r| r.follows == spec.relation.follows())
                    .map(|r| r.kind.as_str()),
            );
            return Err(Refusal::NotCovered {
                relation: spec.relation.as_str(),
                kind: kind.clone(),
                covered: listed(&covered),
            });
        }
    }
    if spec.history && !ceiling.history {
        return Err(Refusal::History);
    }
    if rank >= ceiling.max_per_namespace {
        return Err(Refusal::NamespaceLimit {
            cap: ceiling.max_per_namespace,
        });
    }
    Ok(())
}

/// One subscription judged: where it stands and what its status should say.
pub struct Judgement {
    pub subscription: Arc<Subscription>,
    pub verdict: Result<(), Refusal>,
}

/// Judges every subscription against `config`'s ceiling, each namespace's oldest first (by
/// creation, then name): the accepted ones as delivery reads them, and every verdict. The
/// controller and `explain` judge with this one function.
pub fn judge(all: Vec<Arc<Subscription>>, config: &Config) -> (Subscribers, Vec<Judgement>) {
    let mut by_namespace: BTreeMap<String, Vec<Arc<Subscription>>> = BTreeMap::new();
    for s in all {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        by_namespace.entry(ns).or_default().push(s);
    }
    let mut subscribers = Subscribers::with_owner_rules(config.owner_rules.clone());
    let mut judged = Vec::new();
    for (namespace, mut list) in by_namespace {
        list.sort_by(|a, b| {
            let age = |s: &Subscription| s.metadata.creation_timestamp.clone().map(|t| t.0);
            age(a)
                .cmp(&age(b))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        let mut rank = 0;
        for subscription in list {
            let verdict = accept(
                &subscription.spec,
                config.subscriptions.as_ref(),
                &config.owner_rules,
                rank,
            );
            if verdict.is_ok() {
                rank += 1;
                let name = subscription.metadata.name.clone().unwrap_or_default();
                let spec = subscription.spec.clone();
                subscribers.insert(&namespace, Accepted { name, spec });
            }
            judged.push(Judgement {
                subscription,
                verdict,
            });
        }
    }
    (subscribers, judged)
}

fn listed(items: &[impl AsRef<str>]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owners::FieldHolds;

    fn spec(relation: Relation, kinds: &[&str]) -> SubscriptionSpec {
        SubscriptionSpec {
            relation,
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            types: Vec::new(),
            reasons: Vec::new(),
            history: false,
        }
    }

    fn ceiling() -> Subscriptions {
        Subscriptions {
            relations: vec![Relation::Owned, Relation::Nodes],
            kinds: Vec::new(),
            history: false,
            max_per_namespace: 2,
            deliveries_per_second: 50,
            line: 0,
        }
    }

    #[test]
    fn within_the_ceiling_is_accepted() {
        let c = ceiling();
        assert_eq!(
            accept(&spec(Relation::Nodes, &["Node"]), Some(&c), &[], 0),
            Ok(())
        );
        assert_eq!(
            accept(&spec(Relation::Owned, &[]), Some(&c), &[], 1),
            Ok(())
        );
    }

    #[test]
    fn every_refusal_says_why() {
        let c = ceiling();
        let nodes = spec(Relation::Nodes, &["Node"]);
        assert_eq!(accept(&nodes, None, &[], 0), Err(Refusal::Disabled));
        let owned_only = Subscriptions {
            relations: vec![Relation::Owned],
            ..ceiling()
        };
        let e = accept(&nodes, Some(&owned_only), &[], 0).unwrap_err();
        assert_eq!(e.reason(), "RelationNotAllowed");
        assert!(e.to_string().contains("allows owned"), "{e}");
        let volumes_only = Subscriptions {
            kinds: vec!["PersistentVolume".into()],
            ..ceiling()
        };
        let e = accept(&nodes, Some(&volumes_only), &[], 0).unwrap_err();
        assert_eq!(e.reason(), "KindNotAllowed");
        let e = accept(&spec(Relation::Owned, &["Node"]), Some(&c), &[], 0).unwrap_err();
        assert_eq!(e.reason(), "KindNotCovered");
        assert!(
            e.to_string()
                .contains("PersistentVolume, VolumeAttachment, Namespace"),
            "{e}"
        );
        let e = accept(
            &SubscriptionSpec {
                history: true,
                ..nodes.clone()
            },
            Some(&c),
            &[],
            0,
        )
        .unwrap_err();
        assert_eq!(e.reason(), "HistoryNotAllowed");
        let e = accept(&nodes, Some(&c), &[], 2).unwrap_err();
        assert_eq!(e, Refusal::NamespaceLimit { cap: 2 });
    }

    #[test]
    fn custom_kinds_are_covered_by_the_admins_owner_rules() {
        let rule = CustomRule {
            group: "example.com".into(),
            version: "v1".into(),
            kind: "GpuSlice".into(),
            resource: "gpuslices".into(),
            follows: FieldHolds::Node,
            field: vec!["spec".into(), "node".into()],
        };
        assert!(Relation::Nodes.covers("GpuSlice", std::slice::from_ref(&rule)));
        assert!(!Relation::Owned.covers("GpuSlice", std::slice::from_ref(&rule)));
        assert!(!Relation::Nodes.covers("GpuSlice", &[]));
    }
}
