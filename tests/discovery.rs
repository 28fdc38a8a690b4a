//! API discovery teaches the scope resolver the real scope of custom kinds.

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

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
    let widget = ObjectRef::for_test("example.com/v1", "Widget", "", "w1");
    let gizmo = ObjectRef::for_test("example.com/v1", "Gizmo", "", "g1");
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
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let options = DiscoveryOptions {
        interval: Duration::from_secs(3600),
        min_gap: Duration::from_millis(200),
    };
    let task = tokio::spawn(run(
        api.client(),
        resolver.clone(),
        metrics.clone(),
        pokes,
        options,
        async {
            let _ = rx.await;
        },
    ));
    let refreshes = |m: &Metrics| {
        m.encode()
            .lines()
            .find(|l| l.starts_with("clusterscope_discovery_refreshes_total{result=\"success\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .unwrap_or(0.0)
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
    let gizmo = ObjectRef::for_test("example.com/v1", "Gizmo", "", "g1");
    let mut learned = false;
    for _ in 0..200 {
        if matches!(resolver.classify(&gizmo), Verdict::NamespacedKind { .. }) {
            learned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(learned, "the triggered refresh never happened");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(refreshes(&metrics), 2.0, "five pokes, one refresh");
    let _ = stop.send(());
    task.await.unwrap();
}
