//! Mirror copies are accepted by the API server's Event validation (the fake enforces
//! `legacyValidateEvent`), for old-style and new-style events, and land under one name.

mod common;
#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use clusterscope::classify::ScopeResolver;
use clusterscope::config::Config;
use clusterscope::decide::decide;
use clusterscope::mirror::{copy_name, make_copy};
use clusterscope::recorder::{EventSink, KubeSink};
use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::Event;
use serde_json::Value;

const CONFIG: &str = "channels:\n  - name: nodes\n    namespace: team-infra\n  - name: storage\n    namespace: team-storage\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n  - channel: storage\n";

fn stored_source(fixture: &str) -> Value {
    let review: Value =
        serde_json::from_slice(&std::fs::read(common::fixtures_dir().join(fixture)).unwrap())
            .unwrap();
    let mut object = review["request"]["object"].clone();
    // As the API server stores it: a uid, a name.
    object["metadata"]["uid"] = "0b6c1f9e-1111-4222-8333-944455556666".into();
    if object["metadata"]["name"].is_null() {
        object["metadata"]["name"] = "generated.abcde".into();
    }
    object
}

#[tokio::test]
async fn copies_pass_validation_for_old_and_new_style_events() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
    let sink = KubeSink::new(api.client());
    let config = Config::from_yaml(CONFIG, "t").unwrap();
    let resolver = ScopeResolver::new();
    for fixture in [
        "kubelet-node-not-ready.json",
        "eventsv1-converted-to-core.json",
        "real-node1-core-default.json",
        "real-node1-eventsv1-kube-system-emptyns.json",
        "csi-pv-long-source-component.json",
        "update-series-patch-labelled.json",
    ] {
        let source = stored_source(fixture);
        let text = source.to_string();
        let view: clusterscope::event::Event = serde_json::from_str(&text).unwrap();
        let decision = decide(&view, "default", &config, &resolver);
        let classified = decision.classified.unwrap();
        let channel = config
            .channel(classified.channel.as_deref().unwrap())
            .unwrap();
        let typed: Event = serde_json::from_value(source.clone()).unwrap();
        let copy = make_copy(&typed, &classified, channel, &config).unwrap();
        let ns = channel.namespace.clone().unwrap();
        let created = sink
            .create(&copy)
            .await
            .unwrap_or_else(|e| panic!("{fixture}: {e}"));
        assert_eq!(created.metadata.namespace.as_deref(), Some(ns.as_str()));
        let expected_name = copy_name(
            source["metadata"]["namespace"].as_str().unwrap(),
            source["metadata"]["name"].as_str().unwrap(),
        );
        assert_eq!(
            created.metadata.name.as_deref(),
            Some(expected_name.as_str())
        );
        // The same source always aims at the same copy.
        let again = sink.create(&copy).await.unwrap_err();
        assert!(again.is_already_exists(), "{fixture}: {again}");
        // Without the namespace fix the API server refuses the copy.
        let mut unfixed = copy.clone();
        unfixed.involved_object.namespace = None;
        unfixed.metadata.name = Some(format!("{expected_name}x"));
        let refused = sink.create(&unfixed).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("does not match event.namespace"),
            "{fixture}: {refused}"
        );
    }
    assert_eq!(api.events_in("team-infra").len(), 5);
    assert_eq!(api.events_in("team-storage").len(), 1);
}

mod sync {
    use super::*;
    use clusterscope::mirror::sync::Syncer;

    fn syncer(api: &FakeApiServer) -> Syncer {
        api.syncer(CONFIG)
    }

    fn typed(v: &Value) -> Event {
        serde_json::from_value(v.clone()).unwrap()
    }

    #[tokio::test]
    async fn unlabelled_source_is_labelled_and_copied_once() {
        let api =
            FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
        let s = syncer(&api);
        let source = stored_source("kubelet-node-not-ready.json");
        let name = source["metadata"]["name"].as_str().unwrap().to_owned();
        api.put("default", source);
        let stored = api.event("default", &name).unwrap();
        let report = s.sync(&typed(&stored)).await.unwrap();
        assert!(
            report.labelled && report.created && !report.updated,
            "{report:?}"
        );
        let labelled = api.event("default", &name).unwrap();
        assert_eq!(
            labelled["metadata"]["labels"]["clusterscope.dev/channel"],
            "nodes"
        );
        // Idempotent: a second sync (another replica, a restart) changes nothing.
        let again = s.sync(&typed(&labelled)).await.unwrap();
        assert!(
            !again.labelled && !again.created && !again.updated,
            "{again:?}"
        );
        assert_eq!(api.events_in("team-infra").len(), 1);
    }

