//! The `postgres` destination of the recorder pipeline. Its lane's workers each hand it one
//! delivery and wait; the sink's writers gather what is waiting into batches (up to
//! `batch_rows`, or what arrived within `linger`) and write each batch as one upsert, so the
//! lane keeps its per-delivery retries and reports while the database sees few statements.
//!
//! A failed batch: when the database is down or busy every delivery in it fails retryable and
//! the lane retries it with backoff (the lane's capacity is the bounded buffer); when the
//! database refused the data itself, the batch is written again row by row, so that one bad
//! row fails alone instead of holding back the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc, oneshot};

use super::store::{Store, describe, transient};
use super::{POSTGRES, Row};
use crate::recorder::SinkError;
use crate::recorder::pipeline::{DeliverFuture, Delivered, Delivery, Destination, Failure};

/// How the sink batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkOptions {
    /// Rows in one statement at most.
    pub batch_rows: usize,
    /// How long a writer waits for more rows once it has one.
    pub linger: Duration,
    /// Batches written at the same time (each holds one connection).
    pub writers: usize,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            batch_rows: 500,
            linger: Duration::from_millis(20),
            writers: 2,
        }
    }
}

impl SinkOptions {
    /// Lane workers that keep every writer's batch full: each worker waits for one row.
    pub fn lane_workers(&self) -> usize {
        self.batch_rows.max(1) * self.writers.max(1)
    }
}

/// Told about every batch written (metrics).
pub trait BatchObserver: Send + Sync {
    /// A batch of `rows` rows took `took`; `ok` when it was written.
    fn batch(&self, rows: usize, took: Duration, ok: bool);
}

/// Observes nothing.
impl BatchObserver for () {
    fn batch(&self, _: usize, _: Duration, _: bool) {}
}

impl BatchObserver for crate::metrics::Metrics {
    fn batch(&self, rows: usize, took: Duration, ok: bool) {
        self.history_batch(rows, took, ok);
    }
}

struct Job {
    row: Row,
    reply: oneshot::Sender<Result<Delivered, Failure>>,
}

/// The pipeline's `postgres` sink; writers run until the sink is dropped.
pub struct PostgresSink {
    jobs: mpsc::Sender<Job>,
}

impl PostgresSink {
    /// Starts `options.writers` writers over `store` (on the current runtime).
    pub fn start(store: Store, options: SinkOptions, observer: Arc<dyn BatchObserver>) -> Self {
        Self::start_when(
            store,
            options,
            observer,
            tokio::sync::watch::channel(true).1,
        )
    }

    /// Like [`Self::start`], but the writers write nothing until `ready` turns true (the
    /// schema is migrated); deliveries wait in the lane meanwhile.
    pub fn start_when(
        store: Store,
        options: SinkOptions,
        observer: Arc<dyn BatchObserver>,
        ready: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let (jobs, rx) = mpsc::channel(options.lane_workers());
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..options.writers.max(1) {
            let (rx, store, observer) = (rx.clone(), store.clone(), observer.clone());
            let mut ready = ready.clone();
            tokio::spawn(async move {
                if ready.wait_for(|r| *r).await.is_err() {
                    return;
                }
                while let Some(batch) = gather(&rx, options).await {
                    write(&store, batch, observer.as_ref()).await;
                }
            });
        }
        PostgresSink { jobs }
    }
}

/// The next batch: waits for one job, then takes what arrives within `linger` (up to
/// `batch_rows`). None once the sink is gone.
async fn gather(rx: &Mutex<mpsc::Receiver<Job>>, options: SinkOptions) -> Option<Vec<Job>> {
    // One writer gathers at a time; the others wait their turn (and write meanwhile).
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(options.batch_rows);
    batch.push(first);
    let deadline = tokio::time::Instant::now() + options.linger;
    while batch.len() < options.batch_rows.max(1) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(job)) => batch.push(job),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

fn failure(e: &sqlx::Error) -> Failure {
    let retryable = transient(e);
    Failure {
        operation: "upsert",
        error: SinkError::Database {
            message: describe(e),
            transient: retryable,
        },
        retryable,
    }
}

/// Writes one batch and answers every job in it.
async fn write(store: &Store, batch: Vec<Job>, observer: &dyn BatchObserver) {
    // One statement cannot update a row twice: of two jobs for one uid (which the lane's
    // keys prevent), the later is written and both are answered with its result.
    let mut index: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(batch.len());
    let mut rows: Vec<&Row> = Vec::with_capacity(batch.len());
    let mut slot_of = Vec::with_capacity(batch.len());
    for job in &batch {
        let slot = *index.entry(job.row.uid.as_str()).or_insert_with(|| {
            rows.push(&job.row);
            rows.len() - 1
        });
        rows[slot] = &job.row;
        slot_of.push(slot);
    }
    let started = Instant::now();
    let result = store.upsert(&rows).await;
    observer.batch(rows.len(), started.elapsed(), result.is_ok());
    let answers: Vec<Result<Delivered, Failure>> = match result {
        Ok(done) => done.into_iter().map(Ok).collect(),
        Err(e) if transient(&e) || rows.len() == 1 => vec![Err(failure(&e)); rows.len()],
        Err(e) => {
            // The data was refused: find the row(s) by writing each alone.
            tracing::warn!(rows = rows.len(), error = %describe(&e),
                "history: PostgreSQL refused a batch; writing its rows one by one");
            let mut answers = Vec::with_capacity(rows.len());
            for row in &rows {
                let started = Instant::now();
                let one = store.upsert(&[row]).await;
                observer.batch(1, started.elapsed(), one.is_ok());
                answers.push(match one {
                    Ok(mut done) => Ok(done.pop().unwrap_or(Delivered::Unchanged)),
                    Err(e) => Err(failure(&e)),
                });
            }
            answers
        }
    };
    for (job, slot) in batch.into_iter().zip(slot_of) {
        let answer = answers
            .get(slot)
            .cloned()
            .unwrap_or(Ok(Delivered::Unchanged));
        let _ = job.reply.send(answer);
    }
}

impl Destination for PostgresSink {
    fn name(&self) -> &'static str {
        POSTGRES
    }

    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> DeliverFuture<'a> {
        Box::pin(async move {
            let row = Row::of(&delivery.event, &delivery.channel, &delivery.namespaces);
            let (reply, answer) = oneshot::channel();
            let gone = || Failure {
                operation: "upsert",
                error: SinkError::Database {
                    message: "the history writer stopped".to_owned(),
                    transient: true,
                },
                retryable: true,
            };
            self.jobs
                .send(Job { row, reply })
                .await
                .map_err(|_| gone())?;
            answer.await.map_err(|_| gone())?
        })
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
