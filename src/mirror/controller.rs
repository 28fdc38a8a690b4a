//! The mirror controller: list+watch events in `default` and `kube-system` (the only places
//! events about cluster-scoped objects can be stored), and sync each one through a keyed work
//! queue. Driven by what was stored, not by admission: dry-runs and writes the API server
//! refused never reach it, and events written while the webhook or the controller was down
//! are caught up by the list that starts every watch (and every watch restart).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::mirror::sync::Syncer;

pub use crate::decide::SOURCE_NAMESPACES;
/// Only events whose involved object has no namespace: everything else is not ours.
pub const FIELD_SELECTOR: &str = "involvedObject.namespace=";

type Key = (String, String);

/// A work queue as controller-runtime's: each key is queued once, holds its latest object,
/// and is never worked on by two workers at once; failures come back after a growing delay.
#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    latest: HashMap<Key, Event>,
    order: VecDeque<Key>,
    queued: HashSet<Key>,
    active: HashSet<Key>,
    failures: HashMap<Key, u32>,
    /// When each key was first queued since it was last synced (for lag).
    since: HashMap<Key, Instant>,
    /// Keys forgotten while a worker had them: dropped when that worker is done.
    forgotten: HashSet<Key>,
}

fn key_of(ev: &Event) -> Key {
    (
        ev.metadata.namespace.clone().unwrap_or_default(),
        ev.metadata.name.clone().unwrap_or_default(),
    )
}

impl WorkQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        crate::locks::lock(&self.state)
    }

    /// Queues the latest state of an event.
    pub fn add(&self, ev: Event) {
        let key = key_of(&ev);
        let mut s = self.lock();
        // Re-created after being forgotten: a new life.
        s.forgotten.remove(&key);
        s.latest.insert(key.clone(), ev);
        s.since.entry(key.clone()).or_insert_with(Instant::now);
        if !s.active.contains(&key) && s.queued.insert(key.clone()) {
            s.order.push_back(key);
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Number of keys waiting.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the next key to work on.
    pub async fn next(&self) -> (Key, Event, Instant) {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                while let Some(key) = s.order.pop_front() {
                    s.queued.remove(&key);
                    if let Some(ev) = s.latest.remove(&key) {
                        s.active.insert(key.clone());
                        let since = s.since.remove(&key).unwrap_or_else(Instant::now);
                        return (key, ev, since);
                    }
                }
            }
            notified.await;
        }
    }

    /// Marks `key` done. A failure is retried after `backoff(failures)` unless a newer state
    /// arrived meanwhile (which is queued at once), up to `max_attempts` syncs; past that, or
    /// for [`Done::GiveUp`], the key is forgotten. Returns [`Given::Up`] when it was.
    pub fn done(self: &Arc<Self>, key: Key, done: Done, retry: &RetryPolicy) -> Given {
        let mut s = self.lock();
        s.active.remove(&key);
        if s.forgotten.remove(&key) {
            s.failures.remove(&key);
            return Given::Not;
        }
        if s.latest.contains_key(&key) {
            // A newer state came in while this one was worked on: it gets a fresh start.
            s.failures.remove(&key);
            if s.queued.insert(key.clone()) {
                s.order.push_back(key);
            }
            drop(s);
            self.ready.notify_one();
            return Given::Not;
        }
        let ev = match done {
            Done::Synced => {
                s.failures.remove(&key);
                return Given::Not;
            }
            Done::GiveUp => {
                s.failures.remove(&key);
                s.since.remove(&key);
                return Given::Up;
            }
            Done::Retry(ev) => ev,
        };
        let n = s.failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let failures = *n;
        if failures >= retry.max_attempts {
            s.failures.remove(&key);
            s.since.remove(&key);
            return Given::Up;
        }
        let delay = retry
            .base
            .saturating_mul(2u32.saturating_pow(failures.min(10) - 1))
            .min(retry.max_delay);
        drop(s);
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // Retry only if nothing happened to the key meanwhile: no newer state, not synced,
            // not forgotten (each of those resets or removes its failure count).
            let still_failing = {
                let s = queue.lock();
                !s.latest.contains_key(&key) && s.failures.get(&key) == Some(&failures)
            };
            if still_failing {
                queue.add(*ev);
            }
        });
        Given::Not
    }

    /// Forgets `key` (its source was deleted): a queued state and pending retries are dropped.
    pub fn forget(&self, key: &Key) {
        let mut s = self.lock();
        s.latest.remove(key);
        s.failures.remove(key);
        s.since.remove(key);
        if s.queued.remove(key) {
            s.order.retain(|k| k != key);
        }
        if s.active.contains(key) {
            s.forgotten.insert(key.clone());
        }
    }

    /// Keys with pending retries (for tests and metrics).
    pub fn failing(&self) -> usize {
        self.lock().failures.len()
    }
}

