//! Delivery by ownership under load: `clusterscope serve` as its own process, pointed (by
//! kubeconfig) at the in-process fake API server holding 10,000 Pods on 100 Nodes in 500
//! namespaces and 2,000 bound PersistentVolumes. 20,000 events are written into `default` at
//! 2,000/s, half about volumes (one copy each, into the claim's namespace), half Node
//! Warnings (a copy into each namespace with pods on the node: 5 each). Reports the lag from
//! source written to its last copy created, the copies made, and the serve process's RSS:
//! idle before the state is listed, with the state listed, and at peak.
//!
//! Run: `cargo bench --bench owner_load` (about a minute). Bounded: gives up after 90 s.

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
const NAMESPACES: usize = 500;
const NODES: usize = 100;
const PODS: usize = 10_000;
const VOLUMES: usize = 2_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut namespaces: Vec<String> = (0..NAMESPACES).map(|i| format!("team-{i}")).collect();
    namespaces.extend(["default", "kube-system", "clusterscope-system"].map(String::from));
    let names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let api = FakeApiServer::start(&names).await;
    for i in 0..PODS {
        api.put_object(
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod-{i}"), "namespace": format!("team-{}", i % NAMESPACES),
                    "labels": {"app": "bench"}},
                "spec": {"nodeName": format!("node-{}", i % NODES),
                    "containers": [{"name": "app", "image": "registry.example.com/app:1.0"}]},
                "status": {"phase": "Running"}}),
        );
    }
    for j in 0..VOLUMES {
        api.put_object(
            "persistentvolumes",
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": format!("pv-{j}")},
                "spec": {"capacity": {"storage": "1Gi"},
                    "claimRef": {"kind": "PersistentVolumeClaim", "namespace": format!("team-{}", j % NAMESPACES), "name": format!("data-{j}")}},
                "status": {"phase": "Bound"}}),
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let child = support::serve::serve_with(
        &api,
        dir.path(),
        "channels:\n  - name: nodes\n    deliver: {nodePods: {maxNamespaces: 50}}\n  - name: storage\n    deliver: {owners: true}\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n  - channel: storage\n",
        &[],
    );
    let pid = child.id();
    let start = Instant::now();
    let rss_start = loop {
        let rss = vm(pid, "VmRSS:");
        if !rss.is_empty() {
            break rss;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // The state is listed once the source watches start (the controller waits for it).
    let watching = |api: &FakeApiServer| {
        api.store
            .lock()
            .unwrap()
            .calls
            .iter()
            .any(|c| c.0 == "watch" && c.2 == "events")
    };
    while !watching(&api) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the mirror never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed_after = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_listed = vm(pid, "VmRSS:");

    // source → (written at, copies expected)
    let mut written: HashMap<String, (Instant, usize)> = HashMap::with_capacity(EVENTS);
    let period = Duration::from_nanos(1_000_000_000 / RATE);
    let load_start = Instant::now();
    let mut expected = 0usize;
    for i in 0..EVENTS {
        let due = load_start + period * i as u32;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let (name, kind, object, type_, copies) = if i % 2 == 0 {
            let pv = format!("pv-{}", i % VOLUMES);
            (
                format!("{pv}.{i:016x}"),
                "PersistentVolume",
                pv,
                "Warning",
                1,
            )
        } else {
            let node = format!("node-{}", i % NODES);
            // Pods k ≡ node (mod 100) sit in namespaces k mod 500: 5 distinct namespaces.
            (format!("{node}.{i:016x}"), "Node", node, "Warning", 5)
        };
        api.put(
            "default",
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": "default"},
                "involvedObject": {"kind": kind, "name": object, "apiVersion": "v1"},
                "reason": "Failed", "message": "it failed", "count": 1, "type": type_,
                "source": {"component": "bench"},
                "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
            }),
        );
        expected += copies;
        written.insert(name, (Instant::now(), copies));
    }
    let load_secs = load_start.elapsed().as_secs_f64();
    let copies_made = |api: &FakeApiServer| {
        api.store
            .lock()
            .unwrap()
            .created_at
            .keys()
            .filter(|(ns, _)| ns.starts_with("team-"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while copies_made(&api) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done_secs = load_start.elapsed().as_secs_f64();
    let rss_end = vm(pid, "VmRSS:");
    let hwm = vm(pid, "VmHWM:");
    let (lags, copies, complete) = {
        let s = api.store.lock().unwrap();
        // source → (latest copy created, copies)
        let mut last: HashMap<String, (Instant, usize)> = HashMap::new();
        for ((ns, name), at) in &s.created_at {
            if !ns.starts_with("team-") {
                continue;
            }
            let source = s.events.get(&(ns.clone(), name.clone())).and_then(|c| {
                c["metadata"]["annotations"]["clusterscope.dev/source-name"]
                    .as_str()
                    .map(str::to_owned)
            });
            if let Some(source) = source {
                let e = last.entry(source).or_insert((*at, 0));
                e.0 = e.0.max(*at);
                e.1 += 1;
            }
        }
        let mut lags = Vec::with_capacity(EVENTS);
        let mut complete = 0;
        let mut copies = 0;
        for (source, (at, n)) in &last {
            copies += n;
            if let Some((written_at, want)) = written.get(source)
                && n == want
            {
                complete += 1;
                lags.push(at.saturating_duration_since(*written_at));
            }
        }
        lags.sort();
        (lags, copies, complete)
    };
    support::serve::stop(child);
    println!(
        "state: {PODS} pods on {NODES} nodes in {NAMESPACES} namespaces, {VOLUMES} volumes; listed {:.1} s after start",
        listed_after.as_secs_f64()
    );
    println!(
        "owner load: {EVENTS} events written at {:.0}/s over {load_secs:.1} s; {copies} of {expected} copies after {done_secs:.1} s; {complete} sources fully delivered",
        EVENTS as f64 / load_secs
    );
    println!(
        "lag (source written -> its last copy created): p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        percentile(&lags, 0.5),
        percentile(&lags, 0.9),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or_default()
    );
    println!(
        "serve RSS: at start {rss_start}, state listed {rss_listed}, after the load {rss_end}, peak {hwm}"
    );
    assert_eq!(copies, expected, "copies missing or doubled");
}
