//! `clusterscope explain` against a cluster, as a person runs it (the binary, a kubeconfig,
//! the read-only ClusterRole of manifests/rbac/explain.yaml): the cluster's stored events, the
//! namespaces each reaches through the owner state and the tenants' Subscriptions, and why
//! not. What it says is checked against what the mirror then really does on the same cluster.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::fake_apiserver::{self, FakeApiServer, eventually};

/// Node Warnings to the namespaces of the node's pods, volumes to their claim's namespace,
/// everything else to a channel that delivers by no rule; subscriptions allowed, without
/// history.
const CONFIG: &str = "channels:
  - name: nodes
    deliver:
      nodePods: {types: [Warning]}
  - name: storage
    deliver:
      owners: true
  - name: cluster
routes:
  - channel: nodes
    match: {kinds: [Node]}
  - channel: storage
    match: {kinds: [PersistentVolume, StorageClass]}
  - channel: cluster
subscriptions:
  relations: [owned, nodes]
";

fn event(name: &str, kind: &str, object: &str, type_: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"kind": kind, "name": object, "apiVersion": "v1"},
        "reason": "Checked", "message": format!("{kind} {object}"), "type": type_,
        "source": {"component": "test"}, "count": 1,
        "firstTimestamp": "2026-12-08T10:00:00Z", "lastTimestamp": "2026-12-08T10:00:00Z"})
}

/// node1 runs pods of team-a and team-b, node2 of team-c; pv-7 is team-a's, pv-9 is claimed
/// in `default`. Subscriptions: team-a asks for Normal node events only, team-b for history
/// (refused: the ceiling has none), team-c for every event of its nodes, team-b for its
/// volumes (it has none).
async fn cluster() -> FakeApiServer {
    let api = fake_apiserver::three_teams().await;
    api.put_object(
        "persistentvolumes",
        fake_apiserver::volume("pv-9", "default"),
    );
    api.install_subscription_crd();
    api.put_subscription(
        "team-a",
        "normal-only",
        json!({"relation": "nodes", "types": ["Normal"]}),
        1,
    );
    api.put_subscription(
        "team-b",
        "keep-history",
        json!({"relation": "nodes", "history": true}),
        2,
    );
    api.put_subscription("team-b", "volumes", json!({"relation": "owned"}), 3);
    api.put_subscription("team-c", "all-nodes", json!({"relation": "nodes"}), 4);
    api.put("default", event("node1.w", "Node", "node1", "Warning"));
    api.put("default", event("node2.n", "Node", "node2", "Normal"));
    api.put(
        "default",
        event("pv-7.w", "PersistentVolume", "pv-7", "Warning"),
    );
    api.put(
        "default",
        event("pv-9.w", "PersistentVolume", "pv-9", "Warning"),
    );
    api.put(
        "default",
        event("fast-ssd.w", "StorageClass", "fast-ssd", "Warning"),
    );
    let mut namespaced = event("web.1", "Pod", "web", "Warning");
    namespaced["involvedObject"]["namespace"] = json!("team-a");
    api.put("default", namespaced);
    api
}

/// A kubeconfig in `dir` whose current context points at the fake API server.
fn kubeconfig(dir: &Path, api: &FakeApiServer) -> PathBuf {
    fake_apiserver::write_kubeconfig(dir, &api.addr.to_string())
}

/// Runs `clusterscope explain ARGS` with `CONFIG`, nothing on standard input.
async fn explain(dir: &Path, args: &[&str]) -> std::process::Output {
    let config = dir.join("config.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_clusterscope"));
    cmd.arg("explain").arg("--config").arg(&config).args(args);
    cmd.stdin(std::process::Stdio::null());
    // Off the runtime: the fake API server answers on it meanwhile.
    let run = tokio::task::spawn_blocking(move || cmd.output());
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("explain finished")
        .unwrap()
        .unwrap()
}

