//! Mirror copies are accepted by the API server's Event validation (the fake enforces
//! `legacyValidateEvent`), for old-style and new-style events, and land under one name.

mod support;

use support::{fake_apiserver, fixtures};

use clusterscope::config::Config;
use clusterscope::delivery::SinkError;
use clusterscope::mirror::copy_name;
use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, PostParams};
use serde_json::Value;

const CONFIG: &str = "channels:\n  - name: nodes\n    namespace: team-infra\n  - name: storage\n    namespace: team-storage\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n  - channel: storage\n";

fn stored_source(fixture: &str) -> Value {
    let review: Value =
        serde_json::from_slice(&std::fs::read(fixtures::fixtures_dir().join(fixture)).unwrap())
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
    let config = Config::from_yaml(CONFIG, "t").unwrap();
    // Each copy created as it is planned: the API server's validation is what is tested.
    let create = |copy: &Event| {
        let events: Api<Event> =
            Api::namespaced(api.client(), copy.metadata.namespace.as_deref().unwrap());
        let copy = copy.clone();
        async move {
            events
                .create(&PostParams::default(), &copy)
                .await
                .map_err(SinkError::from)
        }
    };
    // The copies as the controller plans them.
    let syncer = api.syncer(CONFIG);
    for fixture in [
        "kubelet-node-not-ready.json",
        "eventsv1-converted-to-core.json",
        "real-node1-core-default.json",
        "real-node1-eventsv1-kube-system-emptyns.json",
        "csi-pv-long-source-component.json",
        "update-series-patch-labelled.json",
    ] {
        let source = stored_source(fixture);
        let typed: Event = serde_json::from_value(source.clone()).unwrap();
        let plan = syncer.plan(&typed, std::time::Instant::now());
        let channel = config.channel(plan.channel.as_deref().unwrap()).unwrap();
        let copies: Vec<Event> = syncer
            .deliveries(&plan)
            .into_iter()
            .filter(|(sink, _)| *sink == "kubernetes")
            .map(|(_, d)| d.event)
            .collect();
        assert_eq!(
            copies.len(),
            1,
            "{fixture}: one copy, in the channel's namespace"
        );
        let copy = &copies[0];
        let ns = channel.namespace.clone().unwrap();
        let created = create(copy)
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
        let again = create(copy).await.unwrap_err();
        assert!(
            matches!(&again, SinkError::Status { code: 409, reason, .. } if reason == "AlreadyExists"),
            "{fixture}: {again}"
        );
        // Without the namespace fix the API server refuses the copy.
        let mut unfixed = copy.clone();
        unfixed.involved_object.namespace = None;
        unfixed.metadata.name = Some(format!("{expected_name}x"));
        let refused = create(&unfixed).await.unwrap_err();
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

/// The fake validates events.k8s.io/v1 events (those with `eventTime`) as the API server does:
/// a copy of one that lost `reportingController`, `reportingInstance`, `action` or `reason`, or
/// carries a controller that is no qualified name or a note over 1 KiB, is refused with 422
/// there; the planned copy keeps them all and is accepted.
#[tokio::test]
async fn a_new_style_copy_that_lost_a_required_field_is_refused() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
    let syncer = api.syncer(CONFIG);
    let source: Event = serde_json::from_value(stored_source(
        "real-node1-eventsv1-kube-system-emptyns.json",
    ))
    .unwrap();
    assert!(source.event_time.is_some(), "the fixture is new-style");
    let plan = syncer.plan(&source, std::time::Instant::now());
    let copy = syncer
        .deliveries(&plan)
        .into_iter()
        .find(|(sink, _)| *sink == "kubernetes")
        .map(|(_, d)| d.event)
        .unwrap();
    let events: Api<Event> = Api::namespaced(api.client(), "team-infra");
    let create = |body: Event| {
        let events = events.clone();
        async move { events.create(&PostParams::default(), &body).await }
    };
    type Break = fn(&mut Event);
    let broken: [(&str, Break, &str); 6] = [
        (
            "reportingComponent",
            |e| e.reporting_component = None,
            "reportingController: Required value",
        ),
        (
            "reportingInstance",
            |e| e.reporting_instance = None,
            "reportingInstance: Required value",
        ),
        ("action", |e| e.action = None, "action: Required value"),
        ("reason", |e| e.reason = None, "reason: Required value"),
        (
            "reportingComponent",
            |e| e.reporting_component = Some("Not A Name!".into()),
            "reportingController: Invalid value",
        ),
        (
            "message",
            |e| e.message = Some("n".repeat(1025)),
            "message: Too long",
        ),
    ];
    for (field, breaks, says) in broken {
        let mut bad = copy.clone();
        breaks(&mut bad);
        match create(bad).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{field}");
                assert!(s.message.contains(says), "{field}: {}", s.message);
            }
            other => panic!("a copy without a valid {field} was accepted: {other:?}"),
        }
    }
    create(copy).await.expect("the planned copy is accepted");
}

