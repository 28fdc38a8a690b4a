//! The cost of a re-sync: what a restart, a leader change or a 410 re-list costs the API
//! server when many cluster-scoped events and their copies are already stored.
//!
//! 20,000 labelled Node events sit in `default`, each already copied into `team-infra` by a
//! first controller run. A second controller run (a restart) starts from nothing; the bench
//! counts its API calls by verb and measures the time from its start to its last call.
//! Nothing needs writing, so every call beyond the listings is overhead.
//!
//! Run: `cargo bench --bench resync` (about a minute). Bounded: gives up after 180 s.

#[path = "../tests/support/mod.rs"]
mod support;

use support::fake_apiserver;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use serde_json::json;

const SOURCES: usize = 20_000;
const CONFIG: &str =
    "channels:\n  - name: nodes\n    namespace: team-infra\nroutes:\n  - channel: nodes\n";

/// Waits until the fake API server has seen no call for `quiet`; returns the time of the last
/// call seen, measured from `start`, and whether that happened before `limit`.
async fn until_quiet(
    api: &FakeApiServer,
    start: Instant,
    quiet: Duration,
    limit: Duration,
) -> (Duration, bool) {
    let mut seen = api.store.lock().unwrap().calls.len();
    let mut last = start.elapsed();
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = api.store.lock().unwrap().calls.len();
        if now != seen {
            seen = now;
            last = start.elapsed();
        } else if start.elapsed() - last >= quiet {
            return (last, true);
        }
    }
    (last, false)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra"]).await;
    for i in 0..SOURCES {
        let node = format!("node{}", i % 500);
        api.put(
            "default",
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": format!("{node}.{i:016x}"), "namespace": "default",
                    "labels": {"clusterscope.dev/scope": "cluster", "clusterscope.dev/kind": "Node", "clusterscope.dev/channel": "nodes"},
                    "annotations": {"clusterscope.dev/involved-object": format!("core/Node/{node}")}},
                "involvedObject": {"kind": "Node", "name": node, "uid": node},
                "reason": "NodeNotReady", "message": "Node status is now: NodeNotReady", "count": 1, "type": "Normal",
                "source": {"component": "kubelet", "host": node},
                "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
            }),
        );
    }

    // First run: every copy is written.
    let limit = Duration::from_secs(180);
    let start = Instant::now();
    let first = api.run_controller(CONFIG, Duration::from_millis(50));
    while api.events_in("team-infra").len() < SOURCES {
        assert!(start.elapsed() < limit, "first run never copied everything");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, quiet) = until_quiet(&api, start, Duration::from_millis(500), limit).await;
    assert!(quiet, "first run never went quiet");
    first.stop().await;
    println!(
        "first run: {SOURCES} copies written in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Second run, as after a restart: nothing differs, nothing needs writing.
    api.store.lock().unwrap().calls.clear();
    let start = Instant::now();
    let second = api.run_controller(CONFIG, Duration::from_millis(50));
    let (busy, quiet) = until_quiet(&api, start, Duration::from_secs(2), limit).await;
    second.stop().await;
    assert!(quiet, "the re-sync never went quiet");
    let calls = api.store.lock().unwrap().calls.clone();
    let mut by_verb: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (verb, _, _, ns) in &calls {
        *by_verb.entry((verb.clone(), ns.clone())).or_default() += 1;
    }
    println!(
        "re-sync of {SOURCES} stored sources: {} API calls, last one {:.2} s after start",
        calls.len(),
        busy.as_secs_f64()
    );
    for ((verb, ns), n) in by_verb {
        println!("  {verb:<6} {ns:<12} {n}");
    }
    let copies = api.events_in("team-infra").len();
    assert_eq!(copies, SOURCES, "copies lost or duplicated");
}
