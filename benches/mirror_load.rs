//! Mirroring under load: `clusterscope serve` as its own process, pointed (by kubeconfig) at
//! the in-process fake API server. 20,000 Node events are written into `default` at 2,000/s,
//! labelled as the webhook would have; the controller copies each into `team-infra`.
//! Reports throughput, lag (source written → copy created, measured inside the fake API
//! server) and the serve process's peak RSS.
//!
//! Run: `cargo bench --bench mirror_load` (about 20 s). Bounded: gives up after 60 s.

#[path = "../tests/support/mod.rs"]
mod support;

use support::fake_apiserver;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use serde_json::json;
use support::serve::{percentile, vm};

const EVENTS: usize = 20_000;
const RATE: u64 = 2_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let api = FakeApiServer::start(&[
        "default",
        "kube-system",
        "team-infra",
        "clusterscope-system",
    ])
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let child = support::serve::serve_with(
        &api,
        dir.path(),
        "channels:\n  - name: nodes\n    namespace: team-infra\nroutes:\n  - channel: nodes\n",
        // What the mirror can do: the write budget off.
        &["--max-writes-per-second".to_owned(), "0".to_owned()],
    );
    let pid = child.id();
    // Wait for the lease.
    let start = Instant::now();
    while api.store.lock().unwrap().leases.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "serve never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = vm(pid, "VmRSS:");

    let mut written: HashMap<String, Instant> = HashMap::with_capacity(EVENTS);
    let period = Duration::from_nanos(1_000_000_000 / RATE);
    let load_start = Instant::now();
    for i in 0..EVENTS {
        let due = load_start + period * i as u32;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let name = format!("node{}.{:016x}", i % 500, i);
        api.put(
            "default",
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": "default",
                    "labels": {"clusterscope.dev/scope": "cluster", "clusterscope.dev/kind": "Node", "clusterscope.dev/channel": "nodes"},
                    "annotations": {"clusterscope.dev/involved-object": format!("core/Node/node{}", i % 500)}},
                "involvedObject": {"kind": "Node", "name": format!("node{}", i % 500), "uid": format!("node{}", i % 500)},
                "reason": "NodeNotReady", "message": "Node status is now: NodeNotReady", "count": 1, "type": "Normal",
                "source": {"component": "kubelet", "host": format!("node{}", i % 500)},
                "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
            }),
        );
        written.insert(name, Instant::now());
    }
    let load_secs = load_start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copies = api
            .store
            .lock()
            .unwrap()
            .created_at
            .keys()
            .filter(|(ns, _)| ns == "team-infra")
            .count();
        if copies >= EVENTS || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done_secs = load_start.elapsed().as_secs_f64();
    let rss_end = vm(pid, "VmRSS:");
    let hwm = vm(pid, "VmHWM:");
    let (lags, copies) = {
        let s = api.store.lock().unwrap();
        let mut lags = Vec::with_capacity(EVENTS);
        for ((ns, name), at) in &s.created_at {
            if ns != "team-infra" {
                continue;
            }
            let source = s.events.get(&(ns.clone(), name.clone())).and_then(|c| {
                c["metadata"]["annotations"]["clusterscope.dev/source-name"]
                    .as_str()
                    .map(str::to_owned)
            });
            if let Some(written_at) = source.and_then(|src| written.get(&src)) {
                lags.push(at.saturating_duration_since(*written_at));
            }
        }
        lags.sort();
        let copies = lags.len();
        (lags, copies)
    };
    support::serve::stop(child);
    println!(
        "mirror load: {EVENTS} events written at {:.0}/s over {load_secs:.1} s; {copies} copies after {done_secs:.1} s",
        EVENTS as f64 / load_secs
    );
    println!(
        "lag (source written -> copy created): p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        percentile(&lags, 0.5),
        percentile(&lags, 0.9),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or_default()
    );
    println!("serve RSS: idle {rss_idle}, after {EVENTS} events {rss_end}, peak {hwm}");
    assert_eq!(copies, EVENTS, "copies missing");
}
