//! Property tests: for any Event a producer may send, the patch applies, yields valid labels,
//! touches only labels and annotations, and is idempotent.

use std::sync::Arc;

use base64::Engine as _;
use clusterscope::admission::Reviewer;
use clusterscope::classify::ScopeResolver;
use clusterscope::config::Config;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn reviewer() -> Reviewer {
    Reviewer::new(
        Arc::new(Config::embedded_default()),
        Arc::new(ScopeResolver::new()),
    )
}

fn label_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("clusterscope.dev/scope".to_owned()),
        Just("clusterscope.dev/kind".to_owned()),
        Just("clusterscope.dev/channel".to_owned()),
        Just("clusterscope.dev/involved-object".to_owned()),
        "[a-z~/.]{1,12}",
        "[a-z]{1,8}\\.io/[a-z~]{1,8}",
    ]
}

fn string_map() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        prop::collection::btree_map(label_key(), "[ -~]{0,10}", 0..5).prop_map(|m| {
            Value::Object(m.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
        }),
    ]
}

fn kind() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Node".to_owned()),
        Just("PersistentVolume".to_owned()),
        Just("ClusterRole".to_owned()),
        Just("Pod".to_owned()),
        "[A-Z][a-zA-Z]{0,80}",
        "[ -~]{0,70}",
    ]
}

fn event() -> impl Strategy<Value = Value> {
    (
        kind(),
        prop_oneof![
            Just(""),
            Just("v1"),
            Just("example.com/v1"),
            Just("storage.k8s.io/v1")
        ],
        prop_oneof![Just(""), Just(""), Just("team-a")],
        "[a-z0-9.-]{0,20}",
        prop::option::of(string_map()),
        prop::option::of(string_map()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(kind, api, ns, name, labels, annotations, has_meta, new_shape)| {
                let mut reference = Map::new();
                reference.insert("kind".into(), json!(kind));
                if !api.is_empty() {
                    reference.insert("apiVersion".into(), json!(api));
                }
                reference.insert("namespace".into(), json!(ns));
                reference.insert("name".into(), json!(name));
                let mut ev = Map::new();
                ev.insert("kind".into(), json!("Event"));
                if new_shape {
                    ev.insert("apiVersion".into(), json!("events.k8s.io/v1"));
                    ev.insert("regarding".into(), Value::Object(reference));
                    ev.insert("note".into(), json!("n"));
                } else {
                    ev.insert("apiVersion".into(), json!("v1"));
                    ev.insert("involvedObject".into(), Value::Object(reference));
                    ev.insert("message".into(), json!("m"));
                }
                if has_meta {
                    let mut meta = Map::new();
                    meta.insert("name".into(), json!("e1"));
                    if let Some(l) = labels {
                        meta.insert("labels".into(), l);
                    }
                    if let Some(a) = annotations {
                        meta.insert("annotations".into(), a);
                    }
                    ev.insert("metadata".into(), Value::Object(meta));
                }
                Value::Object(ev)
            },
        )
}

/// A label value as apimachinery's `IsValidLabelValue` reads it, written here from its
/// definition (not the code under test): empty, or at most 63 characters of alphanumerics,
/// `-`, `_` and `.`, beginning and ending with an alphanumeric.
fn valid_label_value(v: &str) -> bool {
    let re = regex::Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").unwrap();
    v.len() <= 63 && re.is_match(v)
}

/// What the input alone says, without asking the code: `Some(true)` for an event that must be
/// labelled as about a cluster-scoped object (a core Node or PersistentVolume with no
/// namespace, as kubelet and the controllers send them, with or without `apiVersion`),
/// `Some(false)` for one that must carry none of our labels (its object has a namespace), None
/// where the answer depends on more (other kinds, groups, discovery).
fn expected_cluster_scoped(object: &Value) -> Option<bool> {
    let reference = object.get("involvedObject").or(object.get("regarding"))?;
    if reference["namespace"]
        .as_str()
        .is_some_and(|ns| !ns.is_empty())
    {
        return Some(false);
    }
    let core = matches!(
        reference.get("apiVersion").and_then(Value::as_str),
        None | Some("v1")
    );
    let kind = reference["kind"].as_str()?;
    (core && matches!(kind, "Node" | "PersistentVolume")).then_some(true)
}

fn review_of(object: &Value, op: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b3e4f1c-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Event"},
            "operation": op,
            "namespace": "default",
            "object": object,
        }
    }))
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn patches_apply_are_valid_and_idempotent(object in event(), update in any::<bool>()) {
        let reviewer = reviewer();
        let op = if update { "UPDATE" } else { "CREATE" };
        let first = reviewer.review(&review_of(&object, op)).unwrap();
        let resp: Value = serde_json::from_slice(&first.response).unwrap();
        let mut patched = object.clone();
        if let Some(p) = resp["response"]["patch"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
            let ops: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut patched, &ops).unwrap();
            // Only labels and annotations change.
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() { m.remove("metadata"); }
                v
            };
            prop_assert_eq!(strip(&patched), strip(&object));
            let meta = patched["metadata"].as_object().unwrap();
            for key in meta.keys() {
                prop_assert!(
                    ["labels", "annotations"].contains(&key.as_str()) || object["metadata"].get(key).is_some(),
                    "patch added metadata.{}", key
                );
            }
        }
        // Judged by the input, not by what the code says it did.
        let labels = &patched["metadata"]["labels"];
        let ours = |k: &str| labels.get(format!("clusterscope.dev/{k}")).and_then(Value::as_str);
        match expected_cluster_scoped(&object) {
            Some(false) => {
                for k in ["scope", "kind", "channel"] {
                    prop_assert!(ours(k).is_none(), "a namespaced event keeps clusterscope.dev/{}", k);
                }
                prop_assert!(patched["metadata"]["annotations"].get("clusterscope.dev/involved-object").is_none());
            }
            Some(true) => {
                let reference = object.get("involvedObject").or(object.get("regarding")).unwrap();
                prop_assert_eq!(ours("scope"), Some("cluster"));
                prop_assert_eq!(ours("kind"), reference["kind"].as_str());
            }
            None => {}
        }
        // Whatever was decided, every label we own is one the API server accepts.
        for k in ["scope", "kind", "channel"] {
            if let Some(v) = ours(k) {
                prop_assert!(valid_label_value(v), "clusterscope.dev/{}={:?}", k, v);
            }
        }
        let second = reviewer.review(&review_of(&patched, op)).unwrap();
        prop_assert!(second.decision.changes.is_empty(), "second review patched: {:?}", second.decision.changes);
        prop_assert_eq!(first.decision.classified.map(|c| c.channel), second.decision.classified.map(|c| c.channel));
    }
}
