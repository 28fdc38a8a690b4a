//! Delivery by ownership end to end: the mirror controller watches what the rules need
//! (PersistentVolumes, VolumeAttachments, Namespaces, Pods) on the fake API server and copies
//! each event into the namespaces tied to its object at delivery time; ownership changes move
//! later updates, a namespace being deleted gets nothing (and one found closing only on the
//! write is given up at once), and nothing is copied twice.

mod support;

use support::fake_apiserver::pod;

use support::fake_apiserver;

use std::time::Duration;

use clusterscope::mirror::controller::ControllerOptions;
use fake_apiserver::{FakeApiServer, eventually};
use serde_json::{Value, json};

const CONFIG: &str = "channels:\n  - name: storage\n    deliver: {owners: true}\n  - name: nodes\n    deliver: {nodePods: {maxNamespaces: 2}}\nroutes:\n  - channel: storage\n    match: {kinds: [PersistentVolume, VolumeAttachment, Namespace]}\n  - channel: nodes\n    match: {kinds: [Node]}\n";

/// The controller, and the owner state it keeps (for tests to wait on what it knows).
fn start(api: &FakeApiServer) -> fake_apiserver::RunningController {
    start_with_state(api).0
}

fn start_with_state(
    api: &FakeApiServer,
) -> (
    fake_apiserver::RunningController,
    clusterscope::owners::SharedOwnerState,
) {
    let state = clusterscope::owners::SharedOwnerState::default();
    let syncer = api.syncer(CONFIG).with_cluster(state.clone());
    (run(api, syncer), state)
}

/// The production controller over `syncer`, two workers, quick retries.
fn run(
    api: &FakeApiServer,
    syncer: clusterscope::mirror::sync::Syncer,
) -> fake_apiserver::RunningController {
    api.run_syncer(
        syncer,
        ControllerOptions {
            workers: 2,
            retry_base: Duration::from_millis(20),
            ..ControllerOptions::default()
        },
    )
}

/// Waits until the controller's owner state satisfies `cond`.
async fn state_knows(
    state: &clusterscope::owners::SharedOwnerState,
    cond: impl Fn(&clusterscope::owners::OwnerState) -> bool,
) {
    assert!(
        eventually(10, || cond(&state.read().unwrap())).await,
        "the owner state never caught up"
    );
}

fn volume(name: &str, claim_ns: &str, claim: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "namespace": claim_ns, "name": claim, "uid": "c-1"}},
        "status": {"phase": "Bound"}})
}

fn event(name: &str, kind: &str, object: &str, type_: &str, count: i64) -> Value {
    let api_version = if kind == "VolumeAttachment" {
        "storage.k8s.io/v1"
    } else {
        "v1"
    };
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"kind": kind, "name": object, "apiVersion": api_version},
        "reason": "Failed", "message": format!("attempt {count}"), "type": type_, "count": count,
        "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
    })
}

