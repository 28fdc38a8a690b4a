//! Prometheus metrics (text exposition through `prometheus-client`).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Distinct kinds outside the built-in table that get their own `kind` label value; later
/// ones are counted under [`OTHER_KIND`] so that a flood of custom kinds cannot blow up the
/// number of series.
pub const MAX_CUSTOM_KINDS: usize = 64;
pub const OTHER_KIND: &str = "_other";
/// Distinct reasons that get their own series; later ones are counted under [`OTHER_KIND`].
pub const MAX_REASONS: usize = 128;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

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
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhyLabels {
    pub why: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub channel: String,
    pub operation: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// `accepted` or `refused`.
    pub state: String,
    /// `Accepted`, or the refusal's condition reason.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkResultLabels {
    pub sink: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

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

/// Every metric clusterscope exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Histogram,
    pub in_flight: Gauge,
    pub classified: Family<ClassifiedLabels, Counter>,
    pub panics: Counter,
    pub connections_open: Gauge,
    pub connections_rejected: Counter,
    pub cert_reloads: Family<ResultLabels, Counter>,
    pub cert_expiry: Gauge<i64, AtomicI64>,
    pub mirror_writes: Family<MirrorLabels, Counter>,
    pub mirror_queue_depth: Gauge,
    pub mirror_given_up: Family<ChannelLabels, Counter>,
    pub shed_requests: Family<WhyLabels, Counter>,
    pub connections_rejected_by_peer: Counter,
    pub mirror_lag: Histogram,
    /// The write budget (writes a second; 0 for none), and its use.
    pub write_budget: Gauge,
    pub budgeted_writes: Counter,
    pub budget_wait: Counter<f64, std::sync::atomic::AtomicU64>,
    /// How long the oldest delivery each sink holds has been waiting.
    pub delivery_backlog_age: Family<SinkLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub mirror_watch_errors: Counter,
    pub mirror_leader: Gauge,
    pub recorder_dropped: Counter,
    pub deliveries: Family<SinkResultLabels, Counter>,
    pub delivery_queue_full: Family<SinkLabels, Counter>,
    pub delivery_queue_depth: Family<SinkLabels, Gauge>,
    pub delivery_cut: Family<ChannelLabels, Counter>,
    pub owner_objects: Family<ResourceLabels, Gauge>,
    pub owner_skipped: Family<KindLabels, Gauge>,
    pub discovery_refreshes: Family<ResultLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub by_reason: Family<ReasonLabels, Counter>,
    pub history_batches: Family<ResultLabels, Counter>,
    pub history_batch_rows: Histogram,
    pub history_batch_duration: Histogram,
    pub history_expired_rows: Counter,
    pub history_retention_runs: Family<ResultLabels, Counter>,
    pub history_resyncs: Counter,
    pub history_schema_version: Gauge,
    pub history_lag: Histogram,
    pub subscriptions: Family<SubscriptionLabels, Gauge>,
    pub subscription_deliveries: Family<OutcomeLabels, Counter>,
    /// Background tasks that stopped before shutdown, by task (see `runtime::tasks`).
    background_task_stops: Family<TaskLabels, Counter>,
    custom_kinds: Mutex<HashSet<String>>,
    reasons: Mutex<HashSet<String>>,
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
        let panics = Counter::default();
        registry.register(
            "http_panics",
            "Request handlers that panicked (answered with 500)",
            panics.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Open webhook (HTTPS) connections",
            connections_open.clone(),
        );
        let connections_rejected = Counter::default();
        registry.register(
            "connections_rejected",
            "Connections closed at once because --max-connections were open",
            connections_rejected.clone(),
        );
        let cert_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_certificate_reloads",
            "Serving certificate loads by result (success, error)",
            cert_reloads.clone(),
        );
        let cert_expiry = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate in use, as Unix time",
            cert_expiry.clone(),
        );
        let mirror_writes = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "mirror_writes",
            "Mirror writes by channel, operation (label, unlabel, create, update, append, foreign) and result",
            mirror_writes.clone(),
        );
        let shed_requests = Family::<WhyLabels, Counter>::default();
        registry.register(
            "admission_shed_requests",
            "Requests answered 503 to protect the server: why is in-flight (--max-in-flight) or memory (--max-body-memory)",
            shed_requests.clone(),
        );
        // Present from the start, so alerts can be written on them.
        for why in ["in-flight", "memory"] {
            shed_requests
                .get_or_create(&WhyLabels {
                    why: why.to_owned(),
                })
                .inc_by(0);
        }
        let connections_rejected_by_peer = Counter::default();
        registry.register(
            "connections_rejected_by_peer",
            "Connections closed at once because their address already had --max-connections-per-peer open",
            connections_rejected_by_peer.clone(),
        );
        let mirror_given_up = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "mirror_given_up",
            "Stored events the mirror stopped trying to copy: refused by the API server, a foreign event holding the copy's name, or retries exhausted",
            mirror_given_up.clone(),
        );
        let mirror_queue_depth = Gauge::default();
        registry.register(
            "mirror_queue_depth",
            "Stored events waiting to be mirrored",
            mirror_queue_depth.clone(),
        );
        let mirror_lag = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 300.0, 900.0,
        ]);
        registry.register(
            "mirror_lag_seconds",
            "From a stored event reaching the controller to its copy written",
            mirror_lag.clone(),
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
        let budget_wait = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "write_budget_wait_seconds",
            "Time copy writes waited for the write budget, added up",
            budget_wait.clone(),
        );
        let delivery_backlog_age =
            Family::<SinkLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "delivery_backlog_age_seconds",
            "How long the oldest delivery a sink holds (queued, or waiting for a retry or the write budget) has waited; 0 when it holds none",
            delivery_backlog_age.clone(),
        );
        let mirror_watch_errors = Counter::default();
        registry.register(
            "mirror_watch_errors",
            "Watch failures of the mirror controller (each retried with backoff)",
            mirror_watch_errors.clone(),
        );
        let mirror_leader = Gauge::default();
        registry.register(
            "mirror_leader",
            "1 while this replica holds the mirror lease",
            mirror_leader.clone(),
        );
        let deliveries = Family::<SinkResultLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Deliveries by sink (kubernetes, log, postgres) and result: create, update, unchanged, append (written or already there), error (a try failed), given_up, dropped (the history buffer was full: written at the next re-list)",
            deliveries.clone(),
        );
        let delivery_queue_full = Family::<SinkLabels, Counter>::default();
        registry.register(
            "delivery_queue_full",
            "Deliveries refused because the sink's queue held its capacity (the mirror offers them again later)",
            delivery_queue_full.clone(),
        );
        let delivery_queue_depth = Family::<SinkLabels, Gauge>::default();
        registry.register(
            "delivery_queue_depth",
            "Deliveries a sink holds: queued, being written, or waiting for a retry",
            delivery_queue_depth.clone(),
        );
        let delivery_cut = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "delivery_namespaces_cut",
            "Namespaces left out of a delivery because a rule named more than its cap (deliver.nodePods.maxNamespaces)",
            delivery_cut.clone(),
        );
        let owner_objects = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "owner_objects",
            "Objects delivery rules know, by resource (persistentvolumes, volumeattachments, namespaces, pods, <resource>.<group> for ownerRules kinds)",
            owner_objects.clone(),
        );
        let owner_skipped = Family::<KindLabels, Gauge>::default();
        registry.register(
            "owner_rule_skipped_objects",
            "Objects of an ownerRules kind skipped because the rule's field is missing or not a string, by <Kind>.<group>",
            owner_skipped.clone(),
        );
        let recorder_dropped = Counter::default();
        registry.register(
            "recorder_dropped_events",
            "Events dropped because a recorder queue was full",
            recorder_dropped.clone(),
        );
        let discovery_refreshes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "discovery_refreshes",
            "API discovery refreshes by result",
            discovery_refreshes.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration file reloads by result (success, error: refused, the previous one stays)",
            config_reloads.clone(),
        );
        let history_batches = Family::<ResultLabels, Counter>::default();
        registry.register(
            "history_batches",
            "Batches written to the history database by result (success, error)",
            history_batches.clone(),
        );
        let history_batch_rows =
            Histogram::new([1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0]);
        registry.register(
            "history_batch_rows",
            "Rows in one batch written to the history database",
            history_batch_rows.clone(),
        );
        let history_batch_duration = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
        ]);
        registry.register(
            "history_batch_duration_seconds",
            "Time one batch upsert took in the history database",
            history_batch_duration.clone(),
        );
        let history_expired_rows = Counter::default();
        registry.register(
            "history_expired_rows",
            "Rows deleted from the history database because their event was last seen before the retention",
            history_expired_rows.clone(),
        );
        let history_retention_runs = Family::<ResultLabels, Counter>::default();
        registry.register(
            "history_retention_runs",
            "Retention passes over the history database by result (success, error)",
            history_retention_runs.clone(),
        );
        let history_resyncs = Counter::default();
        registry.register(
            "history_resyncs",
            "Re-lists of the stored events made to write what a full history buffer dropped",
            history_resyncs.clone(),
        );
        let history_schema_version = Gauge::default();
        registry.register(
            "history_schema_version",
            "Schema version of the history database once migrated (0: not configured or not reached yet)",
            history_schema_version.clone(),
        );
        let history_lag = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
        ]);
        registry.register(
            "history_lag_seconds",
            "From a stored event reaching the controller to its history row written",
            history_lag.clone(),
        );
        let subscriptions = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "subscriptions",
            "Tenant Subscriptions by state (accepted, refused) and condition reason",
            subscriptions.clone(),
        );
        let subscription_deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "subscription_deliveries",
            "Subscription copies by outcome: delivered (written), deferred (held back by the namespace's deliveriesPerSecond, planned again a second later)",
            subscription_deliveries.clone(),
        );
        for outcome in ["delivered", "deferred"] {
            drop(subscription_deliveries.get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            }));
        }
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        // Every series an alert can name exists from the start, at zero.
        for result in ["success", "error"] {
            let labels = ResultLabels {
                result: result.to_owned(),
            };
            drop(cert_reloads.get_or_create(&labels));
            drop(config_reloads.get_or_create(&labels));
            drop(discovery_refreshes.get_or_create(&labels));
            drop(history_batches.get_or_create(&labels));
            drop(history_retention_runs.get_or_create(&labels));
        }
        for why in ["in-flight", "memory"] {
            drop(shed_requests.get_or_create(&WhyLabels {
                why: why.to_owned(),
            }));
        }
        for operation in ["CREATE", "UPDATE"] {
            for outcome in [
                "patched",
                "unchanged",
                "skipped",
                "unlabelled",
                "invalid",
                "error",
            ] {
                drop(requests.get_or_create(&RequestLabels { operation, outcome }));
            }
        }
        let background_task_stops = Family::<TaskLabels, Counter>::default();
        registry.register(
            "background_task_stops",
            "Background tasks (reloaders, admin server, cluster side, history) that stopped before shutdown, by task: what they did is no longer done",
            background_task_stops.clone(),
        );
        for task in BACKGROUND_TASKS {
            drop(background_task_stops.get_or_create(&TaskLabels {
                task: (*task).to_owned(),
            }));
        }
        let metrics = Metrics {
            background_task_stops,
            registry,
            requests,
            duration,
            in_flight,
            classified,
            panics,
            connections_open,
            connections_rejected,
            cert_reloads,
            cert_expiry,
            mirror_writes,
            mirror_queue_depth,
            mirror_given_up,
            shed_requests,
            connections_rejected_by_peer,
            mirror_lag,
            write_budget,
            budgeted_writes,
            budget_wait,
            delivery_backlog_age,
            mirror_watch_errors,
            mirror_leader,
            recorder_dropped,
            deliveries,
            delivery_queue_full,
            delivery_queue_depth,
            delivery_cut,
            owner_objects,
            owner_skipped,
            discovery_refreshes,
            config_reloads,
            by_reason,
            history_batches,
            history_batch_rows,
            history_batch_duration,
            history_expired_rows,
            history_retention_runs,
            history_resyncs,
            history_schema_version,
            history_lag,
            subscriptions,
            subscription_deliveries,
            custom_kinds: Mutex::new(HashSet::new()),
            reasons: Mutex::new(HashSet::new()),
        };
        // The sinks every cluster install has; `postgres` is added when it is configured.
        metrics.delivery_sink("kubernetes");
        metrics.delivery_sink("log");
        metrics
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

    /// Counts one delivery's `result` in `sink`.
    pub fn delivery(&self, sink: &str, result: &str) {
        self.deliveries
            .get_or_create(&SinkResultLabels {
                sink: sink.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// A background task stopped before shutdown.
    pub fn background_task_stopped(&self, task: &str) {
        self.background_task_stops
            .get_or_create(&TaskLabels {
                task: task.to_owned(),
            })
            .inc();
    }

    /// Makes a sink's delivery families present (at zero) before its first delivery.
    pub fn delivery_sink(&self, sink: &str) {
        let labels = SinkLabels {
            sink: sink.to_owned(),
        };
        drop(self.delivery_queue_full.get_or_create(&labels));
        drop(self.delivery_queue_depth.get_or_create(&labels));
        drop(self.delivery_backlog_age.get_or_create(&labels));
        for result in ["create", "update", "error", "given_up", "dropped", "paced"] {
            drop(self.deliveries.get_or_create(&SinkResultLabels {
                sink: sink.to_owned(),
                result: result.to_owned(),
            }));
        }
    }

    /// One batch written to the history database (`ok`) or failed.
    pub fn history_batch(&self, rows: usize, took: std::time::Duration, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.history_batches
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
        self.history_batch_rows.observe(rows as f64);
        self.history_batch_duration.observe(took.as_secs_f64());
    }

    /// One history row written, `lag` after its event reached the controller.
    pub fn history_lag(&self, lag: std::time::Duration) {
        self.history_lag.observe(lag.as_secs_f64());
    }

    /// One retention pass: how many rows it deleted, or that it failed.
    pub fn history_retention(&self, deleted: Option<u64>) {
        let result = if deleted.is_some() {
            "success"
        } else {
            "error"
        };
        self.history_retention_runs
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
        self.history_expired_rows.inc_by(deleted.unwrap_or(0));
    }

    /// `namespaces` left out of one event's delivery in `channel` by a cap.
    pub fn delivery_cut(&self, channel: &str, namespaces: usize) {
        self.delivery_cut
            .get_or_create(&ChannelLabels {
                channel: channel.to_owned(),
            })
            .inc_by(u64::try_from(namespaces).unwrap_or(u64::MAX));
    }

    /// What the delivery rules' state holds: (resource, objects) and (kind, skipped objects).
    pub fn owner_state(&self, known: &[(String, usize)], skipped: &[(String, usize)]) {
        for (resource, n) in known {
            self.owner_objects
                .get_or_create(&ResourceLabels {
                    resource: resource.clone(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        for (kind, n) in skipped {
            self.owner_skipped
                .get_or_create(&KindLabels { kind: kind.clone() })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// How many subscriptions stand where: (state, reason, how many), every reason given (a
    /// reason none has now reads 0).
    pub fn subscriptions(&self, counts: &[(&str, &str, usize)]) {
        for (state, reason, n) in counts {
            self.subscriptions
                .get_or_create(&SubscriptionLabels {
                    state: (*state).to_owned(),
                    reason: (*reason).to_owned(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// `n` subscription copies with `outcome` (`delivered`, `deferred`).
    pub fn subscription_deliveries(&self, outcome: &str, n: usize) {
        self.subscription_deliveries
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc_by(n as u64);
    }

    /// One delivery refused by a full queue of `sink`.
    pub fn delivery_queue_full(&self, sink: &str) {
        self.delivery_queue_full
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .inc();
    }

    /// Deliveries `sink` holds now.
    pub fn delivery_queue_depth(&self, sink: &str, held: usize) {
        self.delivery_queue_depth
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Counts one mirror write: `operation` (label, unlabel, create, update, append, foreign) and
    /// `result` (success, error).
    pub fn mirror_write(&self, channel: &str, operation: &str, result: &str) {
        self.mirror_writes
            .get_or_create(&MirrorLabels {
                channel: channel.to_owned(),
                operation: operation.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// From a stored event reaching the mirror to its copy written.
    pub fn mirror_lag(&self, lag: std::time::Duration) {
        self.mirror_lag.observe(lag.as_secs_f64());
    }

    /// One copy write made within the budget, after waiting `waited` for it.
    pub fn budgeted_write(&self, waited: std::time::Duration) {
        self.budgeted_writes.inc();
        self.budget_wait.inc_by(waited.as_secs_f64());
    }

    /// The oldest delivery `sink` holds has waited `age`.
    pub fn delivery_backlog_age(&self, sink: &str, age: std::time::Duration) {
        self.delivery_backlog_age
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .set(age.as_secs_f64());
    }

    /// One request answered 503 to protect the server.
    pub fn shed(&self, why: &str) {
        self.shed_requests
            .get_or_create(&WhyLabels {
                why: why.to_owned(),
            })
            .inc();
    }

    /// Makes the per-channel series present (at zero) for these channels.
    pub fn channels<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for channel in names {
            let labels = ChannelLabels {
                channel: channel.to_owned(),
            };
            drop(self.mirror_given_up.get_or_create(&labels));
            drop(self.delivery_cut.get_or_create(&labels));
            for operation in ["label", "create", "update"] {
                for result in ["success", "error"] {
                    drop(self.mirror_writes.get_or_create(&MirrorLabels {
                        channel: channel.to_owned(),
                        operation: operation.to_owned(),
                        result: result.to_owned(),
                    }));
                }
            }
        }
    }

    /// One stored event the mirror gave up on.
    pub fn mirror_given_up(&self, channel: &str) {
        self.mirror_given_up
            .get_or_create(&ChannelLabels {
                channel: channel.to_owned(),
            })
            .inc();
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
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn custom_kinds_are_folded_past_the_limit() {
        let m = Metrics::new();
        for i in 0..MAX_CUSTOM_KINDS + 10 {
            m.classified(&format!("Kind{i}"), None, "R", "cluster");
        }
        m.classified("Node", Some("Node"), "R", "cluster");
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
}
