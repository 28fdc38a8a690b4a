//! The delivery engine every output shares: mirror copies, the log stream, history rows and
//! clusterscope's own events all travel as [`Delivery`]s through the [`lanes`] of a
//! [`Pipeline`]. It knows deliveries, lanes, batches and failures, and nothing of what decides
//! them (the mirror plans its deliveries; the recorder offers its events).
//!
//! - [`lanes`]: the [`Sink`] trait an output implements, and the [`Pipeline`] that runs a lane
//!   per registered sink (bounded, keyed, workers, batches, retries, one report per delivery).
//! - [`queue`]: the bounded keyed work queue under each lane (client-go's `workqueue`), with
//!   its [`RetryPolicy`].
//! - [`error`]: why a write failed ([`SinkError`], [`Failure`]) and the one decision of what
//!   follows ([`Action`]).
//!
//! A new output is one type implementing [`Sink`], registered once: the mirror registers its
//! outputs in `mirror::outputs`, where each also says which deliveries of a routed event it
//! takes.

pub mod error;
pub mod lanes;
pub mod queue;

pub use crate::backoff::{Jitter, RetryPolicy};
pub use error::{Action, Cause, Failure, Operation, SinkError, Writer};
pub use lanes::{
    BatchFuture, DeliverFuture, Delivered, Delivery, LaneOptions, Observer, Overflow, Pipeline,
    Refused, Says, Sink, content_fingerprint, fingerprint, fingerprint_with, key_of_source, says,
};
pub use queue::{Done, KeyedQueue};
