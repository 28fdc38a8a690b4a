//! Event correlation with client-go's semantics (`tools/record/events_cache.go`):
//!
//! 1. **Aggregation**: events that differ only in their message are grouped by
//!    source + involved object + type + reason (+ reporting controller/instance). Once
//!    `max_events` (10) distinct messages are seen within an idle gap of `max_interval` (600 s),
//!    further ones become a single event with the message prefixed by
//!    `(combined from similar events): `.
//! 2. **Deduplication**: a repeat of an event already written becomes a patch of `count`,
//!    `lastTimestamp` and `message` of the stored event, not a new object.
//! 3. **Spam filter**: a token bucket per source + involved object + type (burst 25, then one
//!    per 300 s) drops the excess.
//!
//! Every cache is an LRU of `cache_size` (4096) keys. Time comes from a [`Clock`], so tests
//! control it.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use lru::LruCache;

use super::Clock;

/// The prefix client-go gives aggregated messages.
pub const COMBINED_PREFIX: &str = "(combined from similar events): ";

/// Correlator settings; the defaults are client-go's.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelatorOptions {
    pub cache_size: usize,
    /// Distinct messages before aggregation starts.
    pub max_events: usize,
    /// Idle gap after which an aggregation group starts over.
    pub max_interval: Duration,
    pub spam_burst: u32,
    /// One token every this often.
    pub spam_refill: Duration,
}

impl Default for CorrelatorOptions {
    fn default() -> Self {
        CorrelatorOptions {
            cache_size: 4096,
            max_events: 10,
            max_interval: Duration::from_secs(600),
            spam_burst: 25,
            spam_refill: Duration::from_secs(300),
        }
    }
}

/// What to write for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Correlated {
    /// Create this event.
    Create(Event),
    /// A repeat: patch the stored event it names with its `count`, `lastTimestamp` and
    /// `message` (the full new state, to create if the stored one is gone).
    Patch(Event),
    /// Dropped by the spam filter.
    Skip,
}

struct AggregateRecord {
    messages: HashSet<String>,
    last: Timestamp,
}

#[derive(Clone)]
struct Observation {
    count: i32,
    first_timestamp: Option<Time>,
    name: Option<String>,
    resource_version: Option<String>,
}

struct TokenBucket {
    tokens: f64,
    last: Timestamp,
}

