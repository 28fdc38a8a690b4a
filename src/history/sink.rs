//! The `postgres` delivery sink, and the retention task. The mirror hands it the deliveries of
//! `history: true` channels; its lane hands it batches (up to `batch_rows`,
//! or what arrived within `linger`, one batch per writer at a time) and it writes each batch as
//! one upsert, so the lane keeps its per-delivery retries and reports while the database sees
//! few statements.
//!
//! A failed batch: when the database is down or busy every delivery in it fails retryable and
//! the lane retries it with backoff (the lane's capacity is the bounded buffer, and while the
//! database fails a full buffer drops, counts, and has the stored events listed again once it
//! has drained); when the database refused the data itself, the batch is written again row by
//! row, so that one bad row fails alone instead of holding back the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::{Store, describe, transient};
use super::{POSTGRES, Row};
use crate::delivery::{
    BatchFuture, DeliverFuture, Delivered, Delivery, Failure, LaneOptions, Operation, Overflow,
    Sink, SinkError, Writer,
};

/// How the sink batches and buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkOptions {
    /// Rows in one statement at most.
    pub batch_rows: usize,
    /// How long a writer waits for more rows once it has one.
    pub linger: Duration,
    /// Batches written at the same time (each holds one connection).
    pub writers: usize,
    /// Rows held while the database is slow or down; past it, deliveries are dropped (counted)
    /// and written at the re-list that follows once it drains.
    pub buffer: usize,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            batch_rows: 500,
            linger: Duration::from_millis(20),
            writers: 2,
            buffer: 20_000,
        }
    }
}

/// Told about every batch written (metrics).
pub trait BatchObserver: Send + Sync {
    /// A batch of `rows` rows took `took`; `ok` when it was written.
    fn batch(&self, rows: usize, took: Duration, ok: bool);
    /// A row was written (created or changed), `lag` after its event's change was first seen.
    fn written(&self, lag: Duration);
}

/// Observes nothing.
impl BatchObserver for () {
    fn batch(&self, _: usize, _: Duration, _: bool) {}
    fn written(&self, _: Duration) {}
}

impl BatchObserver for crate::metrics::HistoryMetrics {
    fn batch(&self, rows: usize, took: Duration, ok: bool) {
        Self::batch(self, rows, took, ok);
    }
    fn written(&self, lag: Duration) {
        self.lag(lag);
    }
}

/// The pipeline's `postgres` sink.
pub struct PostgresSink {
    store: Store,
    options: SinkOptions,
    observer: Arc<dyn BatchObserver>,
    /// Nothing is written until this turns true (the schema is migrated).
    ready: tokio::sync::watch::Receiver<bool>,
}

impl PostgresSink {
    /// A sink writing into `store` as `options` say.
    pub fn start(store: Store, options: SinkOptions, observer: Arc<dyn BatchObserver>) -> Self {
        Self::start_when(
            store,
            options,
            observer,
            tokio::sync::watch::channel(true).1,
        )
    }

    /// Like [`Self::start`], but writing nothing until `ready` turns true (the schema is
    /// migrated); deliveries wait in the lane meanwhile.
    pub fn start_when(
        store: Store,
        options: SinkOptions,
        observer: Arc<dyn BatchObserver>,
        ready: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        PostgresSink {
            store,
            options,
            observer,
            ready,
        }
    }

    /// Writes `batch` once the schema is ready; one result per delivery, in order.
    async fn write_batch(&self, batch: &[Delivery]) -> Vec<Result<Delivered, Failure>> {
        let mut ready = self.ready.clone();
        if ready.wait_for(|r| *r).await.is_err() {
            return vec![Err(stopped()); batch.len()];
        }
        let rows: Vec<Row> = batch
            .iter()
            .map(|d| Row::of(&d.event, &d.channel, &d.destinations))
            .collect();
        let results = write(&self.store, &rows, self.observer.as_ref()).await;
        for (delivery, result) in batch.iter().zip(&results) {
            if matches!(result, Ok(how) if how.wrote()) {
                self.observer.written(delivery.since.elapsed());
            }
        }
        results
    }
}

/// How the history database is named in a failed delivery.
const STORE: &str = "history database";

fn stopped() -> Failure {
    Failure::new(
        Operation::Upsert,
        SinkError::Store {
            store: STORE,
            cause: "not prepared (serve is stopping)".into(),
            transient: true,
        },
    )
}

