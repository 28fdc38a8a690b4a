//! Recording: clusterscope's events about itself made as client-go's recorder makes them,
//! correlated, and handed to the recorder's own [`Pipeline`]: a lane per sink, client-go's
//! queue size and retry policy, never blocking whoever records.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::Clock;
use super::correlator::{Correlated, Correlator, CorrelatorOptions};
use crate::delivery::{
    Delivered, Delivery, Failure, LaneOptions, Observer, Pipeline, RetryPolicy, Sink, key_of_source,
};
use crate::event::EventType;
use crate::metrics::RecorderMetrics;

/// Recorder settings; the defaults are client-go's.
#[derive(Debug, Clone, PartialEq)]
pub struct RecorderOptions {
    /// Events held per sink before new ones are dropped.
    pub queue_size: usize,
    /// Tries per write (transport errors, 5xx, 429).
    pub max_tries: u32,
    /// Sleep between tries; the first sleep is a random part of it.
    pub retry_sleep: Duration,
    pub correlator: CorrelatorOptions,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            queue_size: 1000,
            max_tries: 12,
            retry_sleep: Duration::from_secs(10),
            correlator: CorrelatorOptions::default(),
        }
    }
}

impl RecorderOptions {
    /// The lane defaults every sink of the recorder starts from: `queue_size` events,
    /// client-go's retries (the first sleep a random part of `retry_sleep`, then
    /// `retry_sleep`, `max_tries` in all).
    pub fn lane(&self) -> LaneOptions {
        LaneOptions::new(
            self.queue_size,
            1,
            RetryPolicy {
                base: self.retry_sleep,
                factor: 1,
                max_delay: self.retry_sleep,
                max_attempts: self.max_tries,
                jitter: crate::backoff::Jitter::First,
            },
        )
    }
}

/// The recorder's lanes report into its metrics (its own events are never about its own
/// failures: a write given up is logged by the lane, not recorded again).
struct Counts(RecorderMetrics);

impl Observer<dyn Sink> for Counts {
    fn delivered(&self, _sink: &dyn Sink, _delivery: &Delivery, _how: Delivered) {
        self.0.writes.count("success");
    }
    fn failed(&self, _sink: &dyn Sink, _delivery: &Delivery, _failure: &Failure, given_up: bool) {
        self.0
            .writes
            .count(if given_up { "given_up" } else { "retried" });
    }
    fn full(&self, _sink: &dyn Sink, _delivery: &Delivery) {
        self.0.dropped.inc();
    }
    fn dropped(&self, _sink: &dyn Sink, _delivery: &Delivery) {
        self.0.dropped.inc();
    }
    fn relisting(&self, _sink: &dyn Sink) {}
    fn depth(&self, _sink: &dyn Sink, _held: usize) {}
}

/// Makes events as client-go's recorder does, correlates them (aggregation, deduplication,
/// spam filter) and hands them to its sinks' lanes. Share it in an [`Arc`].
pub struct Recorder {
    pipeline: Pipeline,
    metrics: RecorderMetrics,
    correlator: Mutex<Correlator>,
    source: EventSource,
    clock: Arc<dyn Clock>,
}

impl Recorder {
    /// Records to `sinks`; `component` reports the events (also `reportingController`),
    /// `host` is the instance; what it does is counted in `metrics`. Nothing is written before
    /// [`Self::start`].
    pub fn new(
        sinks: Vec<Arc<dyn Sink>>,
        options: &RecorderOptions,
        (component, host): (&str, &str),
        clock: Arc<dyn Clock>,
        metrics: RecorderMetrics,
    ) -> Self {
        let lane = options.lane();
        let pipeline = sinks.into_iter().fold(
            Pipeline::new(Arc::new(Counts(metrics.clone()))),
            |pipeline, sink| pipeline.with_sink(sink, &lane),
        );
        Recorder {
            pipeline,
            metrics,
            correlator: Mutex::new(Correlator::new(options.correlator.clone(), clock.clone())),
            source: EventSource {
                component: Some(component.to_owned()),
                host: Some(host.to_owned()).filter(|h| !h.is_empty()),
            },
            clock,
        }
    }

