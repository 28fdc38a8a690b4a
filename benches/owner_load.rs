//! Delivery by ownership under load, by the admin's rules and by tenants' Subscriptions:
//! `clusterscope serve` as its own process, pointed (by kubeconfig) at the in-process fake API
//! server holding 10,000 Pods on 100 Nodes in 500 namespaces and 2,000 bound
//! PersistentVolumes. 20,000 events are written into `default` at 2,000/s, half about volumes
//! (one copy each, into the claim's namespace), half Node Warnings (a copy into each namespace
//! with pods on the node: 5 each). Two runs:
//!
//! - `rules`: the channels deliver by rule (`owners`, `nodePods`);
//! - `subscriptions`: no rule; 1,000 Subscriptions (in each namespace one `nodes`
//!   subscription for Warnings with reasons `Failed*`, one `owned` for PersistentVolumes)
//!   within the default ceiling ask for the same copies.
//!
//! Reports the lag from source written to its last copy created, the copies made, and the
//! serve process's RSS: at start, with what delivery needs listed, and at peak. These two runs
//! measure what delivery can do, so the write budget is off (`--max-writes-per-second 0`).
//!
//! A third run, `storm`, is the envelope measured on a real API server: 150,000 Pods on 5,000
//! Nodes in 3,000 namespaces (30 a node), listed in pages of 500 at start; then, at once, 50
//! Normal events about nodes (copies wanted for Normal too) and 1,000 Node Warnings, each
//! copied into 30 namespaces, against an API server that accepts 150 writes a second and
//! answers the rest as API Priority and Fairness does (429, Retry-After: 1), with the default
//! write budget (200 a second). It reports start-up (the state listed), how the budget held
//! (the busiest second of writes), the 429s, when the Warnings' copies were done against the
//! Normal ones', every copy arrived, and serve's peak RSS.
//!
//! Run: `cargo bench --bench owner_load` (about two minutes without the storm, which takes
//! about four more; `-- rules`, `-- subscriptions` or `-- storm` runs one). Bounded: gives up
//! waiting for copies after 90 s (the storm: 10 minutes).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
use support::fake_apiserver::FakeApiServer;
use support::load::{
    Planned, namespaces, populate, populate_nodes, volume_or_node, wait_for_copies,
    wait_for_copies_within, wait_until_mirroring, write_at_rate,
};
use support::serve::vm;

const EVENTS: usize = 20_000;
const RATE: u64 = 2_000;
const NAMESPACES: usize = 500;
const NODES: usize = 100;
const PODS: usize = 10_000;
const VOLUMES: usize = 2_000;

const RULES: &str = "channels:\n  - name: nodes\n    deliver: {nodePods: {maxNamespaces: 50}}\n  - name: storage\n    deliver: {owners: true}\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n  - channel: storage\n";
const SUBSCRIPTIONS: &str = "channels:\n  - name: nodes\n  - name: storage\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n  - channel: storage\nsubscriptions: {}\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (name, subscribed) in [("rules", false), ("subscriptions", true)] {
        if only.is_empty() || only.iter().any(|o| o == name) {
            run(name, subscribed).await;
        }
    }
    if only.is_empty() || only.iter().any(|o| o == "storm") {
        storm().await;
    }
}

