//! The delivery engine's lanes, one series per sink.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::gauge_value;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkResultLabels {
    pub sink: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
}

#[derive(Clone, Debug)]
pub struct DeliveryMetrics {
    deliveries: Family<SinkResultLabels, Counter>,
    queue_full: Family<SinkLabels, Counter>,
    queue_depth: Family<SinkLabels, Gauge>,
    backlog_age: Family<SinkLabels, Gauge<f64, AtomicU64>>,
    cut: Family<ChannelLabels, Counter>,
    relists: Family<SinkLabels, Counter>,
}

impl DeliveryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let deliveries = Family::<SinkResultLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Deliveries by sink (kubernetes, log, postgres) and result: create, update, unchanged, append (written or already there), error (a try failed), given_up, dropped (the history buffer was full: written at the next re-list)",
            deliveries.clone(),
        );
        let queue_full = Family::<SinkLabels, Counter>::default();
        registry.register(
            "delivery_queue_full",
            "Deliveries refused because the sink's queue held its capacity (the mirror offers them again later)",
            queue_full.clone(),
        );
        let queue_depth = Family::<SinkLabels, Gauge>::default();
        registry.register(
            "delivery_queue_depth",
            "Deliveries a sink holds: queued, being written, or waiting for a retry",
            queue_depth.clone(),
        );
        let backlog_age = Family::<SinkLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "delivery_backlog_age_seconds",
            "How long the oldest delivery a sink holds (queued, or waiting for a retry or the write budget) has waited; 0 when it holds none",
            backlog_age.clone(),
        );
        let cut = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "delivery_namespaces_cut",
            "Namespaces left out of a delivery because a rule named more than its cap (deliver.nodePods.maxNamespaces)",
            cut.clone(),
        );
        let relists = Family::<SinkLabels, Counter>::default();
        registry.register(
            "delivery_relists",
            "Re-lists of the stored events a sink's lane asked for once it drained, to deliver what it dropped while its sink failed (postgres, otlp)",
            relists.clone(),
        );
        let metrics = DeliveryMetrics {
            deliveries,
            queue_full,
            queue_depth,
            backlog_age,
            cut,
            relists,
        };
        // The sinks every cluster install has; `postgres` is added when it is configured.
        metrics.sink("kubernetes");
        metrics.sink("log");
        metrics
    }

    /// Makes a sink's series present (at zero) before its first delivery.
    pub fn sink(&self, sink: &str) {
        let labels = SinkLabels {
            sink: sink.to_owned(),
        };
        drop(self.queue_full.get_or_create(&labels));
        drop(self.queue_depth.get_or_create(&labels));
        drop(self.backlog_age.get_or_create(&labels));
        drop(self.relists.get_or_create(&labels));
        for result in ["create", "update", "error", "given_up", "dropped", "paced"] {
            drop(self.deliveries.get_or_create(&SinkResultLabels {
                sink: sink.to_owned(),
                result: result.to_owned(),
            }));
        }
    }

    /// The re-lists `sink`'s lane asked for (shared: `history_resyncs` is the one of
    /// `postgres`).
    pub fn relists(&self, sink: &str) -> Counter {
        self.relists
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .clone()
    }

    /// Makes the per-channel series present (at zero).
    pub fn channels<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for channel in names {
            drop(self.cut.get_or_create(&ChannelLabels {
                channel: channel.to_owned(),
            }));
        }
    }

    /// Counts one delivery's `result` in `sink`.
    pub fn delivery(&self, sink: &str, result: &str) {
        self.deliveries
            .get_or_create(&SinkResultLabels {
                sink: sink.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// One delivery refused by a full queue of `sink`.
    pub fn queue_full(&self, sink: &str) {
        self.queue_full
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .inc();
    }

    /// Deliveries `sink` holds now.
    pub fn queue_depth(&self, sink: &str, held: usize) {
        self.queue_depth
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .set(gauge_value(held));
    }

    /// The oldest delivery `sink` holds has waited `age`.
    pub fn backlog_age(&self, sink: &str, age: std::time::Duration) {
        self.backlog_age
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .set(age.as_secs_f64());
    }

    /// `namespaces` left out of one event's delivery in `channel` by a cap.
    pub fn cut(&self, channel: &str, namespaces: usize) {
        self.cut
            .get_or_create(&ChannelLabels {
                channel: channel.to_owned(),
            })
            .inc_by(u64::try_from(namespaces).unwrap_or(u64::MAX));
    }
}