#[tokio::test]
async fn volume_events_follow_their_claim_and_namespace_events_stay_home() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-a", "team-b"]).await;
    api.put_object("persistentvolumes", volume("pv-7", "team-a", "data"));
    api.put_object(
        "volumeattachments",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
            "metadata": {"name": "va-1"},
            "spec": {"attacher": "csi.example.com", "nodeName": "node1", "source": {"persistentVolumeName": "pv-7"}}}),
    );
    // Stored before the controller starts: judged against the listed state, not an empty one.
    api.put(
        "default",
        event("pv-7.1", "PersistentVolume", "pv-7", "Warning", 1),
    );
    let (running, state) = start_with_state(&api);
    assert!(eventually(10, || api.copies_of("team-a", "pv-7.1").len() == 1).await);
    let copy = &api.copies_of("team-a", "pv-7.1")[0];
    assert_eq!(
        copy["metadata"]["labels"]["clusterscope.dev/delivery"],
        "owner"
    );
    // Valid where it lands: its involved object is placed in the copy's namespace.
    assert_eq!(copy["involvedObject"]["namespace"], "team-a");
    assert_eq!(
        copy["metadata"]["annotations"]["clusterscope.dev/delivered-because"],
        "PersistentVolume pv-7 is claimed by PersistentVolumeClaim team-a/data"
    );
    api.put(
        "default",
        event("va-1.1", "VolumeAttachment", "va-1", "Warning", 1),
    );
    assert!(eventually(10, || api.copies_of("team-a", "va-1.1").len() == 1).await);

    // The volume is re-bound to team-b: later updates go there; team-a keeps what it had.
    api.put_object("persistentvolumes", volume("pv-7", "team-b", "data2"));
    state_knows(&state, |c| c.volumes["pv-7"].namespace == "team-b").await;
    api.put(
        "default",
        event("pv-7.1", "PersistentVolume", "pv-7", "Warning", 2),
    );
    assert!(eventually(10, || api.copies_of("team-b", "pv-7.1").len() == 1).await);
    assert_eq!(api.copies_of("team-b", "pv-7.1")[0]["count"], 2);
    assert_eq!(
        api.copies_of("team-a", "pv-7.1")[0]["count"],
        1,
        "the old owner's copy was updated"
    );

    // A namespace gets its own events; one the state knows is being deleted is not asked for.
    api.put(
        "default",
        event("team-b.1", "Namespace", "team-b", "Normal", 1),
    );
    assert!(eventually(10, || api.copies_of("team-b", "team-b.1").len() == 1).await);
    api.put_object(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team-a", "deletionTimestamp": "2026-11-20T10:00:00Z"},
            "status": {"phase": "Terminating"}}),
    );
    state_knows(&state, |c| !c.open("team-a")).await;
    api.put(
        "default",
        event("team-a.1", "Namespace", "team-a", "Normal", 1),
    );
    // Settled: the source is labelled, and a later event's copy has landed behind it.
    assert!(
        eventually(10, || api.event("default", "team-a.1").is_some_and(|e| {
            e["metadata"]["labels"]["clusterscope.dev/channel"] == "storage"
        }))
        .await
    );
    api.put(
        "default",
        event("team-b.2", "Namespace", "team-b", "Normal", 1),
    );
    assert!(eventually(10, || api.copies_of("team-b", "team-b.2").len() == 1).await);
    assert_eq!(
        creates_in(&api, "team-a"),
        2,
        "only pv-7.1's and va-1.1's copies were created in team-a; nothing was asked of it once it was closing: {:?}",
        api.store.lock().unwrap().requests
    );
    running.stop().await;
}

/// How many creates were asked of the API server in `ns`.
fn creates_in(api: &FakeApiServer, ns: &str) -> usize {
    let s = api.store.lock().unwrap();
    s.requests
        .iter()
        .filter(|(method, path)| method == "POST" && path == ns)
        .count()
}

/// The race a real cluster has: the owner state still says the namespace is open, but it is
/// being deleted and the API server answers 403 with the cause `NamespaceTerminating`. A
/// namespace being deleted never opens again: the copy is given up at once (each create asked
/// is given up, none retried) and counted, and other namespaces are not held up.
#[tokio::test]
async fn a_namespace_deleted_before_the_state_knows_is_given_up_at_once() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-a", "team-b"]).await;
    let (running, state) = start_with_state(&api);
    state_knows(&state, |c| c.open("team-a") && c.open("team-b")).await;
    // Deleted on the API server; the Namespace object (and so the state) still says Active.
    api.store
        .lock()
        .unwrap()
        .terminating
        .insert("team-a".into());
    api.put(
        "default",
        event("team-a.1", "Namespace", "team-a", "Normal", 1),
    );
    let given_up = r#"clusterscope_mirror_given_up_total{channel="storage"}"#;
    assert!(
        eventually(10, || running.seen(given_up) == 1.0).await,
        "{}",
        running.metrics.encode()
    );
    api.put(
        "default",
        event("team-b.1", "Namespace", "team-b", "Normal", 1),
    );
    assert!(eventually(10, || api.copies_of("team-b", "team-b.1").len() == 1).await);
    api.quiet().await;
    // A create is asked of team-a each time the source is seen (stored, then labelled), and
    // each is given up at once: a mirror that retried would ask a dozen times.
    let creates = creates_in(&api, "team-a");
    let errors = running.metric(
        r#"clusterscope_mirror_writes_total{channel="storage",operation="create",result="error"}"#,
    );
    assert!(
        creates <= 2,
        "{creates} creates asked of a closing namespace"
    );
    assert_eq!(
        errors, creates as f64,
        "every failed create was a create asked"
    );
    assert_eq!(running.metric(given_up), 1.0, "one source given up");
    running.stop().await;
}