    #[tokio::test]
    async fn count_and_message_changes_reach_the_copy() {
        let api = FakeApiServer::start(&["default", "team-infra", "team-storage"]).await;
        let s = syncer(&api);
        let mut source = stored_source("kubelet-node-not-ready.json");
        let name = source["metadata"]["name"].as_str().unwrap().to_owned();
        api.put("default", source.clone());
        s.sync(&typed(&api.event("default", &name).unwrap()))
            .await
            .unwrap();
        source["count"] = 7.into();
        source["lastTimestamp"] = "2026-11-20T11:00:00Z".into();
        source["message"] = "still not ready".into();
        api.put("default", source);
        let report = s
            .sync(&typed(&api.event("default", &name).unwrap()))
            .await
            .unwrap();
        assert!(report.updated, "{report:?}");
        let copies = api.events_in("team-infra");
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0]["count"], 7);
        assert_eq!(copies[0]["message"], "still not ready");
        assert_eq!(copies[0]["lastTimestamp"], "2026-11-20T11:00:00Z");
    }

    #[tokio::test]
    async fn two_replicas_at_once_make_one_copy() {
        let api = FakeApiServer::start(&["default", "team-infra", "team-storage"]).await;
        let (a, b) = (syncer(&api), syncer(&api));
        let mut names = Vec::new();
        for i in 0..20 {
            let mut source = stored_source("kubelet-node-not-ready.json");
            let name = format!("node1.{i:016x}");
            source["metadata"]["name"] = name.clone().into();
            api.put("default", source);
            names.push(name);
        }
        let sources: Vec<Event> = names
            .iter()
            .map(|n| typed(&api.event("default", n).unwrap()))
            .collect();
        let runs = sources.iter().map(|e| {
            let (a, b) = (a.clone(), b.clone());
            let e = e.clone();
            async move { tokio::join!(a.sync(&e), b.sync(&e)) }
        });
        for (ra, rb) in each_in_turn(runs).await {
            ra.unwrap();
            rb.unwrap();
        }
        assert_eq!(api.events_in("team-infra").len(), 20);
    }

    async fn each_in_turn<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
        let handles: Vec<_> = fs.collect();
        let mut out = Vec::new();
        for f in handles {
            out.push(f.await);
        }
        out
    }

    #[tokio::test]
    async fn namespaced_events_are_left_alone_and_missing_namespaces_reported() {
        let api = FakeApiServer::start(&["default", "team-storage"]).await;
        let s = syncer(&api);
        let pod = stored_source("namespaced-pod-event.json");
        let report = s.sync(&typed(&pod)).await.unwrap();
        assert!(report.skipped);
        // team-infra does not exist: the error says so, nothing panics, the source is labelled.
        let source = stored_source("kubelet-node-not-ready.json");
        let name = source["metadata"]["name"].as_str().unwrap().to_owned();
        api.put("default", source);
        let err = s
            .sync(&typed(&api.event("default", &name).unwrap()))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("namespaces \"team-infra\" not found"),
            "{err}"
        );
        assert!(!api.event("default", &name).unwrap()["metadata"]["labels"].is_null());
    }

    /// Someone who may create events in `default` sets the mirror label on one to hide it:
    /// it is still labelled and copied.
    #[tokio::test]
    async fn the_mirror_label_hides_nothing_in_a_source_namespace() {
        let api = FakeApiServer::start(&["default", "team-infra", "team-storage"]).await;
        let mut source = stored_source("kubelet-node-not-ready.json");
        source["metadata"]["labels"] = serde_json::json!({"clusterscope.dev/mirror": "true"});
        let name = source["metadata"]["name"].as_str().unwrap().to_owned();
        api.put("default", source);
        let report = syncer(&api)
            .sync(&typed(&api.event("default", &name).unwrap()))
            .await
            .unwrap();
        assert!(report.labelled && report.created, "{report:?}");
        assert_eq!(api.events_in("team-infra").len(), 1);
    }

    #[tokio::test]
    async fn a_refused_label_does_not_hold_back_the_copy() {
        let api = FakeApiServer::start(&["default", "team-infra", "team-storage"]).await;
        let s = syncer(&api);
        let source = stored_source("kubelet-node-not-ready.json");
        let name = source["metadata"]["name"].as_str().unwrap().to_owned();
        api.put("default", source);
        // The label patch is forbidden (say RBAC lacks `patch` in default).
        api.inject(403, "Forbidden", 1);
        let err = s
            .sync(&typed(&api.event("default", &name).unwrap()))
            .await
            .unwrap_err();
        assert_eq!(err.operation, "label");
        assert!(err.report.created, "{err:?}");
        assert_eq!(api.events_in("team-infra").len(), 1);
    }
}

