//! The accepted subscriptions as delivery reads them ([`Subscribers`]), and what the
//! controller and the mirror share of them ([`SharedSubscriptions`]): the set itself, the copies delivered
//! for each (for its status), and each namespace's delivery rate.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Mutex, RwLock};

use k8s_openapi::api::core::v1::Event;

use super::{Relation, SubscriptionSpec};
use crate::owners::{CustomRule, Object, OwnerState, Rules};

/// An accepted subscription, as delivery reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub name: String,
    pub spec: SubscriptionSpec,
}

impl Accepted {
    /// Whether its filters take an event of `type_` and `reason` about a `kind` object.
    pub fn wants(&self, kind: &str, type_: &str, reason: &str) -> bool {
        self.filtered_by(kind, type_, reason).is_none()
    }

    /// Which of its filters turns away an event of `type_` and `reason` about a `kind`
    /// object, in words (`it asks for types Warning only`); `None` when they all take it.
    pub fn filtered_by(&self, kind: &str, type_: &str, reason: &str) -> Option<String> {
        let spec = &self.spec;
        let only = |what: &str, items: &[String]| {
            Some(format!("it asks for {what} {} only", items.join(", ")))
        };
        if !(spec.kinds.is_empty() || spec.kinds.iter().any(|k| k == kind)) {
            return only("kinds", &spec.kinds);
        }
        if !(spec.types.is_empty() || spec.types.iter().any(|t| t.as_str() == type_)) {
            let types: Vec<String> = spec.types.iter().map(|t| t.as_str().to_owned()).collect();
            return only("types", &types);
        }
        if !(spec.reasons.is_empty() || spec.reasons.iter().any(|r| reason_matches(r, reason))) {
            return only("reasons", &spec.reasons);
        }
        None
    }
}

/// `FailedMount` matches itself; `Failed*` every reason that starts with `Failed`.
fn reason_matches(pattern: &str, reason: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => reason.starts_with(prefix),
        None => pattern == reason,
    }
}

/// One copy a namespace's subscriptions ask for: where, for which of them (by name, sorted:
/// two subscriptions wanting the same event give one copy), why the relation ties it, and
/// whether one of them asks for history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub namespace: String,
    pub subscriptions: Vec<String>,
    pub why: String,
    pub history: bool,
}

/// The accepted subscriptions of the cluster, by namespace, and the admin's owner rules they
/// were accepted under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscribers {
    by_namespace: BTreeMap<String, Vec<Accepted>>,
    owner_rules: Vec<CustomRule>,
}

impl Subscribers {
    /// None yet, under the admin's `owner_rules` (which custom kinds a relation covers).
    pub fn with_owner_rules(owner_rules: Vec<CustomRule>) -> Self {
        Subscribers {
            by_namespace: BTreeMap::new(),
            owner_rules,
        }
    }

    pub fn insert(&mut self, namespace: &str, accepted: Accepted) {
        let list = self.by_namespace.entry(namespace.to_owned()).or_default();
        list.retain(|a| a.name != accepted.name);
        list.push(accepted);
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }

