//! The recorder claims client-go's behaviour (`tools/record`); client-go's own tests are the
//! reference. Their cases, with their data and expected outcomes, in our words:
//! `events_cache_test.go` (`TestEventCorrelator`, `TestEventSpamFilter`, the spam key with the
//! type since kubernetes/kubernetes#124747), `util/util_test.go` (`TestGenerateEventName`) and
//! `event.go`'s `recordEvent` (which answers are tried again). Where we differ on purpose, the
//! case says so beside it.

use std::sync::Arc;
use std::time::Duration;

use clusterscope::delivery::{Action, SinkError, Writer};
use clusterscope::recorder::name::event_name;
use clusterscope::recorder::{Correlated, Correlator, CorrelatorOptions, ManualClock};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::jiff::Timestamp;

const MAX_EVENTS: usize = 10; // defaultAggregateMaxEvents
const SPAM_BURST: usize = 25; // defaultSpamBurst
const COMBINED: &str = "(combined from similar events): ";

/// `makeObjectReference`.
fn object(kind: &str, name: &str, namespace: &str) -> ObjectReference {
    ObjectReference {
        kind: Some(kind.into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        uid: Some("C934D34AFB20242".into()),
        api_version: Some("version".into()),
        field_path: Some("spec.containers{mycontainer}".into()),
        ..ObjectReference::default()
    }
}

/// `makeEvent`: from the kubelet on `kublet.node1`, Normal, count 1.
fn event(reason: &str, message: &str, involved: ObjectReference) -> Event {
    Event {
        reason: Some(reason.into()),
        message: Some(message.into()),
        involved_object: involved,
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some("kublet.node1".into()),
        }),
        count: Some(1),
        type_: Some("Normal".into()),
        ..Event::default()
    }
}

fn my_pod() -> ObjectReference {
    object("Pod", "my-pod", "my-ns")
}

/// `makeEvents`.
fn repeated(n: usize, template: &Event) -> Vec<Event> {
    vec![template.clone(); n]
}

/// `makeUniqueEvents`.
fn unique(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            event(
                &format!("reason-{i}"),
                &format!("message-{i}"),
                object("Pod", &format!("pod-{i}"), &format!("ns-{i}")),
            )
        })
        .collect()
}

/// `makeSimilarEvents`: the message varied.
fn similar(n: usize, template: &Event) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let mut e = template.clone();
            let m = e.message.clone().unwrap_or_default();
            e.message = Some(format!("{m}-{i}-{m}"));
            e
        })
        .collect()
}

/// What correlating the new event gives: skipped, or created / patched with this message and
/// count.
#[derive(Debug, PartialEq)]
enum Outcome {
    Skip,
    Create { message: String, count: i32 },
    Patch { message: String, count: i32 },
}

fn outcome(c: Correlated) -> Outcome {
    let said = |e: &Event| (e.message.clone().unwrap_or_default(), e.count.unwrap_or(0));
    match c {
        Correlated::Skip => Outcome::Skip,
        Correlated::Create(e) => {
            let (message, count) = said(&e);
            Outcome::Create { message, count }
        }
        Correlated::Patch(e) => {
            let (message, count) = said(&e);
            Outcome::Patch { message, count }
        }
    }
}

/// Plays `previous` then `new` through a correlator with client-go's defaults, `every` apart.
fn correlate(previous: &[Event], new: &Event, every: Duration) -> Outcome {
    let clock = Arc::new(ManualClock::new());
    let mut correlator = Correlator::new(CorrelatorOptions::default(), clock.clone());
    for e in previous {
        clock.advance(every);
        let _ = correlator.correlate(e.clone());
    }
    clock.advance(every);
    outcome(correlator.correlate(new.clone()))
}