fn s(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

/// Source and involved object, in client-go's order; `fieldPath` (after the name) only where
/// client-go's key has it.
fn source_and_object(e: &Event, with_field_path: bool) -> Vec<&str> {
    let (component, host) = e
        .source
        .as_ref()
        .map_or(("", ""), |src| (s(&src.component), s(&src.host)));
    let o = &e.involved_object;
    let mut parts = vec![component, host, s(&o.kind), s(&o.namespace), s(&o.name)];
    if with_field_path {
        parts.push(s(&o.field_path));
    }
    parts.extend([s(&o.uid), s(&o.api_version)]);
    parts
}

/// client-go `getEventKey`: everything that makes two events the same, message included.
pub fn event_key(e: &Event) -> String {
    let mut parts = source_and_object(e, true);
    parts.extend([s(&e.type_), s(&e.reason), s(&e.message)]);
    parts.concat()
}

/// client-go `EventAggregatorByReasonFunc`: the group key (without message) and the message.
pub fn aggregate_key(e: &Event) -> (String, String) {
    let mut parts = source_and_object(e, false);
    parts.extend([
        s(&e.type_),
        s(&e.reason),
        s(&e.reporting_component),
        s(&e.reporting_instance),
    ]);
    (parts.concat(), s(&e.message).to_owned())
}

/// client-go `getSpamKey`: source, involved object and type (the type since
/// kubernetes/kubernetes#124747: Normal and Warning events about one object have a bucket each,
/// so a burst of Normal events never silences a Warning).
pub fn spam_key(e: &Event) -> String {
    let mut parts = source_and_object(e, false);
    parts.push(s(&e.type_));
    parts.concat()
}

/// Correlates events before they are written.
pub struct Correlator {
    options: CorrelatorOptions,
    clock: Arc<dyn Clock>,
    aggregates: LruCache<String, AggregateRecord>,
    observed: LruCache<String, Observation>,
    spam: LruCache<String, TokenBucket>,
}

impl Correlator {
    pub fn new(options: CorrelatorOptions, clock: Arc<dyn Clock>) -> Self {
        let size = NonZeroUsize::new(options.cache_size.max(1)).unwrap_or(NonZeroUsize::MIN);
        Correlator {
            options,
            clock,
            aggregates: LruCache::new(size),
            observed: LruCache::new(size),
            spam: LruCache::new(size),
        }
    }

    /// Decides how `event` is written.
    pub fn correlate(&mut self, event: Event) -> Correlated {
        let now = self.clock.now();
        let (aggregated, key) = self.aggregate(event, now);
        let (observed, repeat) = self.observe(aggregated, key);
        if !self.allow(&observed, now) {
            return Correlated::Skip;
        }
        if repeat {
            Correlated::Patch(observed)
        } else {
            Correlated::Create(observed)
        }
    }

    fn aggregate(&mut self, event: Event, now: Timestamp) -> (Event, String) {
        let (group, message) = aggregate_key(&event);
        let max_interval = self.options.max_interval;
        let record = self
            .aggregates
            .get_or_insert_mut(group.clone(), || AggregateRecord {
                messages: HashSet::new(),
                last: now,
            });
        let idle = now.duration_since(record.last);
        if idle > k8s_openapi::jiff::SignedDuration::try_from(max_interval).unwrap_or_default() {
            record.messages.clear();
        }
        record.messages.insert(message);
        record.last = now;
        if record.messages.len() < self.options.max_events {
            let key = event_key(&event);
            return (event, key);
        }
        // Keep the set from growing past the limit, as client-go's PopAny.
        if let Some(any) = record.messages.iter().next().cloned() {
            record.messages.remove(&any);
        }
        let object_name = s(&event.involved_object.name).to_owned();
        let combined = Event {
            metadata: ObjectMeta {
                name: Some(super::name::event_name(&object_name, now)),
                namespace: event.metadata.namespace.clone(),
                ..ObjectMeta::default()
            },
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            involved_object: event.involved_object.clone(),
            message: Some(format!("{COMBINED_PREFIX}{}", s(&event.message))),
            type_: event.type_.clone(),
            reason: event.reason.clone(),
            source: event.source.clone(),
            ..Event::default()
        };
        (combined, group)
    }

    /// client-go `eventObserve`: a repeat takes the stored event's name, first timestamp and
    /// the next count (true).
    fn observe(&mut self, mut event: Event, key: String) -> (Event, bool) {
        let mut repeat = false;
        if let Some(last) = self.observed.get(&key).filter(|o| o.count > 0).cloned() {
            event.metadata.name = last.name;
            event.metadata.resource_version = last.resource_version;
            event.first_timestamp = last.first_timestamp;
            event.count = Some(last.count.saturating_add(1));
            repeat = true;
        }
        self.observed.put(
            key,
            Observation {
                // An event without a count is not counted on (client-go's zero count): its
                // repeat is created again, not patched.
                count: event.count.unwrap_or(0),
                first_timestamp: event.first_timestamp.clone(),
                name: event.metadata.name.clone(),
                resource_version: event.metadata.resource_version.clone(),
            },
        );
        (event, repeat)
    }

    /// Token bucket per source + object + type.
    fn allow(&mut self, event: &Event, now: Timestamp) -> bool {
        let burst = f64::from(self.options.spam_burst);
        let refill = self
            .options
            .spam_refill
            .as_secs_f64()
            .max(f64::MIN_POSITIVE);
        let bucket = self
            .spam
            .get_or_insert_mut(spam_key(event), || TokenBucket {
                tokens: burst,
                last: now,
            });
        let elapsed = now.duration_since(bucket.last).as_secs_f64().max(0.0);
        bucket.tokens = (bucket.tokens + elapsed / refill).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::ManualClock;
    use k8s_openapi::api::core::v1::{EventSource, ObjectReference};

    fn node_event(node: &str, reason: &str, message: &str, now: Timestamp) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{node}.{:x}", now.as_nanosecond())),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                kind: Some("Node".into()),
                name: Some(node.into()),
                uid: Some(node.into()),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Normal".into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(node.into()),
            }),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            ..Event::default()
        }
    }

    fn setup() -> (Arc<ManualClock>, Correlator) {
        let clock = Arc::new(ManualClock::new());
        let c = Correlator::new(CorrelatorOptions::default(), clock.clone());
        (clock, c)
    }

    #[test]
    fn repeats_become_count_patches() {
        let (clock, mut c) = setup();
        let first = node_event("n1", "NodeNotReady", "not ready", clock.now());
        let name = first.metadata.name.clone();
        assert!(matches!(c.correlate(first), Correlated::Create(_)));
        clock.advance(Duration::from_secs(30));
        match c.correlate(node_event("n1", "NodeNotReady", "not ready", clock.now())) {
            Correlated::Patch(event) => {
                assert_eq!(event.count, Some(2));
                assert_eq!(
                    event.metadata.name, name,
                    "the patch targets the stored event"
                );
                assert_eq!(event.message.as_deref(), Some("not ready"));
            }
            other => panic!("{other:?}"),
        }
        match c.correlate(node_event("n1", "NodeNotReady", "not ready", clock.now())) {
            Correlated::Patch(event) => assert_eq!(event.count, Some(3)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ten_distinct_messages_aggregate() {
        let (clock, mut c) = setup();
        for i in 0..9 {
            let out = c.correlate(node_event("n1", "R", &format!("m{i}"), clock.now()));
            assert!(
                matches!(out, Correlated::Create(ref e) if e.message.as_deref() == Some(&*format!("m{i}")))
            );
        }
        // The 10th distinct message within the gap is combined.
        match c.correlate(node_event("n1", "R", "m9", clock.now())) {
            Correlated::Create(e) => {
                assert_eq!(
                    e.message.as_deref(),
                    Some("(combined from similar events): m9")
                );
            }
            other => panic!("{other:?}"),
        }
        // Further ones patch the combined event.
        match c.correlate(node_event("n1", "R", "m10", clock.now())) {
            Correlated::Patch(event) => {
                assert_eq!(event.count, Some(2));
                assert_eq!(
                    event.message.as_deref(),
                    Some("(combined from similar events): m10")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn aggregation_starts_over_after_the_idle_gap() {
        let (clock, mut c) = setup();
        for i in 0..9 {
            c.correlate(node_event("n1", "R", &format!("m{i}"), clock.now()));
        }
        clock.advance(Duration::from_secs(601));
        match c.correlate(node_event("n1", "R", "fresh", clock.now())) {
            Correlated::Create(e) => assert_eq!(e.message.as_deref(), Some("fresh")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn spam_filter_burst_then_one_per_300s() {
        let (clock, mut c) = setup();
        let mut written = 0;
        for i in 0..40 {
            // Distinct reasons: no aggregation, same source + object.
            if !matches!(
                c.correlate(node_event("n1", &format!("R{i}"), "m", clock.now())),
                Correlated::Skip
            ) {
                written += 1;
            }
        }
        assert_eq!(written, 25);
        clock.advance(Duration::from_secs(299));
        assert_eq!(
            c.correlate(node_event("n1", "Late", "m", clock.now())),
            Correlated::Skip
        );
        clock.advance(Duration::from_secs(1));
        assert!(!matches!(
            c.correlate(node_event("n1", "Later", "m", clock.now())),
            Correlated::Skip
        ));
        // Another object has its own bucket.
        assert!(!matches!(
            c.correlate(node_event("n2", "R", "m", clock.now())),
            Correlated::Skip
        ));
    }

    #[test]
    fn caches_are_bounded() {
        let clock = Arc::new(ManualClock::new());
        let mut c = Correlator::new(
            CorrelatorOptions {
                cache_size: 8,
                ..CorrelatorOptions::default()
            },
            clock.clone(),
        );
        for i in 0..100 {
            c.correlate(node_event(&format!("n{i}"), "R", "m", clock.now()));
        }
        assert_eq!(c.observed.len(), 8);
        assert_eq!(c.aggregates.len(), 8);
        assert_eq!(c.spam.len(), 8);
        // n0 was evicted: a repeat is a fresh create, as in client-go.
        assert!(matches!(
            c.correlate(node_event("n0", "R", "m", clock.now())),
            Correlated::Create(_)
        ));
    }
}
