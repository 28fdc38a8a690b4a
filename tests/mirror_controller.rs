//! The mirror controller against the fake API server: catch-up on start, live changes,
//! restarts, two controllers at once, dropped watches and 410 Gone, API faults. Every routed
//! stored event ends with exactly one valid copy.

mod support;

use clusterscope::delivery::{
    BatchFuture, DeliverFuture, Delivered, Delivery, LaneOptions, Sink, Writer,
};
use clusterscope::mirror::outputs::{Output, Routed};
use support::events::node_event;

use support::fake_apiserver;

use std::time::Duration;

use fake_apiserver::FakeApiServer;
use serde_json::Value;

const CONFIG: &str = "channels:\n  - name: nodes\n    namespace: team-infra\n  - name: storage\n    namespace: team-storage\n  - name: cluster\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n  - channel: storage\n    match: {kinds: [PersistentVolume]}\n  - channel: cluster\n";

fn pod_event(i: usize) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("web-{i}.{:016x}", i), "namespace": "default"},
        "involvedObject": {"kind": "Pod", "namespace": "default", "name": format!("web-{i}")},
        "reason": "BackOff", "message": "Back-off", "count": 1, "type": "Warning",
        "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
    })
}

fn start(api: &FakeApiServer) -> fake_apiserver::RunningController {
    api.run_controller(CONFIG, Duration::from_millis(20))
}

/// Waits (bounded) until `cond` holds; returns whether it did.
async fn eventually(cond: impl FnMut() -> bool) -> bool {
    fake_apiserver::eventually(10, cond).await
}

