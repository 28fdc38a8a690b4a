//! Lanes: every event clusterscope forwards (a mirror copy, a log line, a history row, its
//! own events) travels as a [`Delivery`] through the lane of one [`Sink`]: a bounded keyed
//! queue ([`KeyedQueue`]), workers, the lane's retry policy, and one report of what happened
//! to each delivery ([`Observer`]). A sink is one type: how it writes one delivery or a batch,
//! how its lane runs ([`Sink::lane`]: workers, capacity, batches, what a full lane does), and
//! whose retry rules apply to its failures ([`Sink::writer`]); registering it is one
//! [`Pipeline::with_sink`]. What the deliveries are is the caller's: [`Pipeline::enqueue`] asks
//! each registered sink's own type for its share, so nothing links a delivery to a lane by name.
//!
//! Nothing is lost silently: a delivery refused because its lane is full is handed back to
//! the caller (which offers it again later), counted and logged; a lane that drops while its
//! sink fails ([`Overflow::DropWhileFailing`]) counts what it drops and asks for a re-list
//! once it has drained ([`Pipeline::relists`]); a delivery given up after its tries is reported
//! as such.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, ObjectReference};

use super::error::{Action, Failure, SinkError, Writer};
use super::queue::{Done, Full, KeyedQueue};
use crate::backoff::RetryPolicy;

/// One event on its way to one sink.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its place in the sink: a later delivery with the same key replaces a queued one, and
    /// two deliveries with one key are never written at the same time.
    pub key: String,
    /// What to write.
    pub event: Event,
    /// What routed it, for metrics and logs (the mirror's channel; empty for the recorder's
    /// own events).
    pub channel: String,
    /// The stored event it comes from (for logs and clusterscope's own events).
    pub source: ObjectReference,
    /// When the change it carries was first seen (for lag).
    pub since: Instant,
    /// A hash of what it says ([`fingerprint`]): a lane that skips repeats
    /// ([`LaneOptions::skip_repeats`]) does not write a key again with the fingerprint it last
    /// wrote.
    pub fingerprint: u64,
    /// The namespaces the event concerns and how it reached each (its channel's, its owners',
    /// a subscription's...), for sinks that record where it went (history); a copy's delivery
    /// has the one its copy goes to; empty for what no channel routed.
    pub destinations: Vec<crate::owners::Destination>,
}

impl Delivery {
    /// A delivery of `event` under `key` that no channel routed (the recorder's own events,
    /// about `about`): seen now, delivered to no namespace in particular.
    pub fn new(key: String, event: Event, about: &ObjectReference) -> Self {
        Delivery {
            key,
            fingerprint: fingerprint(&event),
            event,
            channel: String::new(),
            source: about.clone(),
            since: Instant::now(),
            destinations: Vec::new(),
        }
    }

    /// Warnings go before Normal events when deliveries wait (a burst, a budget, a slow sink).
    pub fn is_warning(&self) -> bool {
        crate::event::is_warning(self.event.type_.as_deref())
    }
}

/// The fields an event says (what a copy or a line carries) and the labels and annotations
/// it is written with, hashed: equal fingerprints mean a sink already holds what a delivery
/// says.
pub fn fingerprint(event: &Event) -> u64 {
    fingerprint_with(content_fingerprint(event), event)
}

/// [`fingerprint`] of `event` whose [`content_fingerprint`] is `content` (known already).
pub fn fingerprint_with(content: u64, event: &Event) -> u64 {
    hash(&(content, &event.metadata.labels, &event.metadata.annotations))
}

/// What the event itself says (its occurrence: count, times, message, reason, type), hashed,
/// without the labels and annotations a writer adds: equal when only those changed.
pub fn content_fingerprint(event: &Event) -> u64 {
    hash(&says(event))
}

/// The fields that say what an event is an occurrence of, and when: the one list every
/// comparison of what two events say uses.
pub type Says<'a> = (
    &'a Option<i32>,
    &'a Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    &'a Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    &'a Option<String>,
    &'a Option<k8s_openapi::api::core::v1::EventSeries>,
    &'a Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>,
    &'a Option<String>,
    &'a Option<String>,
);

/// See [`Says`].
pub fn says(event: &Event) -> Says<'_> {
    (
        &event.count,
        &event.last_timestamp,
        &event.first_timestamp,
        &event.message,
        &event.series,
        &event.event_time,
        &event.reason,
        &event.type_,
    )
}