/// `TestEventCorrelator`, case by case. client-go's `IntervalClock` moves on at every reading
/// and its correlator reads it twice an event, so its 600 s case is more than 600 s between
/// two events; ours reads once, so that case is 601 s here.
#[test]
fn client_go_event_correlator_cases() {
    let first = event("first", "i am first", my_pod());
    let duplicate = event("duplicate", "me again", my_pod());
    let unique_event = event("unique", "snowflake", my_pod());
    let mut similar_event = event("similar", "similar message", my_pod());
    similar_event.involved_object.field_path = Some("spec.containers{container1}".into());
    let mut other_container = similar_event.clone();
    other_container.involved_object.field_path = Some("spec.containers{container2}".into());
    let aggregate = format!("{COMBINED}similar message");
    let create = |message: &str, count| Outcome::Create {
        message: message.into(),
        count,
    };
    let patch = |message: &str, count| Outcome::Patch {
        message: message.into(),
        count,
    };
    let secs = Duration::from_secs;
    let cases: Vec<(&str, Vec<Event>, &Event, Duration, Outcome)> = vec![
        (
            "create-a-single-event",
            vec![],
            &first,
            secs(5),
            create("i am first", 1),
        ),
        (
            "the-same-event-should-just-count",
            repeated(1, &duplicate),
            &duplicate,
            secs(5),
            patch("me again", 2),
        ),
        (
            "the-same-event-should-just-count-even-if-more-than-aggregate",
            repeated(MAX_EVENTS, &duplicate),
            &duplicate,
            secs(30),
            patch("me again", MAX_EVENTS as i32 + 1),
        ),
        (
            "the-same-event-is-spam-if-happens-too-frequently",
            repeated(SPAM_BURST + 1, &duplicate),
            &duplicate,
            secs(1),
            Outcome::Skip,
        ),
        (
            "create-many-unique-events",
            unique(30),
            &unique_event,
            secs(5),
            create("snowflake", 1),
        ),
        (
            "similar-events-should-aggregate-event",
            similar(MAX_EVENTS - 1, &similar_event),
            &similar_event,
            secs(5),
            create(&aggregate, 1),
        ),
        (
            "similar-events-many-times-should-count-the-aggregate",
            similar(MAX_EVENTS, &similar_event),
            &similar_event,
            secs(5),
            patch(&aggregate, 2),
        ),
        (
            "events-from-different-containers-do-not-aggregate",
            repeated(1, &other_container),
            &similar_event,
            secs(5),
            create("similar message", 1),
        ),
        (
            "similar-events-whose-interval-is-greater-than-aggregate-interval-do-not-aggregate",
            similar(MAX_EVENTS - 1, &similar_event),
            &similar_event,
            secs(601),
            create("similar message", 1),
        ),
    ];
    for (name, previous, new, every, expected) in cases {
        assert_eq!(correlate(&previous, new, every), expected, "{name}");
    }
}

/// `TestEventSpamFilter` with the default key (burst 1): another reason about the same object
/// is spam. Its other two cases give a custom spam key function, which we do not offer.
#[test]
fn client_go_spam_filter_default_key_case() {
    let clock = Arc::new(ManualClock::new());
    let options = CorrelatorOptions {
        spam_burst: 1,
        ..CorrelatorOptions::default()
    };
    let mut c = Correlator::new(options, clock.clone());
    let original = event("original", "i am first", my_pod());
    let different_reason = event("duplicate", "me again", my_pod());
    assert!(matches!(c.correlate(original), Correlated::Create(_)));
    clock.advance(Duration::from_secs(1));
    assert_eq!(outcome(c.correlate(different_reason)), Outcome::Skip);
}

/// The spam key has the type (kubernetes/kubernetes#124747): after a burst of Normal events
/// about one object a Warning still goes through, and the Normal bucket stays empty.
#[test]
fn normal_and_warning_events_about_one_object_have_a_bucket_each() {
    let clock = Arc::new(ManualClock::new());
    let mut c = Correlator::new(CorrelatorOptions::default(), clock.clone());
    // Distinct reasons: neither counted as repeats nor aggregated, each takes a token.
    for i in 0..SPAM_BURST {
        clock.advance(Duration::from_millis(10));
        let out = c.correlate(event(&format!("normal-{i}"), "m", my_pod()));
        assert!(matches!(out, Correlated::Create(_)), "{i}: {out:?}");
    }
    clock.advance(Duration::from_millis(10));
    let past_burst = c.correlate(event("normal-more", "m", my_pod()));
    assert_eq!(
        outcome(past_burst),
        Outcome::Skip,
        "the Normal burst is spent"
    );
    let mut warning = event("LeaderLost", "lost the lease", my_pod());
    warning.type_ = Some("Warning".into());
    clock.advance(Duration::from_millis(10));
    assert_eq!(
        outcome(c.correlate(warning)),
        Outcome::Create {
            message: "lost the lease".into(),
            count: 1
        },
        "a Warning after 25 Normal events about one object was dropped"
    );
}