/// A copy's name is part of what is stored: a release that named copies differently would give
/// every stored source a second copy on upgrade. These names were written by earlier releases
/// and must stay: core/v1 and events.k8s.io/v1 sources (the fixtures the test above plans and
/// creates under `copy_name`), `default` and `kube-system`, names that fit whole and long ones
/// cut to fit with the wide hash.
#[test]
fn copy_names_stay_what_earlier_releases_wrote() {
    let pinned = [
        // core/v1, kubelet, in default
        (
            "default",
            "node1.187a3c5e2f9b1d04",
            "node1.187a3c5e2f9b1d04.64570f5b",
        ),
        // the same name in kube-system is another source
        (
            "kube-system",
            "node1.187a3c5e2f9b1d04",
            "node1.187a3c5e2f9b1d04.b18898bb",
        ),
        // events.k8s.io/v1 (stored and read as core/v1), in kube-system and default
        (
            "kube-system",
            "node1.eventsv1-kube-system-emptyns",
            "node1.eventsv1-kube-system-emptyns.540012e7",
        ),
        (
            "default",
            "node5.187a3c5e30000030",
            "node5.187a3c5e30000030.8138019d",
        ),
        ("default", "pv-7.1", "pv-7.1.66c4f2d0"),
    ];
    for (namespace, name, copy) in pinned {
        assert_eq!(copy_name(namespace, name), copy, "{namespace}/{name}");
    }
    // Cut to 253 characters, the head kept, a 64-bit hash after it.
    let cut = [
        (
            "x".repeat(240) + ".187a3c5e2f9b1d04",
            "x".repeat(236) + ".5e3440f94e431ae0",
        ),
        ("a".repeat(247), "a".repeat(236) + ".445f584417a8d338"),
        ("a".repeat(253), "a".repeat(236) + ".e168837b87b428aa"),
    ];
    for (name, copy) in cut {
        assert_eq!(copy_name("default", &name), copy, "default/{name}");
    }
}

mod through_the_controller {
    //! One stored source at a time through the production path: the mirror controller's
    //! watch, plan, label patch and the pipeline's lanes, against the fake API server.
    use super::*;
    use clusterscope::mirror::controller::ControllerOptions;
    use fake_apiserver::{RunningController, eventually};
    use std::time::Duration;

    fn run(api: &FakeApiServer) -> RunningController {
        api.run_controller_with(
            CONFIG,
            ControllerOptions {
                workers: 2,
                retry_base: Duration::from_millis(20),
                ..Default::default()
            },
        )
    }

