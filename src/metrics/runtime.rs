//! What `serve` runs beside the webhook: its background tasks, configuration reloads and API
//! discovery.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::ByResult;

/// The background tasks `serve` supervises (`runtime`, and the cluster side once the API
/// server answers): their `background_task_stops_total` series exist from the start.
pub const BACKGROUND_TASKS: &[&str] = &[
    "certificate-reloader",
    "configuration-reloader",
    "admin-server",
    "history",
    "discovery-timer",
    "cluster",
    "discovery",
    "mirror",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

#[derive(Clone, Debug)]
pub struct RuntimeMetrics {
    /// Background tasks that stopped before shutdown, by task (see `tasks`).
    task_stops: Family<TaskLabels, Counter>,
    /// Configuration file reloads: `success`, `error`.
    pub config_reloads: ByResult,
    /// API discovery refreshes: `success`, `error`.
    pub discovery_refreshes: ByResult,
}

impl RuntimeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let task_stops = Family::<TaskLabels, Counter>::default();
        registry.register(
            "background_task_stops",
            "Background tasks (reloaders, admin server, cluster side, history) that stopped before shutdown, by task: what they did is no longer done",
            task_stops.clone(),
        );
        for task in BACKGROUND_TASKS {
            drop(task_stops.get_or_create(&TaskLabels {
                task: (*task).to_owned(),
            }));
        }
        let config_reloads = ByResult::register(
            registry,
            "config_reloads",
            "Configuration file reloads by result (success, error: refused, the previous one stays)",
            &["success", "error"],
        );
        let discovery_refreshes = ByResult::register(
            registry,
            "discovery_refreshes",
            "API discovery refreshes by result",
            &["success", "error"],
        );
        RuntimeMetrics {
            task_stops,
            config_reloads,
            discovery_refreshes,
        }
    }

    /// A background task stopped before shutdown.
    pub fn task_stopped(&self, task: &str) {
        self.task_stops
            .get_or_create(&TaskLabels {
                task: task.to_owned(),
            })
            .inc();
    }
}
