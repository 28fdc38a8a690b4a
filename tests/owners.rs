//! Delivery by ownership never leaks: over random clusters (volumes and their claims,
//! attachments, namespaces alive or being deleted, pods on nodes) and random events, every
//! namespace an event is delivered to exists, is not being deleted, and is tied to the object
//! by the rule that names it; and, with no cap in the way, every such namespace gets it.
//!
//! The oracle below is written from the rules' definitions, apart from `owners::OwnerState`.

use std::collections::{BTreeMap, BTreeSet};

use clusterscope::owners::{Claim, How, Namespace, NodePods, Object, OwnerState, Rules};
use kube::core::{Selector, SelectorExt};
use proptest::prelude::*;

const NAMESPACES: &[&str] = &["team-a", "team-b", "team-c", "ops", "web"];
const NODES: &[&str] = &["node1", "node2", "node3"];
const VOLUMES: &[&str] = &["pv-1", "pv-2", "pv-3", "pv-4"];

fn cluster() -> impl Strategy<Value = OwnerState> {
    let namespaces = prop::collection::btree_map(
        prop::sample::select(NAMESPACES),
        (any::<bool>(), prop::sample::select(&["a", "b"][..])),
        0..=NAMESPACES.len(),
    );
    // A claim may name a namespace that does not exist (deleted after the bind).
    let volumes = prop::collection::btree_map(
        prop::sample::select(VOLUMES),
        prop::sample::select(NAMESPACES),
        0..=VOLUMES.len(),
    );
    let attachments = prop::collection::btree_map(
        prop::sample::select(&["va-1", "va-2", "va-3"][..]),
        prop::sample::select(&["pv-1", "pv-2", "pv-3", "pv-4", "pv-absent"][..]),
        0..=3,
    );
    let pods = prop::collection::vec(
        (
            prop::sample::select(NODES),
            prop::sample::select(NAMESPACES),
        ),
        0..20,
    );
    (namespaces, volumes, attachments, pods).prop_map(|(namespaces, volumes, attachments, pods)| {
        let mut c = OwnerState::default();
        for (name, (terminating, team)) in namespaces {
            c.namespaces.insert(
                name.to_owned(),
                Namespace {
                    labels: BTreeMap::from([("team".to_owned(), team.to_owned())]),
                    terminating,
                },
            );
        }
        for (pv, ns) in volumes {
            c.volumes.insert(
                pv.to_owned(),
                Claim {
                    namespace: ns.to_owned(),
                    name: format!("claim-of-{pv}"),
                },
            );
        }
        for (va, pv) in attachments {
            c.attachments.insert(va.to_owned(), pv.to_owned());
        }
        for (node, ns) in pods {
            *c.pods_on_node
                .entry(node.to_owned())
                .or_default()
                .entry(ns.to_owned())
                .or_default() += 1;
        }
        c
    })
}

fn object() -> impl Strategy<Value = (&'static str, &'static str, &'static str)> {
    prop_oneof![
        prop::sample::select(&["pv-1", "pv-2", "pv-3", "pv-4", "pv-9"][..]).prop_map(|n| (
            "",
            "PersistentVolume",
            n
        )),
        prop::sample::select(&["va-1", "va-2", "va-3", "va-9"][..]).prop_map(|n| (
            "storage.k8s.io",
            "VolumeAttachment",
            n
        )),
        prop::sample::select(&["team-a", "team-b", "team-c", "ops", "web", "gone"][..])
            .prop_map(|n| ("", "Namespace", n)),
        prop::sample::select(&["node1", "node2", "node3", "node9"][..])
            .prop_map(|n| ("", "Node", n)),
        prop::sample::select(NODES).prop_map(|n| ("storage.k8s.io", "CSINode", n)),
        // Look-alikes that no rule knows.
        prop::sample::select(&["pv-1", "node1"][..]).prop_map(|n| (
            "example.com",
            "PersistentVolume",
            n
        )),
        Just(("rbac.authorization.k8s.io", "ClusterRole", "admin")),
    ]
}

fn rules() -> impl Strategy<Value = Rules> {
    (
        any::<bool>(),
        prop::option::of((any::<bool>(), 1usize..4)),
        prop::option::of(prop::sample::select(&["a", "b"][..])),
    )
        .prop_map(|(owners, node_pods, team)| Rules {
            owners,
            node_pods: node_pods.map(|(normal_too, max)| NodePods {
                types: if normal_too {
                    vec!["Warning".to_owned(), "Normal".to_owned()]
                } else {
                    vec!["Warning".to_owned()]
                },
                max_namespaces: max,
            }),
            namespace_selector: team.map(|t| {
                [("team".to_owned(), t.to_owned())]
                    .into_iter()
                    .collect::<Selector>()
            }),
        })
}

