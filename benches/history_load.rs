//! History under load, in two parts, against a real PostgreSQL 15 (a throwaway server with
//! fsync on, as a production one runs).
//!
//! 1. End to end: `clusterscope serve` as its own process, its cluster the in-process fake API
//!    server, `--postgres-url` the database. 50,000 Node events (labelled, as the webhook
//!    would have) are written into `default` at 5,000/s, and every tenth one is bumped once
//!    (count 2). Reports rows/s, the lag from an event stored in the API server to its row
//!    written (`stored_at`/`updated_at`, the database clock, which is this machine's), and
//!    the serve process's peak RSS.
//! 2. The sink alone, as fast as it goes: 40,000 rows through the postgres sink with batches
//!    of 50 to 2,000 rows; rows/s per batch size.
//!
//! Run: `cargo bench --bench history_load` (about 2 minutes). Bounded: gives up after 180 s.

#[path = "../tests/support/mod.rs"]
mod support;

use support::{fake_apiserver, postgres};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clusterscope::delivery::{Delivery, Sink};
use clusterscope::history::{PostgresSink, SinkOptions, Store};
use fake_apiserver::FakeApiServer;
use serde_json::json;
use support::serve::{percentile, vm};

const EVENTS: usize = 50_000;
const RATE: u64 = 5_000;
const CONFIG: &str = "channels:\n  - name: nodes\n    history: true\nroutes:\n  - channel: nodes\n";

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn node_event(i: usize, count: i64) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {
            "name": format!("node{}.{:016x}", i % 500, i), "namespace": "default",
            "uid": format!("ev-{i}"),
            "labels": {"clusterscope.dev/scope": "cluster", "clusterscope.dev/kind": "Node",
                       "clusterscope.dev/channel": "nodes"},
            "annotations": {"clusterscope.dev/involved-object": format!("core/Node/node{}", i % 500)}
        },
        "involvedObject": {"kind": "Node", "name": format!("node{}", i % 500), "uid": format!("node{}", i % 500)},
        "reason": "NodeNotReady", "message": format!("Node node{} status is now: NodeNotReady", i % 500),
        "source": {"component": "node-controller"}, "type": "Warning", "count": count,
        "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": format!("2026-11-20T10:00:{:02}Z", count)
    })
}