/// Nothing is delivered from a partial owner state, however long it takes to list (no deadline
/// after which a partial state would do), and `/readyz` says so meanwhile, with the progress:
/// a Node Warning stored before the start reaches every namespace with pods on the node, also
/// the one whose pods come on the last page of the list.
#[tokio::test]
async fn deliveries_wait_for_the_whole_owner_state_and_readiness_says_so() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-a", "team-b", "team-c"]).await;
    // 1,500 pods, three pages of 500 in key order: team-c's pod on node1 comes last.
    for i in 0..1_500 {
        let (ns, node) = match i {
            0 => ("team-a", "node1"),
            1 => ("team-b", "node1"),
            _ if i < 1_499 => ("team-b", "node2"),
            _ => ("team-c", "node1"),
        };
        api.put_object("pods", pod(ns, &format!("p{i:04}"), node, "Running"));
    }
    api.store.lock().unwrap().list_delay = Some(("pods".into(), Duration::from_millis(700)));
    api.put("default", event("node1.1", "Node", "node1", "Warning", 1));
    let config = "channels:\n  - name: nodes\n    deliver: {nodePods: {maxNamespaces: 10}}\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n";
    let state = clusterscope::owners::SharedOwnerState::default();
    let running = run(&api, api.syncer(config).with_cluster(state));
    // Listing: the pods so far (0, 500 or 1000 of 1,500) and namespaces are said.
    assert!(
        eventually(10, || running.status.get().contains(" so far")).await,
        "{}",
        running.status.get()
    );
    assert!(!running.status.is_ready());
    assert!(
        running
            .status
            .get()
            .contains("not ready: mirroring holds its deliveries until the owner state is listed"),
        "{}",
        running.status.get()
    );
    for ns in ["team-a", "team-b", "team-c"] {
        assert!(
            api.copies_of(ns, "node1.1").is_empty(),
            "{ns}: delivered from a partial state"
        );
    }
    assert!(
        eventually(20, || running.status.is_ready()).await,
        "{}",
        running.status.get()
    );
    for ns in ["team-a", "team-b", "team-c"] {
        assert!(
            eventually(10, || api.copies_of(ns, "node1.1").len() == 1).await,
            "{ns} got no copy: {:?} {}",
            api.events_in(ns),
            running.metrics.encode()
        );
    }
    running.stop().await;
}

#[tokio::test]
async fn node_warnings_reach_the_namespaces_of_its_pods_up_to_the_cap() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-a", "team-b", "team-c"]).await;
    api.put_object("pods", pod("team-a", "web-1", "node1", "Running"));
    api.put_object("pods", pod("team-b", "db-1", "node1", "Running"));
    api.put_object("pods", pod("team-c", "job-1", "node1", "Succeeded"));
    api.put_object("pods", pod("team-c", "web-9", "node2", "Running"));
    let (running, state) = start_with_state(&api);
    api.put("default", event("node1.1", "Node", "node1", "Warning", 1));
    assert!(
        eventually(10, || api.copies_of("team-a", "node1.1").len() == 1
            && api.copies_of("team-b", "node1.1").len() == 1)
        .await
    );
    assert!(
        api.copies_of("team-c", "node1.1").is_empty(),
        "a finished pod ties nothing"
    );
    // Normal events are not delivered by the node rule (Warning by default).
    api.put("default", event("node1.2", "Node", "node1", "Normal", 1));
    // The pod in team-a moves off the node; a third namespace starts running there: the cap
    // (2) keeps the first two by name and counts the one left out.
    api.delete_object("pods", "team-a", "web-1");
    api.put_object("pods", pod("team-c", "web-2", "node1", "Running"));
    api.put_object("pods", pod("team-a", "web-3", "node1", "Running"));
    state_knows(&state, |c| c.pods_on_node["node1"].len() == 3).await;
    api.put("default", event("node1.3", "Node", "node1", "Warning", 1));
    assert!(eventually(10, || api.copies_of("team-b", "node1.3").len() == 1).await);
    assert_eq!(api.copies_of("team-a", "node1.3").len(), 1);
    assert!(
        api.copies_of("team-c", "node1.3").is_empty(),
        "past the cap"
    );
    assert!(
        eventually(10, || running.seen(
            r#"clusterscope_delivery_namespaces_cut_total{channel="nodes"}"#
        ) >= 1.0)
        .await
    );
    for ns in ["team-a", "team-b", "team-c"] {
        assert!(
            api.copies_of(ns, "node1.2").is_empty(),
            "{ns} got a Normal node event"
        );
    }
    running.stop().await;
}

