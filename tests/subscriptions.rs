//! Tenant Subscriptions end to end, on the production path: `cluster::spawn` (the lease, the
//! mirror and subscription controllers, the owner state) against the fake API server with the
//! Subscription CRD installed. Teams write Subscriptions; the controller judges them against
//! the admin's ceiling, writes their status with server-side apply, and the mirror copies into
//! a namespace only what its accepted subscriptions ask for and its relation ties to it.

mod support;

use support::fake_apiserver::pod;

use std::sync::Arc;

use serde_json::{Value, json};
use support::fake_apiserver::{self, FakeApiServer, eventually};

const NAMESPACES: [&str; 6] = fake_apiserver::THREE_TEAMS;

/// Every cluster-scoped event goes to a channel (the default configuration's shape); none
/// delivers by rule, so every copy in a team namespace comes from a subscription.
const ROUTES: &str = "channels:\n  - name: nodes\n  - name: cluster\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n  - channel: cluster\n";

/// The cluster side as `serve` runs it, with the configuration `yaml`.
struct Cluster {
    /// The configuration it runs on: storing another is a reload.
    config: clusterscope::config::SharedConfig,
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    metrics: Arc<clusterscope::metrics::Metrics>,
}

impl Cluster {
    fn start(api: &FakeApiServer, yaml: &str) -> Cluster {
        let metrics = Arc::new(clusterscope::metrics::Metrics::new());
        let options = fake_apiserver::quick_cluster_options();
        let config = fake_apiserver::config(yaml);
        let (stop, tasks) = fake_apiserver::spawn_cluster(
            api,
            config.clone(),
            Arc::new(clusterscope::classify::ScopeResolver::new()),
            metrics.clone(),
            options,
        );
        Cluster {
            config,
            stop,
            tasks,
            metrics,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    fn metric(&self, line_start: &str) -> f64 {
        fake_apiserver::metric(&self.metrics, line_start)
    }

    /// For polling: NaN while the series is not there.
    fn seen(&self, line_start: &str) -> f64 {
        fake_apiserver::seen(&self.metrics, line_start)
    }
}

fn volume(name: &str, claim_ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "namespace": claim_ns, "name": "data", "uid": "c-1"}},
        "status": {"phase": "Bound"}})
}

fn event(name: &str, kind: &str, object: &str, type_: &str, reason: &str, count: i64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"kind": kind, "name": object, "apiVersion": "v1"},
        "reason": reason, "message": format!("attempt {count}"), "type": type_, "count": count,
        "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
    })
}

/// The `count`-th VolumeFailedDelete of pv-7.
fn pv_event(count: i64) -> Value {
    event(
        "pv-7.1",
        "PersistentVolume",
        "pv-7",
        "Warning",
        "VolumeFailedDelete",
        count,
    )
}

