//! The recorder's write path with scripted sinks and tokio's paused clock (no real sleeps):
//! events go through the recorder's pipeline lanes as in production; client-go's retry numbers,
//! which errors are retried, repeats carried as the stored event's next count, and a recorder
//! that never blocks its caller.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterscope::delivery::{
    DeliverFuture, Delivered, Delivery, Failure, Operation, Sink, SinkError, Writer,
};
use clusterscope::event::EventType;
use clusterscope::recorder::{ManualClock, Recorder, RecorderOptions};
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use tokio::time::Instant;

/// A sink that answers from a script (then success) and remembers each try and when it came.
struct ScriptedSink {
    name: &'static str,
    answers: Mutex<VecDeque<SinkError>>,
    /// Never answers (to fill the lane).
    stuck: bool,
    calls: Mutex<Vec<(Instant, Event)>>,
}

impl ScriptedSink {
    fn failing(errors: Vec<SinkError>) -> Arc<Self> {
        Arc::new(ScriptedSink {
            name: "scripted",
            answers: Mutex::new(errors.into()),
            stuck: false,
            calls: Mutex::default(),
        })
    }
    fn named(name: &'static str) -> Arc<Self> {
        Arc::new(ScriptedSink {
            name,
            ..Arc::into_inner(Self::failing(Vec::new())).unwrap()
        })
    }
    fn stuck() -> Arc<Self> {
        Arc::new(ScriptedSink {
            stuck: true,
            ..Arc::into_inner(Self::failing(Vec::new())).unwrap()
        })
    }
    fn calls(&self) -> Vec<(Instant, Event)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Sink for ScriptedSink {
    fn name(&self) -> &'static str {
        self.name
    }
    fn writer(&self) -> Writer {
        Writer::Recorder
    }
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> DeliverFuture<'a> {
        Box::pin(async move {
            if self.stuck {
                std::future::pending::<()>().await;
            }
            self.calls
                .lock()
                .unwrap()
                .push((Instant::now(), delivery.event.clone()));
            match self.answers.lock().unwrap().pop_front() {
                None => Ok(Delivered::Created),
                Some(error) => Err(Failure::new(Operation::Create, error)),
            }
        })
    }
}

fn status(code: u16, reason: &str) -> SinkError {
    SinkError::Status {
        code,
        reason: reason.into(),
        message: "scripted".into(),
    }
}

fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        kind: Some("Node".into()),
        name: Some(name.into()),
        uid: Some(name.into()),
        ..ObjectReference::default()
    }
}

/// A recorder writing to `sinks` as production does (client-go's defaults unless `options`
/// say otherwise), its writers running.
fn recorder(
    sinks: Vec<Arc<dyn Sink>>,
    options: RecorderOptions,
    clock: Arc<ManualClock>,
) -> (Arc<Recorder>, tokio::task::JoinSet<()>) {
    let recorder = Arc::new(Recorder::new(
        sinks,
        &options,
        ("clusterscope", "pod-1"),
        clock,
        clusterscope::metrics::RecorderMetrics::default(),
    ));
    let mut writers = tokio::task::JoinSet::new();
    recorder.start(&mut writers);
    (recorder, writers)
}

/// A recorder with client-go's defaults writing to one sink that always answers.
fn answering() -> (
    Arc<ManualClock>,
    Arc<ScriptedSink>,
    Arc<Recorder>,
    tokio::task::JoinSet<()>,
) {
    let clock = Arc::new(ManualClock::new());
    let sink = ScriptedSink::failing(Vec::new());
    let (r, writers) = recorder(
        vec![sink.clone()],
        RecorderOptions::default(),
        clock.clone(),
    );
    (clock, sink, r, writers)
}

/// Records one Warning about node `n1` and waits (in paused time) until it is written or
/// given up.
async fn record_one(sink: Arc<ScriptedSink>) -> Arc<Recorder> {
    let (r, _writers) = recorder(
        vec![sink],
        RecorderOptions::default(),
        Arc::new(ManualClock::new()),
    );
    assert!(r.event(&node_ref("n1"), EventType::Warning, "R", "message"));
    assert!(r.drain(Duration::from_secs(3600)).await, "drained");
    r
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried_12_times_first_sleep_jittered_then_10s() {
    let sink = ScriptedSink::failing(vec![SinkError::Transport("connection refused".into()); 20]);
    let r = record_one(sink.clone()).await;
    let calls = sink.calls();
    assert_eq!(calls.len(), 12, "client-go tries 12 times");
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps[0] <= Duration::from_secs(10),
        "the first sleep is a random part of 10 s: {gaps:?}"
    );
    assert!(
        gaps[1..].iter().all(|g| *g == Duration::from_secs(10)),
        "{gaps:?}"
    );
    let stats = r.metrics();
    assert_eq!(stats.writes.get("retried"), 11);
    assert_eq!(stats.writes.get("given_up"), 1);
    assert_eq!(stats.writes.get("success"), 0);
}

#[tokio::test(start_paused = true)]
async fn server_errors_and_429_are_retried_until_success() {
    let sink = ScriptedSink::failing(vec![
        status(500, "InternalError"),
        status(429, "TooManyRequests"),
        status(503, "ServiceUnavailable"),
    ]);
    let r = record_one(sink.clone()).await;
    assert_eq!(sink.calls().len(), 4);
    assert_eq!(r.metrics().writes.get("success"), 1);
    assert_eq!(r.metrics().writes.get("retried"), 3);
}

