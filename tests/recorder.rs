//! The recorder's write path with a scripted sink and tokio's paused clock (no real sleeps):
//! client-go's retry numbers, which errors are retried, patch-to-create fallback, and a
//! broadcaster that never blocks its caller.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterscope::recorder::broadcaster::{BroadcastStats, record_to_sink};
use clusterscope::recorder::sink::SinkFuture;
use clusterscope::recorder::{
    Broadcaster, BroadcasterOptions, Clock, Correlator, CorrelatorOptions, EventSink, ManualClock,
    Recorder, SinkError, WriteOutcome,
};
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use tokio::time::Instant;

/// A sink that answers from a script and remembers each call and when it came.
#[derive(Default)]
struct ScriptedSink {
    answers: Mutex<VecDeque<Result<(), SinkError>>>,
    calls: Mutex<Vec<(String, Instant, Event)>>,
}

impl ScriptedSink {
    fn with(answers: Vec<Result<(), SinkError>>) -> Arc<Self> {
        Arc::new(ScriptedSink {
            answers: Mutex::new(answers.into()),
            calls: Mutex::default(),
        })
    }
    fn answer(&self, op: &str, event: &Event) -> Result<Event, SinkError> {
        self.calls
            .lock()
            .unwrap()
            .push((op.to_owned(), Instant::now(), event.clone()));
        let next = self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()));
        next.map(|()| {
            let mut stored = event.clone();
            stored.metadata.resource_version = Some("1".into());
            stored
        })
    }
    fn ops(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect()
    }
}

impl EventSink for ScriptedSink {
    fn create<'a>(&'a self, event: &'a Event) -> SinkFuture<'a> {
        Box::pin(async move { self.answer("create", event) })
    }
    fn update<'a>(&'a self, event: &'a Event) -> SinkFuture<'a> {
        Box::pin(async move { self.answer("update", event) })
    }
    fn patch<'a>(&'a self, event: &'a Event, _p: &'a serde_json::Value) -> SinkFuture<'a> {
        Box::pin(async move { self.answer("patch", event) })
    }
    fn name(&self) -> &'static str {
        "scripted"
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

fn recorder_event(clock: Arc<ManualClock>, node: &str, reason: &str) -> Event {
    Recorder::new(
        Broadcaster::new(BroadcasterOptions::default()),
        "clusterscope",
        "pod-1",
        clock,
    )
    .make_event(&node_ref(node), "Warning", reason, "message")
}

