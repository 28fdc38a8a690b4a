//! The mirror's outputs: each is a delivery [`Sink`] that also says which deliveries of a
//! routed event it takes ([`Output::plan`]). The controller runs one lane per registered output
//! ([`crate::mirror::sync::Syncer::with_output`]) and hands each its own plan: no output is
//! named anywhere else, and nothing links a delivery to a lane by name.
//!
//! A new output: a type implementing [`Sink`] (where it writes) and [`Output`] (what it takes),
//! registered once where `serve` is assembled.

use std::time::Instant;

use k8s_openapi::api::core::v1::{Event, ObjectReference};

use crate::config::Switches;
use crate::delivery::{Delivery, Sink, fingerprint, key_of_source};
use crate::history::sink::PostgresSink;
use crate::otlp::OtlpSink;
use crate::owners::Destination;
use crate::recorder::LogSink;

/// One stored event as the controller routed it: what every output plans its deliveries from.
#[derive(Debug, Clone)]
pub struct Routed {
    /// Where the source is stored (namespace, name, uid).
    pub source: ObjectReference,
    /// The source as it is once labelled (what a line or a row records).
    pub event: Event,
    /// The channel it was routed to.
    pub channel: String,
    /// The outputs the channel (or a subscription) turns on besides copies.
    pub switches: Switches,
    /// The copies to write, one per namespace the event goes to, with where and why.
    pub copies: Vec<(Destination, Event)>,
    /// The namespaces the event goes to, and how it reached each.
    pub destinations: Vec<Destination>,
    /// When this state of the source was first seen.
    pub since: Instant,
}

impl Routed {
    /// A delivery of `event` under `key`, routed as this event is.
    pub fn delivery(&self, key: String, event: Event, destinations: Vec<Destination>) -> Delivery {
        Delivery {
            key,
            fingerprint: fingerprint(&event),
            event,
            channel: self.channel.clone(),
            source: self.source.clone(),
            since: self.since,
            destinations,
        }
    }

    /// `namespace/name` of the source (the key of an output that holds one record per source).
    pub fn source_key(&self) -> String {
        key_of_source(&self.source)
    }
}

/// How an output's deliveries are counted besides `deliveries_total{sink}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// As the mirror's writes (`mirror_writes_total`, `mirror_lag_seconds`,
    /// `mirror_given_up_total`): log lines.
    AsMirrorWrites,
    /// As the mirror's writes, and a copy a subscription asked for as one of its deliveries
    /// (`status.delivered`, `subscription_deliveries_total`): copies.
    AsCopies,
    /// Apart: the output reports what it measures itself (history rows: their own lag).
    Apart,
}

/// A sink the mirror delivers to.
pub trait Output: Sink {
    /// Its deliveries of one routed event (none when the channel does not turn it on).
    fn plan(&self, routed: &Routed) -> Vec<Delivery>;

    /// How its deliveries are counted.
    fn counted(&self) -> Counted {
        Counted::AsMirrorWrites
    }

    /// A stored source was deleted (it expired): what the output knows of it goes, and the
    /// keys its deliveries hold are returned (its lane drops what it still holds).
    fn forget(&self, _source: &ObjectReference) -> Vec<String> {
        Vec::new()
    }

    /// The stored events are being listed again (a new leader, a watch restart): what the
    /// output believes it holds may have changed meanwhile.
    fn relisted(&self) {}
}

/// The log stream takes one line per source state, for channels with `log: true`.
impl Output for LogSink {
    fn plan(&self, routed: &Routed) -> Vec<Delivery> {
        if !routed.switches.log {
            return Vec::new();
        }
        vec![routed.delivery(routed.source_key(), routed.event.clone(), Vec::new())]
    }

    fn forget(&self, source: &ObjectReference) -> Vec<String> {
        vec![key_of_source(source)]
    }
}

/// The history database takes one row per source, keyed by its uid, with the namespaces the
/// event went to, for channels with `history: true` (or a subscription that asks for it).
/// A deleted (expired) source's pending row is still written.
impl Output for PostgresSink {
    fn plan(&self, routed: &Routed) -> Vec<Delivery> {
        if !routed.switches.history {
            return Vec::new();
        }
        let key = routed
            .source
            .uid
            .clone()
            .unwrap_or_else(|| routed.source_key());
        vec![routed.delivery(key, routed.event.clone(), routed.destinations.clone())]
    }

    /// History rows are not mirror writes: the sink measures their lag itself.
    fn counted(&self) -> Counted {
        Counted::Apart
    }
}

/// The OpenTelemetry export takes one delivery per source state, for channels with `otlp:
/// true`, with every namespace the event concerns (a record each). A deleted (expired)
/// source's pending records are still exported.
impl Output for OtlpSink {
    fn plan(&self, routed: &Routed) -> Vec<Delivery> {
        if !routed.switches.otlp {
            return Vec::new();
        }
        vec![routed.delivery(
            routed.source_key(),
            routed.event.clone(),
            routed.destinations.clone(),
        )]
    }

    /// Records are not mirror writes: the sink counts them itself (`otlp_records_total`).
    fn counted(&self) -> Counted {
        Counted::Apart
    }
}
