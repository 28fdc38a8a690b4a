//! The subscription controller (on the replica holding the lease, beside the mirror): follows
//! every Subscription into a kube-runtime reflector store, judges each namespace's against the
//! admin's ceiling (oldest first, so a namespace over its cap keeps its oldest), hands the
//! accepted ones to the mirror ([`SharedSubscriptions::replace`]) and writes each status that changed with
//! server-side apply: on every change of a Subscription, and every `status_every` (counts of
//! delivered copies, a reloaded configuration).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;

use super::{Judgement, Refusal, SharedSubscriptions, Subscribers, Subscription, judge, status};
use crate::classify::ScopeResolver;
use crate::metrics::Metrics;

/// The field manager of the statuses clusterscope applies.
pub const FIELD_MANAGER: &str = "clusterscope";

/// Controller settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often statuses are brought up to date without a change of a Subscription (counts
    /// of delivered copies, a reloaded ceiling).
    pub status_every: Duration,
    /// How long a burst of changes is gathered before they are judged together.
    pub settle: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            status_every: Duration::from_secs(10),
            settle: Duration::from_millis(100),
        }
    }
}

/// How many are accepted, and refused for each reason (0 for the reasons none has).
fn tally(judged: &[Judgement]) -> Vec<(&'static str, &'static str, usize)> {
    let accepted = judged.iter().filter(|j| j.verdict.is_ok()).count();
    let mut counts = vec![("accepted", "Accepted", accepted)];
    for reason in Refusal::REASONS {
        let n = judged
            .iter()
            .filter(|j| j.verdict.as_ref().err().map(Refusal::reason) == Some(reason))
            .count();
        counts.push(("refused", reason, n));
    }
    counts
}

/// What one run of the controller keeps between rounds.
struct StatusWriter {
    api_client: kube::Client,
    config: crate::config::SharedConfig,
    live: Arc<SharedSubscriptions>,
    metrics: Arc<Metrics>,
    /// `status.delivered` of each subscription (by uid) when this run first saw it: the
    /// run's own counts add to it.
    bases: HashMap<String, u64>,
    /// The subscriptions of the last round, to forget those that are gone.
    seen: HashSet<(String, String)>,
}

impl StatusWriter {
    /// Judges `store`'s subscriptions, hands the accepted to the mirror and applies every
    /// status that changed. `counts`: bring `delivered` and `lastDelivery` up to date too (the
    /// periodic round); a round for a change of the Subscriptions writes only verdicts, so
    /// that the statuses it writes (each a change it sees) do not start round after round
    /// while copies are being counted.
    async fn run(&mut self, store: &Store<Subscription>, counts: bool) {
        let config = self.config.load_full();
        let (subscribers, judged) = judge(store.state(), &config);
        let rate = config
            .subscriptions
            .as_ref()
            .map_or(1, |c| c.deliveries_per_second);
        self.live.replace(subscribers, rate);
        self.metrics.subscriptions.standing(&tally(&judged));
        let mut seen = HashSet::new();
        for j in &judged {
            let meta = &j.subscription.metadata;
            let (ns, name) = (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            );
            let base = *self
                .bases
                .entry(meta.uid.clone().unwrap_or_default())
                .or_insert_with(|| j.subscription.status.as_ref().map_or(0, |s| s.delivered));
            let (delivered, last) = if counts {
                let count = self.live.count(&ns, &name);
                (base + count.delivered, count.last)
            } else {
                let stored = j.subscription.status.as_ref();
                (stored.map_or(base, |s| s.delivered), None)
            };
            let wanted = status::desired(
                &j.subscription,
                &j.verdict,
                delivered,
                last,
                SystemTime::now(),
            );
            if j.subscription.status.as_ref() != Some(&wanted) {
                self.apply(&ns, &name, &wanted).await;
            }
            seen.insert((ns, name));
        }
        for (ns, name) in self.seen.difference(&seen) {
            self.live.forget(ns, name);
        }
        self.seen = seen;
        // The bases of subscriptions that are gone go with them.
        let uids: HashSet<&str> = judged
            .iter()
            .filter_map(|j| j.subscription.metadata.uid.as_deref())
            .collect();
        self.bases.retain(|uid, _| uids.contains(uid.as_str()));
    }

    /// Applies `status` to `namespace/name` (the status subresource, server-side apply).
    async fn apply(&self, namespace: &str, name: &str, status: &super::SubscriptionStatus) {
        let api: Api<Subscription> = Api::namespaced(self.api_client.clone(), namespace);
        let body = serde_json::json!({
            "apiVersion": "clusterscope.dev/v1alpha1",
            "kind": "Subscription",
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {}
            // Deleted meanwhile: its deliveries stopped with it.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(subscription = %format_args!("{namespace}/{name}"), error = %crate::errors::Chain(&e),
                "subscriptions: cannot write the status (tried again at the next round); may clusterscope patch subscriptions/status?")
            }
        }
    }
}

