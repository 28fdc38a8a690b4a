//! OpenTelemetry logs export: the events the channels with `otlp: true` route, sent as OTLP log
//! records to the collector the `otlp:` section names, one record per namespace the event
//! concerns, so that a team's query for its namespace in its log backend finds the Node
//! failure under its pods.
//!
//! One more delivery sink ([`OtlpSink`]): its lane batches, bounds memory, retries and drops
//! while the collector fails (a re-list afterwards exports what was dropped while the stored
//! events still exist); nothing here queues. The crates: the official protocol types
//! (`opentelemetry-proto`) over tonic and hyper ([`client`]), not the OpenTelemetry SDK, whose
//! batch processor would be a second queue beside the lane, with its own loss rules.

pub mod client;
pub mod record;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Otlp, SharedConfig};
use crate::delivery::{
    BatchFuture, Cause, DeliverFuture, Delivered, Delivery, Failure, LaneOptions, Operation,
    Overflow, Sink, SinkError, Writer,
};
use crate::metrics::OtlpMetrics;
use client::Exporter;

/// The sink's name (`deliveries_total{sink="otlp"}`, logs).
pub const OTLP: &str = "otlp";

/// The longest wait between two tries of an export the collector did not take.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// How the OTLP lane runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpOptions {
    /// Events held while they wait (one key per stored event): past it, and while the
    /// collector fails, new ones are dropped and exported by the re-list once it answers.
    pub buffer: usize,
    /// Export requests in flight at once.
    pub senders: usize,
    /// Events per export request (each one record per namespace it concerns).
    pub batch: usize,
    /// How long a sender waits for a batch to fill once it has one event.
    pub linger: Duration,
}

impl Default for OtlpOptions {
    fn default() -> Self {
        OtlpOptions {
            buffer: 20_000,
            senders: 2,
            batch: 512,
            linger: Duration::from_millis(100),
        }
    }
}

/// Exports to the collector the configuration names now.
pub struct OtlpSink {
    config: SharedConfig,
    /// Made from the configuration's `otlp:` on first use, made again when a reload changes it.
    exporter: Mutex<Option<Arc<Exporter>>>,
    metrics: OtlpMetrics,
    options: OtlpOptions,
    /// A collector's partial success is said once a minute at most.
    rejected_log: crate::telemetry::Throttle,
}

impl OtlpSink {
    pub fn new(config: SharedConfig, metrics: OtlpMetrics, options: OtlpOptions) -> Self {
        OtlpSink {
            config,
            exporter: Mutex::new(None),
            metrics,
            options,
            rejected_log: crate::telemetry::Throttle::new(Duration::from_secs(60)),
        }
    }

    /// Makes the exporter for the configuration in force now, when it has an `otlp:` section,
    /// so that a CA or certificate file it cannot read is said at start, not at the first
    /// event.
    pub fn prepare(&self) {
        if self.config.load().otlp.is_none() {
            return;
        }
        if let Err(e) = self.exporter() {
            tracing::error!(error = %e, "otlp: cannot export until the configuration or its files change; events of otlp channels are given up meanwhile");
        }
    }

    /// The exporter for the settings in force; a failure to make one is final for what waits
    /// (the configuration must change first).
    fn exporter(&self) -> Result<Arc<Exporter>, SinkError> {
        let config = self.config.load();
        let Some(settings) = config.otlp.as_ref() else {
            return Err(SinkError::Invalid(
                "the configuration has no otlp: section any more (reloaded): nothing to export to"
                    .into(),
            ));
        };
        let mut held = crate::locks::lock(&self.exporter);
        if let Some(exporter) = held.as_ref().filter(|e| &e.settings == settings) {
            return Ok(exporter.clone());
        }
        let exporter =
            Arc::new(Exporter::new(settings).map_err(|e| SinkError::Invalid(Cause::of(&e)))?);
        tracing::info!(endpoint = %settings.endpoint, protocol = settings.protocol.as_str(),
            gzip = settings.gzip, headers = ?settings.headers, "otlp: exporting to the collector");
        *held = Some(exporter.clone());
        Ok(exporter)
    }

