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
//! serve process's RSS: at start, with what delivery needs listed, and at peak.
//!
//! Run: `cargo bench --bench owner_load` (about two minutes; `-- rules` or `-- subscriptions`
//! runs one). Bounded: gives up waiting for copies after 90 s.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
use support::fake_apiserver::FakeApiServer;
use support::load::{
    namespaces, populate, volume_or_node, wait_for_copies, wait_until_mirroring, write_at_rate,
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
    let child = support::serve::serve_with(&api, dir.path(), config, &[]);
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
