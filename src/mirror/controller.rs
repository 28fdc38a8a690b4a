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

/// The namespaces that can hold events about cluster-scoped objects.
pub const SOURCE_NAMESPACES: [&str; 2] = ["default", "kube-system"];
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
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Queues the latest state of an event.
    pub fn add(&self, ev: Event) {
        let key = key_of(&ev);
        let mut s = self.lock();
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

    /// Marks `key` done. On failure it is retried after `backoff(failures)` unless a newer
    /// state arrived meanwhile (which is queued at once).
    pub fn done(self: &Arc<Self>, key: Key, failed: Option<Event>, base: Duration) {
        let mut s = self.lock();
        s.active.remove(&key);
        if s.latest.contains_key(&key) {
            if s.queued.insert(key.clone()) {
                s.order.push_back(key);
            }
            drop(s);
            self.ready.notify_one();
            return;
        }
        match failed {
            None => {
                s.failures.remove(&key);
            }
            Some(ev) => {
                let n = s.failures.entry(key).or_insert(0);
                *n = n.saturating_add(1);
                let delay = base
                    .saturating_mul(2u32.saturating_pow((*n).min(10) - 1))
                    .min(Duration::from_secs(300));
                drop(s);
                let queue = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    // A newer state may have been synced meanwhile; only retry if nothing newer came.
                    let newer = queue.lock().latest.contains_key(&key_of(&ev));
                    if !newer {
                        queue.add(ev);
                    }
                });
            }
        }
    }
}

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub workers: usize,
    /// First retry delay after a failed sync; doubles up to 5 minutes.
    pub retry_base: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            workers: 8,
            retry_base: Duration::from_secs(1),
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
                    Ok(watcher::Event::Delete(ev)) => syncer.forget(&ev),
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
        let base = options.retry_base;
        tasks.push(tokio::spawn(async move {
            loop {
                let (key, ev, since) = queue.next().await;
                metrics.mirror_queue_depth.set(queue.len() as i64);
                let result = syncer.sync(&ev).await;
                let failed = match &result {
                    Ok(report) => {
                        metrics.mirror_synced(report, since.elapsed());
                        None
                    }
                    Err(e) => {
                        metrics.mirror_failed(e);
                        tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "mirror: sync failed; will retry");
                        Some(ev)
                    }
                };
                queue.done(key, failed, base);
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
        q.done(
            ("default".into(), "a".into()),
            None,
            Duration::from_millis(1),
        );
        let (k, e, _) = q.next().await;
        assert_eq!((k.1.as_str(), e.count), ("a", Some(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_come_back_after_a_growing_delay() {
        let q = Arc::new(WorkQueue::new());
        q.add(ev("a", 1));
        let (k, e, _) = q.next().await;
        let start = tokio::time::Instant::now();
        q.done(k, Some(e), Duration::from_secs(1));
        let (k, e, _) = q.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        q.done(k, Some(e), Duration::from_secs(1));
        let (k, _, _) = q.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        q.done(k, None, Duration::from_secs(1));
    }
}
