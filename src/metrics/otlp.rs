//! The OpenTelemetry export's records and requests. Registered under `otlp_`.

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::ByResult;

#[derive(Clone, Debug)]
pub struct OtlpMetrics {
    /// Records by result: `exported` (the collector took them), `rejected` (its partial
    /// success refused them), `failed` (their export failed; tried again unless final).
    pub records: ByResult,
    /// Export requests by result: `success`, `partial`, `retry` (a later try may pass),
    /// `final` (none can).
    pub exports: ByResult,
    pub export_duration: Histogram,
    /// From a stored event's state first seen to its records taken by the collector.
    pub lag: Histogram,
}

impl OtlpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let records = ByResult::register(
            registry,
            "records",
            "Log records exported to the OTLP collector by result (exported, rejected by its partial success, failed)",
            &["exported", "rejected", "failed"],
        );
        let exports = ByResult::register(
            registry,
            "exports",
            "Export requests to the OTLP collector by result (success, partial, retry: a later try may pass, final: none can)",
            &["success", "partial", "retry", "final"],
        );
        let export_duration = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
        ]);
        registry.register(
            "export_duration_seconds",
            "Time one export request to the OTLP collector took",
            export_duration.clone(),
        );
        let lag = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
        ]);
        registry.register(
            "lag_seconds",
            "From a stored event reaching the controller to its records taken by the OTLP collector",
            lag.clone(),
        );
        OtlpMetrics {
            records,
            exports,
            export_duration,
            lag,
        }
    }
}
