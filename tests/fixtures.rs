//! Every AdmissionReview under `tests/fixtures/` is reviewed and checked against its
//! `<name>.expect.json`:
//!
//! - `{"outcome": "invalid", "error": "..."}`: refused with a one-line error containing that text;
//! - `{"outcome": "skipped", "skip": "<reason>"}` / `{"outcome": "unchanged", "channel": ...}`:
//!   allowed with no patch;
//! - `{"outcome": "patched" | "unlabelled", "channel", "labels", "annotations"}`: the patch, applied by
//!   json-patch and by `kubectl patch --local` (the API server's patch code), yields exactly those
//!   label and annotation maps, changes nothing else, and reviewing the result yields no patch.

mod support;

use support::fixtures;

use std::sync::Arc;

use base64::Engine as _;
use clusterscope::admission::Reviewer;
use clusterscope::classify::ScopeResolver;
use clusterscope::config::Config;
use serde_json::{Value, json};

fn reviewer() -> Reviewer {
    Reviewer::new(
        Arc::new(Config::embedded_default()),
        Arc::new(ScopeResolver::new()),
    )
}

fn without_labels_and_annotations(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("labels");
        meta.remove("annotations");
    }
    v
}

fn check_case(name: &str, body: &[u8], expect: &Value) -> Result<(), String> {
    let want = expect["outcome"]
        .as_str()
        .ok_or("expect file has no outcome")?;
    let reviewer = reviewer();
    let result = reviewer.review(body);
    if want == "invalid" {
        let err = match result {
            Ok(r) => return Err(format!("accepted, outcome {:?}", r.decision.outcome)),
            Err(e) => e.to_string(),
        };
        let needle = expect["error"]
            .as_str()
            .ok_or("invalid case without error text")?;
        if !err.contains(needle) || err.contains('\n') {
            return Err(format!(
                "error {err:?} should be one line containing {needle:?}"
            ));
        }
        return Ok(());
    }
    let reviewed = result.map_err(|e| format!("refused: {e}"))?;
    let input: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let response: Value = serde_json::from_slice(&reviewed.response).map_err(|e| e.to_string())?;

    // The response echoes apiVersion and uid, always allows, and carries a patch only when patched.
    if response["apiVersion"] != input["apiVersion"] || response["kind"] != "AdmissionReview" {
        return Err(format!("response header wrong: {response}"));
    }
    let resp = &response["response"];
    if resp["uid"] != input["request"]["uid"] || resp["allowed"] != true {
        return Err(format!("response uid/allowed wrong: {resp}"));
    }
    if reviewed.decision.outcome.as_str() != want {
        return Err(format!(
            "outcome {:?} (skip {:?}), expected {want}",
            reviewed.decision.outcome, reviewed.decision.skip
        ));
    }
    if let Some(skip) = expect.get("skip") {
        let got = reviewed.decision.skip.map(|s| s.as_str());
        if got != skip.as_str() {
            return Err(format!("skip reason {got:?}, expected {skip}"));
        }
    }
    if let Some(channel) = expect.get("channel") {
        let got = reviewed
            .decision
            .classified
            .as_ref()
            .and_then(|c| c.channel.as_deref());
        if got != channel.as_str() {
            return Err(format!("channel {got:?}, expected {channel}"));
        }
    }
    // `unlabelled`: not ours, yet it carried our labels; the patch removes them.
    if want != "patched" && want != "unlabelled" {
        if resp.get("patch").is_some() || resp.get("patchType").is_some() {
            return Err(format!("no patch expected, got {resp}"));
        }
        return Ok(());
    }

    if resp["patchType"] != "JSONPatch" {
        return Err(format!("patchType missing: {resp}"));
    }
    let patch_bytes = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().ok_or("patch is not a string")?)
        .map_err(|e| format!("patch is not base64: {e}"))?;
    let patch: Value = serde_json::from_slice(&patch_bytes).map_err(|e| e.to_string())?;
    for op in patch.as_array().ok_or("patch is not an array")? {
        let path = op["path"].as_str().unwrap_or("");
        let allowed = path == "/metadata"
            || path == "/metadata/labels"
            || path == "/metadata/annotations"
            || path.starts_with("/metadata/labels/")
            || path.starts_with("/metadata/annotations/");
        if !allowed {
            return Err(format!("patch touches {path}"));
        }
    }
    let object = input["request"]["object"].clone();
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| e.to_string())?;
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &ops).map_err(|e| format!("patch does not apply: {e}"))?;
    let meta = &patched["metadata"];
    if meta["labels"] != expect["labels"] {
        return Err(format!(
            "labels after patch:\n  {}\nexpected:\n  {}",
            meta["labels"], expect["labels"]
        ));
    }
    if meta["annotations"] != expect["annotations"] {
        return Err(format!(
            "annotations after patch:\n  {}\nexpected:\n  {}",
            meta["annotations"], expect["annotations"]
        ));
    }
    if without_labels_and_annotations(patched.clone())
        != without_labels_and_annotations(object.clone())
    {
        return Err("the patch changed more than labels and annotations".into());
    }

    if fixtures::kubectl_available() {
        let by_kubectl = fixtures::kubectl_patch(&object, &patch)?;
        let untouched = fixtures::kubectl_patch(&object, &json!([]))?;
        if by_kubectl["metadata"]["labels"] != meta["labels"]
            || by_kubectl["metadata"]["annotations"] != meta["annotations"]
        {
            return Err(format!(
                "kubectl applied the patch differently: {}",
                by_kubectl["metadata"]
            ));
        }
        if without_labels_and_annotations(by_kubectl) != without_labels_and_annotations(untouched) {
            return Err("with kubectl the patch changed more than labels and annotations".into());
        }
    }

    // Idempotence: the patched object needs no further patch.
    let mut again = input.clone();
    again["request"]["object"] = patched;
    let again = serde_json::to_vec(&again).map_err(|e| e.to_string())?;
    let second = reviewer
        .review(&again)
        .map_err(|e| format!("re-review refused: {e}"))?;
    if !second.decision.changes.is_empty() {
        return Err(format!(
            "{name}: second review patched again: {:?}",
            second.decision.changes
        ));
    }
    Ok(())
}

#[test]
fn every_fixture_meets_its_expectation() {
    let dir = fixtures::fixtures_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.ends_with(".expect.json"))
        .collect();
    names.sort();
    assert!(names.len() >= 30, "only {} fixtures", names.len());

    let mut failures = Vec::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for name in &names {
        let stem = name.trim_end_matches(".json");
        let body = std::fs::read(dir.join(name)).unwrap();
        let expect_path = dir.join(format!("{stem}.expect.json"));
        let expect: Value = match std::fs::read(&expect_path) {
            Ok(b) => serde_json::from_slice(&b).unwrap(),
            Err(_) => {
                failures.push(format!("{stem}: no {stem}.expect.json"));
                continue;
            }
        };
        *outcomes
            .entry(expect["outcome"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        if let Err(e) = check_case(stem, &body, &expect) {
            failures.push(format!("{stem}: {e}"));
        }
    }
    eprintln!("fixtures by expected outcome: {outcomes:?}");
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
    for outcome in ["patched", "unchanged", "skipped", "invalid"] {
        assert!(
            outcomes.get(outcome).copied().unwrap_or(0) >= 2,
            "too few {outcome} fixtures"
        );
    }
}