fn hash(what: &impl serde::Serialize) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_string(what).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// `namespace/name` of a stored event.
pub fn key_of_source(source: &ObjectReference) -> String {
    format!(
        "{}/{}",
        source.namespace.as_deref().unwrap_or_default(),
        source.name.as_deref().unwrap_or_default()
    )
}

/// What a sink did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Created,
    /// Updated with a new occurrence of the event (a count, a time, a message).
    Updated,
    /// Updated, but only what the writer adds changed (labels, annotations: another
    /// subscription of the namespace wants it now, say), not what the event says.
    Relabelled,
    /// The destination already held it.
    Unchanged,
    /// Appended (a stream: every delivery is a new record).
    Appended,
}

impl Delivered {
    /// The operation, as metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivered::Created => "create",
            Delivered::Updated | Delivered::Relabelled => "update",
            Delivered::Unchanged => "unchanged",
            Delivered::Appended => "append",
        }
    }

    /// Whether something was written.
    pub fn wrote(self) -> bool {
        self != Delivered::Unchanged
    }
}

/// The future a sink returns for one delivery.
pub type DeliverFuture<'a> = Pin<Box<dyn Future<Output = Result<Delivered, Failure>> + Send + 'a>>;

/// The future a sink returns for a batch: one result per delivery, in order.
pub type BatchFuture<'a> =
    Pin<Box<dyn Future<Output = Vec<Result<Delivered, Failure>>> + Send + 'a>>;

/// What a full lane does with a new delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Waits for room (backpressure), then hands it back to be offered again later.
    Wait,
    /// While the sink's last try failed for want of it (down, unreachable), drops it at once,
    /// so that a failing sink never holds back the others; once the lane has drained into a
    /// sink that answers, asks for a re-list ([`Pipeline::relists`]) that delivers again what
    /// was dropped. While the sink answers, waits as [`Overflow::Wait`] does.
    DropWhileFailing,
}

/// Where deliveries are written: one type per output, registered once with
/// [`Pipeline::with_sink`].
pub trait Sink: Send + Sync {
    /// A short name for metrics and logs (`kubernetes`, `log`, `postgres`...).
    fn name(&self) -> &'static str;

    /// Whose rules decide what follows a failed try ([`SinkError::action`]).
    fn writer(&self) -> Writer;

    /// Writes one delivery (one try; the lane retries).
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> DeliverFuture<'a>;

    /// Writes a batch ([`LaneOptions::batch`] deliveries at most), one result each in order.
    /// The default writes them one after the other.
    fn deliver_batch<'a>(&'a self, batch: &'a [Delivery]) -> BatchFuture<'a> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(batch.len());
            for delivery in batch {
                results.push(self.deliver(delivery).await);
            }
            results
        })
    }

    /// How its lane runs, given the pipeline's defaults (the caller's workers, capacity and
    /// retries); the default takes them as they are.
    fn lane(&self, defaults: &LaneOptions) -> LaneOptions {
        defaults.clone()
    }
}

/// Told what happened to every delivery (metrics, logs, clusterscope's own events), with the
/// sink as registered (`S`: the registering side's own sink type).
pub trait Observer<S: ?Sized>: Send + Sync {
    fn delivered(&self, sink: &S, delivery: &Delivery, how: Delivered);
    /// A try failed; `given_up` when no more will be made.
    fn failed(&self, sink: &S, delivery: &Delivery, failure: &Failure, given_up: bool);
    /// Refused because the lane was full (handed back).
    fn full(&self, sink: &S, delivery: &Delivery);
    /// Dropped because the lane was full while its sink failed ([`Overflow::DropWhileFailing`]).
    fn dropped(&self, sink: &S, delivery: &Delivery);
    /// A lane that dropped deliveries drained into a sink that answers: a re-list follows.
    fn relisting(&self, sink: &S);
    /// Keys the lane holds now.
    fn depth(&self, sink: &S, held: usize);
    /// The sink's store asked to wait `after` before the next write (an API server's 429 with
    /// Retry-After): the delivery waits that long, no try counted, no failure.
    fn paced(&self, _sink: &S, _delivery: &Delivery, _after: Duration) {}
    /// The oldest delivery the lane holds has waited `age` (zero when it holds none); told
    /// every [`BACKLOG_EVERY`].
    fn backlog(&self, _sink: &S, _age: Duration) {}
}

