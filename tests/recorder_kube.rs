//! The recorder writing through the Kubernetes API ([`KubeSink`]) to the in-process fake API
//! server, as production runs it (its pipeline lane, client-go's retries): created events pass
//! the API server's validation, repeats become count patches, an expired event is created
//! again, faults are retried, final answers are not.

mod support;

use support::fake_apiserver;

use std::sync::Arc;
use std::time::Duration;

use clusterscope::delivery::{Action, Delivered, Delivery, Failure, Sink, SinkError};
use clusterscope::event::EventType;
use clusterscope::recorder::{KubeSink, ManualClock, Recorder, RecorderOptions};
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
    clock: Arc<ManualClock>,
    recorder: Arc<Recorder>,
    _writers: tokio::task::JoinSet<()>,
}

/// A recorder writing to `client` with client-go's numbers, the sleeps between tries short.
fn recorder_for(client: kube::Client, max_tries: u32, clock: Arc<ManualClock>) -> Rig0 {
    let recorder = Arc::new(Recorder::new(
        vec![Arc::new(KubeSink::new(client))],
        &RecorderOptions {
            retry_sleep: Duration::from_millis(10),
            max_tries,
            ..RecorderOptions::default()
        },
        ("clusterscope", "clusterscope-0"),
        clock,
        clusterscope::metrics::RecorderMetrics::default(),
    ));
    let mut writers = tokio::task::JoinSet::new();
    recorder.start(&mut writers);
    (recorder, writers)
}

type Rig0 = (Arc<Recorder>, tokio::task::JoinSet<()>);

async fn rig() -> Rig {
    let api = FakeApiServer::start(&["default", "kube-system"]).await;
    let clock = Arc::new(ManualClock::new());
    let (recorder, writers) = recorder_for(api.client(), 12, clock.clone());
    Rig {
        api,
        clock,
        recorder,
        _writers: writers,
    }
}

impl Rig {
    /// Records a Warning about node1 and waits until it is written or given up.
    async fn record(&self, reason: &str) {
        assert!(
            self.recorder
                .event(&node_ref(), EventType::Warning, reason, "disk pressure")
        );
        assert!(self.recorder.drain(Duration::from_secs(10)).await);
    }
    fn methods(&self) -> Vec<String> {
        let store = self.api.store.lock().unwrap();
        store.requests.iter().map(|x| x.0.clone()).collect()
    }
    fn only_event(&self) -> serde_json::Value {
        let events = self.api.events_in("default");
        assert_eq!(events.len(), 1, "{events:?}");
        events[0].clone()
    }
}

#[tokio::test]
async fn create_then_count_patches_then_recreate_after_ttl() {
    let r = rig().await;
    r.record("NodeHasDiskPressure").await;
    let stored = r.only_event();
    let name = stored["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(stored["count"], 1);
    assert_eq!(stored["involvedObject"]["kind"], "Node");

    r.clock.advance(Duration::from_secs(60));
    r.record("NodeHasDiskPressure").await;
    let stored = r.only_event();
    assert_eq!(stored["metadata"]["name"], name.as_str());
    assert_eq!(stored["count"], 2, "a repeat is a patch of the same object");
    assert_ne!(stored["lastTimestamp"], stored["firstTimestamp"]);
    assert_eq!(r.methods(), ["POST", "PATCH"]);

    // The event expired (TTL): the next repeat's patch gets 404 and creates it again.
    r.api.expire("default", &name);
    r.clock.advance(Duration::from_secs(60));
    r.record("NodeHasDiskPressure").await;
    let again = r
        .api
        .event("default", &name)
        .expect("re-created under the same name");
    assert_eq!(again["count"], 3);
    assert_eq!(r.methods(), ["POST", "PATCH", "PATCH", "POST"]);
    assert_eq!(r.recorder.metrics().writes.get("success"), 3);
}

#[tokio::test]
async fn faults_are_retried_and_lose_nothing() {
    let r = rig().await;
    r.api.inject(500, "InternalError", 2);
    r.api.inject(429, "TooManyRequests", 1);
    r.record("Rebooted").await;
    assert_eq!(r.only_event()["reason"], "Rebooted");
    assert_eq!(r.methods().len(), 4);
    let stats = r.recorder.metrics();
    assert_eq!(stats.writes.get("success"), 1);
    assert_eq!(stats.writes.get("given_up"), 0);
    // The two 500s are the recorder's retries; kube's client retries a 429 itself.
    assert!(stats.writes.get("retried") >= 2);
}

/// One try of the sink alone, for an event made by hand.
async fn deliver(sink: &KubeSink, event: Event) -> Result<Delivered, Failure> {
    sink.deliver(&Delivery::new("k".into(), event, &node_ref()))
        .await
}

#[tokio::test]
async fn final_answers_are_reported_not_retried() {
    let r = rig().await;
    let sink = KubeSink::new(r.api.client());
    let made = |namespace: &str| {
        let mut ev = r
            .recorder
            .make_event(&node_ref(), EventType::Warning, "Misplaced", "m");
        ev.metadata.namespace = Some(namespace.into());
        ev
    };
    // A cluster-scoped reference stored outside default: the API server's validation refuses it.
    let failure = deliver(&sink, made("kube-system")).await.unwrap_err();
    assert_eq!(failure.action(sink.writer()), Action::GiveUp);
    match failure.error {
        SinkError::Status {
            code: 422, message, ..
        } => assert!(
            message.contains("does not match event.namespace"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    // A namespace that does not exist.
    let mut lost = made("missing");
    lost.involved_object.namespace = Some("missing".into());
    let failure = deliver(&sink, lost).await.unwrap_err();
    assert!(matches!(failure.error, SinkError::Status { code: 404, .. }));
    assert_eq!(failure.action(sink.writer()), Action::GiveUp);
    // An event without a name is not sent at all.
    let mut nameless = made("default");
    nameless.metadata.name = None;
    let failure = deliver(&sink, nameless).await.unwrap_err();
    assert!(matches!(failure.error, SinkError::Invalid(_)));
    assert_eq!(r.methods(), ["POST", "POST"]);
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_transport_error_and_retried() {
    let dead = {
        let url: axum::http::Uri = "http://127.0.0.1:1".parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    };
    let clock = Arc::new(ManualClock::new());
    let ev = Recorder::new(
        Vec::new(),
        &RecorderOptions::default(),
        ("c", "h"),
        clock.clone(),
        clusterscope::metrics::RecorderMetrics::default(),
    )
    .make_event(&node_ref(), EventType::Warning, "X", "m");
    let sink = KubeSink::new(dead.clone());
    let failure = deliver(&sink, ev).await.unwrap_err();
    assert!(
        matches!(failure.error, SinkError::Transport(_))
            && failure.action(sink.writer()) == Action::Retry,
        "{failure:?}"
    );
    let (recorder, _writers) = recorder_for(dead, 3, clock);
    assert!(recorder.event(&node_ref(), EventType::Warning, "X", "m"));
    assert!(recorder.drain(Duration::from_secs(10)).await);
    assert_eq!(recorder.metrics().writes.get("retried"), 2);
    assert_eq!(recorder.metrics().writes.get("given_up"), 1);
}