/// The database answered fewer rows than it was given: the rest are not known to be written.
fn unanswered() -> Failure {
    Failure::new(Operation::Upsert, SinkError::Unanswered { sink: POSTGRES })
}

/// Down or busy is retried; refused data is not.
fn failure(e: sqlx::Error) -> Failure {
    let transient = transient(&e);
    Failure::new(
        Operation::Upsert,
        SinkError::Store {
            store: STORE,
            cause: describe(&e).into(),
            transient,
        },
    )
}

/// Writes `rows` as one statement; one result per row, in order.
async fn write(
    store: &Store,
    rows: &[Row],
    observer: &dyn BatchObserver,
) -> Vec<Result<Delivered, Failure>> {
    // One statement cannot update a row twice: of two rows for one uid (which the lane's keys
    // prevent), the later is written and both are answered with its result.
    let mut index: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(rows.len());
    let mut distinct: Vec<&Row> = Vec::with_capacity(rows.len());
    let mut slot_of = Vec::with_capacity(rows.len());
    for row in rows {
        let slot = *index.entry(row.uid.as_str()).or_insert_with(|| {
            distinct.push(row);
            distinct.len() - 1
        });
        distinct[slot] = row;
        slot_of.push(slot);
    }
    let started = Instant::now();
    let result = store.upsert(&distinct).await;
    observer.batch(distinct.len(), started.elapsed(), result.is_ok());
    let answers: Vec<Result<Delivered, Failure>> = match result {
        Ok(done) => done.into_iter().map(Ok).collect(),
        Err(e) if transient(&e) || distinct.len() == 1 => vec![Err(failure(e)); distinct.len()],
        Err(e) => {
            // The data was refused: find the row(s) by writing each alone.
            tracing::warn!(rows = distinct.len(), error = %describe(&e),
                "history: PostgreSQL refused a batch; writing its rows one by one");
            let mut answers = Vec::with_capacity(distinct.len());
            for row in &distinct {
                let started = Instant::now();
                let one = store.upsert(&[row]).await;
                observer.batch(1, started.elapsed(), one.is_ok());
                answers.push(match one {
                    Ok(mut done) => done.pop().ok_or_else(unanswered),
                    Err(e) => Err(failure(e)),
                });
            }
            answers
        }
    };
    slot_of
        .into_iter()
        .map(|slot| {
            answers
                .get(slot)
                .cloned()
                .unwrap_or_else(|| Err(unanswered()))
        })
        .collect()
}

impl Sink for PostgresSink {
    fn name(&self) -> &'static str {
        POSTGRES
    }

    /// Its store's errors say themselves whether they pass ([`SinkError::Store`]).
    fn writer(&self) -> Writer {
        Writer::Mirror
    }

    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> DeliverFuture<'a> {
        Box::pin(async move {
            self.write_batch(std::slice::from_ref(delivery))
                .await
                .pop()
                .unwrap_or_else(|| Err(unanswered()))
        })
    }

    fn deliver_batch<'a>(&'a self, batch: &'a [Delivery]) -> BatchFuture<'a> {
        Box::pin(self.write_batch(batch))
    }

    /// `writers` batches of `batch_rows` at a time; the buffer is the lane's capacity, and a
    /// full buffer drops while the database fails (a database outage never holds back the
    /// copies; the re-list once it drains writes what was dropped).
    fn lane(&self, defaults: &LaneOptions) -> LaneOptions {
        LaneOptions {
            capacity: self.options.buffer.max(1),
            workers: self.options.writers.max(1),
            batch: self.options.batch_rows.max(1),
            linger: self.options.linger,
            overflow: Overflow::DropWhileFailing,
            ..defaults.clone()
        }
    }
}

/// Deletes expired rows now and then every `every`, with the retention the configuration
/// names at that time; runs until dropped. Safe on every replica at once.
pub async fn expire_forever(
    store: Store,
    config: crate::config::SharedConfig,
    every: Duration,
    on_pass: impl Fn(Result<u64, String>) + Send,
) {
    loop {
        let retention = config.load().history.retention;
        match store.expire(retention, 5_000).await {
            Ok(deleted) => {
                if deleted > 0 {
                    tracing::info!(deleted, retention = %humantime::format_duration(retention),
                        "history: deleted rows past the retention");
                }
                on_pass(Ok(deleted));
            }
            Err(e) => {
                let e = describe(&e);
                tracing::warn!(error = %e, "history: deleting rows past the retention failed; trying again later");
                on_pass(Err(e));
            }
        }
        tokio::time::sleep(every).await;
    }
}
