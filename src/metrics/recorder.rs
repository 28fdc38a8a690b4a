//! The recorder of clusterscope's own events (leader changes, refused configuration, given-up
//! deliveries). Registered under `recorder_`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::ByResult;

#[derive(Clone, Debug)]
pub struct RecorderMetrics {
    /// Events dropped because the recorder's queue was full.
    pub dropped: Counter,
    /// Events dropped by the spam filter.
    pub filtered: Counter,
    /// Writes: `success`, `retried` (a try failed, tried again), `given_up`.
    pub writes: ByResult,
}

impl RecorderMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let dropped = Counter::default();
        registry.register(
            "dropped_events",
            "Events dropped because a recorder queue was full",
            dropped.clone(),
        );
        let filtered = Counter::default();
        registry.register(
            "filtered_events",
            "Events dropped by the recorder's spam filter (client-go's: a burst of 25 per source, object and type, then one every 5 minutes)",
            filtered.clone(),
        );
        let writes = ByResult::register(
            registry,
            "writes",
            "Writes of clusterscope's own events by result: success (created or patched), retried (a try failed and is tried again), given_up (a final error, or the tries ran out)",
            &["success", "retried", "given_up"],
        );
        RecorderMetrics {
            dropped,
            filtered,
            writes,
        }
    }
}

impl Default for RecorderMetrics {
    /// Counted nowhere else: for a recorder whose figures no registry exports.
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}