/// `explain -o json` against the fake: its document.
async fn explain_json(dir: &Path, api: &FakeApiServer, extra: &[&str]) -> Value {
    let kubeconfig = kubeconfig(dir, api);
    let mut args = vec!["-o", "json", "--kubeconfig", kubeconfig.to_str().unwrap()];
    args.extend(extra);
    let out = explain(dir, &args).await;
    assert!(
        out.status.success(),
        "explain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Each explained event's deliveries `to` a place, by event name: (namespace, how) for
/// copies, the words for the rest.
fn by_event(doc: &Value, to: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for e in doc["events"].as_array().unwrap() {
        let name = e["event"].as_str().unwrap().trim_start_matches("default/");
        let said: Vec<String> = e["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["to"] == to)
            .map(|d| match to {
                "namespace" => format!(
                    "{} {}",
                    d["namespace"].as_str().unwrap(),
                    d["how"].as_str().unwrap()
                ),
                _ => d["says"].as_str().unwrap().to_owned(),
            })
            .collect();
        out.insert(name.to_owned(), said);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_on_a_cluster_says_which_namespaces_each_stored_event_reaches_and_why_not() {
    let api = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let doc = explain_json(dir.path(), &api, &[]).await;
    let copies = by_event(&doc, "namespace");
    // The stored events about cluster-scoped objects, and only those (the Pod event is not
    // listed: the mirror does not read it either).
    assert_eq!(
        copies.keys().cloned().collect::<Vec<_>>(),
        ["fast-ssd.w", "node1.w", "node2.n", "pv-7.w", "pv-9.w"]
    );
    assert_eq!(copies["node1.w"], ["team-a node", "team-b node"]);
    assert_eq!(copies["node2.n"], ["team-c subscription"]);
    let node2 = doc["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "default/node2.n")
        .unwrap();
    let copy = node2["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["to"] == "namespace")
        .unwrap();
    assert_eq!(copy["subscriptions"], json!(["all-nodes"]));
    assert_eq!(
        copy["says"],
        "a copy in namespace team-c (subscription all-nodes: Node node2 runs 1 pod of namespace team-c)"
    );
    assert_eq!(copies["pv-7.w"], ["team-a owner"]);
    assert!(copies["pv-9.w"].is_empty());
    assert!(copies["fast-ssd.w"].is_empty());
    let not = by_event(&doc, "not");
    assert_eq!(
        not["node1.w"],
        [
            "not for subscription team-a/normal-only: it asks for types Normal only",
            "not for subscription team-b/keep-history: refused (HistoryNotAllowed): history is not allowed for subscriptions (configuration: subscriptions.history)",
        ]
    );
    assert!(
        not["pv-9.w"][0].starts_with("not to default (owner: PersistentVolume pv-9 is claimed by"),
        "{:?}",
        not["pv-9.w"]
    );
    // team-b's `volumes` is not tied to pv-7, team-c's `all-nodes` not to node1: not named.
    let all = doc.to_string();
    assert!(!all.contains("team-b/volumes"), "{all}");
    let node1 = doc["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "default/node1.w")
        .unwrap();
    assert!(!node1.to_string().contains("team-c"), "{node1}");
    let summary = &doc["summary"];
    assert_eq!(summary["events"], 5);
    assert_eq!(summary["deliveries"]["namespace team-a"], 2);
    assert_eq!(summary["deliveries"]["not to namespace default"], 1);
    let against = summary["against"].as_str().unwrap();
    assert!(
        against.starts_with("cluster http://127.0.0.1:")
            && against.ends_with("4 Subscriptions from the cluster (3 accepted)"),
        "{against}"
    );
    // Read-only: lists and nothing else.
    let calls = api.store.lock().unwrap().calls.clone();
    assert!(calls.iter().all(|(verb, ..)| verb == "list"), "{calls:?}");
}

/// The ClusterRole the docs tell an admin to bind allows every call explain makes, and grants
/// nothing it does not use.
#[tokio::test(flavor = "multi_thread")]
async fn the_explain_cluster_role_allows_every_call_and_grants_nothing_unused() {
    let api = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    explain_json(dir.path(), &api, &[]).await;
    let role: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/rbac/explain.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(role["kind"], "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    granted.insert((
                        v.as_str().unwrap().to_owned(),
                        g.as_str().unwrap().to_owned(),
                        r.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    let calls: BTreeSet<(String, String, String)> = api
        .store
        .lock()
        .unwrap()
        .calls
        .iter()
        .map(|(v, g, r, _)| (v.clone(), g.clone(), r.clone()))
        .collect();
    for call in &calls {
        assert!(granted.contains(call), "not granted: {call:?}");
    }
    // volumeattachments: listed for `owners` (this configuration has it) as pods are for
    // `nodePods`: every grant is used here.
    for grant in &granted {
        assert!(calls.contains(grant), "granted but never used: {grant:?}");
    }
}

/// A list the cluster refuses stops explain with words that name the resource and the role
/// to bind (exit 1: the system, not the input), and nothing on standard output.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_list_names_the_resource_and_the_role_to_bind() {
    let api = cluster().await;
    api.inject_on("list", "pods", 403, "Forbidden", 1);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), &api);
    let out = explain(dir.path(), &["--kubeconfig", kubeconfig.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot list pods"), "{stderr}");
    assert!(stderr.contains("manifests/rbac/explain.yaml"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// `--subscriptions FILE` tries Subscriptions before they are applied: with a cluster, in
/// place of its own; offline, judged against the ceiling and said where they would take an
/// event.
#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_from_a_file_are_judged_with_and_without_a_cluster() {
    let api = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subscriptions.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: unrelated}\n---\napiVersion: clusterscope.dev/v1alpha1\nkind: Subscription\nmetadata: {name: warnings, namespace: team-b}\nspec:\n  relation: nodes\n  types: [Warning]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let doc = explain_json(dir.path(), &api, &["--subscriptions", file]).await;
    let copies = by_event(&doc, "namespace");
    // team-c's own subscription is not read: node2's Normal event goes nowhere.
    assert!(copies["node2.n"].is_empty(), "{:?}", copies["node2.n"]);
    assert!(
        doc["summary"]["against"]
            .as_str()
            .unwrap()
            .ends_with(&format!("1 Subscriptions from {file} (1 accepted)"))
    );

    // Offline: the events as kubectl prints them, the same file.
    let events = dir.path().join("events.json");
    let items: Vec<Value> = api.events_in("default");
    std::fs::write(
        &events,
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )
    .unwrap();
    let out = explain(
        dir.path(),
        &[
            "-o",
            "json",
            "--subscriptions",
            file,
            events.to_str().unwrap(),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let offline = by_event(&doc, "subscription");
    assert_eq!(
        offline["node1.w"],
        [
            "subscription team-b/warnings takes it where its relation (nodes) ties Node node1 to team-b; explain --cluster on knows whether it does"
        ]
    );
    assert_eq!(
        by_event(&doc, "not")["node2.n"],
        ["not for subscription team-b/warnings: it asks for types Warning only"]
    );
    assert!(by_event(&doc, "namespace")["node1.w"].is_empty());

    // A file with no Subscription in it is refused, never judged as none.
    let empty = dir.path().join("none.yaml");
    std::fs::write(
        &empty,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    )
    .unwrap();
    let out = explain(
        dir.path(),
        &[
            "--subscriptions",
            empty.to_str().unwrap(),
            events.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no Subscription (clusterscope.dev) in it")
    );
}

/// What explain says each event reaches is what the mirror then writes, on the same cluster:
/// the same namespaces, no more.
#[tokio::test(flavor = "multi_thread")]
async fn what_explain_says_is_what_the_mirror_does() {
    let api = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let doc = explain_json(dir.path(), &api, &[]).await;
    let mut said: BTreeSet<(String, String)> = BTreeSet::new();
    for (event, places) in by_event(&doc, "namespace") {
        for place in places {
            said.insert((event.clone(), place.split(' ').next().unwrap().to_owned()));
        }
    }
    assert_eq!(said.len(), 4, "{said:?}");
    let metrics = Arc::new(clusterscope::metrics::Metrics::new());
    let options = fake_apiserver::quick_cluster_options();
    let (stop, tasks) = fake_apiserver::spawn_cluster(
        &api,
        fake_apiserver::config(CONFIG),
        Arc::new(clusterscope::classify::ScopeResolver::new()),
        metrics,
        options,
    );
    let copies = || -> BTreeSet<(String, String)> {
        ["team-a", "team-b", "team-c", "clusterscope-system"]
            .iter()
            .flat_map(|ns| {
                api.events_in(ns).into_iter().filter_map(move |c| {
                    let source = c["metadata"]["annotations"]["clusterscope.dev/source-name"]
                        .as_str()?
                        .to_owned();
                    Some((source, (*ns).to_owned()))
                })
            })
            .collect()
    };
    assert!(
        eventually(10, || copies() == said).await,
        "explain said {said:?}; the mirror wrote {:?}",
        copies()
    );
    // Settled: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(copies(), said);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
}

/// Events piped in are judged against the cluster in place of its stored ones (the way a
/// team tries an event it expects), and standard input cannot carry both them and the
/// Subscriptions.
#[tokio::test(flavor = "multi_thread")]
async fn events_piped_in_are_judged_against_the_cluster() {
    let api = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), &api);
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let piped = |args: Vec<String>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_clusterscope"));
        cmd.arg("explain").arg("--config").arg(&config).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let event = event("node1.new", "Node", "node1", "Warning").to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = cmd.spawn().unwrap();
            let _ = child.stdin.take().unwrap().write_all(event.as_bytes());
            child.wait_with_output().unwrap()
        })
    };
    let k = kubeconfig.to_str().unwrap().to_owned();
    let out = piped(vec![
        "-o".into(),
        "json".into(),
        "--kubeconfig".into(),
        k.clone(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["summary"]["events"], 1);
    assert_eq!(
        by_event(&doc, "namespace")["node1.new"],
        ["team-a node", "team-b node"]
    );
    let out = piped(vec![
        "--kubeconfig".into(),
        k,
        "--subscriptions".into(),
        "-".into(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot both come from standard input"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
