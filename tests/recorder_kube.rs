//! The recorder writing through the Kubernetes API ([`KubeSink`]) to the in-process fake API
//! server: created events pass the API server's validation, repeats become count patches, an
//! expired event is created again, faults are retried, final answers are not.

mod support;

use support::fake_apiserver;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clusterscope::recorder::broadcaster::{BroadcastStats, record_to_sink};
use clusterscope::recorder::{Broadcaster, Recorder};
use clusterscope::recorder::{
    BroadcasterOptions, Correlator, CorrelatorOptions, KubeSink, ManualClock, SinkError,
    WriteOutcome,
};
use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::{Event, ObjectReference};

fn node_ref() -> ObjectReference {
    ObjectReference {
        kind: Some("Node".into()),
        name: Some("node1".into()),
        uid: Some("node1".into()),
        ..ObjectReference::default()
    }
}

struct Rig {
    api: FakeApiServer,
    sink: KubeSink,
    clock: Arc<ManualClock>,
    correlator: Correlator,
    recorder: Recorder,
    options: BroadcasterOptions,
}

async fn rig() -> Rig {
    let api = FakeApiServer::start(&["default", "kube-system"]).await;
    let sink = KubeSink::new(api.client());
    let clock = Arc::new(ManualClock::new());
    let correlator = Correlator::new(CorrelatorOptions::default(), clock.clone());
    let recorder = Recorder::new(
        Broadcaster::new(BroadcasterOptions::default()),
        "clusterscope",
        "clusterscope-0",
        clock.clone(),
    );
    Rig {
        api,
        sink,
        clock,
        correlator,
        recorder,
        options: BroadcasterOptions {
            retry_sleep: Duration::from_millis(10),
            ..BroadcasterOptions::default()
        },
    }
}

impl Rig {
    async fn write(&mut self, event: Event) -> WriteOutcome {
        let stats = BroadcastStats::default();
        let mut jitter = || 0.5;
        record_to_sink(
            &self.sink,
            &mut self.correlator,
            event,
            &self.options,
            &stats,
            &mut jitter,
        )
        .await
    }
    fn node_event(&self, reason: &str) -> Event {
        self.recorder
            .make_event(&node_ref(), "Warning", reason, "disk pressure")
    }
}

#[tokio::test]
async fn create_then_count_patches_then_recreate_after_ttl() {
    let mut r = rig().await;
    let first = r.node_event("NodeHasDiskPressure");
    let name = first.metadata.name.clone().unwrap();
    assert!(matches!(r.write(first).await, WriteOutcome::Written(_)));
    let stored = r.api.event("default", &name).expect("stored in default");
    assert_eq!(stored["count"], 1);
    assert_eq!(stored["involvedObject"]["kind"], "Node");

    r.clock.advance(Duration::from_secs(60));
    let second = r.node_event("NodeHasDiskPressure");
    assert!(matches!(r.write(second).await, WriteOutcome::Written(_)));
    let stored = r.api.event("default", &name).unwrap();
    assert_eq!(stored["count"], 2, "a repeat is a patch of the same object");
    assert_eq!(r.api.events_in("default").len(), 1);
    let methods: Vec<String> = r
        .api
        .store
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|x| x.0.clone())
        .collect();
    assert_eq!(methods, ["POST", "PATCH"]);

    // The event expired (TTL): the next repeat's patch gets 404 and creates it again.
    r.api.expire("default", &name);
    r.clock.advance(Duration::from_secs(60));
    let third = r.node_event("NodeHasDiskPressure");
    assert!(matches!(r.write(third).await, WriteOutcome::Written(_)));
    let again = r
        .api
        .event("default", &name)
        .expect("re-created under the same name");
    assert_eq!(again["count"], 3);
}

#[tokio::test]
async fn faults_are_retried_and_lose_nothing() {
    let mut r = rig().await;
    r.api.inject(500, "InternalError", 2);
    r.api.inject(429, "TooManyRequests", 1);
    let ev = r.node_event("Rebooted");
    let name = ev.metadata.name.clone().unwrap();
    assert!(matches!(r.write(ev).await, WriteOutcome::Written(_)));
    assert!(r.api.event("default", &name).is_some());
    assert_eq!(r.api.store.lock().unwrap().requests.len(), 4);
}

#[tokio::test]
async fn final_answers_are_reported_not_retried() {
    let mut r = rig().await;
    // A cluster-scoped reference stored outside default: the API server's validation refuses it.
    let mut ev = r.node_event("Misplaced");
    ev.metadata.namespace = Some("kube-system".into());
    match r.write(ev).await {
        WriteOutcome::Refused(SinkError::Status {
            code: 422, message, ..
        }) => {
            assert!(
                message.contains("does not match event.namespace"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A namespace that does not exist.
    let mut ev = r.node_event("Lost");
    ev.metadata.namespace = Some("missing".into());
    ev.involved_object.namespace = Some("missing".into());
    assert!(matches!(
        r.write(ev).await,
        WriteOutcome::Refused(SinkError::Status { code: 404, .. })
    ));
    assert_eq!(r.api.store.lock().unwrap().requests.len(), 2);
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_transport_error_and_retried() {
    let mut r = rig().await;
    let dead = KubeSink::new({
        let url: axum::http::Uri = "http://127.0.0.1:1".parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    });
    let stats = BroadcastStats::default();
    let mut jitter = || 0.0;
    let options = BroadcasterOptions {
        max_tries: 3,
        retry_sleep: Duration::from_millis(1),
        ..BroadcasterOptions::default()
    };
    let ev = r.node_event("X");
    let out = record_to_sink(&dead, &mut r.correlator, ev, &options, &stats, &mut jitter).await;
    assert!(
        matches!(out, WriteOutcome::GaveUp(SinkError::Transport(_))),
        "{out:?}"
    );
    assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
}
