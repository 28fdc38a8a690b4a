//! API discovery teaches the scope resolver the real scope of custom kinds.

mod support;

use support::fake_apiserver;

use std::sync::Arc;
use std::time::Duration;

use clusterscope::classify::{KindSource, ScopeResolver, Verdict};
use clusterscope::discovery::{DiscoveryOptions, refresh, run, trigger};
use clusterscope::event::ObjectRef;
use clusterscope::metrics::Metrics;
use fake_apiserver::FakeApiServer;

fn crd(api: &FakeApiServer, kind: &str, plural: &str, namespaced: bool) {
    api.store.lock().unwrap().discovery.push((
        "example.com".into(),
        "v1".into(),
        plural.into(),
        kind.into(),
        namespaced,
    ));
}

#[tokio::test]
async fn custom_kinds_get_their_real_scope() {
    let api = FakeApiServer::start(&[]).await;
    crd(&api, "Widget", "widgets", true);
    crd(&api, "Gizmo", "gizmos", false);
    let resolver = ScopeResolver::new();
    let widget = ObjectRef::new("example.com/v1", "Widget", "", "w1");
    let gizmo = ObjectRef::new("example.com/v1", "Gizmo", "", "g1");
    assert!(matches!(
        resolver.classify(&widget),
        Verdict::Cluster {
            source: KindSource::Unknown,
            ..
        }
    ));
    let n = refresh(&api.client(), &resolver).await.unwrap();
    assert!(n >= 7, "{n}");
    assert!(matches!(
        resolver.classify(&widget),
        Verdict::NamespacedKind { .. }
    ));
    assert!(matches!(
        resolver.classify(&gizmo),
        Verdict::Cluster {
            source: KindSource::Discovered,
            ..
        }
    ));
}

#[tokio::test]
async fn an_unknown_kind_triggers_a_rate_limited_refresh() {
    let api = FakeApiServer::start(&[]).await;
    let resolver = Arc::new(ScopeResolver::new());
    let metrics = Arc::new(Metrics::new());
    let (poke, pokes) = trigger();
    let stop = tokio_util::sync::CancellationToken::new();
    let options = DiscoveryOptions {
        interval: Duration::from_secs(3600),
        min_gap: Duration::from_millis(200),
    };
    let task = tokio::spawn(run(
        api.client(),
        resolver.clone(),
        metrics.runtime.discovery_refreshes.clone(),
        pokes,
        options,
        stop.clone(),
    ));
    let refreshes = |m: &Metrics| {
        fake_apiserver::metric(
            m,
            r#"clusterscope_discovery_refreshes_total{result="success"}"#,
        )
    };
    for _ in 0..100 {
        if refreshes(&metrics) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(refreshes(&metrics), 1.0);
    // A CRD appears; an event about it names an unknown kind: the webhook pokes discovery.
    crd(&api, "Gizmo", "gizmos", true);
    for _ in 0..5 {
        poke.poke();
    }
    let gizmo = ObjectRef::new("example.com/v1", "Gizmo", "", "g1");
    let mut learned = false;
    for _ in 0..200 {
        if matches!(resolver.classify(&gizmo), Verdict::NamespacedKind { .. }) {
            learned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(learned, "the triggered refresh never happened");
    // Whatever the other four pokes would start has been asked by then.
    api.quiet().await;
    assert_eq!(refreshes(&metrics), 2.0, "five pokes, one refresh");
    stop.cancel();
    task.await.unwrap();
}

/// Runs the cluster side (discovery, its timer, the leader-elected mirror) against `api` with
/// a resolver that waits for discovery, as `serve` does when a cluster answers.
fn spawn_cluster(
    api: &FakeApiServer,
    discovery_wait: Duration,
) -> (
    Arc<ScopeResolver>,
    tokio_util::sync::CancellationToken,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let resolver = Arc::new(ScopeResolver::awaiting_discovery());
    let (stop, tasks) = fake_apiserver::spawn_cluster(
        api,
        fake_apiserver::config(
            "channels: [{name: all, namespace: team-infra}]\nroutes: [{channel: all}]\n",
        ),
        resolver.clone(),
        Arc::new(Metrics::new()),
        clusterscope::cluster::ClusterOptions {
            discovery_wait,
            ..Default::default()
        },
    );
    (resolver, stop, tasks)
}

fn widget_event(name: &str, labelled: bool) -> serde_json::Value {
    let mut ev = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w1"},
        "reason": "Synced", "message": "widget synced", "count": 1, "type": "Normal",
        "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
    });
    if labelled {
        // As a version that judged the kind before discovery answered left it.
        ev["metadata"]["labels"] = serde_json::json!({"app": "w",
            "clusterscope.dev/scope": "cluster", "clusterscope.dev/kind": "Widget", "clusterscope.dev/channel": "all"});
        ev["metadata"]["annotations"] =
            serde_json::json!({"clusterscope.dev/involved-object": "example.com/Widget/w1"});
    }
    ev
}

fn node_event() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "node1.a", "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": "node1", "uid": "node1"},
        "reason": "NodeReady", "message": "ready", "count": 1, "type": "Normal",
        "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
    })
}

