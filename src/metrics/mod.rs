//! Prometheus metrics (text exposition through `prometheus-client`).
//!
//! One registry, and in it one set of metrics per component, each registered by the
//! component's own type (`AdmissionMetrics::register`, ..., kubert's `ResourceWatchMetrics`
//! shape): a component is handed its set (cheap to clone, every metric is shared) and counts
//! there. [`Metrics`] holds every set and writes the exposition.

mod admission;
mod delivery;
mod history;
mod mirror;
mod otlp;
mod recorder;
mod runtime;
mod server;
mod subscriptions;

pub use admission::AdmissionMetrics;
pub use delivery::DeliveryMetrics;
pub use history::HistoryMetrics;
pub use mirror::{MirrorMetrics, OwnerMetrics};
pub use otlp::OtlpMetrics;
pub use recorder::RecorderMetrics;
pub use runtime::{BACKGROUND_TASKS, RuntimeMetrics};
pub use server::{ServerMetrics, TlsMetrics};
pub use subscriptions::SubscriptionMetrics;

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Distinct kinds outside the built-in table that get their own `kind` label value; later
/// ones are counted under [`OTHER_KIND`] so that a flood of custom kinds cannot blow up the
/// number of series.
pub const MAX_CUSTOM_KINDS: usize = 64;
pub const OTHER_KIND: &str = "_other";
/// Distinct reasons that get their own series; later ones are counted under [`OTHER_KIND`].
pub const MAX_REASONS: usize = 128;
/// Longest label value taken from request data (reasons); longer ones are cut.
pub const MAX_LABEL_VALUE: usize = 128;

/// `value` itself while fewer than `limit` distinct values were seen, else [`OTHER_KIND`].
fn fold(seen: &Mutex<HashSet<String>>, value: &str, limit: usize) -> String {
    let value = &*crate::telemetry::clip(value, MAX_LABEL_VALUE);
    let mut seen = crate::locks::lock(seen);
    if seen.contains(value) {
        value.to_owned()
    } else if seen.len() < limit {
        seen.insert(value.to_owned());
        value.to_owned()
    } else {
        OTHER_KIND.to_owned()
    }
}

/// A gauge's value from a count (saturating).
fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// A counter by `result`, every result an alert may name present from the start at zero.
#[derive(Clone, Debug, Default)]
pub struct ByResult(Family<ResultLabels, Counter>);

impl ByResult {
    fn register(registry: &mut Registry, name: &str, help: &str, results: &[&str]) -> Self {
        let family = Family::<ResultLabels, Counter>::default();
        registry.register(name, help, family.clone());
        for result in results {
            drop(family.get_or_create(&ResultLabels {
                result: (*result).to_owned(),
            }));
        }
        ByResult(family)
    }

    pub fn count(&self, result: &str) {
        self.add(result, 1);
    }

    pub fn add(&self, result: &str, n: u64) {
        self.0
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc_by(n);
    }

    /// How many were counted as `result` so far.
    pub fn get(&self, result: &str) -> u64 {
        self.0
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .get()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// Every metric clusterscope exports, by component.
pub struct Metrics {
    registry: Registry,
    pub admission: AdmissionMetrics,
    pub server: ServerMetrics,
    pub tls: TlsMetrics,
    pub delivery: DeliveryMetrics,
    pub mirror: MirrorMetrics,
    pub owners: OwnerMetrics,
    pub history: HistoryMetrics,
    pub otlp: OtlpMetrics,
    pub subscriptions: SubscriptionMetrics,
    pub recorder: RecorderMetrics,
    pub runtime: RuntimeMetrics,
    /// Every watch's failures by resource (`follow` counts them).
    pub watches: crate::follow::WatchErrors,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("clusterscope");
        let admission = AdmissionMetrics::register(&mut registry);
        let server = ServerMetrics::register(&mut registry);
        let tls = TlsMetrics::register(registry.sub_registry_with_prefix("tls"));
        let delivery = DeliveryMetrics::register(&mut registry);
        let mirror = MirrorMetrics::register(&mut registry);
        let owners = OwnerMetrics::register(&mut registry);
        let history = HistoryMetrics::register(
            registry.sub_registry_with_prefix("history"),
            delivery.relists("postgres"),
        );
        let otlp = OtlpMetrics::register(registry.sub_registry_with_prefix("otlp"));
        let subscriptions = SubscriptionMetrics::register(&mut registry);
        let recorder = RecorderMetrics::register(registry.sub_registry_with_prefix("recorder"));
        let runtime = RuntimeMetrics::register(&mut registry);
        let watches = crate::follow::WatchErrors::default();
        registry.register(
            "watch_errors",
            "Failures of every watch, by resource (each retried with backoff): events, persistentvolumes, pods, subscriptions.clusterscope.dev, ...",
            watches.family(),
        );
        // The series dashboards know, read from the same counter as
        // `watch_errors{resource="events"}`.
        registry.register(
            "mirror_watch_errors",
            "Failures of the mirror controller's watch on stored events (each retried with backoff; the same as watch_errors{resource=\"events\"})",
            watches.of("events"),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        Metrics {
            registry,
            admission,
            server,
            tls,
            delivery,
            mirror,
            owners,
            history,
            otlp,
            subscriptions,
            recorder,
            runtime,
            watches,
        }
    }

    /// Makes the per-channel series present (at zero) for these channels.
    pub fn channels<'a>(&self, names: impl IntoIterator<Item = &'a str> + Clone) {
        self.mirror.channels(names.clone());
        self.delivery.channels(names);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_alerts_name_exist_from_the_start_at_zero() {
        let m = Metrics::new();
        m.channels(["nodes", "storage"]);
        let text = m.encode();
        for series in [
            r#"clusterscope_config_reloads_total{result="error"} 0"#,
            r#"clusterscope_tls_certificate_reloads_total{result="error"} 0"#,
            r#"clusterscope_discovery_refreshes_total{result="error"} 0"#,
            r#"clusterscope_admission_shed_requests_total{why="memory"} 0"#,
            r#"clusterscope_admission_requests_total{operation="CREATE",outcome="error"} 0"#,
            r#"clusterscope_mirror_given_up_total{channel="storage"} 0"#,
            r#"clusterscope_delivery_namespaces_cut_total{channel="nodes"} 0"#,
            r#"clusterscope_history_batches_total{result="error"} 0"#,
            r#"clusterscope_recorder_writes_total{result="given_up"} 0"#,
            r#"clusterscope_deliveries_total{sink="kubernetes",result="given_up"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn custom_kinds_are_folded_past_the_limit() {
        let m = Metrics::new();
        for i in 0..MAX_CUSTOM_KINDS + 10 {
            m.admission
                .classified(&format!("Kind{i}"), None, "R", "cluster");
        }
        m.admission.classified("Node", Some("Node"), "R", "cluster");
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("clusterscope_events_classified_total{"))
            .count();
        assert_eq!(series, MAX_CUSTOM_KINDS + 2, "{text}");
        assert!(text.contains(r#"kind="_other""#));
        assert!(text.contains(r#"kind="Node""#));
        assert!(text.contains("clusterscope_build_info{version="));
    }

    #[test]
    fn a_watch_counts_its_failures_under_its_resource() {
        let m = Metrics::new();
        let errors = m.watches.of("persistentvolumes");
        assert!(
            m.encode()
                .contains(r#"clusterscope_watch_errors_total{resource="persistentvolumes"} 0"#),
            "present before the first failure"
        );
        errors.inc();
        assert!(
            m.encode()
                .contains(r#"clusterscope_watch_errors_total{resource="persistentvolumes"} 1"#)
        );
    }
}