async fn write(
    sink: &ScriptedSink,
    correlator: &mut Correlator,
    event: Event,
    jitter: f64,
) -> (WriteOutcome, BroadcastStats) {
    let stats = BroadcastStats::default();
    let mut jitter = move || jitter;
    let out = record_to_sink(
        sink,
        correlator,
        event,
        &BroadcasterOptions::default(),
        &stats,
        &mut jitter,
    )
    .await;
    (out, stats)
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried_12_times_first_sleep_jittered_then_10s() {
    let clock = Arc::new(ManualClock::new());
    let mut correlator = Correlator::new(CorrelatorOptions::default(), clock.clone());
    let sink = ScriptedSink::with(vec![
        Err(SinkError::Transport("connection refused".into()));
        20
    ]);
    let start = Instant::now();
    let (out, stats) = write(
        &sink,
        &mut correlator,
        recorder_event(clock, "n1", "R"),
        0.25,
    )
    .await;
    assert!(
        matches!(out, WriteOutcome::GaveUp(SinkError::Transport(_))),
        "{out:?}"
    );
    let calls = sink.calls.lock().unwrap();
    assert_eq!(calls.len(), 12, "client-go tries 12 times");
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert_eq!(
        gaps[0],
        Duration::from_millis(2500),
        "first sleep = 0.25 x 10 s"
    );
    assert!(
        gaps[1..].iter().all(|g| *g == Duration::from_secs(10)),
        "{gaps:?}"
    );
    assert_eq!(calls[0].1, start);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 11);
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn server_errors_and_429_are_retried_until_success() {
    let clock = Arc::new(ManualClock::new());
    let mut correlator = Correlator::new(CorrelatorOptions::default(), clock.clone());
    let sink = ScriptedSink::with(vec![
        Err(status(500, "InternalError")),
        Err(status(429, "TooManyRequests")),
        Err(status(503, "ServiceUnavailable")),
        Ok(()),
    ]);
    let (out, stats) = write(
        &sink,
        &mut correlator,
        recorder_event(clock, "n1", "R"),
        0.0,
    )
    .await;
    assert!(matches!(out, WriteOutcome::Written(_)));
    assert_eq!(sink.ops(), ["create"; 4]);
    assert_eq!(stats.written.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn final_answers_are_not_retried() {
    for err in [
        status(409, "AlreadyExists"),
        status(422, "Invalid"),
        status(403, "Forbidden"),
        status(404, "NotFound"),
    ] {
        let clock = Arc::new(ManualClock::new());
        let mut correlator = Correlator::new(CorrelatorOptions::default(), clock.clone());
        let sink = ScriptedSink::with(vec![Err(err.clone())]);
        let (out, _) = write(
            &sink,
            &mut correlator,
            recorder_event(clock, "n1", "R"),
            0.5,
        )
        .await;
        assert_eq!(out, WriteOutcome::Refused(err));
        assert_eq!(sink.ops().len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn repeat_is_a_patch_and_a_404_patch_becomes_a_create() {
    let clock = Arc::new(ManualClock::new());
    let mut correlator = Correlator::new(CorrelatorOptions::default(), clock.clone());
    let sink = ScriptedSink::with(vec![Ok(()), Ok(()), Err(status(404, "NotFound")), Ok(())]);
    let ev = || recorder_event(clock.clone(), "n1", "R");
    let first = ev();
    write(&sink, &mut correlator, first.clone(), 0.0).await;
    clock.advance(Duration::from_secs(5));
    write(&sink, &mut correlator, ev(), 0.0).await;
    clock.advance(Duration::from_secs(5));
    let (out, _) = write(&sink, &mut correlator, ev(), 0.0).await;
    assert_eq!(sink.ops(), ["create", "patch", "patch", "create"]);
    let calls = sink.calls.lock().unwrap();
    // The patches and the re-create carry the first event's name and the growing count.
    assert_eq!(calls[1].2.metadata.name, first.metadata.name);
    assert_eq!(calls[1].2.count, Some(2));
    assert_eq!(calls[3].2.count, Some(3));
    assert_eq!(
        calls[3].2.metadata.resource_version, None,
        "a create carries no resourceVersion"
    );
    assert!(matches!(out, WriteOutcome::Written(_)));
}

/// A sink that never answers, to fill the queue.
struct StuckSink;

impl EventSink for StuckSink {
    fn create<'a>(&'a self, _e: &'a Event) -> SinkFuture<'a> {
        Box::pin(std::future::pending())
    }
    fn update<'a>(&'a self, _e: &'a Event) -> SinkFuture<'a> {
        Box::pin(std::future::pending())
    }
    fn patch<'a>(&'a self, _e: &'a Event, _p: &'a serde_json::Value) -> SinkFuture<'a> {
        Box::pin(std::future::pending())
    }
    fn name(&self) -> &'static str {
        "stuck"
    }
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let broadcaster = Broadcaster::new(BroadcasterOptions {
        queue_size: 10,
        ..BroadcasterOptions::default()
    });
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new());
    broadcaster.start_recording_to_sink(Arc::new(StuckSink), clock.clone());
    let recorder = Recorder::new(broadcaster.clone(), "clusterscope", "pod-1", clock);
    let mut accepted = 0;
    for i in 0..100 {
        if recorder.event(&node_ref(&format!("n{i}")), "Normal", "R", "m") {
            accepted += 1;
        }
    }
    // The worker holds one event in the stuck write; ten wait in the queue.
    let dropped = broadcaster.stats().dropped.load(Ordering::Relaxed);
    assert!((10..=11).contains(&accepted), "accepted {accepted}");
    assert_eq!(dropped, 100 - accepted);
    assert!(
        !recorder.event(&node_ref("x"), "Bogus", "R", "m"),
        "bad type refused"
    );
}

#[tokio::test]
async fn events_reach_every_sink() {
    let broadcaster = Broadcaster::new(BroadcasterOptions::default());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new());
    let a = ScriptedSink::with(Vec::new());
    let b = ScriptedSink::with(Vec::new());
    broadcaster.start_recording_to_sink(a.clone(), clock.clone());
    broadcaster.start_recording_to_sink(b.clone(), clock.clone());
    let recorder = Recorder::new(broadcaster.clone(), "clusterscope", "pod-1", clock);
    assert!(recorder.event(&node_ref("n1"), "Normal", "Started", "m"));
    for _ in 0..200 {
        if a.ops().len() == 1 && b.ops().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        (a.ops(), b.ops()),
        (vec!["create".to_owned()], vec!["create".to_owned()])
    );
    let ev = &a.calls.lock().unwrap()[0].2;
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
