//! History end to end: stored events (fake API server) → mirror controller → postgres sink →
//! rows in a real PostgreSQL; and the database down for 30 s while events keep coming.

mod support;

use support::events::node_event;

use support::{fake_apiserver, postgres};

use std::sync::Arc;
use std::time::Duration;

use clusterscope::history::{PostgresSink, SinkOptions, Store, StoreOptions};
use clusterscope::metrics::Metrics;
use fake_apiserver::FakeApiServer;
use postgres::Postgres;
use serde_json::Value;

const CONFIG: &str = "channels:\n  - name: nodes\n    namespace: team-infra\n    history: true\n  - name: cluster\n    namespace: team-cluster\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n  - channel: cluster\n";

fn other_event(i: usize) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("cr{i}.{:016x}", i), "namespace": "default"},
        "involvedObject": {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": format!("cr{i}")},
        "reason": "Updated", "message": "updated", "count": 1, "type": "Normal",
        "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
    })
}

async fn rows(store: &Store) -> Vec<(String, i32, Vec<String>, String)> {
    sqlx::query_as(
        "SELECT involved_name, count, namespaces, channel FROM clusterscope.events ORDER BY involved_name",
    )
    .fetch_all(store.pool())
    .await
    .unwrap_or_default()
}

async fn row_count(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM clusterscope.events")
        .fetch_one(store.pool())
        .await
        .unwrap_or(-1)
}

async fn until(secs: u64, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond().await
}

/// The history sink (batches of 50, two writers, `buffer` rows held), counting into `metrics`.
fn sink(
    store: &Store,
    buffer: usize,
    metrics: &Arc<Metrics>,
) -> Arc<dyn clusterscope::mirror::outputs::Output> {
    Arc::new(PostgresSink::start(
        store.clone(),
        SinkOptions {
            batch_rows: 50,
            linger: Duration::from_millis(5),
            writers: 2,
            buffer,
        },
        Arc::new(metrics.history.clone()),
    ))
}

fn options() -> clusterscope::mirror::controller::ControllerOptions {
    clusterscope::mirror::controller::ControllerOptions {
        workers: 4,
        retry_base: Duration::from_millis(100),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_of_a_history_channel_become_rows_that_follow_their_count() {
    let Some(pg) = Postgres::start() else { return };
    let store = Store::connect_lazy(&pg.options()).unwrap();
    store.migrate().await.unwrap();
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra", "team-cluster"]).await;
    for i in 0..20 {
        api.put("default", node_event(i, 1));
        api.put("default", other_event(i));
    }
    let metrics = Arc::new(Metrics::new());
    let syncer = api.syncer(CONFIG).with_output(sink(&store, 1000, &metrics));
    let running = api.run_syncer_with(syncer, options(), metrics);
    assert!(
        until(10, async || row_count(&store).await == 20).await,
        "{} rows",
        row_count(&store).await
    );
    let all = rows(&store).await;
    assert!(
        all.iter()
            .all(|(name, count, ns, channel)| name.starts_with("node")
                && *count == 1
                && ns == &["team-infra"]
                && channel == "nodes"),
        "{all:?}"
    );
    // A count bump updates the one row; the events of the channel without history are not
    // recorded, though they are copied.
    api.put("default", node_event(3, 9));
    assert!(
        until(10, async || rows(&store)
            .await
            .iter()
            .any(|(name, count, _, _)| name == "node3" && *count == 9))
        .await
    );
    assert_eq!(row_count(&store).await, 20);
    assert_eq!(api.events_in("team-cluster").len(), 20);
    // What the row keeps of the event: the labels the controller gave its source.
    let labels: String = sqlx::query_scalar(
        "SELECT (event->'metadata'->'labels')::text FROM clusterscope.events WHERE involved_name = 'node3'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let labels: Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["clusterscope.dev/channel"], "nodes");
    // History rows have their own lag metric, and are not counted as mirror writes.
    assert!(running.metric("clusterscope_history_lag_seconds_count") >= 21.0);
    assert_eq!(
        running.metric(
            "clusterscope_mirror_writes_total{channel=\"nodes\",operation=\"create\",result=\"success\"}"
        ),
        20.0,
        "the 20 copies, not the 20 rows"
    );
    running.stop().await;
}

/// The database stops for 30 s while events keep coming: what the buffer held is written
/// once it is back, what overflowed is counted and then written by the re-list that follows
/// (nothing that is stored in the API server is missing), and nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_down_for_30s_under_load_loses_no_row() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let store = Store::connect_lazy(&StoreOptions {
        acquire_timeout: Duration::from_secs(1),
        ..pg.options()
    })
    .unwrap();
    store.migrate().await.unwrap();
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra", "team-cluster"]).await;
    for i in 0..100 {
        api.put("default", node_event(i, 1));
    }
    let buffer = 300;
    let metrics = Arc::new(Metrics::new());
    let syncer = api
        .syncer(CONFIG)
        .with_output(sink(&store, buffer, &metrics));
    let running = api.run_syncer_with(syncer, options(), metrics);
    assert!(until(10, async || row_count(&store).await == 100).await);

    pg.stop();
    let down = std::time::Instant::now();
    // Load while it is down: 1,000 new events and 50 count bumps over ~20 s.
    for i in 100..1100 {
        api.put("default", node_event(i, 1));
        if i % 20 == 0 {
            api.put("default", node_event(i / 20, 2));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped = "clusterscope_deliveries_total{sink=\"postgres\",result=\"dropped\"}";
    assert!(
        fake_apiserver::eventually(30, || running.seen(dropped) > 0.0).await,
        "the buffer of {buffer} overflowed and counted it ({:?} after the database went down)",
        down.elapsed()
    );
    pg.resume();

    assert!(
        until(120, async || row_count(&store).await == 1100).await,
        "{} rows of 1100 after the database came back; metrics:\n{}",
        row_count(&store).await,
        running
            .metrics
            .encode()
            .lines()
            .filter(|l| l.contains("deliver") || l.contains("history"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (rows, distinct, bumped): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT uid), count(*) FILTER (WHERE count = 2) FROM clusterscope.events",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((rows, distinct), (1100, 1100));
    assert!(
        until(30, async || {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FILTER (WHERE count = 2) FROM clusterscope.events",
            )
            .fetch_one(store.pool())
            .await
            .unwrap_or(0);
            n == 50
        })
        .await,
        "count bumps written: {bumped} of 50"
    );
    assert!(running.metric("clusterscope_history_resyncs_total") >= 1.0);
    running.stop().await;
}