    /// Starts the sinks' writers in `tasks`.
    pub fn start(&self, tasks: &mut tokio::task::JoinSet<()>) {
        self.pipeline.start(tasks);
    }

    /// Waits until what was recorded is written (or given up), for `within` at most: false
    /// when something is still held then.
    pub async fn drain(&self, within: Duration) -> bool {
        self.pipeline.drain(within).await
    }

    /// What it did so far.
    pub fn metrics(&self) -> &RecorderMetrics {
        &self.metrics
    }

    /// client-go `makeEvent`: named as [`super::name::event_name`] says, in the object's namespace or
    /// `default` for a cluster-scoped object, count 1, first and last timestamp now.
    pub fn make_event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Event {
        let now = self.clock.now();
        let namespace = reference
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        Event {
            metadata: ObjectMeta {
                name: Some(super::name::event_name(
                    reference.name.as_deref().unwrap_or(""),
                    now,
                )),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            involved_object: reference.clone(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            type_: Some(type_.as_str().to_owned()),
            source: Some(self.source.clone()),
            reporting_component: self.source.component.clone(),
            reporting_instance: self.source.host.clone(),
            ..Event::default()
        }
    }

    /// Records an event; never blocks (client-go refuses types other than Normal and Warning:
    /// here they cannot be asked for). False when a full lane dropped it (counted, logged).
    pub fn event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> bool {
        let event = self.make_event(reference, type_, reason, message);
        let event = match crate::locks::lock(&self.correlator).correlate(event) {
            Correlated::Skip => {
                self.metrics.filtered.inc();
                return true;
            }
            Correlated::Create(event) | Correlated::Patch(event) => event,
        };
        let key = key_of_source(&ObjectReference {
            namespace: event.metadata.namespace.clone(),
            name: event.metadata.name.clone(),
            ..ObjectReference::default()
        });
        self.enqueue(Delivery::new(key, event, reference))
    }

    /// Offers `delivery` to every sink's lane; a full lane drops it.
    fn enqueue(&self, delivery: Delivery) -> bool {
        let refused = self.pipeline.offer(&delivery);
        for full in &refused {
            let dropped = self.metrics.dropped.get();
            // One line for the first drop and every 100th after it, not a flood.
            if dropped % 100 == 1 {
                tracing::warn!(sink = full.sink, dropped_total = dropped, reason = ?delivery.event.reason,
                    "event dropped: the recorder's queue is full (the sink is slow or failing)");
            }
        }
        refused.is_empty()
    }
}

/// clusterscope's own events about itself, once a cluster is connected ([`OwnEvents::connect`]);
/// until then recording them is a no-op. Cheap to share in an [`Arc`].
#[derive(Default)]
pub struct OwnEvents {
    connected: arc_swap::ArcSwapOption<Connected>,
}

struct Connected {
    recorder: Arc<Recorder>,
    about: ObjectReference,
}

impl OwnEvents {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, events are recorded with `recorder`, about `about` (this replica's pod).
    pub fn connect(&self, recorder: Arc<Recorder>, about: ObjectReference) {
        self.connected
            .store(Some(Arc::new(Connected { recorder, about })));
    }

    /// Stops recording (the cluster side is stopping): the recorder is let go.
    pub fn disconnect(&self) {
        self.connected.store(None);
    }

    /// Records a Warning about this replica. `None` before a cluster is connected; else
    /// whether the event was queued (false: a full queue dropped it).
    pub fn warn(&self, reason: &str, message: &str) -> Option<bool> {
        let connected = self.connected.load_full()?;
        Some(
            connected
                .recorder
                .event(&connected.about, EventType::Warning, reason, message),
        )
    }
}