    /// The writes (create, update, patch) made to events in `ns`, by verb.
    fn writes(api: &FakeApiServer, ns: &str) -> Vec<String> {
        api.store
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(verb, _, resource, namespace)| {
                resource == "events"
                    && namespace == ns
                    && ["create", "update", "patch"].contains(&verb.as_str())
            })
            .map(|(verb, ..)| verb.clone())
            .collect()
    }

    fn labelled(api: &FakeApiServer, name: &str) -> bool {
        api.event("default", name)
            .is_some_and(|e| e["metadata"]["labels"]["clusterscope.dev/channel"] == "nodes")
    }

    #[tokio::test]
    async fn an_unlabelled_source_is_labelled_and_copied_once_and_a_restart_writes_nothing() {
        let api =
            FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
        let source = stored_source("kubelet-node-not-ready.json");
        let name = source["metadata"]["name"].as_str().unwrap().to_owned();
        api.put("default", source);
        let running = run(&api);
        assert!(
            eventually(10, || labelled(&api, &name)
                && api.events_in("team-infra").len() == 1)
            .await
        );
        api.quiet().await;
        assert_eq!(writes(&api, "default"), ["patch"], "one label patch");
        assert_eq!(
            writes(&api, "team-infra"),
            ["create"],
            "one copy, written once"
        );
        running.stop().await;
        // Another replica, or a restart: it lists everything again and writes nothing.
        let again = run(&api);
        assert!(
            eventually(10, || again.seen(
                r#"clusterscope_deliveries_total{sink="kubernetes",result="unchanged"}"#
            ) == 1.0)
            .await
        );
        assert_eq!(writes(&api, "default"), ["patch"]);
        assert_eq!(writes(&api, "team-infra"), ["create"]);
        again.stop().await;
    }

    #[tokio::test]
    async fn count_and_message_changes_reach_the_copy() {
        let api =
            FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
        let running = run(&api);
        let mut source = stored_source("kubelet-node-not-ready.json");
        let name = source["metadata"]["name"].as_str().unwrap().to_owned();
        api.put("default", source.clone());
        assert!(eventually(10, || api.events_in("team-infra").len() == 1).await);
        source["count"] = 7.into();
        source["lastTimestamp"] = "2026-11-20T11:00:00Z".into();
        source["message"] = "still not ready".into();
        source["metadata"]["labels"] =
            api.event("default", &name).unwrap()["metadata"]["labels"].clone();
        api.put("default", source);
        assert!(
            eventually(10, || api
                .events_in("team-infra")
                .first()
                .is_some_and(|c| c["count"] == 7))
            .await
        );
        let copies = api.events_in("team-infra");
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0]["message"], "still not ready");
        assert_eq!(copies[0]["lastTimestamp"], "2026-11-20T11:00:00Z");
        assert_eq!(
            running.metric(r#"clusterscope_deliveries_total{sink="kubernetes",result="update"}"#),
            1.0
        );
        running.stop().await;
    }

    #[tokio::test]
    async fn namespaced_events_are_left_alone_and_a_missing_namespace_is_said_and_given_up() {
        let api = FakeApiServer::start(&[
            "default",
            "kube-system",
            "team-storage",
            "clusterscope-system",
        ])
        .await;
        let mut pod = stored_source("namespaced-pod-event.json");
        pod["metadata"]["namespace"] = "default".into();
        let pod_name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        api.put("default", pod);
        // team-infra does not exist: the copy fails (retried, then given up, said in an event
        // of clusterscope's own), nothing panics, the source is labelled all the same.
        let source = stored_source("kubelet-node-not-ready.json");
        let name = source["metadata"]["name"].as_str().unwrap().to_owned();
        api.put("default", source);
        let running = api.run_controller_with(
            CONFIG,
            ControllerOptions {
                retry_base: Duration::from_millis(10),
                max_attempts: 2,
                ..Default::default()
            },
        );
        assert!(eventually(10, || labelled(&api, &name)).await);
        let given_up = || {
            api.events_in("clusterscope-system")
                .into_iter()
                .find(|e| e["reason"] == "DeliveryGivenUp")
        };
        assert!(eventually(10, || given_up().is_some()).await);
        let message = given_up().unwrap()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("namespaces \"team-infra\" not found"),
            "{message}"
        );
        assert_eq!(
            running.metric(r#"clusterscope_mirror_given_up_total{channel="nodes"}"#),
            1.0
        );
        assert!(
            api.event("default", &pod_name).unwrap()["metadata"]["labels"].is_null(),
            "a namespaced event is not labelled"
        );
        running.stop().await;
    }

    /// Someone who may create events in `default` sets the mirror label on one to hide it:
    /// it is still labelled and copied.
    #[tokio::test]
    async fn the_mirror_label_hides_nothing_in_a_source_namespace() {
        let api =
            FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
        let mut source = stored_source("kubelet-node-not-ready.json");
        source["metadata"]["labels"] = serde_json::json!({"clusterscope.dev/mirror": "true"});
        let name = source["metadata"]["name"].as_str().unwrap().to_owned();
        api.put("default", source);
        let running = run(&api);
        assert!(
            eventually(10, || labelled(&api, &name)
                && api.events_in("team-infra").len() == 1)
            .await
        );
        running.stop().await;
    }

    /// The label patch is refused once (say RBAC lacked `patch` in default a moment): the copy
    /// is written meanwhile, and the label follows on the retry.
    #[tokio::test]
    async fn a_refused_label_does_not_hold_back_the_copy() {
        let api =
            FakeApiServer::start(&["default", "kube-system", "team-infra", "team-storage"]).await;
        api.inject_for("patch", 403, "Forbidden", 1);
        let source = stored_source("kubelet-node-not-ready.json");
        let name = source["metadata"]["name"].as_str().unwrap().to_owned();
        api.put("default", source);
        let running = run(&api);
        assert!(eventually(10, || api.events_in("team-infra").len() == 1).await);
        assert!(eventually(10, || labelled(&api, &name)).await);
        assert_eq!(
            running.metric(r#"clusterscope_mirror_writes_total{channel="nodes",operation="label",result="error"}"#),
            1.0
        );
        assert_eq!(writes(&api, "default"), ["patch", "patch"]);
        running.stop().await;
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
        // What a new-style event must carry besides (legacyValidateEvent).
        new_style["reportingComponent"] = "kubelet".into();
        new_style["reportingInstance"] = "node1".into();
        new_style["action"] = "StatusChange".into();
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
    /// and goes over, and the API server refuses it: given up at once (a 422 does not heal).
    #[tokio::test]
    async fn a_copy_pushed_past_the_annotation_limit_is_refused() {
        let api = FakeApiServer::start(&["default", "kube-system", "team-infra"]).await;
        let mut source = node_event("default", "node1.big");
        source["metadata"]["uid"] = "u-1".into();
        source["metadata"]["annotations"] =
            serde_json::json!({"note": "x".repeat(256 * 1024 - 100)});
        api.put("default", source.clone());
        let running = api.run_controller(CONFIG, std::time::Duration::from_millis(20));
        let given_up = r#"clusterscope_deliveries_total{sink="kubernetes",result="given_up"}"#;
        assert!(fake_apiserver::eventually(10, || running.seen(given_up) == 1.0).await);
        assert_eq!(
            running.metric(r#"clusterscope_mirror_writes_total{channel="nodes",operation="create",result="error"}"#),
            1.0,
            "one try"
        );
        assert!(api.events_in("team-infra").is_empty());
        running.stop().await;
    }
}