/// The state is listed in pages (as the API server serves a watcher's list): a namespace whose
/// only pod comes after a thousand others in key order is still known.
#[tokio::test]
async fn the_state_is_read_past_the_first_page() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-a", "team-z"]).await;
    for i in 0..1_100 {
        api.put_object(
            "pods",
            pod("team-a", &format!("web-{i:04}"), "node2", "Running"),
        );
    }
    api.put_object("pods", pod("team-z", "last", "node1", "Running"));
    let running = start(&api);
    api.put("default", event("node1.1", "Node", "node1", "Warning", 1));
    assert!(eventually(10, || api.copies_of("team-z", "node1.1").len() == 1).await);
    assert!(api.copies_of("team-a", "node1.1").is_empty());
    let pages = api.calls_of("list", "pods");
    assert!(pages >= 3, "{pages} list calls for 1,101 pods");
    running.stop().await;
}

/// The owner watches restart (dropped, then 410 Gone: history compacted) while the state
/// changes and events keep arriving: each event lands with the owner the state knew when it
/// was delivered (team-a until the re-list is in, team-b after; an event delivered to team-a
/// and then re-synced by the events' own re-list reaches team-b too), never twice in one
/// namespace, and once the re-list is in, every later event and update goes to the new owner.
#[tokio::test]
async fn a_410_relist_of_the_state_loses_nothing_and_doubles_nothing() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-a", "team-b"]).await;
    api.put_object("persistentvolumes", volume("pv-7", "team-a", "data"));
    let running = start(&api);
    api.put(
        "default",
        event("pv-7.0", "PersistentVolume", "pv-7", "Warning", 1),
    );
    assert!(eventually(10, || api.copies_of("team-a", "pv-7.0").len() == 1).await);
    // Watches drop and the history is compacted: every watcher must list again.
    api.compact();
    api.drop_watches();
    api.put_object("persistentvolumes", volume("pv-7", "team-b", "data2"));
    // Events keep coming until one reaches the new owner (the re-list is in).
    let mut probes = 0;
    loop {
        probes += 1;
        let name = format!("pv-7.{probes}");
        api.put(
            "default",
            event(&name, "PersistentVolume", "pv-7", "Warning", 1),
        );
        let landed = || api.copies_of("team-a", &name).len() + api.copies_of("team-b", &name).len();
        assert!(eventually(10, || landed() >= 1).await, "{name} lost");
        if api.copies_of("team-b", &name).len() == 1 {
            break;
        }
        assert!(probes < 100, "the state never learned of the re-bind");
    }
    // From now on: the new owner only; an update of an old event follows to it.
    api.put(
        "default",
        event("pv-7.0", "PersistentVolume", "pv-7", "Warning", 2),
    );
    api.put(
        "default",
        event("pv-7.last", "PersistentVolume", "pv-7", "Warning", 1),
    );
    assert!(
        eventually(10, || api.copies_of("team-b", "pv-7.0").len() == 1
            && api.copies_of("team-b", "pv-7.last").len() == 1)
        .await
    );
    api.quiet().await;
    assert!(api.copies_of("team-a", "pv-7.last").is_empty());
    assert_eq!(api.copies_of("team-a", "pv-7.0")[0]["count"], 1);
    // Never two copies of one source in a namespace. (A re-sync after the re-list may also
    // give an earlier event a copy at the new owner: it is delivered where the state says.)
    for ns in ["team-a", "team-b"] {
        let mut sources: Vec<String> = api
            .events_in(ns)
            .iter()
            .map(|c| c["metadata"]["annotations"]["clusterscope.dev/source-name"].to_string())
            .collect();
        let all = sources.len();
        sources.sort();
        sources.dedup();
        assert_eq!(sources.len(), all, "{ns}: {sources:?}");
    }
    running.stop().await;
}

