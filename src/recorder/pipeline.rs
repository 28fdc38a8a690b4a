//! The delivery pipeline: every event clusterscope forwards (a mirror copy, a log line, and
//! later ones) travels as a [`Delivery`] through a lane per sink: a bounded keyed queue
//! ([`KeyedQueue`]), workers, the lane's retry policy, and one report of what happened to
//! each delivery ([`Observer`]). What decides deliveries (the mirror controller) never writes;
//! a new destination is one more [`Destination`] given to [`Pipeline::with_sink`].
//!
//! Nothing is lost silently: a delivery refused because its lane is full is handed back to
//! the caller (which offers it again later), counted and logged; a delivery given up after
//! its tries is reported as such.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Event, ObjectReference};

use super::queue::{Done, Full, Given, KeyedQueue, RetryPolicy};
use super::sink::SinkError;

/// One event on its way to one sink.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its place in the sink: a later delivery with the same key replaces a queued one, and
    /// two deliveries with one key are never written at the same time.
    pub key: String,
    /// What to write.
    pub event: Event,
    /// The channel it was routed to (for metrics and logs).
    pub channel: String,
    /// The stored event it comes from (for logs and clusterscope's own events).
    pub source: ObjectReference,
    /// When the change it carries was first seen (for lag).
    pub since: Instant,
    /// A hash of what it says: a lane that skips repeats ([`LaneOptions::skip_repeats`])
    /// does not write a key again with the fingerprint it last wrote.
    pub fingerprint: u64,
    /// The namespaces the channel delivers the event to (its own, its owners'...), for sinks
    /// that record where it went (history); empty for the others.
    pub namespaces: Vec<String>,
}

/// What a sink did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Created,
    Updated,
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
            Delivered::Updated => "update",
            Delivered::Unchanged => "unchanged",
            Delivered::Appended => "append",
        }
    }

    /// Whether something was written.
    pub fn wrote(self) -> bool {
        self != Delivered::Unchanged
    }
}

/// A failed delivery: which step failed, why, and whether a later try can succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `create`, `update`, `append`, `foreign`, ...
    pub operation: &'static str,
    pub error: SinkError,
    pub retryable: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.operation, self.error)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The future a destination returns.
pub type DeliverFuture<'a> = Pin<Box<dyn Future<Output = Result<Delivered, Failure>> + Send + 'a>>;

/// Where deliveries go.
pub trait Destination: Send + Sync {
    /// A short name for metrics and logs (`kubernetes`, `log`, ...).
    fn name(&self) -> &'static str;
    /// Writes one delivery (one try; the lane retries).
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> DeliverFuture<'a>;
}