#[tokio::test(start_paused = true)]
async fn final_answers_are_not_retried() {
    for err in [
        status(409, "AlreadyExists"),
        status(422, "Invalid"),
        status(403, "Forbidden"),
        status(404, "NotFound"),
        SinkError::Invalid("no name".into()),
    ] {
        let sink = ScriptedSink::failing(vec![err.clone()]);
        let r = record_one(sink.clone()).await;
        assert_eq!(sink.calls().len(), 1, "{err}");
        assert_eq!(r.metrics().writes.get("given_up"), 1, "{err}");
        assert_eq!(r.metrics().writes.get("retried"), 0, "{err}");
    }
}

/// `RecorderStats` used to be read by tests only: what the recorder did is now in `/metrics`.
#[tokio::test(start_paused = true)]
async fn what_the_recorder_did_is_in_the_metrics_exposition() {
    let metrics = clusterscope::metrics::Metrics::new();
    let sink = ScriptedSink::failing(vec![status(500, "InternalError"), status(422, "Invalid")]);
    let r = Arc::new(Recorder::new(
        vec![sink.clone()],
        &RecorderOptions::default(),
        ("clusterscope", "pod-1"),
        Arc::new(ManualClock::new()),
        metrics.recorder.clone(),
    ));
    let mut writers = tokio::task::JoinSet::new();
    r.start(&mut writers);
    assert!(r.event(&node_ref("n1"), EventType::Warning, "R", "message"));
    assert!(r.drain(Duration::from_secs(3600)).await, "drained");
    let text = metrics.encode();
    for series in [
        r#"clusterscope_recorder_writes_total{result="retried"} 1"#,
        r#"clusterscope_recorder_writes_total{result="given_up"} 1"#,
        r#"clusterscope_recorder_writes_total{result="success"} 0"#,
        "clusterscope_recorder_dropped_events_total 0",
        "clusterscope_recorder_filtered_events_total 0",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_repeat_is_the_stored_event_with_the_next_count() {
    let (clock, sink, r, _writers) = answering();
    for _ in 0..3 {
        assert!(r.event(&node_ref("n1"), EventType::Warning, "R", "message"));
        assert!(r.drain(Duration::from_secs(60)).await);
        clock.advance(Duration::from_secs(5));
    }
    let calls = sink.calls();
    let counts: Vec<Option<i32>> = calls.iter().map(|c| c.1.count).collect();
    assert_eq!(counts, [Some(1), Some(2), Some(3)]);
    assert!(
        calls
            .iter()
            .all(|c| c.1.metadata.name == calls[0].1.metadata.name),
        "the repeats name the first event"
    );
    assert_eq!(
        calls[2].1.first_timestamp, calls[0].1.first_timestamp,
        "the first timestamp stays"
    );
    assert_ne!(calls[2].1.last_timestamp, calls[0].1.last_timestamp);
}

#[tokio::test]
async fn a_full_lane_drops_and_counts_without_blocking() {
    let (r, _writers) = recorder(
        vec![ScriptedSink::stuck()],
        RecorderOptions {
            queue_size: 10,
            ..RecorderOptions::default()
        },
        Arc::new(ManualClock::new()),
    );
    let mut accepted = 0;
    for i in 0..100 {
        if r.event(&node_ref(&format!("n{i}")), EventType::Normal, "R", "m") {
            accepted += 1;
        }
    }
    // The lane holds ten events (one of them in the stuck write); the rest are dropped.
    assert_eq!(accepted, 10);
    assert_eq!(r.metrics().dropped.get(), 90);
    assert!(
        !r.drain(Duration::from_millis(50)).await,
        "a stuck sink is not drained"
    );
}

#[tokio::test]
async fn events_reach_every_sink_as_client_go_makes_them() {
    let a = ScriptedSink::named("a");
    let b = ScriptedSink::named("b");
    let (r, _writers) = recorder(
        vec![a.clone(), b.clone()],
        RecorderOptions::default(),
        Arc::new(ManualClock::new()),
    );
    assert!(r.event(&node_ref("n1"), EventType::Normal, "Started", "m"));
    assert!(r.drain(Duration::from_secs(5)).await);
    assert_eq!((a.calls().len(), b.calls().len()), (1, 1));
    let ev = &a.calls()[0].1;
    assert_eq!(
        ev.metadata.namespace.as_deref(),
        Some("default"),
        "cluster-scoped → default"
    );
    let name = ev.metadata.name.as_deref().unwrap();
    assert!(
        name.starts_with("n1.") && u128::from_str_radix(&name[3..], 16).is_ok(),
        "{name}"
    );
    assert_eq!(ev.reporting_component.as_deref(), Some("clusterscope"));
    assert_eq!(ev.reporting_instance.as_deref(), Some("pod-1"));
}

#[tokio::test(start_paused = true)]
async fn the_spam_filter_drops_past_the_burst() {
    let (clock, sink, r, _writers) = answering();
    // Distinct reasons, one object: 25 pass the token bucket, the rest are filtered.
    for i in 0..30 {
        assert!(r.event(&node_ref("n1"), EventType::Normal, &format!("R{i}"), "m"));
        // Each its own name (named by the time, as client-go names them).
        clock.advance(Duration::from_millis(1));
    }
    assert!(r.drain(Duration::from_secs(5)).await);
    assert_eq!(sink.calls().len(), 25);
    assert_eq!(r.metrics().filtered.get(), 5);
}
