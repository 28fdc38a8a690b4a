//! The broadcaster: a bounded, never-blocking queue per sink, and a worker per sink that
//! correlates events and writes them with client-go's retry policy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use tokio::sync::mpsc;

use super::Clock;
use super::correlator::{Correlated, Correlator, CorrelatorOptions};
use super::sink::{EventSink, SinkError};

/// Broadcaster settings; the defaults are client-go's.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcasterOptions {
    /// Events queued per sink before new ones are dropped.
    pub queue_size: usize,
    /// Tries per write (transport errors, 5xx, 429).
    pub max_tries: u32,
    /// Sleep between tries; the first sleep is a random part of it.
    pub retry_sleep: Duration,
    pub correlator: CorrelatorOptions,
}

impl Default for BroadcasterOptions {
    fn default() -> Self {
        BroadcasterOptions {
            queue_size: 1000,
            max_tries: 12,
            retry_sleep: Duration::from_secs(10),
            correlator: CorrelatorOptions::default(),
        }
    }
}

/// Counters of one broadcaster (all sinks together).
#[derive(Debug, Default)]
pub struct BroadcastStats {
    /// Events dropped because a sink's queue was full.
    pub dropped: AtomicU64,
    /// Writes that succeeded (creates and patches).
    pub written: AtomicU64,
    /// Events dropped by the spam filter.
    pub filtered: AtomicU64,
    /// Writes given up: a final error, or the tries ran out.
    pub failed: AtomicU64,
    /// Tries that failed and were retried.
    pub retries: AtomicU64,
}

/// How one event's write ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    Written(Box<Event>),
    Filtered,
    /// A final answer (AlreadyExists, Forbidden, Invalid...): not retried.
    Refused(SinkError),
    /// Retryable failures until the tries ran out.
    GaveUp(SinkError),
}

/// Fans events out to sinks; cheap to clone; `send` never blocks.
#[derive(Clone)]
pub struct Broadcaster {
    queues: Arc<Mutex<Vec<mpsc::Sender<Event>>>>,
    stats: Arc<BroadcastStats>,
    options: BroadcasterOptions,
}

impl Broadcaster {
    pub fn new(options: BroadcasterOptions) -> Self {
        Broadcaster {
            queues: Arc::new(Mutex::new(Vec::new())),
            stats: Arc::new(BroadcastStats::default()),
            options,
        }
    }

    pub fn stats(&self) -> Arc<BroadcastStats> {
        self.stats.clone()
    }

    /// Starts a worker that writes every event sent from now on to `sink`.
    pub fn start_recording_to_sink(
        &self,
        sink: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
    ) -> tokio::task::JoinHandle<()> {
        self.start_with_jitter(sink, clock, Box::new(fastrand::f64))
    }

    /// As [`Self::start_recording_to_sink`], with the random source of the first retry sleep given.
    pub fn start_with_jitter(
        &self,
        sink: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
        jitter: Box<dyn FnMut() -> f64 + Send>,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = mpsc::channel(self.options.queue_size.max(1));
        crate::locks::lock(&self.queues).push(tx);
        let mut correlator = Correlator::new(self.options.correlator.clone(), clock);
        let options = self.options.clone();
        let stats = self.stats.clone();
        let mut jitter = jitter;
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                record_to_sink(
                    sink.as_ref(),
                    &mut correlator,
                    event,
                    &options,
                    &stats,
                    &mut jitter,
                )
                .await;
            }
        })
    }

    /// Queues `event` for every sink without waiting; a full queue drops it (counted, logged).
    /// Returns false when any sink dropped it.
    pub fn send(&self, event: Event) -> bool {
        let queues = crate::locks::lock(&self.queues);
        let mut all = true;
        for q in queues.iter() {
            if let Err(e) = q.try_send(event.clone()) {
                all = false;
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // One line for the first drop and every 100th after it, not a flood.
                if dropped % 100 == 1 {
                    tracing::warn!(
                        dropped_total = dropped,
                        reason = if matches!(e, mpsc::error::TrySendError::Full(_)) {
                            "queue full"
                        } else {
                            "sink stopped"
                        },
                        "event dropped"
                    );
                }
            }
        }
        all
    }
}

/// Correlates one event and writes it, retrying as client-go does: up to `max_tries`, the
/// first sleep a random part of `retry_sleep`, then `retry_sleep`. A patch answered 404 (the
/// stored event expired) becomes a create.
pub async fn record_to_sink(
    sink: &dyn EventSink,
    correlator: &mut Correlator,
    event: Event,
    options: &BroadcasterOptions,
    stats: &BroadcastStats,
    jitter: &mut (dyn FnMut() -> f64 + Send),
) -> WriteOutcome {
    let (mut event, patch) = match correlator.correlate(event) {
        Correlated::Skip => {
            stats.filtered.fetch_add(1, Ordering::Relaxed);
            return WriteOutcome::Filtered;
        }
        Correlated::Create(e) => (e, None),
        Correlated::Patch { event, patch } => (event, Some(patch)),
    };
    let mut tries = 0u32;
    loop {
        let result = match &patch {
            Some(p) => match sink.patch(&event, p).await {
                Err(e) if e.is_not_found() => {
                    event.metadata.resource_version = None;
                    sink.create(&event).await
                }
                other => other,
            },
            None => {
                event.metadata.resource_version = None;
                sink.create(&event).await
            }
        };
        let err = match result {
            Ok(stored) => {
                correlator.update_state(&stored);
                stats.written.fetch_add(1, Ordering::Relaxed);
                return WriteOutcome::Written(Box::new(stored));
            }
            Err(e) => e,
        };
        let name = event.metadata.name.as_deref().unwrap_or("");
        if !err.is_retryable() {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            if err.is_already_exists() {
                tracing::debug!(sink = sink.name(), event = name, "event already exists");
            } else {
                tracing::warn!(sink = sink.name(), event = name, error = %err, "event not written; not retrying");
            }
            return WriteOutcome::Refused(err);
        }
        tries += 1;
        if tries >= options.max_tries {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(sink = sink.name(), event = name, tries, error = %err, "event not written; retry limit reached");
            return WriteOutcome::GaveUp(err);
        }
        stats.retries.fetch_add(1, Ordering::Relaxed);
        let sleep = if tries == 1 {
            // Spread the first retry so that clients do not retry in step after an outage.
            options.retry_sleep.mul_f64(jitter().clamp(0.0, 1.0))
        } else {
            options.retry_sleep
        };
        tracing::debug!(sink = sink.name(), event = name, tries, ?sleep, error = %err, "event write failed; will retry");
        tokio::time::sleep(sleep).await;
    }
}
