//! What the webhook answered, and what it saw in the events it labelled.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{MAX_CUSTOM_KINDS, MAX_REASONS, fold};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassifiedLabels {
    pub scope: &'static str,
    /// Borrowed for a built-in kind: the hot path allocates no label it can avoid.
    pub kind: std::borrow::Cow<'static, str>,
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhyLabels {
    pub why: String,
}

/// The outcomes of a review (`admission::Outcome` names them).
const OUTCOMES: [&str; 6] = [
    "patched",
    "unchanged",
    "skipped",
    "unlabelled",
    "invalid",
    "error",
];

#[derive(Clone, Debug)]
pub struct AdmissionMetrics {
    requests: Family<RequestLabels, Counter>,
    pub duration: Histogram,
    pub in_flight: Gauge,
    classified: Family<ClassifiedLabels, Counter>,
    by_reason: Family<ReasonLabels, Counter>,
    shed: Family<WhyLabels, Counter>,
    custom_kinds: Arc<Mutex<HashSet<String>>>,
    reasons: Arc<Mutex<HashSet<String>>>,
}

impl AdmissionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "AdmissionReview requests by operation and outcome (patched, unchanged, skipped, unlabelled, invalid, error)",
            requests.clone(),
        );
        let duration = Histogram::new([
            0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
            0.25, 0.5, 1.0, 2.0,
        ]);
        registry.register(
            "admission_duration_seconds",
            "Time from request start to response, including reading the body",
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "admission_requests_in_flight",
            "AdmissionReview requests being served",
            in_flight.clone(),
        );
        let classified = Family::<ClassifiedLabels, Counter>::default();
        registry.register(
            "events_classified",
            "Events about cluster-scoped objects by kind and channel",
            classified.clone(),
        );
        let by_reason = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "events_by_reason",
            "Events about cluster-scoped objects by reason (past 128 distinct reasons: _other)",
            by_reason.clone(),
        );
        let shed = Family::<WhyLabels, Counter>::default();
        registry.register(
            "admission_shed_requests",
            "Requests answered 503 to protect the server: why is in-flight (--max-in-flight) or memory (--max-body-memory)",
            shed.clone(),
        );
        // Every series an alert can name exists from the start, at zero.
        for why in ["in-flight", "memory"] {
            drop(shed.get_or_create(&WhyLabels {
                why: why.to_owned(),
            }));
        }
        for operation in ["CREATE", "UPDATE"] {
            for outcome in OUTCOMES {
                drop(requests.get_or_create(&RequestLabels { operation, outcome }));
            }
        }
        AdmissionMetrics {
            requests,
            duration,
            in_flight,
            classified,
            by_reason,
            shed,
            custom_kinds: Arc::default(),
            reasons: Arc::default(),
        }
    }

    /// Counts a request. `operation` comes from the request: anything but the four
    /// admission operations (and `unknown`, for requests refused before decoding) is `other`.
    pub fn request(&self, operation: &str, outcome: &'static str) {
        let operation = match operation {
            "CREATE" => "CREATE",
            "UPDATE" => "UPDATE",
            "DELETE" => "DELETE",
            "CONNECT" => "CONNECT",
            "unknown" => "unknown",
            _ => "other",
        };
        self.requests
            .get_or_create(&RequestLabels { operation, outcome })
            .inc();
    }

    /// Counts an event about a cluster-scoped object. Kinds outside the built-in table
    /// (`builtin_kind`, the table's name, is `None`) and reasons come from request data: both
    /// are folded into `_other` past their limits.
    pub fn classified(
        &self,
        kind_label: &str,
        builtin_kind: Option<&'static str>,
        reason: &str,
        channel: &str,
    ) {
        let kind = match builtin_kind {
            Some(kind) => std::borrow::Cow::Borrowed(kind),
            None => std::borrow::Cow::Owned(fold(&self.custom_kinds, kind_label, MAX_CUSTOM_KINDS)),
        };
        self.by_reason
            .get_or_create(&ReasonLabels {
                reason: fold(&self.reasons, reason, MAX_REASONS),
            })
            .inc();
        self.classified
            .get_or_create(&ClassifiedLabels {
                scope: "cluster",
                kind,
                channel: channel.to_owned(),
            })
            .inc();
    }

    /// One request answered 503 to protect the server.
    pub fn shed(&self, why: &str) {
        self.shed
            .get_or_create(&WhyLabels {
                why: why.to_owned(),
            })
            .inc();
    }
}