/// The fake refuses what the facts page measured a real API server refusing, so a copy the
/// real server would refuse fails here too.
mod fidelity {
    use super::*;

    fn node_event(ns: &str, name: &str) -> Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"kind": "Node", "name": "node1", "uid": "node1"},
            "reason": "NodeNotReady", "message": "m", "count": 1, "type": "Normal",
            "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
        })
    }

    async fn create(api: &FakeApiServer, ns: &str, ev: &Value) -> Result<(), (u16, String)> {
        let typed: Event = serde_json::from_value(ev.clone()).unwrap();
        let events: kube::Api<Event> = kube::Api::namespaced(api.client(), ns);
        match events.create(&Default::default(), &typed).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) => Err((s.code, s.message)),
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn old_style_events_about_cluster_scoped_objects_only_in_default() {
        let api = FakeApiServer::start(&["default", "kube-system"]).await;
        let err = create(&api, "kube-system", &node_event("kube-system", "a"))
            .await
            .unwrap_err();
        assert_eq!(err.0, 422);
        assert!(
            err.1.contains("does not match event.namespace"),
            "{}",
            err.1
        );
        create(&api, "default", &node_event("default", "a"))
            .await
            .unwrap();
        let mut new_style = node_event("kube-system", "b");
        new_style["eventTime"] = "2026-11-20T10:00:00.000000Z".into();
        create(&api, "kube-system", &new_style).await.unwrap();
    }

    #[tokio::test]
    async fn labels_and_annotations_are_validated() {
        let api = FakeApiServer::start(&["default"]).await;
        let with = |field: &str, key: &str, value: &str| {
            let mut ev = node_event("default", "x");
            ev["metadata"][field] = serde_json::json!({ key: value });
            ev
        };
        for (field, key, value) in [
            ("labels", "clusterscope.dev/kind", "My Kind"),
            ("labels", "clusterscope.dev/kind", &"a".repeat(64)),
            ("labels", "bad key", "v"),
            ("labels", "-x.example/k", "v"),
            ("annotations", "clusterscope.dev/", "v"),
        ] {
            let err = create(&api, "default", &with(field, key, value))
                .await
                .unwrap_err();
            assert_eq!(err.0, 422, "{field} {key}={value}: {}", err.1);
        }
        create(&api, "default", &with("labels", "a.example/k", "ok-1.2_3"))
            .await
            .unwrap();
        // 256 KiB of annotations in total (keys and values) is the most allowed.
        let key = "note";
        let mut at_limit = with("annotations", key, &"x".repeat(256 * 1024 - key.len()));
        at_limit["metadata"]["name"] = "at-limit".into();
        create(&api, "default", &at_limit).await.unwrap();
        let mut over = with("annotations", key, &"x".repeat(256 * 1024 - key.len() + 1));
        over["metadata"]["name"] = "over".into();
        let err = create(&api, "default", &over).await.unwrap_err();
        assert_eq!(err.0, 422);
        assert!(err.1.contains("262144"), "{}", err.1);
    }

    /// A source stored just under the annotation limit: its copy adds the source annotations
    /// and goes over, and the API server refuses it. The sync reports that create failure.
    #[tokio::test]
    async fn a_copy_pushed_past_the_annotation_limit_is_refused() {
        let api = FakeApiServer::start(&["default", "kube-system", "team-infra"]).await;
        let mut source = node_event("default", "node1.big");
        source["metadata"]["uid"] = "u-1".into();
        source["metadata"]["annotations"] =
            serde_json::json!({"note": "x".repeat(256 * 1024 - 100)});
        api.put("default", source.clone());
        let stored = api.event("default", "node1.big").unwrap();
        let err = api
            .syncer(CONFIG)
            .sync(&serde_json::from_value(stored).unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.operation, "create");
        assert!(
            matches!(
                err.error,
                clusterscope::recorder::SinkError::Status { code: 422, .. }
            ),
            "{err}"
        );
        assert!(api.events_in("team-infra").is_empty());
    }
}

/// Delivery by ownership through a sync: a PersistentVolume's event reaches its claim's
/// namespace, valid for the API server, saying how and why; a Node's Warning reaches the
/// namespaces of its pods; a namespace being deleted and the source namespaces get nothing.
mod owners {
    use super::*;
    use clusterscope::owners::{Claim, Cluster, Namespace, SharedCluster};
    use std::sync::{Arc, RwLock};

