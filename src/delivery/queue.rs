//! A keyed work queue, as client-go's `workqueue` and controller-runtime use it: each key is
//! queued once and holds its latest value, a key is never worked on by two workers at once,
//! failures come back after a growing delay up to a cap on attempts, and the number of keys
//! held can be bounded (a full queue refuses new keys; it never blocks the caller).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::backoff::RetryPolicy;

/// How work on a key ended.
#[derive(Debug)]
pub enum Done<V> {
    Finished,
    /// Failed; try again after the policy's delay with this value.
    Retry(V),
    /// Not failed, but not possible now (a queue further on is full): again after `after`,
    /// without counting an attempt.
    Later(V, Duration),
    /// Failed for good.
    GiveUp,
}

/// The queue held as many keys as its capacity allows; the value is handed back.
#[derive(Debug)]
pub struct Full<V>(pub V);

/// A bounded (or unbounded) keyed work queue; share it in an [`Arc`].
pub struct KeyedQueue<K, V> {
    state: Mutex<State<K, V>>,
    ready: Notify,
    capacity: Option<usize>,
    /// Which values go before the others (Warnings before Normal events, when work waits).
    urgent: Option<fn(&V) -> bool>,
}

struct State<K, V> {
    latest: HashMap<K, V>,
    /// Keys waiting to be worked on, in order: urgent ones (`[0]`) before the rest (`[1]`).
    order: [VecDeque<K>; 2],
    queued: HashSet<K>,
    active: HashSet<K>,
    failures: HashMap<K, u32>,
    /// Keys waiting for a retry or a later try (held, neither queued nor active), each with
    /// the number of its wait (only the timer of the current wait brings it back) and whether
    /// the store asked for it (paced: a newer value waits as well; a retry's wait, not asked
    /// for, ends when a newer value comes).
    waiting: HashMap<K, (u64, bool)>,
    /// Waits begun so far (numbers them).
    waits: u64,
    /// Every key held, in any state: what the capacity bounds.
    members: HashSet<K>,
    /// When each key was first queued since it was last finished (for lag).
    since: HashMap<K, Instant>,
    /// Keys forgotten while a worker had them: dropped when that worker is done.
    forgotten: HashSet<K>,
}

impl<K, V> Default for State<K, V> {
    fn default() -> Self {
        State {
            latest: HashMap::new(),
            order: [VecDeque::new(), VecDeque::new()],
            queued: HashSet::new(),
            active: HashSet::new(),
            failures: HashMap::new(),
            waiting: HashMap::new(),
            waits: 0,
            members: HashSet::new(),
            since: HashMap::new(),
            forgotten: HashSet::new(),
        }
    }
}

impl<K: Eq + Hash, V> State<K, V> {
    /// Queues `key` behind the others of its urgency.
    fn push(&mut self, key: K, urgent: Option<fn(&V) -> bool>) {
        let first = urgent.is_some_and(|f| self.latest.get(&key).is_some_and(f));
        self.order[usize::from(!first)].push_back(key);
    }

    /// The next key queued, urgent ones first.
    fn pop(&mut self) -> Option<K> {
        self.order[0]
            .pop_front()
            .or_else(|| self.order[1].pop_front())
    }

    fn queued_len(&self) -> usize {
        self.order[0].len() + self.order[1].len()
    }

    /// Drops every trace of `key` (finished, given up, or forgotten).
    fn release(&mut self, key: &K) {
        self.failures.remove(key);
        self.since.remove(key);
        self.members.remove(key);
    }
}

impl<K, V> Default for KeyedQueue<K, V> {
    fn default() -> Self {
        Self::unbounded()
    }
}

impl<K, V> KeyedQueue<K, V> {
    pub fn unbounded() -> Self {
        KeyedQueue {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            capacity: None,
            urgent: None,
        }
    }

    /// Values for which `urgent` holds are worked on before the others waiting (each group in
    /// the order it came).
    pub fn urgent_first(self, urgent: fn(&V) -> bool) -> Self {
        KeyedQueue {
            urgent: Some(urgent),
            ..self
        }
    }

    /// A queue holding at most `capacity` keys (at least one).
    pub fn bounded(capacity: usize) -> Self {
        KeyedQueue {
            capacity: Some(capacity.max(1)),
            ..Self::unbounded()
        }
    }
}