async fn end_to_end(pg: &postgres::Postgres, store: &Store) {
    let api = FakeApiServer::start(&["default", "kube-system", "clusterscope-system"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let child = support::serve::serve_with(
        &api,
        dir.path(),
        CONFIG,
        &[
            "--postgres-url".to_owned(),
            pg.url(),
            "--postgres-password".to_owned(),
            pg.password.clone(),
        ],
    );
    let pid = child.id();
    let start = Instant::now();
    loop {
        let ready: bool =
            sqlx::query_scalar("SELECT to_regclass('clusterscope.events') IS NOT NULL")
                .fetch_one(store.pool())
                .await
                .unwrap_or(false);
        if ready && !api.store.lock().unwrap().leases.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "serve never took the lease or migrated"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = vm(pid, "VmRSS:");

    // uid → (wall time written, count written last).
    let mut written: HashMap<String, (SystemTime, i64)> = HashMap::with_capacity(EVENTS);
    let period = Duration::from_nanos(1_000_000_000 / RATE);
    let load_start = Instant::now();
    let total = EVENTS + EVENTS / 10;
    for n in 0..total {
        let due = load_start + period * n as u32;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        // Every 11th write bumps an earlier event (count 2).
        let (i, count) = if n % 11 == 10 {
            ((n / 11) * 10, 2)
        } else {
            (n - n / 11, 1)
        };
        api.put("default", node_event(i, count));
        written.insert(format!("ev-{i}"), (SystemTime::now(), count));
    }
    let load_took = load_start.elapsed();

    let deadline = Instant::now() + Duration::from_secs(120);
    let want = written.len() as i64;
    loop {
        let (rows, bumped): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE count = 2) FROM clusterscope.events",
        )
        .fetch_one(store.pool())
        .await
        .unwrap_or((0, 0));
        let bumps = written.values().filter(|(_, c)| *c == 2).count() as i64;
        if rows == want && bumped == bumps {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("gave up: {rows} rows of {want}, {bumped} bumped of {bumps}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_done = load_start.elapsed();
    let rss_peak = vm(pid, "VmHWM:");
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT uid, extract(epoch from updated_at)::float8 FROM clusterscope.events",
    )
    .fetch_all(store.pool())
    .await
    .expect("rows");
    let mut lags: Vec<Duration> = rows
        .iter()
        .filter_map(|(uid, at)| {
            let (put, _) = written.get(uid)?;
            Some(Duration::from_secs_f64((at - unix(*put)).max(0.0)))
        })
        .collect();
    lags.sort();
    println!(
        "end to end: {} writes ({} events, {} count bumps) at {RATE}/s in {:.1} s; all {} rows written {:.1} s after the first write ({:.0} writes/s kept up with)",
        total,
        EVENTS,
        total - EVENTS,
        load_took.as_secs_f64(),
        rows.len(),
        all_done.as_secs_f64(),
        total as f64 / all_done.as_secs_f64()
    );
    println!(
        "  lag stored -> row written: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lags, 0.5).as_secs_f64() * 1e3,
        percentile(&lags, 0.9).as_secs_f64() * 1e3,
        percentile(&lags, 0.99).as_secs_f64() * 1e3,
        lags.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!("  serve RSS idle {rss_idle}, peak {rss_peak}");
    support::serve::stop(child);
}

fn delivery(uid: String) -> Delivery {
    let ev: k8s_openapi::api::core::v1::Event =
        serde_json::from_value(node_event(0, 1)).expect("event");
    let mut ev = ev;
    ev.metadata.uid = Some(uid.clone());
    Delivery {
        key: uid,
        event: ev,
        channel: "nodes".into(),
        source: Default::default(),
        since: Instant::now(),
        fingerprint: 0,
        destinations: vec![clusterscope::owners::Destination {
            namespace: "team-a".into(),
            how: clusterscope::owners::How::Owner,
            why: String::new(),
        }],
    }
}

async fn per_batch_size(store: &Store) {
    const ROWS: usize = 40_000;
    for batch_rows in [50, 200, 500, 1000, 2000] {
        sqlx::query("TRUNCATE clusterscope.events")
            .execute(store.pool())
            .await
            .expect("truncate");
        let options = SinkOptions {
            batch_rows,
            writers: 3,
            ..SinkOptions::default()
        };
        let sink = Arc::new(PostgresSink::start(store.clone(), options, Arc::new(())));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        // As its lane runs it: one batch per writer at a time.
        for w in 0..options.writers {
            let sink = sink.clone();
            tasks.spawn(async move {
                for start in (w * batch_rows..ROWS).step_by(batch_rows * 3) {
                    let batch: Vec<Delivery> = (start..(start + batch_rows).min(ROWS))
                        .map(|i| delivery(format!("b{batch_rows}-{i}")))
                        .collect();
                    let _ = sink.deliver_batch(&batch).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let took = started.elapsed();
        println!(
            "  batch {batch_rows:>5} rows, 3 writers: {ROWS} rows in {:.2} s = {:.0} rows/s",
            took.as_secs_f64(),
            ROWS as f64 / took.as_secs_f64()
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let Some(pg) = postgres::Postgres::start_with(true) else {
        return;
    };
    let store = Store::connect_lazy(&pg.options()).expect("store");
    let bench = async {
        end_to_end(&pg, &store).await;
        println!("sink alone (in this process), fsync on:");
        per_batch_size(&store).await;
    };
    if tokio::time::timeout(Duration::from_secs(180), bench)
        .await
        .is_err()
    {
        eprintln!("history_load: gave up after 180 s");
    }
}
