//! Any bytes as an AdmissionReview: an answer or an error, never a panic or a hang; and a
//! patch, when there is one, applies to the object it was made for (as the API server applies
//! it) and changes nothing but the object's labels and annotations.
#![no_main]

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use clusterscope::admission::Reviewer;
use clusterscope::classify::ScopeResolver;
use clusterscope::config::Config;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn reviewer() -> &'static Reviewer {
    static REVIEWER: OnceLock<Reviewer> = OnceLock::new();
    REVIEWER.get_or_init(|| {
        Reviewer::new(
            Arc::new(Config::embedded_default()),
            Arc::new(ScopeResolver::new()),
        )
    })
}

/// The object without its labels and annotations: what a patch must leave as it was.
fn without_labels(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("labels");
        meta.remove("annotations");
        if meta.is_empty() {
            object.as_object_mut().map(|o| o.remove("metadata"));
        }
    }
    object
}

fuzz_target!(|data: &[u8]| {
    let Ok(reviewed) = reviewer().review(data) else {
        return;
    };
    let answer: Value = serde_json::from_slice(&reviewed.response).expect("the answer is JSON");
    let Some(patch) = answer["response"]["patch"].as_str() else {
        return;
    };
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("the patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("the patch is a JSON Patch");
    let request: Value = serde_json::from_slice(data).expect("a reviewed request is JSON");
    let object = &request["request"]["object"];
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch).expect("the patch applies to its object");
    assert_eq!(
        without_labels(&patched),
        without_labels(object),
        "the patch changed more than labels and annotations"
    );
});