/// The namespaces each rule ties the object to, from the definitions.
fn oracle(
    c: &OwnerState,
    rules: &Rules,
    (group, kind, name): (&str, &str, &str),
    type_: &str,
) -> BTreeMap<How, BTreeSet<String>> {
    let open = |ns: &str| c.namespaces.get(ns).is_some_and(|n| !n.terminating);
    let mut tied: BTreeMap<How, BTreeSet<String>> = BTreeMap::new();
    if rules.owners {
        let claim_ns = |pv: &str| c.volumes.get(pv).map(|claim| claim.namespace.clone());
        let owner = match (group, kind) {
            ("", "PersistentVolume") => claim_ns(name),
            ("storage.k8s.io", "VolumeAttachment") => {
                c.attachments.get(name).and_then(|pv| claim_ns(pv))
            }
            ("", "Namespace") => Some(name.to_owned()),
            _ => None,
        };
        tied.entry(How::Owner)
            .or_default()
            .extend(owner.filter(|ns| open(ns)));
    }
    if let Some(np) = &rules.node_pods {
        let is_node = matches!((group, kind), ("", "Node") | ("storage.k8s.io", "CSINode"));
        if is_node && np.types.iter().any(|t| t == type_) {
            let on_node = c.pods_on_node.get(name).cloned().unwrap_or_default();
            tied.entry(How::Node).or_default().extend(
                on_node
                    .into_iter()
                    .filter(|(ns, pods)| *pods > 0 && open(ns))
                    .map(|(ns, _)| ns),
            );
        }
    }
    if let Some(selector) = &rules.namespace_selector {
        tied.entry(How::Selector).or_default().extend(
            c.namespaces
                .iter()
                .filter(|(ns, n)| open(ns) && selector.matches(&n.labels))
                .map(|(ns, _)| ns.clone()),
        );
    }
    tied
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_namespace_gets_an_event_it_is_not_tied_to_and_none_that_is_tied_is_missed(
        c in cluster(),
        rules in rules(),
        object in object(),
        warning in any::<bool>(),
    ) {
        let type_ = if warning { "Warning" } else { "Normal" };
        let (group, kind, name) = object;
        let got = c.resolve(&rules, Object { group, kind, name }, type_);
        let tied = oracle(&c, &rules, object, type_);
        let mut seen = BTreeSet::new();
        for d in &got.destinations {
            // No leak: tied by the very rule that delivered it, and open.
            prop_assert!(
                tied.get(&d.how).is_some_and(|t| t.contains(&d.namespace)),
                "{} got {kind} {name} by {:?} without being tied to it: {:?}",
                d.namespace, d.how, tied
            );
            prop_assert!(seen.insert(d.namespace.clone()), "{} twice", d.namespace);
            prop_assert!(!d.why.is_empty());
        }
        // Nothing missed, nothing cut too much: the cap keeps the first `maxNamespaces` of the
        // node's namespaces, sorted (docs/delivery.md), counts the rest as cut, and every
        // namespace another rule ties is delivered whatever the cap.
        let node_tied = tied.get(&How::Node).cloned().unwrap_or_default();
        let max = rules.node_pods.as_ref().map_or(usize::MAX, |n| n.max_namespaces);
        prop_assert_eq!(got.cut, node_tied.len().saturating_sub(max));
        let mut expected: BTreeSet<String> = node_tied.into_iter().take(max).collect();
        for (how, namespaces) in &tied {
            if *how != How::Node {
                expected.extend(namespaces.iter().cloned());
            }
        }
        prop_assert_eq!(seen, expected);
    }
}

// ---- tenants' Subscriptions: the same ties, never more -------------------------------------

use clusterscope::subscription::{Accepted, EventType, Relation, Subscribers, SubscriptionSpec};

const REASONS: &[&str] = &["FailedMount", "FailedAttach", "NodeNotReady", "Rebooted"];

