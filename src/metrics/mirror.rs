//! The mirror controller (copies, labels, the write budget, the lease) and the owner state
//! its delivery rules read.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::delivery::ChannelLabels;
use super::gauge_value;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub channel: String,
    pub operation: String,
    pub result: String,
}

#[derive(Clone, Debug)]
pub struct MirrorMetrics {
    writes: Family<MirrorLabels, Counter>,
    pub queue_depth: Gauge,
    given_up: Family<ChannelLabels, Counter>,
    lag: Histogram,
    /// The write budget (writes a second; 0 for none), and its use.
    pub write_budget: Gauge,
    budgeted_writes: Counter,
    budget_wait: Counter<f64, AtomicU64>,
    pub leader: Gauge,
}

impl MirrorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let writes = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "mirror_writes",
            "Mirror writes by channel, operation (label, unlabel, create, update, append, foreign) and result",
            writes.clone(),
        );
        let given_up = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "mirror_given_up",
            "Stored events the mirror stopped trying to copy: refused by the API server, a foreign event holding the copy's name, or retries exhausted",
            given_up.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "mirror_queue_depth",
            "Stored events waiting to be mirrored",
            queue_depth.clone(),
        );
        let lag = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 300.0, 900.0,
        ]);
        registry.register(
            "mirror_lag_seconds",
            "From a stored event reaching the controller to its copy written",
            lag.clone(),
        );
        let write_budget = Gauge::default();
        registry.register(
            "write_budget_per_second",
            "Copies the mirror may write to the API server a second (--max-writes-per-second; 0: no budget)",
            write_budget.clone(),
        );
        let budgeted_writes = Counter::default();
        registry.register(
            "budgeted_writes",
            "Copy writes made within the write budget",
            budgeted_writes.clone(),
        );
        let budget_wait = Counter::<f64, AtomicU64>::default();
        registry.register(
            "write_budget_wait_seconds",
            "Time copy writes waited for the write budget, added up",
            budget_wait.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "mirror_leader",
            "1 while this replica holds the mirror lease",
            leader.clone(),
        );
        MirrorMetrics {
            writes,
            queue_depth,
            given_up,
            lag,
            write_budget,
            budgeted_writes,
            budget_wait,
            leader,
        }
    }

    /// Makes the per-channel series present (at zero) for these channels.
    pub fn channels<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for channel in names {
            drop(self.given_up.get_or_create(&ChannelLabels {
                channel: channel.to_owned(),
            }));
            for operation in ["label", "create", "update"] {
                for result in ["success", "error"] {
                    drop(self.writes.get_or_create(&MirrorLabels {
                        channel: channel.to_owned(),
                        operation: operation.to_owned(),
                        result: result.to_owned(),
                    }));
                }
            }
        }
    }

    /// Counts one mirror write: `operation` (label, unlabel, create, update, append, foreign) and
    /// `result` (success, error).
    pub fn write(&self, channel: &str, operation: &str, result: &str) {
        self.writes
            .get_or_create(&MirrorLabels {
                channel: channel.to_owned(),
                operation: operation.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// One stored event the mirror gave up on.
    pub fn given_up(&self, channel: &str) {
        self.given_up
            .get_or_create(&ChannelLabels {
                channel: channel.to_owned(),
            })
            .inc();
    }

    /// From a stored event reaching the mirror to its copy written.
    pub fn lag(&self, lag: std::time::Duration) {
        self.lag.observe(lag.as_secs_f64());
    }

    /// One copy write made within the budget, after waiting `waited` for it.
    pub fn budgeted_write(&self, waited: std::time::Duration) {
        self.budgeted_writes.inc();
        self.budget_wait.inc_by(waited.as_secs_f64());
    }

    /// Stored events waiting now.
    pub fn queued(&self, n: usize) {
        self.queue_depth.set(gauge_value(n));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// What the delivery rules' owner state holds.
#[derive(Clone, Debug)]
pub struct OwnerMetrics {
    objects: Family<ResourceLabels, Gauge>,
    skipped: Family<KindLabels, Gauge>,
}

impl OwnerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let objects = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "owner_objects",
            "Objects delivery rules know, by resource (persistentvolumes, volumeattachments, namespaces, pods, <resource>.<group> for ownerRules kinds)",
            objects.clone(),
        );
        let skipped = Family::<KindLabels, Gauge>::default();
        registry.register(
            "owner_rule_skipped_objects",
            "Objects of an ownerRules kind skipped because the rule's field is missing or not a string, by <Kind>.<group>",
            skipped.clone(),
        );
        OwnerMetrics { objects, skipped }
    }

    /// What the state holds: (resource, objects) and (kind, skipped objects).
    pub fn state(&self, known: &[(String, usize)], skipped: &[(String, usize)]) {
        for (resource, n) in known {
            self.objects
                .get_or_create(&ResourceLabels {
                    resource: resource.clone(),
                })
                .set(gauge_value(*n));
        }
        for (kind, n) in skipped {
            self.skipped
                .get_or_create(&KindLabels { kind: kind.clone() })
                .set(gauge_value(*n));
        }
    }
}