/// Every Node event in default has exactly one copy in team-infra, naming it as its source,
/// with the same count; nothing else is there.
fn one_valid_copy_each(api: &FakeApiServer, nodes: usize) -> Result<(), String> {
    let copies = api.events_in("team-infra");
    if copies.len() != nodes {
        return Err(format!("{} copies for {nodes} node events", copies.len()));
    }
    for src in api.events_in("default") {
        if src["involvedObject"]["kind"] != "Node" {
            continue;
        }
        let name = src["metadata"]["name"].as_str().unwrap_or("");
        let matching: Vec<&Value> = copies
            .iter()
            .filter(|c| c["metadata"]["annotations"]["clusterscope.dev/source-name"] == name)
            .collect();
        if matching.len() != 1 {
            return Err(format!("{} copies of {name}", matching.len()));
        }
        let c = matching[0];
        if c["count"] != src["count"] || c["message"] != src["message"] {
            return Err(format!(
                "copy of {name} has count {} (source {})",
                c["count"], src["count"]
            ));
        }
        if fake_apiserver::validate("team-infra", c).is_err()
            || c["involvedObject"]["namespace"] != "team-infra"
        {
            return Err(format!("copy of {name} is not valid"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn catches_up_on_start_then_follows_live_changes() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
    for i in 0..30 {
        api.put("default", node_event(i, 1));
        api.put("default", pod_event(i));
    }
    let running = start(&api);
    assert!(
        eventually(|| one_valid_copy_each(&api, 30).is_ok()).await,
        "{:?}",
        one_valid_copy_each(&api, 30)
    );
    // The sources were labelled by the controller (written while the webhook was down).
    let labelled = api
        .events_in("default")
        .iter()
        .filter(|e| e["metadata"]["labels"]["clusterscope.dev/kind"] == "Node")
        .count();
    assert_eq!(labelled, 30);
    // Namespaced events are untouched.
    assert!(
        api.events_in("default")
            .iter()
            .filter(|e| e["involvedObject"]["kind"] == "Pod")
            .all(|e| e["metadata"]["labels"].is_null())
    );

    // Live: new events and count bumps reach the copies.
    for i in 30..40 {
        api.put("default", node_event(i, 1));
    }
    for i in 0..10 {
        let mut ev = api
            .event("default", &format!("node{i}.{:016x}", i))
            .unwrap();
        ev["count"] = 5.into();
        ev["message"] = "bumped".into();
        api.put("default", ev);
    }
    assert!(
        eventually(|| one_valid_copy_each(&api, 40).is_ok()).await,
        "{:?}",
        one_valid_copy_each(&api, 40)
    );
    // Each copy written once. The fake stores a copy before the controller has its answer
    // and counts it: wait for the count, then make sure it stays (nothing written twice).
    let creates =
        r#"clusterscope_mirror_writes_total{channel="nodes",operation="create",result="success"}"#;
    assert!(
        eventually(|| running.seen(creates) == 40.0).await,
        "{}",
        running.metrics.encode()
    );
    api.quiet().await;
    assert_eq!(running.metric(creates), 40.0);
    running.stop().await;
}

#[tokio::test]
async fn restarts_and_two_controllers_never_duplicate() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
    for i in 0..20 {
        api.put("default", node_event(i, 1));
    }
    let a = start(&api);
    let b = start(&api);
    assert!(
        eventually(|| one_valid_copy_each(&api, 20).is_ok()).await,
        "{:?}",
        one_valid_copy_each(&api, 20)
    );
    a.stop().await;
    b.stop().await;
    // Written while no controller ran.
    for i in 20..30 {
        api.put("default", node_event(i, 1));
    }
    let c = start(&api);
    assert!(
        eventually(|| one_valid_copy_each(&api, 30).is_ok()).await,
        "{:?}",
        one_valid_copy_each(&api, 30)
    );
    c.stop().await;
}

#[tokio::test]
async fn dropped_watches_410_and_server_errors_lose_nothing() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
    let running = start(&api);
    for i in 0..10 {
        api.put("default", node_event(i, 1));
    }
    assert!(eventually(|| one_valid_copy_each(&api, 10).is_ok()).await);
    // The watch is cut and history compacted: resuming answers 410, the watcher re-lists.
    api.drop_watches();
    api.compact();
    for i in 10..20 {
        api.put("default", node_event(i, 1));
    }
    // A burst of server errors on the next lists (the watcher's re-list, the copy listing)
    // and writes. (Eight failures in a row on the watcher alone would only test kube's
    // watcher backoff, which grows past the wait below.)
    api.inject_for("list", 500, "InternalError", 2);
    api.inject_for("create", 500, "InternalError", 3);
    api.inject_for("create", 429, "TooManyRequests", 3);
    for i in 20..25 {
        api.put("default", node_event(i, 1));
    }
    assert!(
        eventually(|| one_valid_copy_each(&api, 25).is_ok()).await,
        "{:?}",
        one_valid_copy_each(&api, 25)
    );
    // The watcher really had to start over: a second list of default after the 410.
    let lists = api
        .store
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|r| r.0 == "LIST" && r.1 == "default")
        .count();
    assert!(lists >= 2, "no re-list after 410 ({lists} lists)");
    running.stop().await;
}

#[tokio::test]
async fn a_missing_channel_namespace_does_not_block_other_channels() {
    // team-infra is missing: Node copies fail (and are retried), PV copies still land.
    let api = FakeApiServer::start(&["default", "kube-system", "team-storage"]).await;
    let running = start(&api);
    api.put("default", node_event(1, 1));
    let mut pv = node_event(2, 1);
    pv["involvedObject"] =
        serde_json::json!({"kind": "PersistentVolume", "name": "pv-1", "apiVersion": "v1"});
    pv["metadata"]["name"] = "pv-1.abc".into();
    api.put("default", pv);
    assert!(eventually(|| api.events_in("team-storage").len() == 1).await);
    assert!(
        eventually(|| running.metrics.encode().contains(
            r#"clusterscope_mirror_writes_total{channel="nodes",operation="create",result="error"}"#
        ))
        .await
    );
    // The namespace appears: the retried copy lands.
    api.store
        .lock()
        .unwrap()
        .namespaces
        .insert("team-infra".into());
    assert!(eventually(|| api.events_in("team-infra").len() == 1).await);
    running.stop().await;
}

#[tokio::test]
async fn a_source_recreated_after_its_ttl_is_followed_by_the_same_copy() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
    let running = start(&api);
    api.put("default", node_event(1, 4));
    assert!(eventually(|| one_valid_copy_each(&api, 1).is_ok()).await);
    let name = format!("node1.{:016x}", 1);
    let first_uid = api.event("default", &name).unwrap()["metadata"]["uid"].clone();
    // The source expires and a producer creates it again under the same name.
    api.expire("default", &name);
    let mut again = node_event(1, 1);
    again["message"] = "recreated".into();
    // A new object: the API server gives it a new uid.
    again["metadata"]["uid"] = serde_json::Value::Null;
    api.put("default", again);
    assert!(
        eventually(|| {
            let copies = api.events_in("team-infra");
            copies.len() == 1 && copies[0]["message"] == "recreated"
        })
        .await
    );
    let copy = &api.events_in("team-infra")[0];
    assert_eq!(copy["count"], 1);
    assert_ne!(
        copy["metadata"]["annotations"]["clusterscope.dev/source-uid"],
        first_uid
    );
    running.stop().await;
}