    pub fn remove(&mut self, namespace: &str, name: &str) {
        if let Some(list) = self.by_namespace.get_mut(namespace) {
            list.retain(|a| a.name != name);
            if list.is_empty() {
                self.by_namespace.remove(namespace);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_namespace.is_empty()
    }

    /// How many are accepted.
    pub fn len(&self) -> usize {
        self.by_namespace.values().map(Vec::len).sum()
    }

    /// The owner-delivery rules the accepted subscriptions resolve with (what the owner state
    /// must follow for them).
    pub fn rules(&self) -> Vec<Rules> {
        let mut relations: Vec<Relation> = self
            .by_namespace
            .values()
            .flatten()
            .map(|a| a.spec.relation)
            .collect();
        relations.sort_by_key(|r| r.as_str());
        relations.dedup();
        relations.into_iter().map(relation_rules).collect()
    }

    /// The copies an event of `type_` and `reason` about `object` gets from subscriptions:
    /// only in namespaces the subscription's relation ties the object to in `cluster` now
    /// (the owner delivery's own resolution, so the two can never disagree), only where a
    /// subscription there wants it.
    pub fn wanted(
        &self,
        cluster: &OwnerState,
        object: Object<'_>,
        type_: &str,
        reason: &str,
    ) -> Vec<Wanted> {
        if self.by_namespace.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<Wanted> = Vec::new();
        for relation in [Relation::Owned, Relation::Nodes] {
            let tied = cluster.resolve(&relation_rules(relation), object, type_);
            for place in tied.destinations {
                let Some(subs) = self.by_namespace.get(&place.namespace) else {
                    continue;
                };
                let wanting: Vec<&Accepted> = subs
                    .iter()
                    .filter(|a| a.spec.relation == relation && a.wants(object.kind, type_, reason))
                    .collect();
                if wanting.is_empty() {
                    continue;
                }
                let history = wanting.iter().any(|a| a.spec.history);
                let names = wanting.iter().map(|a| a.name.clone());
                match out.iter_mut().find(|w| w.namespace == place.namespace) {
                    Some(w) => {
                        w.subscriptions.extend(names);
                        w.subscriptions.sort();
                        w.history |= history;
                    }
                    None => out.push(Wanted {
                        namespace: place.namespace,
                        subscriptions: names.collect(),
                        why: place.why,
                        history,
                    }),
                }
            }
        }
        out
    }

    /// The subscriptions in `namespace` a delivered `copy` was for: those whose relation
    /// covers its object's kind and whose filters take it.
    fn wanting<'a>(&'a self, namespace: &str, copy: &'a Event) -> impl Iterator<Item = &'a str> {
        let kind = copy.involved_object.kind.as_deref().unwrap_or_default();
        let type_ = copy.type_.as_deref().unwrap_or_default();
        let reason = copy.reason.as_deref().unwrap_or_default();
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(move |a| {
                a.spec.relation.covers(kind, &self.owner_rules) && a.wants(kind, type_, reason)
            })
            .map(|a| a.name.as_str())
    }
}

/// The owner-delivery rules that say where `relation` ties an object: every namespace, every
/// event type (a subscription's own filters choose the types).
pub fn relation_rules(relation: Relation) -> Rules {
    match relation {
        Relation::Owned => Rules {
            owners: true,
            ..Default::default()
        },
        Relation::Nodes => Rules {
            node_pods: Some(crate::owners::NodePods {
                types: vec!["Normal".to_owned(), "Warning".to_owned()],
                max_namespaces: usize::MAX,
            }),
            ..Default::default()
        },
    }
}

/// Copies delivered for one subscription since the controller started counting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub delivered: u64,
    /// When the last one was written.
    pub last: Option<std::time::SystemTime>,
}

type Limiter = governor::DefaultKeyedRateLimiter<String>;

/// `rate` copies a second into each namespace, in bursts of at most a twentieth of it: no
/// second sees much more than `rate` (a burst of the whole rate on top of it let 69-80 copies
/// into one namespace within a second at 50, measured on a real API server).
fn namespace_limiter(rate: u32) -> Limiter {
    let per_second = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate / 20).unwrap_or(NonZeroU32::MIN);
    governor::RateLimiter::hashmap(governor::Quota::per_second(per_second).allow_burst(burst))
}

/// What the subscription controller and the mirror share: the accepted subscriptions (the
/// controller writes them, the planner reads them), the copies delivered for each (the mirror
/// counts, the controller writes them into statuses), and the per-namespace delivery rate.
#[derive(Default)]
pub struct SharedSubscriptions {
    subscribers: RwLock<Subscribers>,
    counts: Mutex<HashMap<(String, String), Count>>,
    /// The admin's deliveries per second into one namespace, and its limiter.
    limiter: RwLock<Option<(u32, Limiter)>>,
    /// Counts the changes of the accepted set (a re-list delivers stored events to new ones).
    changes: tokio::sync::watch::Sender<u64>,
    /// Told once the controller's first list is in.
    listed: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for SharedSubscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSubscriptions")
            .field("subscribers", &self.subscribers)
            .finish_non_exhaustive()
    }
}

