//! `clusterscope explain` at cluster size: 1,000,000 events as `kubectl get events -A -o json`
//! prints them (a Node event and a Pod event in turn, about 700 bytes each), written into its
//! standard input as they are made (no file), its answer (`-o json`) read and counted. Then
//! 100,000 as `-o yaml`. Reports events/s, MB/s of input and the process's peak RSS (VmHWM,
//! read until it exits).
//!
//! Then `explain --kubeconfig` against the fake API server holding a cluster of 150,000 Pods on
//! 5,000 Nodes in 3,000 namespaces, 10,000 bound volumes and 20,000 stored events (Node
//! Warnings and volume Warnings in turn), with the owner-delivery overlay's configuration: the
//! whole read (discovery, the owner state listed once, the events in pages) and every event's
//! namespaces, in seconds and peak RSS.
//!
//! Run: `cargo bench --bench explain_load` (about two minutes; `-- json`, `-- yaml` or
//! `-- cluster` runs one).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufWriter, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if wanted("json") {
        run("json", 1_000_000, json_list);
    }
    if wanted("yaml") {
        run("yaml", 100_000, yaml_list);
    }
    if wanted("cluster") {
        against_a_cluster(20_000);
    }
}

/// `explain --kubeconfig` on `n` stored events in a cluster of 150,000 Pods.
fn against_a_cluster(n: usize) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let names = support::load::namespaces(3_000);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let api = support::fake_apiserver::FakeApiServer::start(&names).await;
        support::load::populate(&api, 3_000, 5_000, 150_000, 10_000);
        for i in 0..n {
            let (kind, object) = if i.is_multiple_of(2) {
                ("Node", format!("node-{}", i % 5_000))
            } else {
                ("PersistentVolume", format!("pv-{}", i % 10_000))
            };
            api.put("default", serde_json::json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": format!("{object}.{i:x}")},
                "involvedObject": {"apiVersion": "v1", "kind": kind, "name": object},
                "reason": "Checked", "type": "Warning", "message": "checked", "count": 1,
                "source": {"component": "bench"}}));
        }
        let dir = tempfile::tempdir().expect("a directory");
        let kubeconfig =
            support::fake_apiserver::write_kubeconfig(dir.path(), &api.addr.to_string());
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/overlays/owner-delivery/config.yaml");
        let mut command = Command::new(env!("CARGO_BIN_EXE_clusterscope"));
        command
            .args(["explain", "-o", "json", "--config", config, "--kubeconfig"])
            .arg(&kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let measured = tokio::task::spawn_blocking(move || measure(command)).await;
        let (took, peak, answer) = measured.expect("explain measured");
        let doc: serde_json::Value = serde_json::from_slice(&answer).expect("one JSON document");
        let copies = doc["events"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["deliveries"].as_array().into_iter().flatten())
            .filter(|d| d["to"] == "namespace")
            .count();
        assert_eq!(doc["summary"]["events"], n, "every stored event explained");
        println!(
            "[cluster] {n} stored events against 150000 pods, 10000 volumes, 3000 namespaces: {:.1} s, {copies} copies named; peak RSS {peak}",
            took.as_secs_f64()
        );
    });
}

/// Runs `command` to its end: how long it took, its peak RSS, and its standard output.
fn measure(mut command: Command) -> (Duration, String, Vec<u8>) {
    let started = Instant::now();
    let mut child = command.spawn().expect("clusterscope runs");
    let pid = child.id();
    let peak = std::thread::spawn(move || watch_peak(pid));
    let mut answer = Vec::new();
    let _ = child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut answer);
    let status = child.wait().expect("exits");
    assert!(status.success(), "explain failed: {status}");
    (started.elapsed(), peak.join().unwrap_or_default(), answer)
}