    const CONFIG: &str = "channels:\n  - name: storage\n    deliver: {owners: true}\n  - name: nodes\n    namespace: team-infra\n    deliver: {nodePods: {}}\nroutes:\n  - channel: storage\n    match: {kinds: [PersistentVolume]}\n  - channel: nodes\n    match: {kinds: [Node]}\n";

    fn state() -> SharedCluster {
        let mut c = Cluster::default();
        for (ns, terminating) in [
            ("team-a", false),
            ("team-b", false),
            ("going", true),
            ("default", false),
            ("team-infra", false),
        ] {
            c.namespaces.insert(
                ns.into(),
                Namespace {
                    terminating,
                    ..Namespace::default()
                },
            );
        }
        c.volumes.insert(
            "pv-7".into(),
            Claim {
                namespace: "team-a".into(),
                name: "data".into(),
            },
        );
        c.pods_on_node.insert(
            "node1".into(),
            [
                ("team-a", 1),
                ("team-b", 3),
                ("going", 1),
                ("default", 2),
                ("team-infra", 1),
            ]
            .into_iter()
            .map(|(ns, n)| (ns.to_owned(), n))
            .collect(),
        );
        Arc::new(RwLock::new(c))
    }

    fn event(name: &str, kind: &str, object: &str, type_: &str) -> Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "default"},
            "involvedObject": {"kind": kind, "name": object, "apiVersion": "v1"},
            "reason": "Failed", "message": "it failed", "type": type_, "count": 1,
            "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z",
            "source": {"component": "persistentvolume-controller"}
        })
    }

    #[tokio::test]
    async fn a_volume_event_reaches_its_claim_namespace_and_a_node_warning_its_pods_namespaces() {
        let api = FakeApiServer::start(&[
            "default",
            "kube-system",
            "team-a",
            "team-b",
            "going",
            "team-infra",
        ])
        .await;
        let s = api.syncer(CONFIG).with_cluster(state());
        api.put(
            "default",
            event("pv-7.1", "PersistentVolume", "pv-7", "Warning"),
        );
        let stored: Event =
            serde_json::from_value(api.event("default", "pv-7.1").unwrap()).unwrap();
        let report = s.sync(&stored).await.unwrap();
        assert!(report.created, "{report:?}");
        let copies = api.events_in("team-a");
        assert_eq!(copies.len(), 1, "{copies:?}");
        let copy = &copies[0];
        assert_eq!(copy["involvedObject"]["namespace"], "team-a");
        assert_eq!(
            copy["metadata"]["labels"]["clusterscope.dev/delivery"],
            "owner"
        );
        assert_eq!(
            copy["metadata"]["labels"]["clusterscope.dev/channel"],
            "storage"
        );
        assert_eq!(
            copy["metadata"]["annotations"]["clusterscope.dev/delivered-because"],
            "PersistentVolume pv-7 is claimed by PersistentVolumeClaim team-a/data"
        );
        for ns in ["team-b", "going", "team-infra"] {
            assert!(api.events_in(ns).is_empty(), "{ns} got the volume's event");
        }

        // A Node Warning: the channel's own namespace, then each open namespace with pods on
        // the node; not `going` (being deleted), not `default` (where the source is).
        api.put("default", event("node1.1", "Node", "node1", "Warning"));
        let stored: Event =
            serde_json::from_value(api.event("default", "node1.1").unwrap()).unwrap();
        s.sync(&stored).await.unwrap();
        let delivered = |ns: &str| {
            api.events_in(ns)
                .into_iter()
                .filter(|e| e["involvedObject"]["kind"] == "Node")
                .map(|e| {
                    e["metadata"]["labels"]["clusterscope.dev/delivery"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            delivered("team-infra"),
            ["channel"],
            "one copy, as the channel's"
        );
        assert_eq!(delivered("team-a"), ["node"]);
        assert_eq!(delivered("team-b"), ["node"]);
        assert!(delivered("going").is_empty());
        assert_eq!(
            api.events_in("default")
                .iter()
                .filter(|e| e["involvedObject"]["kind"] == "Node")
                .count(),
            1,
            "only the source in default"
        );
        let why = api.events_in("team-b")[0]["metadata"]["annotations"]["clusterscope.dev/delivered-because"].clone();
        assert_eq!(why, "Node node1 runs 3 pods of namespace team-b");

        // A Normal Node event goes to the channel's namespace only (nodePods: Warning).
        api.put("default", event("node1.2", "Node", "node1", "Normal"));
        let stored: Event =
            serde_json::from_value(api.event("default", "node1.2").unwrap()).unwrap();
        s.sync(&stored).await.unwrap();
        assert_eq!(delivered("team-infra").len(), 2);
        assert_eq!(delivered("team-a").len(), 1);
    }
}
