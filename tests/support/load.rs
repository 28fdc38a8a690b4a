//! What the delivery load benches share: a cluster of Pods on Nodes and bound volumes in the
//! fake API server, `serve` waited for until it mirrors, events written at a fixed rate, and
//! the lag from each source written to its last copy created.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::fake_apiserver::FakeApiServer;
use super::serve::{percentile, vm};

/// `namespaces` team namespaces (`team-<i>`) and the three clusterscope needs.
pub fn namespaces(n: usize) -> Vec<String> {
    let mut all: Vec<String> = (0..n).map(|i| format!("team-{i}")).collect();
    all.extend(["default", "kube-system", "clusterscope-system"].map(String::from));
    all
}

/// `pods` Running Pods, pod i in `team-<i mod namespaces>` on `node-<i mod nodes>`, and
/// `volumes` bound PersistentVolumes, volume j claimed from `team-<j mod namespaces>`.
pub fn populate(api: &FakeApiServer, namespaces: usize, nodes: usize, pods: usize, volumes: usize) {
    for i in 0..pods {
        api.put_object(
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod-{i}"), "namespace": format!("team-{}", i % namespaces),
                    "labels": {"app": "bench"}},
                "spec": {"nodeName": format!("node-{}", i % nodes),
                    "containers": [{"name": "app", "image": "registry.example.com/app:1.0"}]},
                "status": {"phase": "Running"}}),
        );
    }
    for j in 0..volumes {
        api.put_object(
            "persistentvolumes",
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": format!("pv-{j}")},
                "spec": {"capacity": {"storage": "1Gi"},
                    "claimRef": {"kind": "PersistentVolumeClaim", "namespace": format!("team-{}", j % namespaces), "name": format!("data-{j}")}},
                "status": {"phase": "Bound"}}),
        );
    }
}

/// The storm's cluster: `pods_per_node` Running Pods on each of `nodes` Nodes, the pods of
/// node n in namespaces `team-<(n * pods_per_node + j) mod namespaces>` (so each node's pods
/// are in `pods_per_node` namespaces, when there are that many).
pub fn populate_nodes(api: &FakeApiServer, nodes: usize, pods_per_node: usize, namespaces: usize) {
    for n in 0..nodes {
        for j in 0..pods_per_node {
            api.put_object(
                "pods",
                json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("pod-{n}-{j}"),
                        "namespace": format!("team-{}", (n * pods_per_node + j) % namespaces)},
                    "spec": {"nodeName": format!("node-{n}"),
                        "containers": [{"name": "app", "image": "registry.example.com/app:1.0"}]},
                    "status": {"phase": "Running"}}),
            );
        }
    }
}

/// When `serve` (process `pid`) started mirroring: the time since `start` at which it watched
/// the stored events (it lists what delivery needs first), and its RSS at start and then.
pub async fn wait_until_mirroring(
    api: &FakeApiServer,
    pid: u32,
    start: Instant,
) -> (Duration, String, String) {
    let rss_start = loop {
        let rss = vm(pid, "VmRSS:");
        if !rss.is_empty() {
            break rss;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let watching = |api: &FakeApiServer| {
        api.store
            .lock()
            .unwrap()
            .calls
            .iter()
            .any(|c| c.0 == "watch" && c.2 == "events")
    };
    while !watching(api) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the mirror never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed_after = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    (listed_after, rss_start, vm(pid, "VmRSS:"))
}

/// One event of a load: its name, the kind and name of its object, its type, and the copies
/// it must get.
pub struct Planned {
    pub name: String,
    pub kind: &'static str,
    pub object: String,
    pub type_: &'static str,
    pub copies: usize,
}

/// The i-th event of the delivery benches: even, about volume `i mod volumes` (one copy, into
/// its claim's namespace); odd, a Warning about node `i mod nodes` (a copy into each of the
/// `copies_per_node` namespaces with pods on it).
pub fn volume_or_node(i: usize, volumes: usize, nodes: usize, copies_per_node: usize) -> Planned {
    if i.is_multiple_of(2) {
        let pv = format!("pv-{}", i % volumes);
        Planned {
            name: format!("{pv}.{i:016x}"),
            kind: "PersistentVolume",
            object: pv,
            type_: "Warning",
            copies: 1,
        }
    } else {
        let node = format!("node-{}", i % nodes);
        Planned {
            name: format!("{node}.{i:016x}"),
            kind: "Node",
            object: node,
            type_: "Warning",
            copies: copies_per_node,
        }
    }
}

/// What was written: source → (when, copies expected), their sum, and the seconds it took.
pub struct Written {
    pub sources: HashMap<String, (Instant, usize)>,
    pub expected: usize,
    pub secs: f64,
}

/// Writes `events` events into `default` at `rate` a second, the i-th as `plan(i)`.
pub async fn write_at_rate(
    api: &FakeApiServer,
    events: usize,
    rate: u64,
    plan: impl Fn(usize) -> Planned,
) -> Written {
    let mut sources = HashMap::with_capacity(events);
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now();
    let mut expected = 0;
    for i in 0..events {
        let due = start + period * i as u32;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let p = plan(i);
        api.put(
            "default",
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": p.name, "namespace": "default"},
                "involvedObject": {"kind": p.kind, "name": p.object, "apiVersion": "v1"},
                "reason": "FailedMount", "message": "it failed", "count": 1, "type": p.type_,
                "source": {"component": "bench"},
                "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
            }),
        );
        expected += p.copies;
        sources.insert(p.name, (Instant::now(), p.copies));
    }
    Written {
        sources,
        expected,
        secs: start.elapsed().as_secs_f64(),
    }
}