/// The last peak RSS /proc said of process `pid` before it exited.
fn watch_peak(pid: u32) -> String {
    let mut peak = String::new();
    loop {
        let now = vm_hwm(pid);
        if now.is_empty() {
            return peak;
        }
        peak = now;
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn event(i: usize) -> (String, String, String, &'static str, &'static str) {
    if i.is_multiple_of(2) {
        let node = format!("node-{}", i % 5_000);
        (
            format!("{node}.{i:x}"),
            "default".to_owned(),
            node,
            "Node",
            "NodeNotReady",
        )
    } else {
        let ns = format!("team-{}", i % 3_000);
        (
            format!("web-{i}.{i:x}"),
            ns,
            format!("web-{i}"),
            "Pod",
            "BackOff",
        )
    }
}

/// The list as kubectl's JSON prints it (keys sorted: `items` before `kind`).
fn json_list(out: &mut dyn Write, n: usize) -> std::io::Result<()> {
    out.write_all(b"{\n    \"apiVersion\": \"v1\",\n    \"items\": [\n")?;
    for i in 0..n {
        let (name, ns, object, kind, reason) = event(i);
        let involved_ns = if kind == "Pod" {
            format!("\"namespace\": \"{ns}\", ")
        } else {
            String::new()
        };
        let sep = if i + 1 < n { "," } else { "" };
        writeln!(
            out,
            "        {{\"apiVersion\": \"v1\", \"count\": 3, \"eventTime\": null, \"firstTimestamp\": \"2026-12-07T10:00:00Z\", \"involvedObject\": {{\"apiVersion\": \"v1\", \"kind\": \"{kind}\", {involved_ns}\"name\": \"{object}\", \"uid\": \"0b7c5e9e-2b0e-4f57-9a53-{i:012}\"}}, \"kind\": \"Event\", \"lastTimestamp\": \"2026-12-07T10:05:00Z\", \"message\": \"{kind} {object} reported {reason}; see the kubelet log for details\", \"metadata\": {{\"creationTimestamp\": \"2026-12-07T10:00:00Z\", \"name\": \"{name}\", \"namespace\": \"{ns}\", \"resourceVersion\": \"{i}\", \"uid\": \"5d1f3a2c-7e44-4c1b-8f0e-{i:012}\"}}, \"reason\": \"{reason}\", \"reportingComponent\": \"kubelet\", \"reportingInstance\": \"node-1\", \"source\": {{\"component\": \"kubelet\", \"host\": \"node-1\"}}, \"type\": \"Warning\"}}{sep}"
        )?;
    }
    out.write_all(
        b"    ],\n    \"kind\": \"List\",\n    \"metadata\": {\"resourceVersion\": \"\"}\n}\n",
    )
}

/// The list as kubectl's YAML prints it.
fn yaml_list(out: &mut dyn Write, n: usize) -> std::io::Result<()> {
    out.write_all(b"apiVersion: v1\nitems:\n")?;
    for i in 0..n {
        let (name, ns, object, kind, reason) = event(i);
        let involved_ns = if kind == "Pod" {
            format!("    namespace: {ns}\n")
        } else {
            String::new()
        };
        write!(
            out,
            "- apiVersion: v1\n  count: 3\n  firstTimestamp: \"2026-12-07T10:00:00Z\"\n  involvedObject:\n    apiVersion: v1\n    kind: {kind}\n    name: {object}\n{involved_ns}  kind: Event\n  lastTimestamp: \"2026-12-07T10:05:00Z\"\n  message: {kind} {object} reported {reason}\n  metadata:\n    name: {name}\n    namespace: {ns}\n    resourceVersion: \"{i}\"\n  reason: {reason}\n  source:\n    component: kubelet\n    host: node-1\n  type: Warning\n"
        )?;
    }
    out.write_all(b"kind: List\nmetadata:\n  resourceVersion: \"\"\n")
}

fn run(name: &str, n: usize, write_list: fn(&mut dyn Write, usize) -> std::io::Result<()>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clusterscope"))
        .args(["explain", "-o", "json", "-"])
        .env_remove("CLUSTERSCOPE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("clusterscope runs");
    let pid = child.id();
    let stdin = child.stdin.take().expect("stdin");
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut counted = Counted(BufWriter::with_capacity(1 << 20, stdin), 0);
        let _ = write_list(&mut counted, n).and_then(|()| counted.flush());
        counted.1
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let peak = std::thread::spawn(move || watch_peak(pid));
    let mut answer = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(read) = stdout.read(&mut buf) {
        if read == 0 {
            break;
        }
        answer += read;
    }
    let status = child.wait().expect("exits");
    let took = started.elapsed();
    let input = writer.join().unwrap_or(0);
    let peak = peak.join().unwrap_or_default();
    assert!(status.success(), "{name}: explain failed: {status}");
    println!(
        "[{name}] {n} events, {:.0} MB in, {:.0} MB out, in {:.1} s: {:.0} events/s, {:.0} MB/s; peak RSS {peak}",
        input as f64 / 1e6,
        answer as f64 / 1e6,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        input as f64 / 1e6 / took.as_secs_f64(),
    );
}

/// A writer that counts what it wrote.
struct Counted<W: Write>(W, usize);

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1 += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The peak RSS of process `pid` as /proc says it; empty once it has exited.
fn vm_hwm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}