const NAMESPACES: [&str; 4] = [
    "default",
    "kube-system",
    "team-infra",
    "clusterscope-system",
];

/// The race the real API server showed: the mirror's first listing ran before discovery had
/// answered, so an event about a namespaced custom resource (no namespace in the reference)
/// was labelled cluster-scoped and copied. Now the mirror waits for discovery, and an event
/// already mislabelled that way loses the labels.
#[tokio::test]
async fn the_mirror_waits_for_discovery_and_heals_wrong_labels() {
    let api = FakeApiServer::start(&NAMESPACES).await;
    crd(&api, "Widget", "widgets", true);
    api.store.lock().unwrap().discovery_delay = Some(Duration::from_millis(400));
    api.put("default", widget_event("w1.fresh", false));
    api.put("default", widget_event("w1.stale", true));
    api.put("default", node_event());
    let (resolver, stop, tasks) = spawn_cluster(&api, Duration::from_secs(20));

    let healed = fake_apiserver::eventually(20, || {
        let stale = api.event("default", "w1.stale").unwrap();
        !api.events_in("team-infra").is_empty()
            && stale["metadata"]["labels"]
                .get("clusterscope.dev/scope")
                .is_none()
    })
    .await;
    assert!(
        healed,
        "the stale labels were never removed or the Node never copied"
    );
    // Let any wrong work that would follow show up.
    api.quiet().await;
    assert_eq!(
        resolver.discovery_state(),
        clusterscope::classify::DiscoveryState::Answered
    );
    let copies = api.events_in("team-infra");
    assert_eq!(copies.len(), 1, "only the Node event is copied: {copies:?}");
    assert_eq!(copies[0]["involvedObject"]["kind"], "Node");
    let fresh = api.event("default", "w1.fresh").unwrap();
    assert!(
        fresh["metadata"]["labels"].is_null(),
        "the Widget event was labelled: {fresh}"
    );
    let stale = api.event("default", "w1.stale").unwrap();
    assert_eq!(
        stale["metadata"]["labels"],
        serde_json::json!({"app": "w"}),
        "only clusterscope's labels go"
    );
    assert!(
        stale["metadata"]["annotations"]
            .get("clusterscope.dev/involved-object")
            .is_none(),
        "{stale}"
    );
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
}

/// Discovery that never answers does not stall mirroring forever: after the wait, kinds
/// outside the built-in table count as cluster-scoped (and the state says so).
#[tokio::test]
async fn the_mirror_starts_when_discovery_never_answers() {
    let api = FakeApiServer::start(&NAMESPACES).await;
    api.store.lock().unwrap().discovery_delay = Some(Duration::from_secs(3600));
    api.put("default", node_event());
    let (resolver, stop, tasks) = spawn_cluster(&api, Duration::from_millis(300));
    assert_eq!(
        resolver.discovery_state(),
        clusterscope::classify::DiscoveryState::Pending
    );
    let copied = fake_apiserver::eventually(10, || api.events_in("team-infra").len() == 1).await;
    assert!(copied, "mirroring never started");
    assert_eq!(
        resolver.discovery_state(),
        clusterscope::classify::DiscoveryState::TimedOut
    );
    let line = clusterscope::cluster::discovery_line(
        resolver.discovery_state(),
        Duration::from_millis(300),
    );
    assert!(line.contains("no answer within 300ms"), "{line}");
    stop.cancel();
    for t in tasks {
        t.abort();
    }
}