/// How a sync of one key ended.
#[derive(Debug)]
pub enum Done {
    Synced,
    /// Failed; try again later with this state.
    Retry(Box<Event>),
    /// Failed for good (the API server refuses the object, or a foreign event holds the name).
    GiveUp,
}

/// Whether [`WorkQueue::done`] gave up on the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    Up,
    Not,
}

/// Retry delays and the cap on attempts.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First delay; doubles per failure.
    pub base: Duration,
    pub max_delay: Duration,
    /// Syncs of one state before it is given up (the next change of the source starts over).
    pub max_attempts: u32,
}

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub workers: usize,
    /// First retry delay after a failed sync; doubles up to 5 minutes.
    pub retry_base: Duration,
    /// Syncs of one state of a source before it is given up.
    pub max_attempts: u32,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            workers: 8,
            retry_base: Duration::from_secs(1),
            // 1 + 2 + 4 + ... + 256 s, then 5 min: about 19 minutes of trying, longer than
            // the default event TTL (1 h) leaves an expired source's copy any use.
            max_attempts: 12,
        }
    }
}

impl ControllerOptions {
    fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            base: self.retry_base,
            max_delay: Duration::from_secs(300),
            max_attempts: self.max_attempts.max(1),
        }
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(
    syncer: Syncer,
    metrics: Arc<Metrics>,
    options: ControllerOptions,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Never act on a guess: until discovery answers (or is given up on, see
    // `cluster::await_discovery`), a namespaced custom resource would look cluster-scoped.
    if syncer.resolver.discovery_state() == crate::classify::DiscoveryState::Pending {
        tracing::info!("mirror: waiting for API discovery before the first sync");
        tokio::select! {
            _ = syncer.resolver.settled() => {}
            () = &mut shutdown => return,
        }
    }
    let queue = Arc::new(WorkQueue::new());
    // What another leader (or an earlier run) wrote is not known: list it again.
    syncer.copies.reset();
    let mut tasks = Vec::new();
    for ns in SOURCE_NAMESPACES {
        let api: Api<Event> = Api::namespaced(syncer.client.clone(), ns);
        let queue = queue.clone();
        let metrics = metrics.clone();
        let syncer = syncer.clone();
        tasks.push(tokio::spawn(async move {
            let config = watcher::Config::default().fields(FIELD_SELECTOR);
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(watcher::Event::Apply(ev) | watcher::Event::InitApply(ev)) => {
                        queue.add(ev);
                        metrics.mirror_queue_depth.set(queue.len() as i64);
                    }
                    Ok(watcher::Event::Init) => {
                        // A (re-)list of the sources: re-list the copies too (once per
                        // channel namespace, when first needed) instead of trusting what may
                        // have changed while the watch was down.
                        syncer.copies.reset();
                    }
                    Ok(watcher::Event::InitDone) => {
                        tracing::info!(namespace = ns, "mirror: caught up with stored events");
                    }
                    Ok(watcher::Event::Delete(ev)) => {
                        // Expired (TTL) or deleted: nothing more to copy, nothing to retry.
                        queue.forget(&key_of(&ev));
                        syncer.forget(&ev);
                        metrics.mirror_queue_depth.set(queue.len() as i64);
                    }
                    Err(e) => {
                        metrics.mirror_watch_errors.inc();
                        tracing::warn!(namespace = ns, error = %e, "mirror: watch failed; retrying with backoff");
                    }
                }
            }
        }));
    }
    for _ in 0..options.workers.max(1) {
        let queue = queue.clone();
        let syncer = syncer.clone();
        let metrics = metrics.clone();
        let retry = options.retry();
        tasks.push(tokio::spawn(async move {
            loop {
                let (key, ev, since) = queue.next().await;
                metrics.mirror_queue_depth.set(queue.len() as i64);
                let result = syncer.sync(&ev).await;
                let done = match &result {
                    Ok(report) => {
                        let channel = report.channel.as_deref().unwrap_or("");
                        for op in report.writes() {
                            metrics.mirror_write(channel, op, "success");
                        }
                        if report.created || report.updated {
                            metrics.mirror_lag(since.elapsed());
                        }
                        Done::Synced
                    }
                    Err(e) => {
                        let channel = e.report.channel.as_deref().unwrap_or("");
                        metrics.mirror_write(channel, e.operation, "error");
                        if e.retryable() {
                            Done::Retry(Box::new(ev))
                        } else {
                            Done::GiveUp
                        }
                    }
                };
                if let Err(e) = &result {
                    let given = queue.done(key.clone(), done, &retry);
                    let channel = e.report.channel.as_deref().unwrap_or("");
                    if given == Given::Up {
                        metrics.mirror_given_up(channel);
                        tracing::warn!(namespace = %key.0, name = %key.1, channel, error = %e,
                            "mirror: gave up on this event (until its source changes again)");
                    } else {
                        tracing::warn!(namespace = %key.0, name = %key.1, channel, error = %e,
                            "mirror: sync failed; will retry");
                    }
                } else {
                    queue.done(key, done, &retry);
                }
            }
        }));
    }
    shutdown.await;
    for t in tasks {
        t.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, count: i32) -> Event {
        let mut e = Event::default();
        e.metadata.namespace = Some("default".into());
        e.metadata.name = Some(name.into());
        e.count = Some(count);
        e
    }

    #[tokio::test]
    async fn keys_are_queued_once_with_their_latest_state() {
        let q = Arc::new(WorkQueue::new());
        q.add(ev("a", 1));
        q.add(ev("b", 1));
        q.add(ev("a", 2));
        assert_eq!(q.len(), 2);
        let (k, e, _) = q.next().await;
        assert_eq!((k.1.as_str(), e.count), ("a", Some(2)));
        // While "a" is worked on, a new state waits and is not handed to another worker.
        q.add(ev("a", 3));
        let (k, _, _) = q.next().await;
        assert_eq!(k.1, "b");
        assert!(q.is_empty());
        q.done(("default".into(), "a".into()), Done::Synced, &policy(1));
        let (k, e, _) = q.next().await;
        assert_eq!((k.1.as_str(), e.count), ("a", Some(3)));
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_attempts,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_come_back_after_a_growing_delay() {
        let q = Arc::new(WorkQueue::new());
        q.add(ev("a", 1));
        let (k, e, _) = q.next().await;
        let start = tokio::time::Instant::now();
        q.done(k, Done::Retry(Box::new(e)), &policy(10));
        let (k, e, _) = q.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        q.done(k, Done::Retry(Box::new(e)), &policy(10));
        let (k, _, _) = q.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        q.done(k, Done::Synced, &policy(10));
        assert_eq!(q.failing(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_cap_and_refusals_at_once() {
        let q = Arc::new(WorkQueue::new());
        q.add(ev("a", 1));
        let (k, e, _) = q.next().await;
        assert_eq!(q.done(k, Done::Retry(Box::new(e)), &policy(2)), Given::Not);
        let (k, e, _) = q.next().await;
        assert_eq!(q.done(k, Done::Retry(Box::new(e)), &policy(2)), Given::Up);
        assert_eq!(q.failing(), 0, "forgotten after giving up");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(q.is_empty(), "a given-up key never comes back by itself");
        // A new state of the source starts over.
        q.add(ev("a", 2));
        let (k, _, _) = q.next().await;
        assert_eq!(q.done(k, Done::GiveUp, &policy(10)), Given::Up);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_key_is_not_retried() {
        let q = Arc::new(WorkQueue::new());
        q.add(ev("a", 1));
        let (k, e, _) = q.next().await;
        q.done(k.clone(), Done::Retry(Box::new(e)), &policy(10));
        assert_eq!(q.failing(), 1);
        q.forget(&k);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(q.is_empty(), "the pending retry was dropped");
        assert_eq!(q.failing(), 0);
        // Forgetting a queued key drops it too.
        q.add(ev("b", 1));
        q.forget(&("default".into(), "b".into()));
        assert!(q.is_empty());
    }
}
