//! The recorder: how clusterscope writes events, modelled on client-go's `tools/record`.
//!
//! - [`sink`]: where events go ([`KubeSink`] through the API, [`LogSink`] as JSON lines).
//! - [`broadcaster`]: a bounded queue per sink that never blocks the caller, a worker per
//!   sink, and client-go's retry policy (12 tries, first sleep random in 0-10 s, then 10 s;
//!   here transport errors, 5xx and 429 are retried, other answers are final).
//! - [`correlator`]: client-go's aggregation, deduplication and spam filter.
//! - [`pipeline`]: lanes per sink (a bounded [`queue`], workers, retries, a report of every
//!   delivery) that carry what the mirror forwards: copies, log lines, and later destinations.
//! - [`Recorder`]: makes events the way client-go does, so clusterscope can record events
//!   about itself.
//!
//! - [`OwnEvents`]: clusterscope's events about itself (its pod): a refused configuration, a
//!   given-up delivery; silent until a cluster is connected.
//!
//! Why not kube-runtime's `events::Recorder`: its `publish` is awaited by the caller (the API
//! server's latency lands on whoever records), with no queue, no retry policy, no spam filter
//! and no drop accounting; client-go's broadcaster has all four.
//!
//! Usable on its own: nothing here depends on the webhook.

pub mod broadcaster;
pub mod correlator;
pub mod error;
pub mod pipeline;
pub mod queue;
pub mod sink;

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

pub use broadcaster::{Broadcaster, BroadcasterOptions, WriteOutcome};
pub use correlator::{Correlated, Correlator, CorrelatorOptions};
pub use sink::{EventSink, KubeSink, LogSink, SinkError};

/// The time, as the recorder sees it.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to (tests, simulations).
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// Starts at 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        ManualClock(Mutex::new(
            Timestamp::from_second(1_767_225_600).unwrap_or(Timestamp::UNIX_EPOCH),
        ))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = crate::locks::lock(&self.0);
        let by = k8s_openapi::jiff::SignedDuration::try_from(by).unwrap_or_default();
        *t = t.checked_add(by).unwrap_or(*t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *crate::locks::lock(&self.0)
    }
}

/// Event types the API server accepts.
pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// Makes events as client-go's recorder does and hands them to a broadcaster.
pub struct Recorder {
    broadcaster: Broadcaster,
    source: EventSource,
    clock: std::sync::Arc<dyn Clock>,
}

impl Recorder {
    /// `component` reports the events (also `reportingController`); `host` is the instance.
    pub fn new(
        broadcaster: Broadcaster,
        component: &str,
        host: &str,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Self {
        Recorder {
            broadcaster,
            source: EventSource {
                component: Some(component.to_owned()),
                host: Some(host.to_owned()).filter(|h| !h.is_empty()),
            },
            clock,
        }
    }

    /// client-go `makeEvent`: named `<object>.<hex nanoseconds>`, in the object's namespace or
    /// `default` for a cluster-scoped object, count 1, first and last timestamp now.
    pub fn make_event(
        &self,
        reference: &ObjectReference,
        type_: &str,
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
                name: Some(format!(
                    "{}.{:x}",
                    reference.name.as_deref().unwrap_or(""),
                    now.as_nanosecond()
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
            type_: Some(type_.to_owned()),
            source: Some(self.source.clone()),
            reporting_component: self.source.component.clone(),
            reporting_instance: self.source.host.clone(),
            ..Event::default()
        }
    }

    /// Records an event; never blocks. Types other than Normal and Warning are refused (false),
    /// as client-go does.
    pub fn event(
        &self,
        reference: &ObjectReference,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> bool {
        if type_ != NORMAL && type_ != WARNING {
            tracing::error!(type_, reason, "unsupported event type; event not recorded");
            return false;
        }
        self.broadcaster
            .send(self.make_event(reference, type_, reason, message))
    }
}

/// clusterscope's own events about itself, once a cluster is connected ([`OwnEvents::connect`]);
/// until then recording them is a no-op. Cheap to share in an [`std::sync::Arc`].
#[derive(Default)]
pub struct OwnEvents {
    connected: arc_swap::ArcSwapOption<Connected>,
}

struct Connected {
    recorder: std::sync::Arc<Recorder>,
    about: ObjectReference,
}

impl OwnEvents {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, events are recorded with `recorder`, about `about` (this replica's pod).
    pub fn connect(&self, recorder: std::sync::Arc<Recorder>, about: ObjectReference) {
        self.connected
            .store(Some(std::sync::Arc::new(Connected { recorder, about })));
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
                .event(&connected.about, WARNING, reason, message),
        )
    }
}

/// A reference to a pod (this replica), as its own events name it; `uid` lets
/// `kubectl describe pod` find them.
pub fn pod_reference(namespace: &str, name: &str, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        uid: uid.filter(|u| !u.is_empty()).map(str::to_owned),
        ..ObjectReference::default()
    }
}