/// Custom kinds with an owner rule: a field naming a namespace, or a Node (whose pods'
/// namespaces get the event). Objects whose field is missing are skipped; their events go
/// nowhere else.
#[tokio::test]
async fn custom_kinds_follow_their_rule_field() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-a", "team-b"]).await;
    let yaml = "channels:\n  - name: custom\n    deliver: {owners: true, nodePods: {}}\nownerRules:\n  - {group: karpenter.sh, version: v1, kind: NodeClaim, resource: nodeclaims, nodeField: status.nodeName}\n  - {group: example.com, version: v1, kind: Disk, resource: disks, namespaceField: spec.claimRef.namespace}\nroutes:\n  - channel: custom\n";
    api.put_object("pods", pod("team-b", "web", "node7", "Running"));
    api.put_object(
        "nodeclaims",
        json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "nc-1"},
            "status": {"nodeName": "node7"}}),
    );
    api.put_object(
        "disks",
        json!({"apiVersion": "example.com/v1", "kind": "Disk", "metadata": {"name": "disk-1"},
            "spec": {"claimRef": {"namespace": "team-a"}}}),
    );
    api.put_object(
        "disks",
        json!({"apiVersion": "example.com/v1", "kind": "Disk", "metadata": {"name": "disk-2"},
            "spec": {"claimRef": {"namespace": 42}}}),
    );
    let state = clusterscope::owners::SharedOwnerState::default();
    let running = api.run_syncer(
        api.syncer(yaml).with_cluster(state.clone()),
        ControllerOptions {
            retry_base: Duration::from_millis(20),
            ..ControllerOptions::default()
        },
    );
    let custom = |kind: &str, name: &str, source: &str| {
        let mut e = event(source, kind, name, "Warning", 1);
        e["involvedObject"]["apiVersion"] = if kind == "Disk" {
            "example.com/v1".into()
        } else {
            "karpenter.sh/v1".into()
        };
        e
    };
    api.put("default", custom("Disk", "disk-1", "disk-1.1"));
    api.put("default", custom("NodeClaim", "nc-1", "nc-1.1"));
    api.put("default", custom("Disk", "disk-2", "disk-2.1"));
    assert!(
        eventually(10, || api.copies_of("team-a", "disk-1.1").len() == 1
            && api.copies_of("team-b", "nc-1.1").len() == 1)
        .await
    );
    assert_eq!(
        api.copies_of("team-a", "disk-1.1")[0]["metadata"]["annotations"]["clusterscope.dev/delivered-because"],
        "Disk disk-1 names namespace team-a in spec.claimRef.namespace"
    );
    assert_eq!(
        api.copies_of("team-b", "nc-1.1")[0]["metadata"]["labels"]["clusterscope.dev/delivery"],
        "node"
    );
    api.quiet().await;
    for ns in ["team-a", "team-b"] {
        assert!(
            api.copies_of(ns, "disk-2.1").is_empty(),
            "{ns}: a non-string field tied disk-2"
        );
    }
    assert!(
        !state.read().unwrap().custom[&("example.com".to_owned(), "Disk".to_owned())]
            .values
            .contains_key("disk-2")
    );
    // Counted: skipped objects by kind, known objects by resource.
    assert!(
        eventually(15, || running.seen(
            r#"clusterscope_owner_rule_skipped_objects{kind="Disk.example.com"}"#
        ) == 1.0
            && running.seen(
                r#"clusterscope_owner_objects{resource="disks.example.com"}"#
            ) == 1.0
            && running.seen(r#"clusterscope_owner_objects{resource="pods"}"#)
                == 1.0)
        .await,
        "{}",
        running.metrics.encode()
    );
    // The rule follows changes: the claim moves to team-b.
    api.put_object(
        "disks",
        json!({"apiVersion": "example.com/v1", "kind": "Disk", "metadata": {"name": "disk-1"},
            "spec": {"claimRef": {"namespace": "team-b"}}}),
    );
    state_knows(&state, |c| {
        c.custom[&("example.com".to_owned(), "Disk".to_owned())].values["disk-1"] == "team-b"
    })
    .await;
    api.put("default", custom("Disk", "disk-1", "disk-1.2"));
    assert!(eventually(10, || api.copies_of("team-b", "disk-1.2").len() == 1).await);
    running.stop().await;
}