/// Whether the Subscriptions are followed: the admin set a ceiling, or the Subscription CRD is
/// served (discovery found it), so that a tenant's Subscription says `SubscriptionsDisabled`
/// in its status instead of nothing. Neither: nothing about them is asked of the API server.
fn followed(config: &crate::config::SharedConfig, resolver: &ScopeResolver) -> bool {
    use kube::Resource as _;
    config.load().subscriptions.is_some()
        || resolver
            .scope_of(&Subscription::group(&()), &Subscription::kind(&()))
            .is_some()
}

/// Runs until `stop` is cancelled: follows the Subscriptions, keeps `live` and the statuses
/// current.
pub async fn run(
    client: kube::Client,
    (config, resolver): (crate::config::SharedConfig, Arc<ScopeResolver>),
    live: Arc<SharedSubscriptions>,
    metrics: Arc<Metrics>,
    options: Options,
    stop: tokio_util::sync::CancellationToken,
) {
    let shutdown = stop.cancelled();
    tokio::pin!(shutdown);
    // A new run counts from the statuses as stored: nothing is counted twice.
    live.restart_counts();
    while !followed(&config, &resolver) {
        live.replace(Subscribers::default(), 1);
        tokio::select! {
            () = tokio::time::sleep(options.status_every) => {}
            () = &mut shutdown => return,
        }
    }
    if config.load().subscriptions.is_some() {
        tracing::info!(
            "subscriptions: allowed by the configuration; following Subscriptions in every namespace"
        );
    } else {
        tracing::info!(
            "subscriptions: the Subscription CRD is installed but the configuration allows none (no `subscriptions:`); following Subscriptions to tell each so in its status (SubscriptionsDisabled)"
        );
    }
    let (store, mut writer) = reflector::store::<Subscription>();
    let changed = Arc::new(tokio::sync::Notify::new());
    let how = crate::follow::WatchSpec {
        what: "subscriptions.clusterscope.dev".to_owned(),
        hint: "subscriptions keep what was last seen; is the Subscription CRD installed (manifests/components/subscriptions), and may clusterscope list and watch subscriptions?",
        relist: None,
        errors: metrics.watches.of("subscriptions.clusterscope.dev"),
    };
    let told = changed.clone();
    let follow = crate::follow::follow(
        Api::<Subscription>::all(client.clone()),
        watcher::Config::default(),
        how,
        move |event| {
            writer.apply_watcher_event(&event);
            told.notify_one();
        },
    );
    let mut round = StatusWriter {
        api_client: client,
        config,
        live,
        metrics,
        bases: HashMap::new(),
        seen: HashSet::new(),
    };
    let rounds = async {
        if store.wait_until_ready().await.is_err() {
            return;
        }
        // Counts on a fixed beat, whatever changes in between.
        let mut beat = tokio::time::interval(options.status_every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        let mut counts = true;
        loop {
            round.run(&store, counts).await;
            counts = tokio::select! {
                () = changed.notified() => {
                    tokio::time::sleep(options.settle).await;
                    false
                }
                _ = beat.tick() => true,
            };
        }
    };
    tokio::select! {
        () = follow => {}
        () = rounds => {}
        () = &mut shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::subscription::{Relation, SubscriptionSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn sub(ns: &str, name: &str, age_secs: i64, relation: Relation) -> Arc<Subscription> {
        let mut s = Subscription::new(
            name,
            SubscriptionSpec {
                relation,
                kinds: Vec::new(),
                types: Vec::new(),
                reasons: Vec::new(),
                history: false,
            },
        );
        s.metadata.namespace = Some(ns.to_owned());
        let t = jiff_free_time(age_secs);
        s.metadata.creation_timestamp = Some(Time(t));
        Arc::new(s)
    }

    fn jiff_free_time(secs: i64) -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap_or_default()
    }

    #[test]
    fn a_namespace_over_its_cap_keeps_its_oldest_and_refusals_take_no_place() {
        let config = Config::from_yaml(
            "channels:\n  - name: a\nsubscriptions:\n  relations: [nodes]\n  maxPerNamespace: 2\n",
            "t",
        )
        .unwrap();
        let all = vec![
            sub("team-a", "newest", 30, Relation::Nodes),
            sub("team-a", "owned", 0, Relation::Owned),
            sub("team-a", "oldest", 10, Relation::Nodes),
            sub("team-a", "middle", 20, Relation::Nodes),
            sub("team-b", "alone", 40, Relation::Nodes),
        ];
        let (subscribers, judged) = judge(all, &config);
        let verdicts: Vec<(String, Option<&str>)> = judged
            .iter()
            .map(|j| {
                (
                    j.subscription.metadata.name.clone().unwrap_or_default(),
                    j.verdict.as_ref().err().map(Refusal::reason),
                )
            })
            .collect();
        assert_eq!(
            verdicts,
            [
                ("owned".to_owned(), Some("RelationNotAllowed")),
                ("oldest".to_owned(), None),
                ("middle".to_owned(), None),
                ("newest".to_owned(), Some("NamespaceLimit")),
                ("alone".to_owned(), None),
            ]
        );
        assert_eq!(subscribers.len(), 3);
    }
}
