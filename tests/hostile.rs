//! Hostile input for the review path, run by `cargo test` on the stable toolchain: structured
//! attacks (deep nesting, huge strings, duplicate keys, wrong types, numbers out of range) and
//! property-based mutations of every fixture. Nothing may panic; every input gets an answer or
//! a one-line error.

mod support;

use support::fixtures;

use std::sync::Arc;

use clusterscope::admission::Reviewer;
use clusterscope::classify::ScopeResolver;
use clusterscope::config::Config;
use proptest::prelude::*;

fn reviewer() -> Reviewer {
    Reviewer::new(
        Arc::new(Config::embedded_default()),
        Arc::new(ScopeResolver::new()),
    )
}

fn wrap_object(object: &str) -> String {
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u1","kind":{{"group":"","version":"v1","kind":"Event"}},"operation":"CREATE","namespace":"default","object":{object}}}}}"#
    )
}

/// Reviews `body`; an error must be one line.
fn check(body: &[u8]) -> Result<(), String> {
    match reviewer().review(body) {
        Ok(r) => {
            serde_json::from_slice::<serde_json::Value>(&r.response).map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(e) => {
            let text = e.to_string();
            if text.contains('\n') {
                return Err(format!("multi-line error: {text:?}"));
            }
            Ok(())
        }
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    for depth in [64, 200, 10_000, 100_000] {
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        for nested in [&arrays, &objects] {
            check(wrap_object(nested).as_bytes()).unwrap();
            // Nested inside a field the decoder skips.
            let obj = format!(
                r#"{{"kind":"Event","involvedObject":{{"kind":"Node","name":"n"}},"metadata":{{"managedFields":{nested}}}}}"#
            );
            check(wrap_object(&obj).as_bytes()).unwrap();
            // The top level itself.
            check(nested.as_bytes()).unwrap();
        }
    }
}

#[test]
fn huge_strings_and_maps_are_handled() {
    let big = "x".repeat(5 * 1024 * 1024);
    let obj = format!(
        r#"{{"kind":"Event","involvedObject":{{"kind":"Node","name":"n"}},"message":"{big}","metadata":{{"name":"{big}"}}}}"#
    );
    let r = reviewer().review(wrap_object(&obj).as_bytes()).unwrap();
    assert_eq!(r.decision.outcome.as_str(), "patched");
    let labels: Vec<String> = (0..20_000).map(|i| format!(r#""k{i}":"v""#)).collect();
    let obj = format!(
        r#"{{"kind":"Event","involvedObject":{{"kind":"Node","name":"n"}},"metadata":{{"labels":{{{}}}}}}}"#,
        labels.join(",")
    );
    let r = reviewer().review(wrap_object(&obj).as_bytes()).unwrap();
    assert_eq!(
        r.decision.changes.json_patch().len(),
        4,
        "per-key adds, the existing labels untouched"
    );
    let long_kind = "K".repeat(100_000);
    let obj = format!(
        r#"{{"kind":"Event","involvedObject":{{"kind":"{long_kind}","name":"n"}},"metadata":{{}}}}"#
    );
    let r = reviewer().review(wrap_object(&obj).as_bytes()).unwrap();
    let kind_label = r.decision.classified.unwrap().kind_label;
    assert!(kind_label.len() <= 63);
}

#[test]
fn duplicate_keys_wrong_types_and_odd_numbers() {
    let cases = [
        // Duplicate top-level field.
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a","operation":"CREATE"},"request":{"uid":"b","operation":"CREATE"}}"#.to_owned(),
        // Duplicate label keys: last wins, as in Go.
        wrap_object(r#"{"kind":"Event","involvedObject":{"kind":"Node","name":"n"},"metadata":{"labels":{"clusterscope.dev/kind":"Pod","clusterscope.dev/kind":"Node"}}}"#),
        // Wrong types everywhere.
        wrap_object(r#"{"kind":"Event","involvedObject":"Node"}"#),
        wrap_object(r#"{"kind":"Event","involvedObject":{"kind":["Node"]}}"#),
        wrap_object(r#"{"kind":7}"#),
        wrap_object("true"),
        wrap_object("null"),
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a","operation":"CREATE","dryRun":"yes"}}"#.to_owned(),
        // Numbers out of every range, in fields decoded and skipped.
        wrap_object(r#"{"kind":"Event","count":1e400,"involvedObject":{"kind":"Node","name":"n"},"x":-99999999999999999999999999999999999}"#),
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a","operation":"CREATE","dryRun":1e999}}"#.to_owned(),
        // Escapes, surrogates, NUL.
        wrap_object(r#"{"kind":"Event","involvedObject":{"kind":"No\u0000de","name":"\ud83d\ude00"},"message":"\ud800"}"#),
        // Trailing garbage, BOM, empty.
        format!("{}garbage", wrap_object("{}")),
        format!("\u{feff}{}", wrap_object("{}")),
        String::new(),
    ];
    for case in &cases {
        check(case.as_bytes()).unwrap_or_else(|e| panic!("{case:.100}: {e}"));
    }
    // The duplicate label keys case decodes with the last value: no patch for the kind label.
    let r = reviewer().review(cases[1].as_bytes()).unwrap();
    assert!(
        !r.decision
            .changes
            .labels
            .entries
            .iter()
            .any(|(key, _)| key == "clusterscope.dev/kind"),
        "{:?}",
        r.decision.changes
    );
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = fixtures::fixtures_dir();
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".json") && !n.ends_with(".expect.json")
        })
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    out.sort();
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Duplicate(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (
            any::<usize>(),
            prop::collection::vec(
                prop_oneof![
                    Just(b'{'),
                    Just(b'['),
                    Just(b'"'),
                    Just(b'\\'),
                    Just(b','),
                    Just(b':'),
                    any::<u8>()
                ],
                0..16
            )
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 0usize..256).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut body: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let len = body.len().max(1);
    match m {
        Mutation::Flip(i, b) => {
            if let Some(x) = body.get_mut(i % len) {
                *x ^= b | 1;
            }
        }
        Mutation::Delete(i, n) => {
            let start = i % len;
            let end = (start + n).min(body.len());
            body.drain(start.min(end)..end);
        }
        Mutation::Insert(i, bytes) => {
            let at = (i % len).min(body.len());
            body.splice(at..at, bytes.iter().copied());
        }
        Mutation::Duplicate(i, n) => {
            let start = (i % len).min(body.len());
            let end = (start + n).min(body.len());
            let piece = body[start..end].to_vec();
            body.splice(end..end, piece);
        }
        Mutation::Truncate(i) => body.truncate(i % len),
    }
    body
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutated_fixtures_never_panic(which in any::<usize>(), mutations in prop::collection::vec(mutation(), 1..6)) {
        let all = fixtures();
        let mut body = all[which % all.len()].clone();
        for m in &mutations {
            body = apply(body, m);
        }
        prop_assert!(check(&body).is_ok(), "{:?}", check(&body));
    }
}