/// The API server goes away for 2 s while owner-delivered events keep being stored: once it
/// is back, each has exactly one copy, in its owner's namespace.
#[tokio::test]
async fn an_api_server_outage_loses_nothing_and_doubles_nothing() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-a", "team-b"]).await;
    api.put_object("persistentvolumes", volume("pv-a", "team-a", "data"));
    api.put_object("persistentvolumes", volume("pv-b", "team-b", "data"));
    let running = start(&api);
    api.put(
        "default",
        event("pv-a.0", "PersistentVolume", "pv-a", "Warning", 1),
    );
    assert!(eventually(10, || api.copies_of("team-a", "pv-a.0").len() == 1).await);
    api.store.lock().unwrap().down_until = Some(std::time::Instant::now() + Duration::from_secs(2));
    api.drop_watches();
    for i in 1..=20 {
        let pv = if i % 2 == 0 { "pv-a" } else { "pv-b" };
        api.put(
            "default",
            event(&format!("{pv}.{i}"), "PersistentVolume", pv, "Warning", 1),
        );
    }
    let delivered = || {
        (1..=20).all(|i| {
            let (pv, ns) = if i % 2 == 0 {
                ("pv-a", "team-a")
            } else {
                ("pv-b", "team-b")
            };
            api.copies_of(ns, &format!("{pv}.{i}")).len() == 1
        })
    };
    assert!(eventually(30, delivered).await);
    assert_eq!(api.events_in("team-a").len(), 11);
    assert_eq!(api.events_in("team-b").len(), 10);
    running.stop().await;
}

/// The owner state's watches count their failures as every watch does, by resource (they
/// were reported nowhere), and the watcher's retry still brings the state in.
#[tokio::test]
async fn a_failing_owner_watch_is_counted_under_its_resource() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-a"]).await;
    api.put_object("persistentvolumes", volume("pv-a", "team-a", "data"));
    api.inject_on("list", "persistentvolumes", 500, "InternalError", 2);
    let running = start(&api);
    api.put(
        "default",
        event("pv-a.0", "PersistentVolume", "pv-a", "Warning", 1),
    );
    assert!(eventually(30, || api.copies_of("team-a", "pv-a.0").len() == 1).await);
    let errors = r#"clusterscope_watch_errors_total{resource="persistentvolumes"}"#;
    assert_eq!(running.metric(errors), 2.0);
    for quiet in [
        r#"clusterscope_watch_errors_total{resource="volumeattachments"}"#,
        r#"clusterscope_watch_errors_total{resource="events"}"#,
        "clusterscope_mirror_watch_errors_total",
    ] {
        assert_eq!(running.metric(quiet), 0.0, "{quiet}");
    }
    running.stop().await;
}

/// The configuration is reloaded: the owner state follows what the new rules need, stops the
/// watches no rule needs any more, and starts them again (refilled by their first list) when a
/// rule needs them again.
#[tokio::test]
async fn a_reloaded_configuration_starts_and_stops_what_the_owner_state_follows() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-a"]).await;
    api.put_object("pods", pod("team-a", "web-1", "node1", "Running"));
    let state = clusterscope::owners::SharedOwnerState::default();
    let syncer = api.syncer(CONFIG).with_cluster(state.clone());
    let config = syncer.config.clone();
    let running = api.run_syncer(
        syncer,
        ControllerOptions {
            retry_base: Duration::from_millis(20),
            owners_every: Duration::from_millis(100),
            ..ControllerOptions::default()
        },
    );
    let on_node = |node: &str| {
        state
            .read()
            .unwrap()
            .pods_on_node
            .get(node)
            .is_some_and(|p| p.contains_key("team-a"))
    };
    state_knows(&state, |c| c.pods_on_node.contains_key("node1")).await;
    let without_rules = "channels:\n  - name: nodes\nroutes:\n  - channel: nodes\n";
    config.store(std::sync::Arc::new(
        clusterscope::config::Config::from_yaml(without_rules, "reloaded").unwrap(),
    ));
    // No rule reads pods now: their watch is stopped, a pod started meanwhile is not seen
    // (a watch that still ran would report it within milliseconds).
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.delete_object("pods", "team-a", "web-1");
    api.put_object("pods", pod("team-a", "web-2", "node2", "Running"));
    assert!(
        !eventually(1, || on_node("node2")).await,
        "the pods are still followed with no rule reading them"
    );
    // With the rules back, the first list knows where the pods are now.
    config.store(std::sync::Arc::new(
        clusterscope::config::Config::from_yaml(CONFIG, "reloaded").unwrap(),
    ));
    assert!(eventually(10, || on_node("node2") && !on_node("node1")).await);
    api.put("default", event("node2.1", "Node", "node2", "Warning", 1));
    assert!(eventually(10, || api.copies_of("team-a", "node2.1").len() == 1).await);
    running.stop().await;
}