/// How often each lane's backlog age is told.
pub const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Settings of one lane.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneOptions {
    /// Keys held (queued, in work, or waiting for a retry) before new ones are refused.
    pub capacity: usize,
    pub workers: usize,
    pub retry: RetryPolicy,
    /// Remember the fingerprint last written (or given up) per key and skip a delivery that
    /// repeats it (for sinks that cannot tell themselves, such as a stream).
    pub skip_repeats: bool,
    /// Deliveries a worker hands the sink at once ([`Sink::deliver_batch`]), and how long it
    /// waits for more once it has one.
    pub batch: usize,
    pub linger: Duration,
    pub overflow: Overflow,
}

impl LaneOptions {
    /// `workers` workers, `capacity` keys, `retry`: one delivery at a time, waiting when full.
    pub fn new(capacity: usize, workers: usize, retry: RetryPolicy) -> Self {
        LaneOptions {
            capacity,
            workers,
            retry,
            skip_repeats: false,
            batch: 1,
            linger: Duration::ZERO,
            overflow: Overflow::Wait,
        }
    }
}

/// A delivery [`Pipeline::offer`] did not take, because its lane holds its capacity: it is
/// handed back, to be offered again later (or dropped and counted, as the recorder does).
#[derive(Debug)]
pub struct Refused {
    /// The sink whose lane was full.
    pub sink: &'static str,
    pub delivery: Box<Delivery>,
}

struct Lane<S: ?Sized> {
    sink: Arc<S>,
    /// The sink's name, for logs.
    name: &'static str,
    writer: Writer,
    queue: Arc<KeyedQueue<String, Delivery>>,
    options: LaneOptions,
    refused: AtomicU64,
    /// key → fingerprint last written or given up (with `skip_repeats`).
    written: Mutex<HashMap<String, u64>>,
    /// Woken whenever a key may have been released (room for a waiting offer).
    room: tokio::sync::Notify,
    /// Failed tries are logged once a second at most (a database outage fails thousands).
    failure_log: crate::telemetry::Throttle,
    /// The sink's last try did not fail for want of it ([`Overflow::DropWhileFailing`]).
    answers: AtomicBool,
    /// Deliveries were dropped since the last re-list.
    dropped: AtomicBool,
    /// One line a minute at most about dropped deliveries.
    drop_log: crate::telemetry::Throttle,
}

impl<S: ?Sized> Lane<S> {
    fn repeats(&self, delivery: &Delivery) -> bool {
        self.options.skip_repeats
            && crate::locks::lock(&self.written).get(&delivery.key) == Some(&delivery.fingerprint)
    }

    /// Remembers `delivery`'s state as settled (written, or given up) for a lane that skips
    /// repeats.
    fn settled(&self, delivery: &Delivery) {
        if self.options.skip_repeats {
            crate::locks::lock(&self.written).insert(delivery.key.clone(), delivery.fingerprint);
        }
    }

    /// Whether a new delivery is dropped rather than waited for when the lane is full.
    fn drops_now(&self) -> bool {
        self.options.overflow == Overflow::DropWhileFailing && !self.answers.load(Ordering::Relaxed)
    }

    /// Queues `delivery` without waiting; a full lane hands it back.
    fn add(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
        let key = delivery.key.clone();
        self.queue
            .add(key, delivery)
            .map_err(|Full(back)| Box::new(back))
    }
}

/// A lane per registered sink; cheap to share in an [`Arc`]. `S` is the registering side's
/// sink type (the mirror's outputs, or any [`Sink`]), which [`Pipeline::enqueue`] and the
/// [`Observer`] see as it is.
pub struct Pipeline<S: ?Sized + Sink + 'static = dyn Sink> {
    lanes: Vec<Arc<Lane<S>>>,
    observer: Arc<dyn Observer<S>>,
    /// Woken when a lane that dropped deliveries asks for a re-list.
    relist: Arc<tokio::sync::Notify>,
}