/// Told what happened to every delivery (metrics, logs, clusterscope's own events).
pub trait Observer: Send + Sync {
    fn delivered(&self, sink: &'static str, delivery: &Delivery, how: Delivered);
    /// A try failed; `given_up` when no more will be made.
    fn failed(&self, sink: &'static str, delivery: &Delivery, failure: &Failure, given_up: bool);
    /// Refused because the lane was full.
    fn full(&self, sink: &'static str, delivery: &Delivery);
    /// Keys the lane holds now.
    fn depth(&self, sink: &'static str, held: usize);
}

/// An observer that does nothing (tests, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unobserved;

impl Observer for Unobserved {
    fn delivered(&self, _: &'static str, _: &Delivery, _: Delivered) {}
    fn failed(&self, _: &'static str, _: &Delivery, _: &Failure, _: bool) {}
    fn full(&self, _: &'static str, _: &Delivery) {}
    fn depth(&self, _: &'static str, _: usize) {}
}

/// Settings of one lane.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneOptions {
    /// Keys held (queued, in work, or waiting for a retry) before new ones are refused.
    pub capacity: usize,
    pub workers: usize,
    pub retry: RetryPolicy,
    /// Remember the fingerprint last written per key and skip a delivery that repeats it
    /// (for sinks that cannot tell themselves, such as a stream).
    pub skip_repeats: bool,
}

/// Why [`Pipeline::offer`] did not take a delivery; it is handed back.
#[derive(Debug)]
pub enum Refused {
    /// The lane holds its capacity: offer it again later.
    Full(Box<Delivery>),
    /// No lane has this name.
    NoSink(Box<Delivery>),
}

struct Lane {
    sink: Arc<dyn Destination>,
    queue: Arc<KeyedQueue<String, Delivery>>,
    options: LaneOptions,
    refused: AtomicU64,
    /// key → fingerprint last written (with `skip_repeats`).
    written: Mutex<HashMap<String, u64>>,
    /// Woken whenever a key may have been released (room for a waiting offer).
    room: tokio::sync::Notify,
    /// Failed tries are logged once a second at most (a database outage fails thousands).
    failure_log: crate::telemetry::Throttle,
}

impl Lane {
    fn repeats(&self, delivery: &Delivery) -> bool {
        self.options.skip_repeats
            && crate::locks::lock(&self.written).get(&delivery.key) == Some(&delivery.fingerprint)
    }

    fn wrote(&self, delivery: &Delivery) {
        if self.options.skip_repeats {
            crate::locks::lock(&self.written).insert(delivery.key.clone(), delivery.fingerprint);
        }
    }
}

/// Lanes by sink name; cheap to share in an [`Arc`].
pub struct Pipeline {
    lanes: Vec<Arc<Lane>>,
    observer: Arc<dyn Observer>,
}

impl Pipeline {
    pub fn new(observer: Arc<dyn Observer>) -> Self {
        Pipeline {
            lanes: Vec::new(),
            observer,
        }
    }

    /// Adds a lane for `sink` (a second lane with the same name is ignored).
    pub fn with_sink(mut self, sink: Arc<dyn Destination>, options: LaneOptions) -> Self {
        if self.lane(sink.name()).is_none() {
            self.lanes.push(Arc::new(Lane {
                queue: Arc::new(KeyedQueue::bounded(options.capacity)),
                sink,
                options,
                refused: AtomicU64::new(0),
                written: Mutex::new(HashMap::new()),
                room: tokio::sync::Notify::new(),
                failure_log: crate::telemetry::Throttle::new(std::time::Duration::from_secs(1)),
            }));
        }
        self
    }

    fn lane(&self, sink: &str) -> Option<&Arc<Lane>> {
        self.lanes.iter().find(|l| l.sink.name() == sink)
    }

    /// The sinks, by name.
    pub fn sinks(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.lanes.iter().map(|l| l.sink.name())
    }

    /// Queues `delivery` for `sink` without waiting; see [`Self::offer_within`].
    pub fn offer(&self, sink: &str, delivery: Delivery) -> Result<(), Refused> {
        let Some(lane) = self.lane(sink) else {
            return Err(Refused::NoSink(Box::new(delivery)));
        };
        let key = delivery.key.clone();
        match lane.queue.add(key, delivery) {
            Ok(()) => {
                self.observer.depth(lane.sink.name(), lane.queue.held());
                Ok(())
            }
            Err(Full(delivery)) => Err(self.refuse(lane, delivery)),
        }
    }

    /// Queues `delivery` for `sink`, waiting up to `wait` for room when the lane is full (the
    /// pipeline's backpressure). Still full then, it is refused (counted, logged for the first
    /// refusal and every 1,000th) and handed back: the caller keeps it and offers it again.
    pub async fn offer_within(
        &self,
        sink: &str,
        delivery: Delivery,
        wait: std::time::Duration,
    ) -> Result<(), Refused> {
        let Some(lane) = self.lane(sink) else {
            return Err(Refused::NoSink(Box::new(delivery)));
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut delivery = delivery;
        loop {
            // Registered before trying, so a release between the try and the wait is seen.
            let room = lane.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match lane.queue.add(delivery.key.clone(), delivery) {
                Ok(()) => {
                    self.observer.depth(lane.sink.name(), lane.queue.held());
                    return Ok(());
                }
                Err(Full(back)) => delivery = back,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(self.refuse(lane, delivery));
            }
        }
    }

    fn refuse(&self, lane: &Lane, delivery: Delivery) -> Refused {
        self.observer.full(lane.sink.name(), &delivery);
        let refused = lane.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused % 1000 == 1 {
            tracing::warn!(
                sink = lane.sink.name(),
                capacity = lane.options.capacity,
                refused_total = refused,
                "delivery queue full: deliveries are offered again later (the sink is slower than the events arrive, or failing)"
            );
        }
        Refused::Full(Box::new(delivery))
    }

    /// Drops what `sink` holds for `key` (its source is gone): queued, pending retries, and
    /// the fingerprint last written.
    pub fn forget(&self, sink: &str, key: &str) {
        if let Some(lane) = self.lane(sink) {
            lane.queue.forget(&key.to_owned());
            crate::locks::lock(&lane.written).remove(key);
            lane.room.notify_waiters();
        }
    }

    /// Keys `sink` holds.
    pub fn held(&self, sink: &str) -> usize {
        self.lane(sink).map_or(0, |l| l.queue.held())
    }

    /// Starts every lane's workers in `tasks`; they run until the set is dropped or aborted.
    pub fn start(&self, tasks: &mut tokio::task::JoinSet<()>) {
        for lane in &self.lanes {
            for _ in 0..lane.options.workers.max(1) {
                let lane = lane.clone();
                let observer = self.observer.clone();
                tasks.spawn(async move { work(&lane, observer.as_ref()).await });
            }
        }
    }
}

/// One worker of a lane: deliver, then report and retry as the lane's policy says.
async fn work(lane: &Lane, observer: &dyn Observer) {
    let name = lane.sink.name();
    loop {
        let (key, delivery, _) = lane.queue.next().await;
        if lane.repeats(&delivery) {
            observer.delivered(name, &delivery, Delivered::Unchanged);
            lane.queue.done(key, Done::Finished, &lane.options.retry);
            lane.room.notify_waiters();
            observer.depth(name, lane.queue.held());
            continue;
        }
        let done = match lane.sink.deliver(&delivery).await {
            Ok(how) => {
                lane.wrote(&delivery);
                observer.delivered(name, &delivery, how);
                Done::Finished
            }
            Err(failure) => {
                let retry = failure.retryable;
                let given = if retry {
                    lane.queue.done(
                        key.clone(),
                        Done::Retry(delivery.clone()),
                        &lane.options.retry,
                    )
                } else {
                    lane.queue
                        .done(key.clone(), Done::GiveUp, &lane.options.retry)
                };
                let given_up = given == Given::Up;
                observer.failed(name, &delivery, &failure, given_up);
                let source = format!(
                    "{}/{}",
                    delivery.source.namespace.as_deref().unwrap_or(""),
                    delivery.source.name.as_deref().unwrap_or("")
                );
                if let Some(held) = lane.failure_log.allow() {
                    let what = if given_up {
                        "delivery given up (until its source changes again)"
                    } else {
                        "delivery failed; will retry"
                    };
                    tracing::warn!(sink = name, key = %key, source = %source, channel = %delivery.channel,
                        error = %failure, similar_since_last = held, "{what}");
                }
                lane.room.notify_waiters();
                observer.depth(name, lane.queue.held());
                continue;
            }
        };
        lane.queue.done(key, done, &lane.options.retry);
        lane.room.notify_waiters();
        observer.depth(name, lane.queue.held());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Answers each try from a script (then success), recording what it was asked.
    struct Scripted {
        answers: Mutex<Vec<Result<Delivered, Failure>>>,
        seen: Mutex<Vec<(String, Option<i32>)>>,
    }

    impl Destination for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
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

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);
    impl Observer for Seen {
        fn delivered(&self, sink: &'static str, d: &Delivery, how: Delivered) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{sink} {} {}", d.key, how.as_str()));
        }
        fn failed(&self, sink: &'static str, d: &Delivery, f: &Failure, given_up: bool) {
            self.0.lock().unwrap().push(format!(
                "{sink} {} {} given_up={given_up}",
                d.key, f.operation
            ));
        }
        fn full(&self, sink: &'static str, d: &Delivery) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{sink} {} full", d.key));
        }
        fn depth(&self, _: &'static str, _: usize) {}
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
            namespaces: Vec::new(),
        }
    }

    fn options(capacity: usize, max_attempts: u32) -> LaneOptions {
        LaneOptions {
            capacity,
            workers: 1,
            retry: RetryPolicy {
                base: Duration::from_secs(1),
                factor: 2,
                max_delay: Duration::from_secs(60),
                max_attempts,
            },
            skip_repeats: false,
        }
    }

    fn failure(retryable: bool) -> Failure {
        Failure {
            operation: "create",
            error: SinkError::Transport("down".into()),
            retryable,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_then_given_up_and_reported() {
        let sink = Arc::new(Scripted {
            answers: Mutex::new(vec![
                Err(failure(true)),
                Err(failure(true)),
                Err(failure(true)),
            ]),
            seen: Mutex::default(),
        });
        let seen = Arc::new(Seen::default());
        let p = Pipeline::new(seen.clone()).with_sink(sink.clone(), options(10, 3));
        let mut tasks = tokio::task::JoinSet::new();
        p.start(&mut tasks);
        p.offer("scripted", delivery("a", 1)).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "scripted a create given_up=false",
                "scripted a create given_up=false",
                "scripted a create given_up=true"
            ]
        );
        assert_eq!(p.held("scripted"), 0, "a given-up key is released");
        // A new state of the key starts over and is delivered.
        p.offer("scripted", delivery("a", 2)).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(seen.0.lock().unwrap().last().unwrap(), "scripted a create");
    }

    #[tokio::test(start_paused = true)]
    async fn final_failures_are_given_up_at_once() {
        let sink = Arc::new(Scripted {
            answers: Mutex::new(vec![Err(failure(false))]),
            seen: Mutex::default(),
        });
        let seen = Arc::new(Seen::default());
        let p = Pipeline::new(seen.clone()).with_sink(sink.clone(), options(10, 12));
        let mut tasks = tokio::task::JoinSet::new();
        p.start(&mut tasks);
        p.offer("scripted", delivery("a", 1)).unwrap();
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(*seen.0.lock().unwrap(), ["scripted a create given_up=true"]);
        assert_eq!(sink.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_lane_hands_the_delivery_back_and_a_newer_state_replaces_a_queued_one() {
        let sink = Arc::new(Scripted {
            answers: Mutex::default(),
            seen: Mutex::default(),
        });
        let seen = Arc::new(Seen::default());
        let p = Pipeline::new(seen.clone()).with_sink(sink.clone(), options(2, 3));
        // No workers yet: everything stays queued.
        p.offer("scripted", delivery("a", 1)).unwrap();
        p.offer("scripted", delivery("b", 1)).unwrap();
        p.offer("scripted", delivery("a", 2)).unwrap();
        match p.offer("scripted", delivery("c", 1)) {
            Err(Refused::Full(d)) => assert_eq!(d.key, "c"),
            other => panic!("expected a full lane, got {other:?}"),
        }
        assert!(matches!(
            p.offer("elsewhere", delivery("a", 1)),
            Err(Refused::NoSink(_))
        ));
        let mut tasks = tokio::task::JoinSet::new();
        p.start(&mut tasks);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *sink.seen.lock().unwrap(),
            [("a".to_owned(), Some(2)), ("b".to_owned(), Some(1))],
            "one write per key, with its latest state"
        );
        assert!(
            seen.0
                .lock()
                .unwrap()
                .contains(&"scripted c full".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_offer_takes_the_room_a_finished_key_leaves_and_only_then_is_refused() {
        let sink = Arc::new(Scripted {
            answers: Mutex::default(),
            seen: Mutex::default(),
        });
        let seen = Arc::new(Seen::default());
        let p = Arc::new(Pipeline::new(seen.clone()).with_sink(sink.clone(), options(1, 3)));
        p.offer("scripted", delivery("a", 1)).unwrap();
        // Full, and no worker to make room: refused once the wait is over.
        let refused = p
            .offer_within("scripted", delivery("b", 1), Duration::from_millis(100))
            .await;
        assert!(matches!(refused, Err(Refused::Full(_))));
        // With a worker, "a" is written and leaves room for "b" within the wait.
        let mut tasks = tokio::task::JoinSet::new();
        p.start(&mut tasks);
        p.offer_within("scripted", delivery("b", 1), Duration::from_secs(1))
            .await
            .expect("room within the wait");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(sink.seen.lock().unwrap().len(), 2);
        assert_eq!(
            seen.0
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.ends_with("full"))
                .count(),
            1,
            "only the refusal counts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_that_skips_repeats_writes_a_key_again_only_when_it_changed() {
        let sink = Arc::new(Scripted {
            answers: Mutex::default(),
            seen: Mutex::default(),
        });
        let seen = Arc::new(Seen::default());
        let p = Pipeline::new(seen.clone()).with_sink(
            sink.clone(),
            LaneOptions {
                skip_repeats: true,
                ..options(10, 3)
            },
        );
        let mut tasks = tokio::task::JoinSet::new();
        p.start(&mut tasks);
        for count in [1, 1, 2, 2] {
            p.offer("scripted", delivery("a", count)).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *sink.seen.lock().unwrap(),
            [("a".to_owned(), Some(1)), ("a".to_owned(), Some(2))]
        );
        // Forgotten (the source was deleted): a later delivery is written again.
        p.forget("scripted", "a");
        p.offer("scripted", delivery("a", 2)).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(sink.seen.lock().unwrap().len(), 3);
        assert_eq!(
            seen.0
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.ends_with("unchanged"))
                .count(),
            2
        );
    }
}