/// A writer shared with the test: what the log sink wrote.
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn events(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A channel with `log: true` writes each stored event to the log stream through its own
/// lane of the pipeline, beside its copy; the metrics say what each sink did.
#[tokio::test]
async fn a_log_channel_writes_through_its_own_lane() {
    use std::sync::Arc;
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra"]).await;
    let yaml = "channels:\n  - name: nodes\n    namespace: team-infra\n    log: true\nroutes:\n  - channel: nodes\n";
    let lines = Lines::default();
    let syncer = clusterscope::mirror::sync::Syncer::new(
        api.client(),
        clusterscope::config::shared(
            clusterscope::config::Config::from_yaml(yaml, "test").unwrap(),
        ),
        Arc::new(clusterscope::classify::ScopeResolver::new()),
    )
    .with_output(Arc::new(clusterscope::recorder::LogSink::new(Box::new(
        lines.clone(),
    ))));
    let running = api.run_syncer(
        syncer,
        clusterscope::mirror::controller::ControllerOptions {
            retry_base: Duration::from_millis(20),
            ..Default::default()
        },
    );
    for i in 0..3 {
        api.put("default", node_event(i, 1));
    }
    api.put("default", pod_event(0));
    assert!(
        eventually(|| lines.events().len() == 3 && api.events_in("team-infra").len() == 3).await
    );
    // A count bump is a new line with the new count (and an updated copy).
    api.put("default", node_event(1, 4));
    assert!(eventually(|| lines.events().iter().any(|e| e["count"] == 4)).await);
    let logged = lines.events();
    assert!(
        logged.iter().all(|e| e["involvedObject"]["kind"] == "Node"),
        "{logged:?}"
    );
    assert!(
        logged
            .iter()
            .all(|e| e["metadata"]["namespace"] == "default"),
        "the log stream carries the source, not the copy"
    );
    assert!(
        logged.iter().all(
            |e| e["metadata"]["labels"]["clusterscope.dev/scope"] == "cluster"
                && e["metadata"]["labels"]["clusterscope.dev/channel"] == "nodes"
        ),
        "each line carries the labels the source gets, once, before or after they are stored: {logged:?}"
    );
    for (series, value) in [
        (
            r#"clusterscope_deliveries_total{sink="log",result="append"}"#,
            4.0,
        ),
        (
            r#"clusterscope_deliveries_total{sink="kubernetes",result="update"}"#,
            1.0,
        ),
    ] {
        assert!(
            eventually(|| running.seen(series) == value).await,
            "{series}: {}",
            running.metrics.encode()
        );
    }
    assert_eq!(
        running.metric(r#"clusterscope_deliveries_total{sink="kubernetes",result="create"}"#),
        3.0
    );
    assert_eq!(
        running.metric(r#"clusterscope_delivery_queue_depth{sink="log"}"#),
        0.0
    );
    running.stop().await;
}

/// A sink written in this test alone, registered once: a memo of every Node event, in batches.
/// The controller, the syncer and the pipeline are not told anything else about it.
#[derive(Default)]
struct Memo {
    /// Keys and counts written, per batch.
    batches: std::sync::Mutex<Vec<Vec<(String, i32)>>>,
}

impl Sink for Memo {
    fn name(&self) -> &'static str {
        "memo"
    }

    fn writer(&self) -> Writer {
        Writer::Mirror
    }

    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> DeliverFuture<'a> {
        Box::pin(async move {
            self.batches.lock().unwrap().push(vec![(
                delivery.key.clone(),
                delivery.event.count.unwrap_or(0),
            )]);
            Ok(Delivered::Appended)
        })
    }

    fn deliver_batch<'a>(&'a self, batch: &'a [Delivery]) -> BatchFuture<'a> {
        Box::pin(async move {
            self.batches.lock().unwrap().push(
                batch
                    .iter()
                    .map(|d| (d.key.clone(), d.event.count.unwrap_or(0)))
                    .collect(),
            );
            vec![Ok(Delivered::Appended); batch.len()]
        })
    }

    fn lane(&self, defaults: &LaneOptions) -> LaneOptions {
        // A stream: the lane remembers what it wrote, so the source's label patch (the same
        // state once labelled) is not written twice.
        LaneOptions {
            workers: 1,
            skip_repeats: true,
            batch: 25,
            linger: Duration::from_millis(100),
            ..defaults.clone()
        }
    }
}

impl Output for Memo {
    fn plan(&self, routed: &Routed) -> Vec<Delivery> {
        if routed.event.involved_object.kind.as_deref() != Some("Node") {
            return Vec::new();
        }
        vec![routed.delivery(routed.source_key(), routed.event.clone(), Vec::new())]
    }
}

/// A new sink is one type and one registration: it gets its deliveries from the production
/// controller (planned by itself, batched as its lane says), and its metrics, beside the copies.
#[tokio::test]
async fn a_sink_defined_in_a_test_alone_gets_its_deliveries_from_the_controller() {
    use std::sync::Arc;
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra"]).await;
    let memo = Arc::new(Memo::default());
    let syncer = api
        .syncer(
            "channels:\n  - name: nodes\n    namespace: team-infra\nroutes:\n  - channel: nodes\n",
        )
        .with_output(memo.clone());
    let running = api.run_syncer(
        syncer,
        clusterscope::mirror::controller::ControllerOptions {
            retry_base: Duration::from_millis(20),
            ..Default::default()
        },
    );
    for i in 0..50 {
        api.put("default", node_event(i, 1));
    }
    api.put("default", pod_event(0));
    let written = || memo.batches.lock().unwrap().iter().flatten().count();
    assert!(
        eventually(|| written() == 50).await,
        "{} written",
        written()
    );
    let batches = memo.batches.lock().unwrap().clone();
    assert!(
        batches.iter().all(|b| b.len() <= 25) && batches.iter().any(|b| b.len() > 1),
        "batches as its lane says: {:?}",
        batches.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(
        eventually(|| running
            .metric(r#"clusterscope_deliveries_total{sink="memo",result="append"}"#)
            == 50.0)
        .await
    );
    assert!(
        eventually(|| api.events_in("team-infra").len() == 50).await,
        "the copies as before"
    );
    running.stop().await;
}

/// The mirror follows the events about cluster-scoped objects by a field selector: it must be
/// one the API server supports (a real one answers 400 to any other field, and the mirror would
/// never start), and it is exactly `involvedObject.namespace=` on every list and watch of
/// `default` and `kube-system`.
#[tokio::test]
async fn the_mirror_selects_its_sources_by_a_field_the_api_server_supports() {
    use k8s_openapi::api::core::v1::Event;
    use kube::api::{Api, ListParams};
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
    api.put("default", node_event(1, 1));
    api.put("default", pod_event(1));
    // The fake reads selectors as the API server does: a misspelt field is refused, `!=` works.
    let events: Api<Event> = Api::namespaced(api.client(), "default");
    let misspelt = ListParams::default().fields("involvedObject.namespaces=");
    match events.list(&misspelt).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
            assert_eq!(
                s.message,
                "field label not supported: involvedObject.namespaces"
            );
        }
        other => panic!("a misspelt field was accepted: {other:?}"),
    }
    let names = |params: ListParams| {
        let events = events.clone();
        async move {
            let list = events.list(&params).await.unwrap();
            list.items
                .into_iter()
                .filter_map(|e| e.metadata.name)
                .collect::<Vec<_>>()
        }
    };
    let namespaced = names(ListParams::default().fields("involvedObject.namespace!=")).await;
    assert_eq!(
        namespaced,
        [pod_event(1)["metadata"]["name"].as_str().unwrap()]
    );
    let cluster = names(ListParams::default().fields("involvedObject.namespace==")).await;
    assert_eq!(
        cluster,
        [node_event(1, 1)["metadata"]["name"].as_str().unwrap()]
    );
    let both = names(ListParams::default().fields("type=Warning,reason!=BackOff")).await;
    assert_eq!(both, cluster, "terms are joined by AND");

    api.store.lock().unwrap().field_selectors.clear();
    let running = start(&api);
    assert!(eventually(|| one_valid_copy_each(&api, 1).is_ok()).await);
    assert!(
        eventually(|| {
            let s = api.store.lock().unwrap();
            ["default", "kube-system"].iter().all(|ns| {
                s.field_selectors
                    .iter()
                    .any(|(r, n, sel)| r == "events" && n == ns && !sel.is_empty())
            })
        })
        .await,
        "the mirror never listed or watched both source namespaces"
    );
    let selectors: std::collections::BTreeSet<(String, String)> = api
        .store
        .lock()
        .unwrap()
        .field_selectors
        .iter()
        .filter(|(r, n, _)| r == "events" && (n == "default" || n == "kube-system"))
        .map(|(_, n, sel)| (n.clone(), sel.clone()))
        .collect();
    // The copy index lists copies by label in their own namespaces, never the sources'.
    assert_eq!(
        selectors,
        [
            ("default".to_owned(), "involvedObject.namespace=".to_owned()),
            (
                "kube-system".to_owned(),
                "involvedObject.namespace=".to_owned()
            ),
        ]
        .into(),
        "what the mirror asks the API server for its sources"
    );
    assert!(
        api.events_in("team-infra")
            .iter()
            .all(|c| c["involvedObject"]["kind"] == "Node")
    );
    running.stop().await;
}
