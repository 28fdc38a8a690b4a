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

use std::time::Instant;

use support::fake_apiserver::FakeApiServer;
use support::load::{
    Planned, namespaces, populate, wait_for_copies, wait_until_mirroring, write_at_rate,
};
use support::serve::vm;

const EVENTS: usize = 20_000;
const RATE: u64 = 2_000;
const NAMESPACES: usize = 500;
const NODES: usize = 100;
const PODS: usize = 10_000;
const VOLUMES: usize = 2_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let namespaces = namespaces(NAMESPACES);
    let names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let api = FakeApiServer::start(&names).await;
    populate(&api, NAMESPACES, NODES, PODS, VOLUMES);
    let dir = tempfile::tempdir().expect("tempdir");
    let child = support::serve::serve_with(
        &api,
        dir.path(),
        "channels:\n  - name: nodes\n    deliver: {nodePods: {maxNamespaces: 50}}\n  - name: storage\n    deliver: {owners: true}\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n  - channel: storage\n",
        &[],
    );
    let pid = child.id();
    let (listed_after, rss_start, rss_listed) =
        wait_until_mirroring(&api, pid, Instant::now()).await;
    let load_start = Instant::now();
    let written = write_at_rate(&api, EVENTS, RATE, |i| {
        if i % 2 == 0 {
            let pv = format!("pv-{}", i % VOLUMES);
            Planned {
                name: format!("{pv}.{i:016x}"),
                kind: "PersistentVolume",
                object: pv,
                copies: 1,
            }
        } else {
            let node = format!("node-{}", i % NODES);
            // Pods k ≡ node (mod 100) sit in namespaces k mod 500: 5 distinct namespaces.
            Planned {
                name: format!("{node}.{i:016x}"),
                kind: "Node",
                object: node,
                copies: 5,
            }
        }
    })
    .await;
    let arrived = wait_for_copies(&api, &written, load_start).await;
    let (rss_end, hwm) = (vm(pid, "VmRSS:"), vm(pid, "VmHWM:"));
    support::serve::stop(child);
    println!(
        "state: {PODS} pods on {NODES} nodes in {NAMESPACES} namespaces, {VOLUMES} volumes; listed {:.1} s after start",
        listed_after.as_secs_f64()
    );
    println!(
        "owner load: {EVENTS} events written at {:.0}/s over {:.1} s; {} of {} copies after {:.1} s; {} sources fully delivered",
        EVENTS as f64 / written.secs,
        written.secs,
        arrived.copies,
        written.expected,
        arrived.done_secs,
        arrived.complete
    );
    println!("{}", arrived.lag_line());
    println!(
        "serve RSS: at start {rss_start}, state listed {rss_listed}, after the load {rss_end}, peak {hwm}"
    );
    assert_eq!(
        arrived.copies, written.expected,
        "copies missing or doubled"
    );
}