/// client-go counts on `count` as stored; an event without one has count 0, and its repeat
/// is created again (with no count), never patched to 1.
#[test]
fn an_event_without_a_count_is_not_counted_on() {
    let mut e = event("NoCount", "m", my_pod());
    e.count = None;
    assert_eq!(
        correlate(std::slice::from_ref(&e), &e, Duration::from_secs(5)),
        Outcome::Create {
            message: "m".into(),
            count: 0
        }
    );
}

/// `TestGenerateEventName`: `<name>.<hex nanoseconds>` where that is a valid name, else a
/// random UUID, never a name the API server refuses. Newer client-go also appends a random
/// part to the valid form (kubernetes/kubernetes#134993, two events in one timer tick); our
/// names keep the form the facts page gives, and the correlator, not the name, tells repeats.
#[test]
fn client_go_event_name_cases() {
    let at = Timestamp::from_nanosecond(105_999_103_295_324_396).unwrap();
    assert_eq!(event_name("test-pod", at), "test-pod.178959f726d80ec");
    let invalid = [
        "x".repeat(300),
        "test.POD".into(),
        "test.pod/invalid!chars?".into(),
        "--test.pod/invalid!chars?".into(),
        // A ClusterRole's name, as the controller-manager's are called.
        "system:controller:foo".into(),
        // Fits alone, too long with the suffix.
        "a".repeat(240),
    ];
    for name in &invalid {
        let generated = event_name(name, at);
        assert!(
            clusterscope::labels::check_dns1123_subdomain(&generated).is_ok(),
            "{name:?} gave {generated:?}"
        );
        let uuid = uuid_shape(&generated);
        assert!(uuid, "{name:?} gave {generated:?}, not a UUID");
        assert_ne!(generated, event_name(name, at), "{name:?}: not random");
    }
}

fn uuid_shape(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
}

/// `recordEvent`: what is tried again. client-go gives up on every API status and retries
/// everything else (a broken connection, an answer it cannot read); AlreadyExists and a
/// namespace being deleted are said quietly. We also retry 5xx and 429 (a busy or restarting
/// API server passes on a later try; documented in docs/architecture.md).
#[test]
fn client_go_retry_cases() {
    let api = |code: u16, reason: &str| {
        SinkError::from(kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: "m".into(),
            ..kube::core::Status::default()
        })))
    };
    let unreadable = serde_json::from_str::<serde_json::Value>("{\"kind\":")
        .map_err(kube::Error::SerdeError)
        .map(|_| ());
    let unreadable = SinkError::from(unreadable.unwrap_err());
    let transport = SinkError::from(kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "reset",
    ))));
    let cases = [
        (
            "AlreadyExists: not retried",
            api(409, "AlreadyExists"),
            false,
        ),
        ("Invalid: not retried", api(422, "Invalid"), false),
        ("Forbidden: not retried", api(403, "Forbidden"), false),
        ("NotFound: not retried", api(404, "NotFound"), false),
        ("transport error: retried", transport, true),
        ("an answer that cannot be read: retried", unreadable, true),
        // Ours, on purpose: client-go gives these up.
        ("500 (ours): retried", api(500, "InternalError"), true),
        ("503 (ours): retried", api(503, "ServiceUnavailable"), true),
        ("429 (ours): retried", api(429, "TooManyRequests"), true),
    ];
    for (name, error, retried) in cases {
        let retries = error.action(Writer::Recorder) == Action::Retry;
        assert_eq!(retries, retried, "{name}: {error}");
    }
}
