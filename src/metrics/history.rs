//! The history database's writes and retention. Registered under `history_`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::ByResult;

#[derive(Clone, Debug)]
pub struct HistoryMetrics {
    batches: ByResult,
    batch_rows: Histogram,
    batch_duration: Histogram,
    expired_rows: Counter,
    retention_runs: ByResult,
    pub resyncs: Counter,
    pub schema_version: Gauge,
    lag: Histogram,
}

impl HistoryMetrics {
    /// `resyncs`: the delivery engine's re-lists of the `postgres` sink, also exported here.
    pub fn register(registry: &mut Registry, resyncs: Counter) -> Self {
        let results = ["success", "error"];
        let batches = ByResult::register(
            registry,
            "batches",
            "Batches written to the history database by result (success, error)",
            &results,
        );
        let batch_rows = Histogram::new([1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0]);
        registry.register(
            "batch_rows",
            "Rows in one batch written to the history database",
            batch_rows.clone(),
        );
        let batch_duration = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
        ]);
        registry.register(
            "batch_duration_seconds",
            "Time one batch upsert took in the history database",
            batch_duration.clone(),
        );
        let expired_rows = Counter::default();
        registry.register(
            "expired_rows",
            "Rows deleted from the history database because their event was last seen before the retention",
            expired_rows.clone(),
        );
        let retention_runs = ByResult::register(
            registry,
            "retention_runs",
            "Retention passes over the history database by result (success, error)",
            &results,
        );
        registry.register(
            "resyncs",
            "Re-lists of the stored events made to write what a full history buffer dropped (the same as delivery_relists{sink=\"postgres\"})",
            resyncs.clone(),
        );
        let schema_version = Gauge::default();
        registry.register(
            "schema_version",
            "Schema version of the history database once migrated (0: not configured or not reached yet)",
            schema_version.clone(),
        );
        let lag = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
        ]);
        registry.register(
            "lag_seconds",
            "From a stored event reaching the controller to its history row written",
            lag.clone(),
        );
        HistoryMetrics {
            batches,
            batch_rows,
            batch_duration,
            expired_rows,
            retention_runs,
            resyncs,
            schema_version,
            lag,
        }
    }

    /// One batch written to the history database (`ok`) or failed.
    pub fn batch(&self, rows: usize, took: std::time::Duration, ok: bool) {
        self.batches.count(if ok { "success" } else { "error" });
        self.batch_rows.observe(rows as f64);
        self.batch_duration.observe(took.as_secs_f64());
    }

    /// One history row written, `lag` after its event reached the controller.
    pub fn lag(&self, lag: std::time::Duration) {
        self.lag.observe(lag.as_secs_f64());
    }

    /// One retention pass: how many rows it deleted, or that it failed.
    pub fn retention(&self, deleted: Option<u64>) {
        self.retention_runs.count(if deleted.is_some() {
            "success"
        } else {
            "error"
        });
        self.expired_rows.inc_by(deleted.unwrap_or(0));
    }
}