/// Random subscriptions, each in a random namespace (existing or not, alive or not).
fn subscriptions() -> impl Strategy<Value = Vec<(&'static str, Accepted)>> {
    let one = (
        prop::sample::select(NAMESPACES),
        any::<bool>(),
        prop::collection::vec(
            prop::sample::select(
                &[
                    "Node",
                    "CSINode",
                    "PersistentVolume",
                    "VolumeAttachment",
                    "Namespace",
                ][..],
            ),
            0..3,
        ),
        prop::option::of(any::<bool>()),
        prop::collection::vec(
            prop::sample::select(&["FailedMount", "Failed*", "NodeNotReady", "Re*"][..]),
            0..3,
        ),
    );
    prop::collection::vec(one, 0..8).prop_map(|subs| {
        subs.into_iter()
            .enumerate()
            .map(|(i, (ns, owned, kinds, warning, reasons))| {
                let spec = SubscriptionSpec {
                    relation: if owned {
                        Relation::Owned
                    } else {
                        Relation::Nodes
                    },
                    kinds: kinds.into_iter().map(str::to_owned).collect(),
                    types: warning
                        .map(|w| {
                            vec![if w {
                                EventType::Warning
                            } else {
                                EventType::Normal
                            }]
                        })
                        .unwrap_or_default(),
                    reasons: reasons.into_iter().map(str::to_owned).collect(),
                    history: false,
                };
                (
                    ns,
                    Accepted {
                        name: format!("sub-{i}"),
                        spec,
                    },
                )
            })
            .collect()
    })
}

/// Whether `spec`'s filters take the event, from the definitions.
fn filters_take(spec: &SubscriptionSpec, kind: &str, type_: &str, reason: &str) -> bool {
    let kind_ok = spec.kinds.is_empty() || spec.kinds.iter().any(|k| k == kind);
    let type_ok = spec.types.is_empty()
        || spec.types.iter().any(|t| match t {
            EventType::Normal => type_ == "Normal",
            EventType::Warning => type_ == "Warning",
        });
    let reason_ok = spec.reasons.is_empty()
        || spec
            .reasons
            .iter()
            .any(|r| r == reason || (r.ends_with('*') && reason.starts_with(&r[..r.len() - 1])));
    kind_ok && type_ok && reason_ok
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A subscription never widens what a namespace sees: a copy goes only to a namespace its
    /// relation ties the object to now (the owner rules' oracle) and where one of its
    /// subscriptions wants the event; each such namespace gets exactly one copy naming every
    /// subscription that wants it.
    #[test]
    fn subscriptions_deliver_only_where_the_relation_ties_the_object(
        c in cluster(),
        subs in subscriptions(),
        object in object(),
        warning in any::<bool>(),
        reason in prop::sample::select(REASONS),
    ) {
        let type_ = if warning { "Warning" } else { "Normal" };
        let (group, kind, name) = object;
        let mut subscribers = Subscribers::default();
        for (ns, a) in &subs {
            subscribers.insert(ns, a.clone());
        }
        let got = subscribers.wanted(&c, Object { group, kind, name }, type_, reason);
        let owned = oracle(&c, &Rules { owners: true, ..Rules::default() }, object, type_);
        let nodes = oracle(
            &c,
            &Rules {
                node_pods: Some(NodePods {
                    types: vec!["Normal".into(), "Warning".into()],
                    max_namespaces: usize::MAX,
                }),
                ..Rules::default()
            },
            object,
            type_,
        );
        let tied = |relation: Relation, ns: &str| match relation {
            Relation::Owned => owned.get(&How::Owner).is_some_and(|t| t.contains(ns)),
            Relation::Nodes => nodes.get(&How::Node).is_some_and(|t| t.contains(ns)),
        };
        // What the definitions say each namespace should get.
        let mut expected: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (ns, a) in &subs {
            if tied(a.spec.relation, ns) && filters_take(&a.spec, kind, type_, reason) {
                expected.entry(ns).or_default().insert(a.name.clone());
            }
        }
        let mut seen = BTreeSet::new();
        for w in &got {
            prop_assert!(seen.insert(w.namespace.clone()), "{} got two copies", w.namespace);
            let want = expected.get(w.namespace.as_str());
            prop_assert!(
                want.is_some(),
                "{} got {kind} {name} without a subscription tied to it: {:?}", w.namespace, w
            );
            let names: BTreeSet<String> = w.subscriptions.iter().cloned().collect();
            prop_assert_eq!(Some(&names), want);
            prop_assert!(!w.why.is_empty());
        }
        prop_assert_eq!(seen.len(), expected.len(), "missed: {:?} got {:?}", expected, got);
    }
}