impl<K, V> KeyedQueue<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Send + 'static,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, State<K, V>> {
        crate::locks::lock(&self.state)
    }

    /// Queues the latest value of `key`. A key already held takes the new value (and never
    /// counts against the capacity); a new key beyond the capacity is refused.
    pub fn add(&self, key: K, value: V) -> Result<(), Full<V>> {
        let mut s = self.lock();
        if let Some(cap) = self.capacity
            && !s.members.contains(&key)
            && s.members.len() >= cap
        {
            return Err(Full(value));
        }
        // Re-created after being forgotten: a new life.
        s.forgotten.remove(&key);
        s.members.insert(key.clone());
        s.latest.insert(key.clone(), value);
        s.since.entry(key.clone()).or_insert_with(Instant::now);
        let paced = match s.waiting.get(&key) {
            Some((_, true)) => true,
            Some((_, false)) => {
                // A newer value ends a retry's wait: it starts over.
                s.waiting.remove(&key);
                s.failures.remove(&key);
                false
            }
            None => false,
        };
        if !s.active.contains(&key) && !paced && s.queued.insert(key.clone()) {
            s.push(key, self.urgent);
            drop(s);
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Number of keys waiting to be worked on.
    pub fn len(&self) -> usize {
        self.lock().queued_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Since when the key that has waited longest (queued, in work or waiting for a retry)
    /// waits; None when none is held.
    pub fn oldest(&self) -> Option<Instant> {
        self.lock().since.values().min().copied()
    }

    /// Number of keys held in any state (what the capacity bounds).
    pub fn held(&self) -> usize {
        self.lock().members.len()
    }

    /// Waits for the next key to work on: its latest value and since when it waits.
    pub async fn next(&self) -> (K, V, Instant) {
        loop {
            let notified = self.ready.notified();
            if let Some(next) = self.try_next() {
                return next;
            }
            notified.await;
        }
    }

    /// The next key to work on, if one is queued now.
    fn try_next(&self) -> Option<(K, V, Instant)> {
        let mut s = self.lock();
        while let Some(key) = s.pop() {
            s.queued.remove(&key);
            if let Some(value) = s.latest.remove(&key) {
                s.waiting.remove(&key);
                s.active.insert(key.clone());
                let since = s.since.get(&key).copied().unwrap_or_else(Instant::now);
                return Some((key, value, since));
            }
        }
        None
    }

    /// Waits for the next key, then takes up to `max` keys in all: those queued, and those
    /// queued within `linger` of the first (a batch for a sink that writes many at once).
    /// Each is worked on as [`Self::next`]'s is, and marked [`Self::done`] on its own.
    pub async fn next_batch(&self, max: usize, linger: Duration) -> Vec<(K, V, Instant)> {
        let mut batch = vec![self.next().await];
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            let notified = self.ready.notified();
            if let Some(next) = self.try_next() {
                batch.push(next);
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        // Every wake-up this batch took came with a key it took; still, keys a full batch
        // left queued are said to another worker rather than left for the next add.
        if max > 1 && batch.len() == max && self.lock().queued_len() > 0 {
            self.ready.notify_one();
        }
        batch
    }

    /// Marks `key` done. A failure comes back after the policy's delay unless a newer value
    /// arrived meanwhile (queued at once, with a fresh count), up to `max_attempts`; past that,
    /// or for [`Done::GiveUp`], the key is dropped. Returns true when it was (given up).
    pub fn done(self: &Arc<Self>, key: K, done: Done<V>, retry: &RetryPolicy) -> bool {
        let mut s = self.lock();
        s.active.remove(&key);
        if s.forgotten.remove(&key) {
            s.release(&key);
            return false;
        }
        let paced = matches!(done, Done::Later(..));
        if s.latest.contains_key(&key) && !paced {
            // A newer value came in while this one was worked on: it gets a fresh start.
            s.failures.remove(&key);
            if s.queued.insert(key.clone()) {
                s.push(key, self.urgent);
            }
            drop(s);
            self.ready.notify_one();
            return false;
        }
        let (value, delay, failures) = match done {
            Done::Finished => {
                s.release(&key);
                return false;
            }
            Done::GiveUp => {
                s.release(&key);
                return true;
            }
            Done::Later(value, after) => (value, after, s.failures.get(&key).copied()),
            Done::Retry(value) => {
                let n = s.failures.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                let failures = *n;
                if failures >= retry.max_attempts.max(1) {
                    s.release(&key);
                    return true;
                }
                (value, retry.delay(failures), Some(failures))
            }
        };
        s.waits += 1;
        let wait = s.waits;
        s.waiting.insert(key.clone(), (wait, paced));
        drop(s);
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut s = queue.lock();
            // Only the current wait of the key brings it back: not one a newer value ended,
            // nor one of a finished or forgotten key.
            if s.waiting.get(&key).map(|(w, _)| *w) != Some(wait) {
                return;
            }
            s.waiting.remove(&key);
            // A retry comes back only if nothing happened to the key meanwhile (no newer value,
            // no other try); a paced wait brings back the newest value.
            let newer = s.latest.contains_key(&key);
            if paced || (!newer && s.failures.get(&key).copied() == failures) {
                // A newer value that waited with it goes in its place.
                s.latest.entry(key.clone()).or_insert(value);
                if !s.active.contains(&key) && s.queued.insert(key.clone()) {
                    s.push(key, queue.urgent);
                    drop(s);
                    queue.ready.notify_one();
                }
            }
        });
        false
    }

    /// Forgets `key`: a queued value and a pending retry are dropped.
    pub fn forget(&self, key: &K) {
        let mut s = self.lock();
        s.latest.remove(key);
        s.waiting.remove(key);
        if s.queued.remove(key) {
            for order in &mut s.order {
                order.retain(|k| k != key);
            }
        }
        if s.active.contains(key) {
            // Released when its worker is done.
            s.failures.remove(key);
            s.forgotten.insert(key.clone());
        } else {
            s.release(key);
        }
    }

    /// Keys with failures counted (pending retries).
    pub fn failing(&self) -> usize {
        self.lock().failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Q = KeyedQueue<&'static str, i32>;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            factor: 2,
            max_delay: Duration::from_secs(300),
            max_attempts,
            jitter: crate::backoff::Jitter::None,
        }
    }

    #[tokio::test]
    async fn urgent_values_are_worked_on_first_each_group_in_order() {
        let q = Arc::new(Q::unbounded().urgent_first(|v| *v < 0));
        for (k, v) in [("a", 1), ("b", -1), ("c", 2), ("d", -2)] {
            q.add(k, v).unwrap();
        }
        let mut order = Vec::new();
        for _ in 0..4 {
            let (k, _, _) = q.next().await;
            order.push(k);
            q.done(k, Done::Finished, &policy(3));
        }
        assert_eq!(order, ["b", "d", "a", "c"]);
        // A key that turns urgent while it waits keeps its place; a newer value of a queued
        // key does not queue it twice.
        q.add("e", 1).unwrap();
        q.add("e", 2).unwrap();
        assert_eq!(q.len(), 1);
        // Forgotten, it is gone from either group.
        q.add("f", -1).unwrap();
        q.forget(&"f");
        q.forget(&"e");
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn keys_are_queued_once_with_their_latest_value() {
        let q = Arc::new(Q::unbounded());
        q.add("a", 1).unwrap();
        q.add("b", 1).unwrap();
        q.add("a", 2).unwrap();
        assert_eq!(q.len(), 2);
        let (k, v, _) = q.next().await;
        assert_eq!((k, v), ("a", 2));
        // While "a" is worked on, a new value waits and is not handed to another worker.
        q.add("a", 3).unwrap();
        let (k, _, _) = q.next().await;
        assert_eq!(k, "b");
        assert!(q.is_empty());
        q.done("a", Done::Finished, &policy(1));
        let (k, v, _) = q.next().await;
        assert_eq!((k, v), ("a", 3));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_come_back_after_a_growing_delay() {
        let q = Arc::new(Q::unbounded());
        q.add("a", 1).unwrap();
        let (k, v, _) = q.next().await;
        let start = tokio::time::Instant::now();
        q.done(k, Done::Retry(v), &policy(10));
        let (k, v, _) = q.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        q.done(k, Done::Retry(v), &policy(10));
        let (k, _, _) = q.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        q.done(k, Done::Finished, &policy(10));
        assert_eq!(q.failing(), 0);
        assert_eq!(q.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_cap_and_refusals_at_once() {
        let q = Arc::new(Q::unbounded());
        q.add("a", 1).unwrap();
        let (k, v, _) = q.next().await;
        assert!(!q.done(k, Done::Retry(v), &policy(2)), "kept");
        let (k, v, _) = q.next().await;
        assert!(q.done(k, Done::Retry(v), &policy(2)), "given up");
        assert_eq!(q.failing(), 0, "forgotten after giving up");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(q.is_empty(), "a given-up key never comes back by itself");
        // A new value starts over.
        q.add("a", 2).unwrap();
        let (k, _, _) = q.next().await;
        assert!(q.done(k, Done::GiveUp, &policy(10)), "given up");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_key_is_not_retried() {
        let q = Arc::new(Q::unbounded());
        q.add("a", 1).unwrap();
        let (k, v, _) = q.next().await;
        q.done(k, Done::Retry(v), &policy(10));
        assert_eq!(q.failing(), 1);
        q.forget(&"a");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(q.is_empty(), "the pending retry was dropped");
        assert_eq!(q.failing(), 0);
        // Forgetting a queued key drops it too.
        q.add("b", 1).unwrap();
        q.forget(&"b");
        assert!(q.is_empty());
        assert_eq!(q.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_queue_refuses_new_keys_but_takes_new_values_of_held_ones() {
        let q = Arc::new(Q::bounded(2));
        q.add("a", 1).unwrap();
        q.add("b", 1).unwrap();
        assert!(matches!(q.add("c", 1), Err(Full(1))), "a third key");
        q.add("a", 2).expect("a held key takes its new value");
        // A key waiting for its retry is still held.
        let (k, v, _) = q.next().await;
        q.done(k, Done::Retry(v), &policy(10));
        assert!(q.add("c", 1).is_err(), "a and b are still held");
        let (k, _, _) = q.next().await;
        q.done(k, Done::Finished, &policy(10));
        q.add("c", 1).expect("b was finished: room again");
        assert_eq!(q.held(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn later_comes_back_without_counting_a_failure() {
        let q = Arc::new(Q::unbounded());
        q.add("a", 1).unwrap();
        let (k, v, _) = q.next().await;
        let start = tokio::time::Instant::now();
        q.done(k, Done::Later(v, Duration::from_millis(250)), &policy(1));
        let (k, v, _) = q.next().await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        assert_eq!(q.failing(), 0);
        // Later never gives up, even with a cap of one attempt.
        assert!(
            !q.done(k, Done::Later(v, Duration::from_millis(1)), &policy(1)),
            "kept"
        );
        let (k, _, _) = q.next().await;
        q.done(k, Done::Finished, &policy(1));
    }

    /// A newer value ends a retry's wait and is tried at once; when that try fails too, its
    /// own wait brings the key back (the ended wait's timer, firing meanwhile, left it stuck).
    #[tokio::test(start_paused = true)]
    async fn a_retry_ended_by_a_newer_value_does_not_swallow_the_next_one() {
        let q = Arc::new(Q::unbounded());
        q.add("a", 1).unwrap();
        let (k, v, _) = q.next().await;
        q.done(k, Done::Retry(v), &policy(10));
        q.add("a", 2).unwrap();
        let (k, v, _) = q.next().await;
        assert_eq!(v, 2);
        q.done(k, Done::Retry(v), &policy(10));
        let back = tokio::time::timeout(Duration::from_secs(60), q.next()).await;
        let (k, v, _) = back.expect("the key came back after its retry");
        assert_eq!((k, v), ("a", 2));
    }

    /// A store that asked to come back later (429 Retry-After) is not asked again sooner
    /// because a newer value came: the newer one waits its turn and goes in the old one's place,
    /// whether it came during the wait or while the paced try was in work.
    #[tokio::test(start_paused = true)]
    async fn a_newer_value_of_a_paced_key_waits_its_turn() {
        let q = Arc::new(Q::unbounded());
        q.add("a", 1).unwrap();
        let (k, v, _) = q.next().await;
        let start = tokio::time::Instant::now();
        q.add("a", 2).unwrap();
        q.done(k, Done::Later(v, Duration::from_millis(250)), &policy(3));
        q.add("a", 3).unwrap();
        let (k, v, _) = q.next().await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        assert_eq!(v, 3, "the newest value goes");
        q.done(k, Done::Finished, &policy(3));
        assert_eq!(q.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_what_is_queued_and_what_comes_within_the_linger() {
        let q = Arc::new(Q::unbounded());
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            q.add(k, v).unwrap();
        }
        let keys =
            |b: Vec<(&'static str, i32, Instant)>| b.into_iter().map(|x| x.0).collect::<Vec<_>>();
        assert_eq!(
            keys(q.next_batch(2, Duration::from_millis(20)).await),
            ["a", "b"]
        );
        // One queued, one more within the linger, one after it.
        let later = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            later.add("d", 4).unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            later.add("e", 5).unwrap();
        });
        let start = tokio::time::Instant::now();
        assert_eq!(
            keys(q.next_batch(10, Duration::from_millis(20)).await),
            ["c", "d"]
        );
        assert_eq!(start.elapsed(), Duration::from_millis(20));
        assert_eq!(keys(q.next_batch(10, Duration::ZERO).await), ["e"]);
        // Keys in a batch are active: a new value of one waits for its done.
        q.add("a", 9).unwrap();
        assert_eq!(q.len(), 0, "a is still being worked on");
        q.done("a", Done::Finished, &policy(1));
        assert_eq!(keys(q.next_batch(10, Duration::ZERO).await), ["a"]);
    }
}