    /// Exports `batch` as one request: one answer per delivery.
    async fn export(&self, batch: &[Delivery]) -> Vec<Result<Delivered, Failure>> {
        let failed =
            |error: SinkError| vec![Err(Failure::new(Operation::Export, error)); batch.len()];
        let exporter = match self.exporter() {
            Ok(e) => e,
            Err(e) => return failed(e),
        };
        let (request, records) = record::request(batch, &exporter.settings.resource, unix_nanos());
        let started = Instant::now();
        let answer = exporter.export(request).await;
        self.metrics
            .export_duration
            .observe(started.elapsed().as_secs_f64());
        let records = records as u64;
        match answer {
            Ok(taken) => {
                self.taken(&exporter.settings, records, &taken);
                for d in batch {
                    self.metrics.lag.observe(d.since.elapsed().as_secs_f64());
                }
                vec![Ok(Delivered::Appended); batch.len()]
            }
            Err(error) => {
                let retried = error.action(Writer::Collector) != crate::delivery::Action::GiveUp;
                self.metrics
                    .exports
                    .count(if retried { "retry" } else { "final" });
                self.metrics.records.add("failed", records);
                failed(error)
            }
        }
    }

    /// Counts what the collector took, and says once a minute what it rejected.
    fn taken(&self, settings: &Otlp, records: u64, taken: &client::Taken) {
        let rejected = taken.rejected.min(records);
        self.metrics.records.add("exported", records - rejected);
        if rejected == 0 && taken.message.is_empty() {
            self.metrics.exports.count("success");
            return;
        }
        self.metrics.exports.count("partial");
        self.metrics.records.add("rejected", rejected);
        if self.rejected_log.allow().is_some() {
            tracing::warn!(endpoint = %settings.endpoint, rejected, of = records,
                collector_says = %crate::telemetry::clip(&taken.message, 512),
                "otlp: the collector took the export but rejected some records (not sent again: it would reject them again); said once a minute at most, counted in clusterscope_otlp_records_total with result rejected");
        }
    }
}

/// Now, in nanoseconds since the epoch.
fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Sink for OtlpSink {
    fn name(&self) -> &'static str {
        OTLP
    }

    fn writer(&self) -> Writer {
        Writer::Collector
    }

    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> DeliverFuture<'a> {
        Box::pin(async move {
            self.export(std::slice::from_ref(delivery))
                .await
                .pop()
                .unwrap_or_else(|| {
                    Err(Failure::new(
                        Operation::Export,
                        SinkError::Unanswered { sink: OTLP },
                    ))
                })
        })
    }

    fn deliver_batch<'a>(&'a self, batch: &'a [Delivery]) -> BatchFuture<'a> {
        Box::pin(self.export(batch))
    }

    /// `senders` requests of `batch` events at a time; `buffer` events wait at most, and a
    /// full buffer drops while the collector fails (its outage never holds back the copies;
    /// the re-list once it drains exports what was dropped). A state of an event already
    /// exported is not exported again after a re-list.
    fn lane(&self, defaults: &LaneOptions) -> LaneOptions {
        LaneOptions {
            capacity: self.options.buffer.max(1),
            workers: self.options.senders.max(1),
            batch: self.options.batch.max(1),
            linger: self.options.linger,
            overflow: Overflow::DropWhileFailing,
            skip_repeats: true,
            // A collector that does not answer is waited for as long as the buffer holds
            // (what it drops meanwhile comes back with the re-list): no delivery is given
            // up for want of an answer.
            retry: crate::delivery::RetryPolicy {
                max_attempts: crate::backoff::FOREVER,
                max_delay: MAX_RETRY_DELAY,
                ..defaults.retry.clone()
            },
        }
    }
}
