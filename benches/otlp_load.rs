//! The OTLP export under load: `clusterscope serve` as its own process, its cluster the
//! in-process fake API server (1,000 Nodes, node n running pods of n mod 5 + 1 namespaces), a
//! channel attributing Node Warnings to the namespaces of their pods without copies and
//! exporting them over gRPC to a receiver built from the protocol definitions on loopback.
//! 20,000 Node Warnings are written into `default` at 2,000/s, each concerning 1 to 5
//! namespaces. Reports the records that arrived, the lag from an event stored in the API
//! server to its last record taken by the receiver, and the serve process's peak RSS.
//!
//! Run: `cargo bench --bench otlp_load` (about half a minute). Bounded: gives up after 90 s.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::fake_apiserver::FakeApiServer;
use support::load::{Planned, write_at_rate};
use support::otlp::Receiver;
use support::serve::{percentile, vm};

const EVENTS: usize = 20_000;
const RATE: u64 = 2_000;
const NODES: usize = 1_000;
const NAMESPACES: usize = 1_000;

/// The namespaces node `n` runs pods of: `n mod 5 + 1` of them.
fn namespaces_of_node(n: usize) -> usize {
    n % 5 + 1
}

fn config(receiver: &Receiver) -> String {
    format!(
        "channels:
  - name: nodes
    copies: false
    otlp: true
    deliver:
      nodePods: {{types: [Warning]}}
routes:
  - channel: nodes
otlp:
  endpoint: http://{}
  protocol: grpc
  resource: {{k8s.cluster.name: bench}}
",
        receiver.addr
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    let names = support::load::namespaces(NAMESPACES);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let api = FakeApiServer::start(&names).await;
    for n in 0..NODES {
        for j in 0..namespaces_of_node(n) {
            api.put_object(
                "pods",
                serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("pod-{n}-{j}"), "namespace": format!("team-{}", (n * 7 + j) % NAMESPACES)},
                    "spec": {"nodeName": format!("node-{n}"), "containers": [{"name": "app", "image": "app:1"}]},
                    "status": {"phase": "Running"}}),
            );
        }
    }
    let receiver = Receiver::grpc().await;
    let dir = tempfile::tempdir().expect("a directory");
    let child = support::serve::serve_with(&api, dir.path(), &config(&receiver), &[]);
    let pid = child.id();
    let start = Instant::now();
    while api.store.lock().expect("store").leases.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "serve never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = vm(pid, "VmRSS:");
    let plan = |i: usize| {
        let n = i % NODES;
        let node = format!("node-{n}");
        Planned {
            name: format!("{node}.{i:016x}"),
            kind: "Node",
            object: node,
            type_: "Warning",
            copies: namespaces_of_node(n),
        }
    };
    let written = write_at_rate(&api, EVENTS, RATE, plan).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while receiver.records().len() < written.expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_peak = vm(pid, "VmHWM:");
    support::serve::stop(child);
    // Per event: when its last record arrived.
    let mut last: HashMap<String, (Instant, usize)> = HashMap::new();
    let records = receiver.records();
    for r in &records {
        let entry = last
            .entry(r.attr("k8s.event.name").to_owned())
            .or_insert((r.received, 0));
        entry.0 = entry.0.max(r.received);
        entry.1 += 1;
    }
    let mut lags: Vec<Duration> = written
        .sources
        .iter()
        .filter_map(|(name, (at, want))| {
            let (arrived, got) = last.get(name)?;
            (got >= want).then(|| arrived.saturating_duration_since(*at))
        })
        .collect();
    lags.sort();
    let requests = receiver.requests().len();
    println!(
        "otlp: {} events written at {:.0}/s over {:.1} s, {} records expected, {} arrived in {requests} export requests; {} events with all their records",
        written.sources.len(),
        written.sources.len() as f64 / written.secs,
        written.secs,
        written.expected,
        records.len(),
        lags.len(),
    );
    println!(
        "lag (event stored -> its last record taken): p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        percentile(&lags, 0.5),
        percentile(&lags, 0.9),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or_default()
    );
    println!("serve RSS: idle {rss_idle}, peak {rss_peak}");
}
