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
        let decision = decide(&view, &config, &resolver);
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
