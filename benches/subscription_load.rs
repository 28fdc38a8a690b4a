//! Tenant Subscriptions under load: `clusterscope serve` as its own process, pointed (by
//! kubeconfig) at the in-process fake API server holding 10,000 Pods on 100 Nodes in 500
//! namespaces, 2,000 bound PersistentVolumes and 1,000 Subscriptions (in each namespace one
//! `nodes` subscription for Warnings with reasons `Failed*`, one `owned` subscription for
//! volumes). No channel delivers by rule: every copy comes from a subscription. 20,000 events
//! are written into `default` at 2,000/s, half about volumes (one copy each, into the claim's
//! namespace), half Node Warnings (a copy into each of the 5 namespaces with pods on the
//! node). Reports the lag from source written to its last copy created, the copies made, and
//! the serve process's RSS: at start, with subscriptions and state listed, and at peak.
//!
//! Run: `cargo bench --bench subscription_load` (about a minute). Bounded: gives up after 90 s.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
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
    api.install_subscription_crd();
    populate(&api, NAMESPACES, NODES, PODS, VOLUMES);
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
    let dir = tempfile::tempdir().expect("tempdir");
    let child = support::serve::serve_with(
        &api,
        dir.path(),
        "channels:\n  - name: nodes\n  - name: storage\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n  - channel: storage\nsubscriptions: {}\n",
        &[],
    );
    let pid = child.id();
    let (listed_after, rss_start, rss_listed) =
        wait_until_mirroring(&api, pid, Instant::now()).await;
    let accepted = {
        let s = api.store.lock().unwrap();
        s.objects
            .iter()
            .filter(|((r, _, _), o)| {
                r == "subscriptions" && o["status"]["conditions"][0]["status"] == "True"
            })
            .count()
    };
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
        "state: {PODS} pods on {NODES} nodes in {NAMESPACES} namespaces, {VOLUMES} volumes, {} subscriptions ({accepted} with a status written when mirroring began); mirroring {:.1} s after start",
        2 * NAMESPACES,
        listed_after.as_secs_f64()
    );
    println!(
        "subscription load: {EVENTS} events written at {:.0}/s over {:.1} s; {} of {} copies after {:.1} s; {} sources fully delivered",
        EVENTS as f64 / written.secs,
        written.secs,
        arrived.copies,
        written.expected,
        arrived.done_secs,
        arrived.complete
    );
    println!("{}", arrived.lag_line());
    println!(
        "serve RSS: at start {rss_start}, subscriptions and state listed {rss_listed}, after the load {rss_end}, peak {hwm}"
    );
    assert_eq!(
        arrived.copies, written.expected,
        "copies missing or doubled"
    );
}