/// What arrived: the lag of every fully delivered source (sorted), the copies made, how many
/// sources got all theirs, and the seconds from the first write until the last copy (or 90 s).
pub struct Arrived {
    pub lags: Vec<Duration>,
    pub copies: usize,
    pub complete: usize,
    pub done_secs: f64,
}

impl Arrived {
    /// What a bench prints of a load `what` of `written` and what arrived.
    pub fn report(&self, what: &str, written: &Written) -> String {
        format!(
            "{what}: {} events written at {:.0}/s over {:.1} s; {} of {} copies after {:.1} s; {} sources fully delivered\n{}",
            written.sources.len(),
            written.sources.len() as f64 / written.secs,
            written.secs,
            self.copies,
            written.expected,
            self.done_secs,
            self.complete,
            self.lag_line()
        )
    }

    /// `lag (...): p50 .. p90 .. p99 .. max ..`
    pub fn lag_line(&self) -> String {
        format!(
            "lag (source written -> its last copy created): p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
            percentile(&self.lags, 0.5),
            percentile(&self.lags, 0.9),
            percentile(&self.lags, 0.99),
            self.lags.last().copied().unwrap_or_default()
        )
    }
}

/// Waits (90 s at most) until every copy `written` expects is in a team namespace, then
/// measures.
pub async fn wait_for_copies(api: &FakeApiServer, written: &Written, started: Instant) -> Arrived {
    wait_for_copies_within(api, written, started, Duration::from_secs(90)).await
}

/// As [`wait_for_copies`], waiting `longest` at most.
pub async fn wait_for_copies_within(
    api: &FakeApiServer,
    written: &Written,
    started: Instant,
    longest: Duration,
) -> Arrived {
    let copies_made = |api: &FakeApiServer| {
        api.store
            .lock()
            .unwrap()
            .created_at
            .keys()
            .filter(|(ns, _)| ns.starts_with("team-"))
            .count()
    };
    let deadline = Instant::now() + longest;
    while copies_made(api) < written.expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done_secs = started.elapsed().as_secs_f64();
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
    let mut arrived = Arrived {
        lags: Vec::with_capacity(written.sources.len()),
        copies: 0,
        complete: 0,
        done_secs,
    };
    for (source, (at, n)) in &last {
        arrived.copies += n;
        if let Some((written_at, want)) = written.sources.get(source)
            && n == want
        {
            arrived.complete += 1;
            arrived.lags.push(at.saturating_duration_since(*written_at));
        }
    }
    arrived.lags.sort();
    arrived
}

/// The API calls `api` answered, by verb and resource, most first: `create events 60000, ...`
/// (what a run asked of the API server, beside what it achieved).
pub fn calls_by_verb(api: &FakeApiServer) -> String {
    let mut counts: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for (verb, _, resource, _) in api.store.lock().unwrap().calls.iter() {
        *counts.entry((verb.clone(), resource.clone())).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts
        .iter()
        .map(|((verb, resource), n)| format!("{verb} {resource} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