/// The condition `type_` of a subscription's stored status.
fn condition(api: &FakeApiServer, ns: &str, name: &str, type_: &str) -> Option<Value> {
    let sub = api.object("subscriptions", ns, name)?;
    sub["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Whether the subscription's `Accepted` condition reads `status` with `reason`.
fn accepted(api: &FakeApiServer, ns: &str, name: &str, status: &str, reason: &str) -> bool {
    condition(api, ns, name, "Accepted")
        .is_some_and(|c| c["status"] == status && c["reason"] == reason)
}

fn nodes(reasons: &[&str]) -> Value {
    json!({"relation": "nodes", "kinds": ["Node"], "reasons": reasons})
}

/// A cluster with two teams on node1 and one on node2.
async fn cluster_with_pods() -> FakeApiServer {
    let api = FakeApiServer::start(&NAMESPACES).await;
    api.install_subscription_crd();
    api.put_object("pods", pod("team-a", "web-1", "node1", "Running"));
    api.put_object("pods", pod("team-b", "db-1", "node1", "Running"));
    api.put_object("pods", pod("team-c", "job-1", "node2", "Running"));
    api
}

/// A team gets the events it asked for, about the objects its relation ties to it, and
/// nothing more; two subscriptions wanting one event give one copy; every status says it is
/// accepted and delivering, and counts what it got.
#[tokio::test]
async fn a_team_gets_what_it_asked_for_and_nothing_more() {
    let api = cluster_with_pods().await;
    api.put_subscription("team-a", "node-failures", nodes(&["Failed*"]), 1);
    api.put_subscription("team-a", "all-node-events", nodes(&[]), 2);
    api.put_subscription("team-b", "reboots-only", nodes(&["Rebooted"]), 3);
    api.put_subscription("team-c", "its-node", nodes(&[]), 4);
    let cluster = Cluster::start(&api, &format!("{ROUTES}subscriptions: {{}}\n"));
    for (ns, name) in [
        ("team-a", "node-failures"),
        ("team-a", "all-node-events"),
        ("team-b", "reboots-only"),
        ("team-c", "its-node"),
    ] {
        assert!(
            eventually(10, || accepted(&api, ns, name, "True", "Accepted")).await,
            "{ns}/{name}: {:?}",
            api.object("subscriptions", ns, name)
        );
        let ready = condition(&api, ns, name, "Ready").unwrap();
        assert_eq!(ready["status"], "True");
        let sub = api.object("subscriptions", ns, name).unwrap();
        assert_eq!(sub["status"]["observedGeneration"], 1);
    }
    api.put(
        "default",
        event("node1.1", "Node", "node1", "Warning", "FailedMount", 1),
    );
    assert!(eventually(10, || api.copies_of("team-a", "node1.1").len() == 1).await);
    let copy = &api.copies_of("team-a", "node1.1")[0];
    let labels = &copy["metadata"]["labels"];
    assert_eq!(labels["clusterscope.dev/delivery"], "subscription");
    assert_eq!(labels["clusterscope.dev/subscription"], "all-node-events");
    let why = copy["metadata"]["annotations"]["clusterscope.dev/delivered-because"]
        .as_str()
        .unwrap();
    assert!(
        why.starts_with(
            "subscription all-node-events, node-failures: Node node1 runs 1 pod of namespace team-a"
        ),
        "{why}"
    );
    // Both subscriptions that wanted it count it.
    let delivered = |name: &str| {
        api.object("subscriptions", "team-a", name).unwrap()["status"]["delivered"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        eventually(10, || delivered("node-failures") == 1
            && delivered("all-node-events") == 1)
        .await
    );
    let sub = api
        .object("subscriptions", "team-a", "node-failures")
        .unwrap();
    assert!(sub["status"]["lastDelivery"].is_string(), "{sub}");
    api.put(
        "default",
        event("node1.1", "Node", "node1", "Warning", "FailedMount", 2),
    );
    assert!(
        eventually(10, || api
            .copies_of("team-a", "node1.1")
            .first()
            .is_some_and(|c| c["count"] == 2))
        .await
    );
    assert!(
        api.copies_of("team-b", "node1.1").is_empty(),
        "team-b wants Rebooted only"
    );
    assert!(
        api.copies_of("team-c", "node1.1").is_empty(),
        "team-c runs nothing on node1"
    );
    assert!(
        cluster.metric("clusterscope_subscription_deliveries_total{outcome=\"delivered\"}") >= 2.0
    );
    assert_eq!(
        cluster.metric("clusterscope_subscriptions{state=\"accepted\",reason=\"Accepted\"}"),
        4.0
    );
    // Nothing but copies into team namespaces, no other write to a Subscription than its
    // status.
    let calls = api.store.lock().unwrap().calls.clone();
    assert!(
        calls
            .iter()
            .filter(|c| c.1 == "clusterscope.dev")
            .all(
                |c| ["list", "watch"].contains(&c.0.as_str()) && c.2 == "subscriptions"
                    || c.0 == "patch" && c.2 == "subscriptions/status"
            ),
        "{calls:?}"
    );
    cluster.stop().await;
}

/// `status.delivered` counts the copies written for an event (creates and repeats), not the
/// rewrites of a copy that another subscription of the namespace coming or going causes (its
/// labels and `delivered-because` change, the event does not): on a real API server 7 copies
/// written for `node-failures` once read `delivered: 14`.
#[tokio::test]
async fn a_copy_rewritten_for_another_subscription_is_not_counted_again() {
    let api = cluster_with_pods().await;
    api.put_subscription("team-a", "node-failures", nodes(&["Failed*"]), 1);
    let cluster = Cluster::start(&api, &format!("{ROUTES}subscriptions: {{}}\n"));
    assert!(
        eventually(10, || accepted(
            &api,
            "team-a",
            "node-failures",
            "True",
            "Accepted"
        ))
        .await
    );
    api.put(
        "default",
        event("node1.1", "Node", "node1", "Warning", "FailedMount", 1),
    );
    let delivered = |name: &str| {
        api.object("subscriptions", "team-a", name).unwrap()["status"]["delivered"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(eventually(10, || delivered("node-failures") == 1).await);
    // A second subscription of team-a wants the same event: the copy is rewritten (labelled
    // with the first by name now), and nothing new is delivered.
    api.put_subscription("team-a", "all-node-events", nodes(&[]), 2);
    assert!(
        eventually(10, || api
            .copies_of("team-a", "node1.1")
            .first()
            .is_some_and(
                |c| c["metadata"]["labels"]["clusterscope.dev/subscription"] == "all-node-events"
            ))
        .await,
        "the copy was not rewritten: {:?}",
        api.copies_of("team-a", "node1.1")
    );
    // Once nothing more is asked of the API server (statuses are written every 200 ms here,
    // when they change), still one delivery.
    assert!(
        eventually(10, || accepted(
            &api,
            "team-a",
            "all-node-events",
            "True",
            "Accepted"
        ))
        .await
    );
    api.quiet().await;
    assert_eq!(
        cluster.metric("clusterscope_subscription_deliveries_total{outcome=\"delivered\"}"),
        1.0,
        "a rewrite counted as a delivery"
    );
    assert_eq!(
        delivered("node-failures"),
        1,
        "a rewrite counted as a delivery"
    );
    assert_eq!(delivered("all-node-events"), 0);
    // A repeat of the event is a delivery for both.
    api.put(
        "default",
        event("node1.1", "Node", "node1", "Warning", "FailedMount", 2),
    );
    assert!(
        eventually(15, || delivered("node-failures") == 2
            && delivered("all-node-events") == 1)
        .await,
        "{} {}",
        delivered("node-failures"),
        delivered("all-node-events")
    );
    cluster.stop().await;
}

/// What the admin's ceiling refuses says why in the status and gets nothing; a namespace over
/// its cap keeps its oldest, and the next one takes the place of one deleted.
#[tokio::test]
async fn refused_subscriptions_say_why_and_get_nothing() {
    let api = cluster_with_pods().await;
    api.put_object("persistentvolumes", volume("pv-7", "team-a"));
    api.put_subscription("team-a", "volumes", json!({"relation": "owned"}), 1);
    api.put_subscription(
        "team-a",
        "volume-failures",
        json!({"relation": "owned", "types": ["Warning"]}),
        2,
    );
    api.put_subscription("team-a", "its-nodes", nodes(&[]), 3);
    api.put_subscription(
        "team-b",
        "with-history",
        json!({"relation": "owned", "history": true}),
        4,
    );
    let ceiling = "subscriptions:\n  relations: [owned]\n  maxPerNamespace: 1\n";
    let cluster = Cluster::start(&api, &format!("{ROUTES}{ceiling}"));
    assert!(
        eventually(10, || accepted(
            &api, "team-a", "volumes", "True", "Accepted"
        ))
        .await
    );
    assert!(
        eventually(10, || accepted(
            &api,
            "team-a",
            "volume-failures",
            "False",
            "NamespaceLimit"
        ))
        .await
    );
    assert!(
        eventually(10, || accepted(
            &api,
            "team-a",
            "its-nodes",
            "False",
            "RelationNotAllowed"
        ))
        .await
    );
    assert!(
        eventually(10, || accepted(
            &api,
            "team-b",
            "with-history",
            "False",
            "HistoryNotAllowed"
        ))
        .await
    );
    let refused = condition(&api, "team-a", "its-nodes", "Accepted").unwrap();
    assert_eq!(
        refused["message"],
        "relation nodes is not allowed here (configuration: subscriptions.relations allows owned)"
    );
    assert_eq!(
        condition(&api, "team-a", "its-nodes", "Ready").unwrap()["reason"],
        "NotAccepted"
    );
    assert_eq!(
        cluster.metric("clusterscope_subscriptions{state=\"refused\",reason=\"NamespaceLimit\"}"),
        1.0
    );
    api.put("default", pv_event(1));
    api.put(
        "default",
        event("node1.1", "Node", "node1", "Warning", "NodeNotReady", 1),
    );
    assert!(eventually(10, || api.copies_of("team-a", "pv-7.1").len() == 1).await);
    let copy = &api.copies_of("team-a", "pv-7.1")[0];
    assert_eq!(
        copy["metadata"]["labels"]["clusterscope.dev/subscription"],
        "volumes"
    );
    // Give the node event every chance: no copy for the refused subscription.
    api.quiet().await;
    assert!(api.copies_of("team-a", "node1.1").is_empty());
    // The oldest goes: the next in line is accepted, and counts from then on.
    api.delete_object("subscriptions", "team-a", "volumes");
    assert!(
        eventually(10, || accepted(
            &api,
            "team-a",
            "volume-failures",
            "True",
            "Accepted"
        ))
        .await
    );
    api.put("default", pv_event(2));
    assert!(
        eventually(10, || api.copies_of("team-a", "pv-7.1")[0]["metadata"]["labels"]
            ["clusterscope.dev/subscription"]
            == "volume-failures")
        .await
    );
    cluster.stop().await;
}

/// A subscription made after an event was stored gets it (the stored events are listed again
/// for it, and the owner state follows what its relation needs); one deleted gets nothing
/// more (the copies it had stay until the event TTL).
#[tokio::test]
async fn new_subscriptions_get_stored_events_and_deleted_ones_stop() {
    let api = cluster_with_pods().await;
    api.put(
        "default",
        event("node2.1", "Node", "node2", "Warning", "NodeNotReady", 1),
    );
    let cluster = Cluster::start(&api, &format!("{ROUTES}subscriptions: {{}}\n"));
    // The mirror is running: it labels the source.
    assert!(
        eventually(10, || api.event("default", "node2.1").unwrap()["metadata"]
            ["labels"]["clusterscope.dev/channel"]
            == "nodes")
        .await
    );
    api.put_subscription("team-c", "its-node", nodes(&[]), 1);
    assert!(eventually(10, || api.copies_of("team-c", "node2.1").len() == 1).await);
    api.delete_object("subscriptions", "team-c", "its-node");
    // Judged without it (the metric follows the rounds).
    assert!(
        eventually(10, || cluster.seen(
            "clusterscope_subscriptions{state=\"accepted\",reason=\"Accepted\"}"
        ) == 0.0)
        .await
    );
    api.put(
        "default",
        event("node2.2", "Node", "node2", "Warning", "NodeNotReady", 1),
    );
    api.put(
        "default",
        event("node2.1", "Node", "node2", "Warning", "NodeNotReady", 2),
    );
    assert!(
        eventually(10, || api.event("default", "node2.2").unwrap()["metadata"]
            ["labels"]["clusterscope.dev/channel"]
            == "nodes")
        .await
    );
    api.quiet().await;
    assert!(api.copies_of("team-c", "node2.2").is_empty());
    let kept = api.copies_of("team-c", "node2.1");
    assert_eq!(kept.len(), 1, "the earlier copy stays until the TTL");
    assert_eq!(kept[0]["count"], 1, "and is not updated any more");
    cluster.stop().await;
}

/// A namespace's delivery rate holds copies back rather than losing them: every one arrives,
/// in turns, and the deferrals are counted.
#[tokio::test]
async fn the_delivery_rate_defers_and_loses_nothing() {
    let api = cluster_with_pods().await;
    api.put_subscription("team-c", "its-node", nodes(&[]), 1);
    let ceiling = "subscriptions:\n  deliveriesPerSecond: 2\n";
    let cluster = Cluster::start(&api, &format!("{ROUTES}{ceiling}"));
    assert!(
        eventually(10, || accepted(
            &api, "team-c", "its-node", "True", "Accepted"
        ))
        .await
    );
    for i in 0..6 {
        api.put(
            "default",
            event(
                &format!("node2.{i}"),
                "Node",
                "node2",
                "Warning",
                "NodeNotReady",
                1,
            ),
        );
    }
    assert!(eventually(15, || api.events_in("team-c").len() == 6).await);
    assert!(
        cluster.metric("clusterscope_subscription_deliveries_total{outcome=\"deferred\"}") > 0.0
    );
    cluster.stop().await;
}

/// Without `subscriptions:` in the configuration nothing about Subscriptions is asked of the
/// API server (the CRD need not be installed), and mirroring goes on as before.
#[tokio::test]
async fn without_a_ceiling_subscriptions_are_not_watched() {
    let api = FakeApiServer::start(&NAMESPACES).await;
    let cluster = Cluster::start(
        &api,
        "channels:\n  - name: nodes\n    namespace: team-a\nroutes:\n  - channel: nodes\n",
    );
    api.put(
        "default",
        event("node1.1", "Node", "node1", "Warning", "NodeNotReady", 1),
    );
    assert!(eventually(10, || api.copies_of("team-a", "node1.1").len() == 1).await);
    let calls = api.store.lock().unwrap().calls.clone();
    assert!(
        !calls.iter().any(|c| c.1 == "clusterscope.dev"),
        "{calls:?}"
    );
    cluster.stop().await;
}

/// The Subscription CRD installed, but no `subscriptions:` in the configuration: a tenant's
/// Subscription says why nothing arrives (Accepted False, SubscriptionsDisabled, the ceiling
/// it lacks) instead of blank columns, and gets nothing; once the admin sets a ceiling, it is
/// accepted and delivered to without being touched.
#[tokio::test]
async fn a_subscription_the_admin_has_not_allowed_says_so_in_its_status() {
    let api = cluster_with_pods().await;
    api.put_subscription("team-a", "node-failures", nodes(&[]), 1);
    let cluster = Cluster::start(&api, ROUTES);
    assert!(
        eventually(10, || accepted(
            &api,
            "team-a",
            "node-failures",
            "False",
            "SubscriptionsDisabled"
        ))
        .await,
        "{:?}",
        condition(&api, "team-a", "node-failures", "Accepted")
    );
    let said = condition(&api, "team-a", "node-failures", "Accepted").unwrap();
    assert!(
        said["message"]
            .as_str()
            .is_some_and(|m| m.contains("has not enabled subscriptions")),
        "{said}"
    );
    api.put(
        "default",
        event("node1.1", "Node", "node1", "Warning", "NodeNotReady", 1),
    );
    api.quiet().await;
    assert!(api.copies_of("team-a", "node1.1").is_empty());
    assert_eq!(
        cluster.metric(
            r#"clusterscope_subscriptions{state="refused",reason="SubscriptionsDisabled"}"#
        ),
        1.0
    );
    // The admin allows them: the same Subscription is accepted and gets what it asked for.
    let allowed = clusterscope::config::Config::from_yaml(
        &format!("{ROUTES}subscriptions:\n  relations: [nodes]\n"),
        "reloaded",
    )
    .unwrap();
    cluster.config.store(Arc::new(allowed));
    assert!(
        eventually(10, || accepted(
            &api,
            "team-a",
            "node-failures",
            "True",
            "Accepted"
        ))
        .await
    );
    api.put(
        "default",
        event("node1.2", "Node", "node1", "Warning", "NodeNotReady", 1),
    );
    assert!(eventually(10, || api.copies_of("team-a", "node1.2").len() == 1).await);
    cluster.stop().await;
}

/// A sink switched on by the channel's `history` switch, as the history sink is: it plans one
/// delivery naming where the event went.
struct HistoryProbe;

impl clusterscope::delivery::Sink for HistoryProbe {
    fn name(&self) -> &'static str {
        "history-probe"
    }

    fn writer(&self) -> clusterscope::delivery::Writer {
        clusterscope::delivery::Writer::Mirror
    }

    fn deliver<'a>(
        &'a self,
        _delivery: &'a clusterscope::delivery::Delivery,
    ) -> clusterscope::delivery::DeliverFuture<'a> {
        Box::pin(async { Ok(clusterscope::delivery::Delivered::Created) })
    }
}

impl clusterscope::mirror::outputs::Output for HistoryProbe {
    fn plan(
        &self,
        routed: &clusterscope::mirror::outputs::Routed,
    ) -> Vec<clusterscope::delivery::Delivery> {
        if !routed.switches.history {
            return Vec::new();
        }
        vec![routed.delivery(
            "probe".into(),
            routed.event.clone(),
            routed.destinations.clone(),
        )]
    }
}

/// A subscription with `history: true` (the admin allowing it) has the events it gets recorded
/// in history, naming its namespace, though its channel does not record; one without does not.
#[tokio::test]
async fn a_subscription_asking_for_history_has_its_events_recorded() {
    use clusterscope::subscription::{
        Accepted, Relation, SharedSubscriptions, Subscribers, SubscriptionSpec,
    };
    let api = FakeApiServer::start(&NAMESPACES).await;
    let state = clusterscope::owners::SharedOwnerState::default();
    {
        let mut s = state.write().unwrap();
        s.namespaces.insert("team-a".into(), Default::default());
        s.set_pod("team-a", "web-1", Some("node1"));
    }
    let plan_with = |history: bool| {
        let live = Arc::new(SharedSubscriptions::default());
        let mut subscribers = Subscribers::default();
        subscribers.insert(
            "team-a",
            Accepted {
                name: "its-node".into(),
                spec: SubscriptionSpec {
                    relation: Relation::Nodes,
                    kinds: Vec::new(),
                    types: Vec::new(),
                    reasons: Vec::new(),
                    history,
                },
            },
        );
        live.replace(subscribers, 50);
        let syncer = api
            .syncer(&format!("{ROUTES}subscriptions: {{history: true}}\n"))
            .with_cluster(state.clone())
            .with_subscriptions(live)
            .with_output(Arc::new(HistoryProbe));
        let source: k8s_openapi::api::core::v1::Event = serde_json::from_value(event(
            "node1.1",
            "Node",
            "node1",
            "Warning",
            "NodeNotReady",
            1,
        ))
        .unwrap();
        syncer.deliveries(&syncer.plan(&source, std::time::Instant::now()))
    };
    let recorded = plan_with(true);
    let probe: Vec<_> = recorded
        .iter()
        .filter(|(sink, _)| *sink == "history-probe")
        .collect();
    assert_eq!(probe.len(), 1, "{recorded:?}");
    let reached: Vec<(&str, clusterscope::owners::How)> = probe[0]
        .1
        .destinations
        .iter()
        .map(|d| (d.namespace.as_str(), d.how))
        .collect();
    assert_eq!(
        reached,
        [("team-a", clusterscope::owners::How::Subscription)]
    );
    let not_recorded = plan_with(false);
    assert!(
        not_recorded
            .iter()
            .all(|(sink, _)| *sink != "history-probe")
    );
    assert_eq!(not_recorded.len(), 1, "the copy only");
}

/// The admin narrows the ceiling (a configuration reload): a subscription it no longer allows
/// says so in its status and gets nothing more; widened again, it is accepted and delivered to.
#[tokio::test]
async fn a_reloaded_ceiling_applies_to_existing_subscriptions() {
    let api = cluster_with_pods().await;
    api.put_subscription("team-c", "its-node", nodes(&[]), 1);
    let cluster = Cluster::start(&api, &format!("{ROUTES}subscriptions: {{}}\n"));
    assert!(
        eventually(10, || accepted(
            &api, "team-c", "its-node", "True", "Accepted"
        ))
        .await
    );
    let narrowed = format!("{ROUTES}subscriptions:\n  relations: [owned]\n");
    cluster.config.store(Arc::new(
        clusterscope::config::Config::from_yaml(&narrowed, "reloaded").unwrap(),
    ));
    assert!(
        eventually(10, || accepted(
            &api,
            "team-c",
            "its-node",
            "False",
            "RelationNotAllowed"
        ))
        .await
    );
    api.put(
        "default",
        event("node2.1", "Node", "node2", "Warning", "NodeNotReady", 1),
    );
    assert!(
        eventually(10, || api.event("default", "node2.1").unwrap()["metadata"]
            ["labels"]["clusterscope.dev/channel"]
            == "nodes")
        .await
    );
    api.quiet().await;
    assert!(api.copies_of("team-c", "node2.1").is_empty());
    cluster.config.store(Arc::new(
        clusterscope::config::Config::from_yaml(
            &format!("{ROUTES}subscriptions: {{}}\n"),
            "reloaded",
        )
        .unwrap(),
    ));
    assert!(
        eventually(10, || accepted(
            &api, "team-c", "its-node", "True", "Accepted"
        ))
        .await
    );
    // Accepted again: the stored event is listed again for it and copied.
    assert!(eventually(10, || api.copies_of("team-c", "node2.1").len() == 1).await);
    cluster.stop().await;
}
