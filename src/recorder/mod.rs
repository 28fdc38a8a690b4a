//! The recorder: how clusterscope writes its own events, modelled on client-go's
//! `tools/record`, on top of the [`crate::delivery`] engine (its own lanes: client-go's queue
//! size and retries).
//!
//! - [`sink`]: the recorder's sinks ([`KubeSink`] through the API, [`LogSink`] as JSON lines),
//!   delivery [`crate::delivery::Sink`]s like every output.
//! - [`correlator`]: client-go's aggregation, deduplication and spam filter.
//! - [`record`]: the [`Recorder`] (makes events as client-go does, correlates them, hands them
//!   to its lanes without blocking: client-go's queue size of 1000 and its retries, 12 tries,
//!   the first sleep random in 0-10 s, then 10 s) and [`OwnEvents`], clusterscope's events
//!   about itself (its pod): a refused configuration, a given-up delivery; silent until a
//!   cluster is connected.
//!
//! Why not kube-runtime's `events::Recorder`: its `publish` is awaited by the caller (the API
//! server's latency lands on whoever records), with no queue, no retry policy, no spam filter
//! and no drop accounting; client-go's broadcaster has all four.
//!
//! Usable on its own: nothing here depends on the webhook.

pub mod correlator;
pub mod name;
pub mod record;
pub mod sink;

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;

pub use correlator::{Correlated, Correlator, CorrelatorOptions};
pub use record::{OwnEvents, Recorder, RecorderOptions};
pub use sink::{KubeSink, LogSink};

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