impl<S: ?Sized + Sink + 'static> Pipeline<S> {
    pub fn new(observer: Arc<dyn Observer<S>>) -> Self {
        Pipeline {
            lanes: Vec::new(),
            observer,
            relist: Arc::default(),
        }
    }

    /// Adds a lane for `sink`, run as [`Sink::lane`] makes of `defaults`.
    pub fn with_sink(mut self, sink: Arc<S>, defaults: &LaneOptions) -> Self {
        let options = sink.lane(defaults);
        self.lanes.push(Arc::new(Lane {
            queue: Arc::new(
                KeyedQueue::bounded(options.capacity).urgent_first(Delivery::is_warning),
            ),
            name: sink.name(),
            writer: sink.writer(),
            sink,
            options,
            refused: AtomicU64::new(0),
            written: Mutex::new(HashMap::new()),
            room: tokio::sync::Notify::new(),
            failure_log: crate::telemetry::Throttle::new(Duration::from_secs(1)),
            answers: AtomicBool::new(true),
            dropped: AtomicBool::new(false),
            drop_log: crate::telemetry::Throttle::new(Duration::from_secs(60)),
        }));
        self
    }

    /// The registered sinks, in the order they were registered.
    pub fn sinks(&self) -> impl Iterator<Item = &Arc<S>> + '_ {
        self.lanes.iter().map(|l| &l.sink)
    }

    /// Hands each sink its share (`share_of(sink)`: its deliveries, straight into its own lane):
    /// each waits up to `wait` for room in a full lane, except in a lane that drops while its
    /// sink fails (see [`Overflow`]). True when one was refused: the caller offers its source
    /// again later.
    pub async fn enqueue(&self, wait: Duration, share_of: impl Fn(&S) -> Vec<Delivery>) -> bool {
        let mut refused = false;
        for lane in &self.lanes {
            for delivery in share_of(&lane.sink) {
                if lane.drops_now() {
                    self.drop_if_full(lane, delivery);
                } else if self.offer_within(lane, delivery, wait).await.is_err() {
                    refused = true;
                }
            }
        }
        refused
    }

    /// Offers without waiting; a full lane drops the delivery, counts it and marks itself for
    /// a re-list once it drains.
    fn drop_if_full(&self, lane: &Lane<S>, delivery: Delivery) {
        let Err(delivery) = lane.add(delivery) else {
            self.observer.depth(&lane.sink, lane.queue.held());
            return;
        };
        self.observer.dropped(&lane.sink, &delivery);
        lane.dropped.store(true, Ordering::Relaxed);
        if let Some(held) = lane.drop_log.allow() {
            tracing::warn!(sink = lane.name, source = %key_of_source(&delivery.source),
                channel = %delivery.channel, buffer = lane.options.capacity, similar_since_last = held,
                "delivery buffer full while the sink fails (slow or down); this event is delivered at the re-list once it drains");
        }
    }

    /// Queues `delivery` for every sink without waiting. A full lane hands it back (reported
    /// to the observer as full); what to do with it is the caller's: the recorder drops it, as
    /// client-go's broadcaster does, and counts it.
    pub fn offer(&self, delivery: &Delivery) -> Vec<Refused> {
        let mut refused = Vec::new();
        for lane in &self.lanes {
            match lane.add(delivery.clone()) {
                Ok(()) => self.observer.depth(&lane.sink, lane.queue.held()),
                Err(back) => {
                    self.observer.full(&lane.sink, &back);
                    refused.push(Refused {
                        sink: lane.name,
                        delivery: back,
                    });
                }
            }
        }
        refused
    }

    /// Queues `delivery` in `lane`, waiting up to `wait` for room when the lane is full (the
    /// pipeline's backpressure). Still full then, it is refused (counted, logged for the first
    /// refusal and every 1,000th) and handed back: the caller keeps it and offers it again.
    async fn offer_within(
        &self,
        lane: &Lane<S>,
        delivery: Delivery,
        wait: Duration,
    ) -> Result<(), Refused> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut delivery = delivery;
        loop {
            // Registered before trying, so a release between the try and the wait is seen.
            let room = lane.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match lane.add(delivery) {
                Ok(()) => {
                    self.observer.depth(&lane.sink, lane.queue.held());
                    return Ok(());
                }
                Err(back) => delivery = *back,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(self.refuse(lane, delivery));
            }
        }
    }

    fn refuse(&self, lane: &Lane<S>, delivery: Delivery) -> Refused {
        self.observer.full(&lane.sink, &delivery);
        let refused = lane.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused % 1000 == 1 {
            tracing::warn!(
                sink = lane.name,
                capacity = lane.options.capacity,
                refused_total = refused,
                "delivery queue full: deliveries are offered again later (the sink is slower than the events arrive, or failing)"
            );
        }
        Refused {
            sink: lane.name,
            delivery: Box::new(delivery),
        }
    }

    /// Each lane drops what it holds under the keys `keys_of(sink)` names (queued, pending
    /// retries, the fingerprint last written): their source is gone.
    pub fn forget(&self, keys_of: impl Fn(&S) -> Vec<String>) {
        for lane in &self.lanes {
            for key in keys_of(&lane.sink) {
                lane.queue.forget(&key);
                crate::locks::lock(&lane.written).remove(&key);
            }
            lane.room.notify_waiters();
        }
    }

    /// Woken when a lane asks for the stored events to be listed again (it dropped
    /// deliveries and has drained since).
    pub fn relists(&self) -> Arc<tokio::sync::Notify> {
        self.relist.clone()
    }

    /// Keys the lanes hold, all together (the tests look; the recorder waits with
    /// [`Self::drain`]).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.lanes.iter().map(|l| l.queue.held()).sum()
    }

    /// Waits until every lane holds nothing (written, or given up), for `within` at most:
    /// false when something is still held then (the workers are about to be stopped).
    pub async fn drain(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        for lane in &self.lanes {
            loop {
                // Registered before looking, so a release between the look and the wait is seen.
                let room = lane.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                if lane.queue.held() == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, room).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// Starts every lane's workers in `tasks`; they run until the set is dropped or aborted.
    pub fn start(&self, tasks: &mut tokio::task::JoinSet<()>) {
        for lane in &self.lanes {
            for _ in 0..lane.options.workers.max(1) {
                let lane = lane.clone();
                let observer = self.observer.clone();
                let relist = self.relist.clone();
                tasks.spawn(async move { work(&lane, observer.as_ref(), &relist).await });
            }
        }
        let (lanes, observer) = (self.lanes.clone(), self.observer.clone());
        tasks.spawn(async move {
            loop {
                for lane in &lanes {
                    let age = lane.queue.oldest().map_or(Duration::ZERO, |t| t.elapsed());
                    observer.backlog(&lane.sink, age);
                }
                tokio::time::sleep(BACKLOG_EVERY).await;
            }
        });
    }
}

/// One worker of a lane: take a batch, deliver it, then report and retry each delivery as
/// the lane's policy says.
async fn work<S: ?Sized + Sink>(
    lane: &Lane<S>,
    observer: &dyn Observer<S>,
    relist: &tokio::sync::Notify,
) {
    loop {
        let taken = lane
            .queue
            .next_batch(lane.options.batch.max(1), lane.options.linger)
            .await;
        let mut batch = Vec::with_capacity(taken.len());
        for (key, delivery, _) in taken {
            if lane.repeats(&delivery) {
                observer.delivered(&lane.sink, &delivery, Delivered::Unchanged);
                lane.queue.done(key, Done::Finished, &lane.options.retry);
            } else {
                batch.push(delivery);
            }
        }
        if !batch.is_empty() {
            let mut results = lane.sink.deliver_batch(&batch).await.into_iter();
            for delivery in batch {
                // A sink that answered fewer results than deliveries: the rest are not known
                // to be written, and are tried again.
                let result = results.next().unwrap_or_else(|| {
                    Err(Failure::new(
                        super::error::Operation::Create,
                        SinkError::Unanswered { sink: lane.name },
                    ))
                });
                settle(lane, observer, delivery, result);
            }
        }
        lane.room.notify_waiters();
        observer.depth(&lane.sink, lane.queue.held());
        ask_for_relist(lane, observer, relist);
    }
}

/// Reports one delivery's result and tells the queue what follows, as the failure's
/// [`Action`] says: done, paced, retried later, or given up.
fn settle<S: ?Sized>(
    lane: &Lane<S>,
    observer: &dyn Observer<S>,
    delivery: Delivery,
    result: Result<Delivered, Failure>,
) {
    let key = delivery.key.clone();
    let failure = match result {
        Ok(how) => {
            lane.answers.store(true, Ordering::Relaxed);
            lane.settled(&delivery);
            observer.delivered(&lane.sink, &delivery, how);
            lane.queue.done(key, Done::Finished, &lane.options.retry);
            return;
        }
        Err(failure) => failure,
    };
    let (done, last) = match failure.action(lane.writer) {
        Action::WaitFor(after) => {
            // Pacing the API server asked for (API Priority and Fairness): honoured, not failed.
            observer.paced(&lane.sink, &delivery, after);
            lane.queue
                .done(key, Done::Later(delivery, after), &lane.options.retry);
            return;
        }
        Action::Retry => {
            lane.answers.store(false, Ordering::Relaxed);
            (Done::Retry(delivery.clone()), false)
        }
        Action::GiveUp => (Done::GiveUp, true),
    };
    // Given up: the last of its tries, or a final answer. A final answer while a newer value
    // of the key waits settles this state in a lane that skips repeats (the newer value, if
    // the same state, is skipped); elsewhere the newer value is tried, and reported.
    let given_up = lane.queue.done(key.clone(), done, &lane.options.retry)
        || (last && lane.options.skip_repeats);
    if given_up {
        // Settled until it changes: the same state offered again (a re-plan of its source
        // after its labels were put on, a re-list) is not tried again.
        lane.settled(&delivery);
    }
    observer.failed(&lane.sink, &delivery, &failure, given_up);
    if let Some(held) = lane.failure_log.allow() {
        let what = if given_up {
            "delivery given up (until its source changes again)"
        } else {
            "delivery failed; will retry"
        };
        tracing::warn!(sink = lane.name, key = %key, source = %key_of_source(&delivery.source),
            channel = %delivery.channel, error = %failure, similar_since_last = held, "{what}");
    }
}

/// A lane that dropped deliveries and has drained into a sink that answers asks for a
/// re-list: it re-delivers every stored event, and the sink writes only what it lacks.
fn ask_for_relist<S: ?Sized>(
    lane: &Lane<S>,
    observer: &dyn Observer<S>,
    relist: &tokio::sync::Notify,
) {
    if lane.dropped.load(Ordering::Relaxed)
        && lane.answers.load(Ordering::Relaxed)
        && lane.queue.held() == 0
        && lane.dropped.swap(false, Ordering::Relaxed)
    {
        observer.relisting(&lane.sink);
        tracing::info!(
            sink = lane.name,
            "the delivery buffer drained; re-listing the stored events to deliver what it dropped"
        );
        relist.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::delivery::error::Operation;

    /// Answers each try from a script (then success), recording what it was asked.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<Vec<Result<Delivered, Failure>>>,
        seen: Mutex<Vec<(String, Option<i32>)>>,
    }

    impl Sink for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn writer(&self) -> Writer {
            Writer::Mirror
        }
        fn deliver<'a>(&'a self, d: &'a Delivery) -> DeliverFuture<'a> {
            Box::pin(async move {
                self.seen
                    .lock()
                    .unwrap()
                    .push((d.key.clone(), d.event.count));
                let mut a = self.answers.lock().unwrap();
                if a.is_empty() {
                    Ok(Delivered::Created)
                } else {
                    a.remove(0)
                }
            })
        }
    }

    /// What the observer was told, one line each: `<sink> <key> <what>`.
    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl Seen {
        fn note(&self, sink: &dyn Sink, d: &Delivery, what: impl std::fmt::Display) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {} {what}", sink.name(), d.key));
        }
    }

    impl Observer<dyn Sink> for Seen {
        fn delivered(&self, sink: &dyn Sink, d: &Delivery, how: Delivered) {
            self.note(sink, d, how.as_str());
        }
        fn failed(&self, sink: &dyn Sink, d: &Delivery, f: &Failure, given_up: bool) {
            self.note(sink, d, format!("{} given_up={given_up}", f.operation));
        }
        fn full(&self, sink: &dyn Sink, d: &Delivery) {
            self.note(sink, d, "full");
        }
        fn dropped(&self, sink: &dyn Sink, d: &Delivery) {
            self.note(sink, d, "dropped");
        }
        fn relisting(&self, sink: &dyn Sink) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} relisting", sink.name()));
        }
        fn depth(&self, _: &dyn Sink, _: usize) {}
        fn paced(&self, sink: &dyn Sink, d: &Delivery, after: Duration) {
            self.note(sink, d, format!("paced {}s", after.as_secs()));
        }
    }

    /// One lane over a scripted sink, what its observer was told, and its workers once started.
    struct Rig {
        sink: Arc<Scripted>,
        seen: Arc<Seen>,
        pipeline: Arc<Pipeline>,
        workers: tokio::task::JoinSet<()>,
    }

    impl Rig {
        /// The sink answers `answers` first; no worker runs before [`Rig::start`].
        fn new(answers: Vec<Result<Delivered, Failure>>, options: &LaneOptions) -> Rig {
            let sink = Arc::new(Scripted {
                answers: Mutex::new(answers),
                ..Scripted::default()
            });
            let seen = Arc::new(Seen::default());
            let pipeline = Arc::new(Pipeline::new(seen.clone()).with_sink(sink.clone(), options));
            Rig {
                sink,
                seen,
                pipeline,
                workers: tokio::task::JoinSet::new(),
            }
        }

        fn started(answers: Vec<Result<Delivered, Failure>>, options: &LaneOptions) -> Rig {
            let mut rig = Rig::new(answers, options);
            rig.start();
            rig
        }

        fn start(&mut self) {
            self.pipeline.start(&mut self.workers);
        }

        fn offer(&self, key: &str, count: i32) {
            assert!(self.pipeline.offer(&delivery(key, count)).is_empty());
        }

        /// What the observer was told so far.
        fn told(&self) -> Vec<String> {
            self.seen.0.lock().unwrap().clone()
        }

        /// The tries the sink saw: (key, count).
        fn tries(&self) -> Vec<(String, Option<i32>)> {
            self.sink.seen.lock().unwrap().clone()
        }
    }

    fn delivery(key: &str, count: i32) -> Delivery {
        Delivery {
            key: key.into(),
            event: Event {
                count: Some(count),
                ..Event::default()
            },
            channel: "nodes".into(),
            source: ObjectReference::default(),
            since: Instant::now(),
            fingerprint: count as u64,
            destinations: Vec::new(),
        }
    }

    fn options(capacity: usize, max_attempts: u32) -> LaneOptions {
        LaneOptions::new(
            capacity,
            1,
            RetryPolicy {
                base: Duration::from_secs(1),
                factor: 2,
                max_delay: Duration::from_secs(60),
                max_attempts,
                jitter: crate::backoff::Jitter::None,
            },
        )
    }

    fn failure(retryable: bool) -> Result<Delivered, Failure> {
        let error = if retryable {
            SinkError::Transport("down".into())
        } else {
            SinkError::Invalid("refused".into())
        };
        Err(Failure::new(Operation::Create, error))
    }

    /// An API server's 429 with Retry-After (API Priority and Fairness) is pacing: the
    /// delivery waits what was asked, no try is counted (more of them than `max_attempts` do
    /// not give it up), and nothing is reported as failed.
    #[tokio::test(start_paused = true)]
    async fn a_429_with_retry_after_is_waited_out_not_counted_as_a_failure() {
        let throttled = || {
            Err(Failure::new(
                Operation::Create,
                SinkError::Throttled {
                    retry_after: Duration::from_secs(30),
                    message: "Too many requests, please try again later.".into(),
                },
            ))
        };
        let lane = Rig::started((0..5).map(|_| throttled()).collect(), &options(10, 3));
        lane.offer("a", 1);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(lane.tries().len(), 1, "tried again before 30 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(lane.tries().len(), 2);
        tokio::time::sleep(Duration::from_secs(200)).await;
        let mut expected = vec!["scripted a paced 30s".to_owned(); 5];
        expected.push("scripted a create".to_owned());
        assert_eq!(lane.told(), expected);
        assert_eq!(lane.pipeline.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_then_given_up_and_reported() {
        let lane = Rig::started(vec![failure(true); 3], &options(10, 3));
        lane.offer("a", 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            lane.told(),
            [
                "scripted a create given_up=false",
                "scripted a create given_up=false",
                "scripted a create given_up=true"
            ]
        );
        assert_eq!(lane.pipeline.held(), 0, "a given-up key is released");
        // A new state of the key starts over and is delivered.
        lane.offer("a", 2);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(lane.told().last().unwrap(), "scripted a create");
    }

    #[tokio::test(start_paused = true)]
    async fn final_failures_are_given_up_at_once() {
        let lane = Rig::started(vec![failure(false)], &options(10, 12));
        lane.offer("a", 1);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(lane.told(), ["scripted a create given_up=true"]);
        assert_eq!(lane.tries().len(), 1);
    }

    /// A lane that skips repeats does not try again a state it gave up on (the same state
    /// offered again: its source re-planned once labelled, a re-list); a new state goes.
    #[tokio::test(start_paused = true)]
    async fn a_state_given_up_is_not_tried_again_by_a_lane_that_skips_repeats() {
        let mut skipping = options(10, 12);
        skipping.skip_repeats = true;
        let lane = Rig::started(vec![failure(false)], &skipping);
        lane.offer("a", 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        lane.offer("a", 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(lane.tries().len(), 1, "the given-up state was tried again");
        lane.offer("a", 2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(lane.tries().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_lane_hands_the_delivery_back_and_a_newer_state_replaces_a_queued_one() {
        // No workers yet: everything stays queued.
        let mut lane = Rig::new(Vec::new(), &options(2, 3));
        lane.offer("a", 1);
        lane.offer("b", 1);
        lane.offer("a", 2);
        let refused = lane.pipeline.offer(&delivery("c", 1));
        assert_eq!(refused.len(), 1, "expected a full lane");
        assert_eq!(
            (refused[0].sink, refused[0].delivery.key.as_str()),
            ("scripted", "c")
        );
        lane.start();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            lane.tries(),
            [("a".to_owned(), Some(2)), ("b".to_owned(), Some(1))],
            "one write per key, with its latest state"
        );
        assert!(lane.told().contains(&"scripted c full".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_offer_takes_the_room_a_finished_key_leaves_and_only_then_is_refused() {
        let mut lane = Rig::new(Vec::new(), &options(1, 3));
        lane.offer("a", 1);
        // Full, and no worker to make room: refused once the wait is over.
        let refused = lane
            .pipeline
            .enqueue(Duration::from_millis(100), |_| vec![delivery("b", 1)])
            .await;
        assert!(refused, "still full after the wait");
        // With a worker, "a" is written and leaves room for "b" within the wait.
        lane.start();
        let refused = lane
            .pipeline
            .enqueue(Duration::from_secs(1), |_| vec![delivery("b", 1)])
            .await;
        assert!(!refused, "room within the wait");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(lane.tries().len(), 2);
        let full = lane.told().iter().filter(|l| l.ends_with("full")).count();
        assert_eq!(full, 1, "only the refusal counts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_that_skips_repeats_writes_a_key_again_only_when_it_changed() {
        let skipping = LaneOptions {
            skip_repeats: true,
            ..options(10, 3)
        };
        let lane = Rig::started(Vec::new(), &skipping);
        for count in [1, 1, 2, 2] {
            lane.offer("a", count);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            lane.tries(),
            [("a".to_owned(), Some(1)), ("a".to_owned(), Some(2))]
        );
        // Forgotten (the source was deleted): a later delivery is written again.
        lane.pipeline.forget(|_| vec!["a".to_owned()]);
        lane.offer("a", 2);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(lane.tries().len(), 3);
        let unchanged = lane
            .told()
            .iter()
            .filter(|l| l.ends_with("unchanged"))
            .count();
        assert_eq!(unchanged, 2);
    }

    /// Answers only the first delivery of every batch.
    struct Short;

    impl Sink for Short {
        fn name(&self) -> &'static str {
            "short"
        }
        fn writer(&self) -> Writer {
            Writer::Mirror
        }
        fn deliver<'a>(&'a self, _: &'a Delivery) -> DeliverFuture<'a> {
            Box::pin(async { Ok(Delivered::Created) })
        }
        fn deliver_batch<'a>(&'a self, _batch: &'a [Delivery]) -> BatchFuture<'a> {
            Box::pin(async { vec![Ok(Delivered::Created)] })
        }
    }

    /// A batch sink that answers fewer results than it was given: the deliveries without an
    /// answer are not counted as delivered; they fail (retryable) and are written again.
    #[tokio::test(start_paused = true)]
    async fn a_delivery_a_batch_sink_did_not_answer_is_tried_again_not_counted() {
        let seen = Arc::new(Seen::default());
        let options = LaneOptions {
            batch: 2,
            linger: Duration::from_millis(10),
            ..options(10, 3)
        };
        let p = Pipeline::<dyn Sink>::new(seen.clone()).with_sink(Arc::new(Short), &options);
        assert!(p.offer(&delivery("a", 1)).is_empty());
        assert!(p.offer(&delivery("b", 1)).is_empty());
        let mut tasks = tokio::task::JoinSet::new();
        p.start(&mut tasks);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "short a create",
                "short b create given_up=false",
                "short b create"
            ]
        );
        assert_eq!(p.held(), 0);
    }
}