/// One run: the cluster, serve, the load, the figures.
async fn run(name: &str, subscribed: bool) {
    let namespaces = namespaces(NAMESPACES);
    let names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let api = FakeApiServer::start(&names).await;
    populate(&api, NAMESPACES, NODES, PODS, VOLUMES);
    if subscribed {
        subscribe(&api);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = if subscribed { SUBSCRIPTIONS } else { RULES };
    let unbudgeted = ["--max-writes-per-second".to_owned(), "0".to_owned()];
    let child = support::serve::serve_with(&api, dir.path(), config, &unbudgeted);
    let pid = child.id();
    let (listed_after, rss_start, rss_listed) =
        wait_until_mirroring(&api, pid, Instant::now()).await;
    let load_start = Instant::now();
    // Pods k ≡ node (mod 100) sit in namespaces k mod 500: 5 distinct namespaces a node.
    let written = write_at_rate(&api, EVENTS, RATE, |i| volume_or_node(i, VOLUMES, NODES, 5)).await;
    let arrived = wait_for_copies(&api, &written, load_start).await;
    let (rss_end, hwm) = (vm(pid, "VmRSS:"), vm(pid, "VmHWM:"));
    support::serve::stop(child);
    println!(
        "[{name}] state: {PODS} pods on {NODES} nodes in {NAMESPACES} namespaces, {VOLUMES} volumes, {} subscriptions; mirroring {:.1} s after start",
        if subscribed { 2 * NAMESPACES } else { 0 },
        listed_after.as_secs_f64()
    );
    println!("[{name}] {}", arrived.report("load", &written));
    println!(
        "[{name}] serve RSS: at start {rss_start}, what delivery needs listed {rss_listed}, after the load {rss_end}, peak {hwm}"
    );
    println!("[{name}] API calls: {}", support::load::calls_by_verb(&api));
    assert_eq!(
        arrived.copies, written.expected,
        "copies missing or doubled"
    );
}

/// Two Subscriptions in every team namespace, with the CRD installed.
fn subscribe(api: &FakeApiServer) {
    api.install_subscription_crd();
    for i in 0..NAMESPACES {
        let ns = format!("team-{i}");
        api.put_subscription(
            &ns,
            "node-failures",
            json!({"relation": "nodes", "kinds": ["Node"], "types": ["Warning"], "reasons": ["Failed*"]}),
            0,
        );
        api.put_subscription(
            &ns,
            "volumes",
            json!({"relation": "owned", "kinds": ["PersistentVolume"]}),
            1,
        );
    }
}

const STORM_NODES: usize = 5_000;
const STORM_PODS_PER_NODE: usize = 30;
const STORM_NAMESPACES: usize = 3_000;
const STORM_NORMALS: usize = 50;
const STORM_WARNINGS: usize = 1_000;
/// What the fake API server accepts a second; the write budget is serve's default.
const STORM_ACCEPTS: u32 = 150;
const STORM: &str = "channels:\n  - name: nodes\n    deliver: {nodePods: {maxNamespaces: 50, types: [Warning, Normal]}}\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n";

/// The storm at the envelope (see the top of this file).
async fn storm() {
    let namespaces = namespaces(STORM_NAMESPACES);
    let names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let api = FakeApiServer::start(&names).await;
    populate_nodes(&api, STORM_NODES, STORM_PODS_PER_NODE, STORM_NAMESPACES);
    api.store.lock().unwrap().write_limit = Some(STORM_ACCEPTS);
    let dir = tempfile::tempdir().expect("tempdir");
    let child = support::serve::serve_with(&api, dir.path(), STORM, &[]);
    let pid = child.id();
    let started = Instant::now();
    let (listed_after, rss_start, rss_listed) = wait_until_mirroring(&api, pid, started).await;
    let pages = api.calls_of("list", "pods");
    let load_start = Instant::now();
    // All at once: the Normal events first, then the Warnings, about other nodes.
    let written = write_at_rate(&api, STORM_NORMALS + STORM_WARNINGS, 50_000, |i| {
        let (node, type_) = if i < STORM_NORMALS {
            (i, "Normal")
        } else {
            (STORM_NODES / 2 + i, "Warning")
        };
        Planned {
            name: format!("node-{node}.{i:016x}"),
            kind: "Node",
            object: format!("node-{node}"),
            type_,
            copies: STORM_PODS_PER_NODE,
        }
    })
    .await;
    let arrived = wait_for_copies_within(
        &api,
        &written,
        load_start,
        std::time::Duration::from_secs(600),
    )
    .await;
    let (rss_end, hwm) = (vm(pid, "VmRSS:"), vm(pid, "VmHWM:"));
    support::serve::stop(child);
    let (busiest, throttled, warnings_done, normals_before) = storm_figures(&api);
    println!(
        "[storm] state: {} pods on {STORM_NODES} nodes in {STORM_NAMESPACES} namespaces, listed in {pages} pages; mirroring {:.1} s after start",
        STORM_NODES * STORM_PODS_PER_NODE,
        listed_after.as_secs_f64()
    );
    println!("[storm] {}", arrived.report("storm", &written));
    println!(
        "[storm] writes: at most {busiest} created in one second (budget 200, API server accepts {STORM_ACCEPTS}); {throttled} answered 429 and waited out"
    );
    println!(
        "[storm] Warnings first: the last Warning copy {:.1} s after the storm; {normals_before} of {} Normal copies written before it",
        warnings_done
            .saturating_duration_since(load_start)
            .as_secs_f64(),
        STORM_NORMALS * STORM_PODS_PER_NODE
    );
    println!(
        "[storm] serve RSS: at start {rss_start}, state listed {rss_listed}, after the storm {rss_end}, peak {hwm}"
    );
    assert_eq!(
        arrived.copies, written.expected,
        "copies missing or doubled"
    );
}

/// From the fake's records: the most copies created within one second, the writes answered
/// 429, when the last Warning copy was created, and the Normal copies created before it.
fn storm_figures(api: &FakeApiServer) -> (usize, usize, Instant, usize) {
    let s = api.store.lock().unwrap();
    let copies: Vec<(Instant, bool)> = s
        .created_at
        .iter()
        .filter(|((ns, _), _)| ns.starts_with("team-"))
        .map(|(key, at)| {
            (
                *at,
                s.events.get(key).is_some_and(|e| e["type"] == "Warning"),
            )
        })
        .collect();
    let mut times: Vec<Instant> = copies.iter().map(|(t, _)| *t).collect();
    times.sort();
    let mut busiest = 0;
    let mut from = 0;
    for (to, t) in times.iter().enumerate() {
        while t.duration_since(times[from]) >= std::time::Duration::from_secs(1) {
            from += 1;
        }
        busiest = busiest.max(to + 1 - from);
    }
    let last_warning = copies
        .iter()
        .filter(|(_, w)| *w)
        .map(|(t, _)| *t)
        .max()
        .unwrap_or_else(Instant::now);
    let normals_before = copies
        .iter()
        .filter(|(t, w)| !*w && *t < last_warning)
        .count();
    (busiest, s.throttled, last_warning, normals_before)
}