impl SharedSubscriptions {
    /// The accepted subscriptions now.
    pub fn subscribers(&self) -> std::sync::RwLockReadGuard<'_, Subscribers> {
        crate::locks::read(&self.subscribers)
    }

    /// Replaces the accepted set (and tells the mirror if it changed); `rate` is the admin's
    /// deliveries per second into one namespace.
    pub fn replace(&self, subscribers: Subscribers, rate: u32) {
        let changed = *self.subscribers() != subscribers;
        *crate::locks::write(&self.subscribers) = subscribers;
        let mut limiter = crate::locks::write(&self.limiter);
        if limiter.as_ref().is_none_or(|(r, _)| *r != rate) {
            *limiter = Some((rate, namespace_limiter(rate)));
        }
        self.listed.send_replace(true);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Follows the changes of the accepted set (`changed()` returns at the next change).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until the controller has listed the subscriptions once.
    pub async fn listed(&self) {
        let mut listed = self.listed.subscribe();
        let _ = listed.wait_for(|l| *l).await;
    }

    /// Whether one more copy may go into `namespace` now (the admin's deliveries per second);
    /// a copy held back is planned again later.
    pub fn admit(&self, namespace: &str) -> bool {
        match &*crate::locks::read(&self.limiter) {
            Some((_, limiter)) => limiter.check_key(&namespace.to_owned()).is_ok(),
            None => true,
        }
    }

    /// Counts a subscription copy written into its namespace for every subscription there that
    /// wanted it.
    pub fn credit(&self, copy: &Event) {
        let namespace = copy.metadata.namespace.as_deref().unwrap_or_default();
        let subscribers = self.subscribers();
        let mut counts = crate::locks::lock(&self.counts);
        let now = std::time::SystemTime::now();
        for name in subscribers.wanting(namespace, copy) {
            let count = counts
                .entry((namespace.to_owned(), name.to_owned()))
                .or_default();
            count.delivered += 1;
            count.last = Some(now);
        }
    }

    /// What was counted for `namespace/name`.
    pub fn count(&self, namespace: &str, name: &str) -> Count {
        crate::locks::lock(&self.counts)
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// Forgets every count (a new controller run reads the delivered totals from the statuses
    /// again).
    pub fn restart_counts(&self) {
        crate::locks::lock(&self.counts).clear();
    }

    /// Forgets the count of a subscription that is gone, and idle namespaces' rate state.
    pub fn forget(&self, namespace: &str, name: &str) {
        crate::locks::lock(&self.counts).remove(&(namespace.to_owned(), name.to_owned()));
        if let Some((_, limiter)) = &*crate::locks::read(&self.limiter) {
            limiter.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At 50 a second, a namespace takes 2 copies at once (a twentieth), not 50 (the whole
    /// rate as a burst on top of the rate); namespaces are counted apart; a second later it
    /// has taken about 50 more, never the 100 a full burst allowed.
    #[tokio::test]
    async fn a_namespace_gets_its_rate_without_a_burst_of_the_whole_rate() {
        let live = SharedSubscriptions::default();
        live.replace(Subscribers::default(), 50);
        let at_once = (0..100).filter(|_| live.admit("team-a")).count();
        assert_eq!(at_once, 2);
        assert_eq!((0..100).filter(|_| live.admit("team-b")).count(), 2);
        let started = std::time::Instant::now();
        let mut admitted = at_once;
        while started.elapsed() < std::time::Duration::from_secs(1) {
            admitted += usize::from(live.admit("team-a"));
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert!(
            (40..=55).contains(&admitted),
            "{admitted} admitted in one second at 50"
        );
    }
}
