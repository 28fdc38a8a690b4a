//! Every `matchConditions` expression shipped in `manifests/`, evaluated by a real CEL
//! interpreter (the `cel` crate) the way the API server evaluates it: `object` and `oldObject`
//! are the plain JSON of the Event (converted to core/v1, as `matchPolicy: Equivalent` does for
//! an events.k8s.io write; reserved words are not escaped). Against the real API server's
//! reviews and every fixture, an expression must be true for each event the webhook labels
//! (so it never hides one) and false for each event whose involved object has a namespace (so
//! those cost the API server no webhook call).

mod support;

use support::fixtures;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clusterscope::admission::Reviewer;
use clusterscope::classify::ScopeResolver;
use clusterscope::config::Config;
use serde_json::Value;

/// (file, webhook name, condition name, expression) for every match condition in manifests/.
fn shipped_conditions() -> Vec<(PathBuf, String, String, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        if !text.contains("matchConditions") {
            continue;
        }
        for doc in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
            for hook in doc["webhooks"].as_array().into_iter().flatten() {
                for cond in hook["matchConditions"].as_array().into_iter().flatten() {
                    found.push((
                        file.clone(),
                        hook["name"].as_str().unwrap_or("").to_owned(),
                        cond["name"].as_str().unwrap_or("").to_owned(),
                        cond["expression"].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    found
}

/// The object as the API server hands it to CEL for this core/v1 rule: an events.k8s.io
/// shape is converted (`regarding` → `involvedObject`).
fn as_core_v1(object: &Value) -> Value {
    let mut o = object.clone();
    if o.get("involvedObject").is_none()
        && let Some(regarding) = o.get("regarding").cloned()
        && let Some(map) = o.as_object_mut()
    {
        map.insert("involvedObject".into(), regarding);
    }
    o
}

fn eval(expression: &str, review: &Value) -> Result<bool, String> {
    let program = cel::Program::compile(expression).map_err(|e| format!("compile: {e}"))?;
    let mut ctx = cel::Context::default();
    let object = as_core_v1(&review["request"]["object"]);
    ctx.add_variable("object", cel::to_value(&object).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    ctx.add_variable(
        "oldObject",
        cel::to_value(&review["request"]["oldObject"]).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    ctx.add_variable(
        "request",
        cel::to_value(&review["request"]).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("not a bool: {other:?}")),
        Err(e) => Err(format!("evaluation error: {e}")),
    }
}

/// Every review that decodes as JSON: the real API server's (when `../shared` is beside the
/// checkout), then the fixtures (which include copies of them).
fn reviews() -> Vec<(PathBuf, Value)> {
    let real = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/real-reviews");
    let mut out = Vec::new();
    for dir in [real.as_path(), fixtures::fixtures_dir().as_path()] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.ends_with(".expect.json") {
                continue;
            }
            if let Ok(v) = serde_json::from_slice::<Value>(&std::fs::read(&path).unwrap()) {
                out.push((path, v));
            }
        }
    }
    out
}

fn is_event_write(review: &Value) -> bool {
    let op = review["request"]["operation"].as_str().unwrap_or("");
    review["request"]["object"].is_object() && (op == "CREATE" || op == "UPDATE")
}

fn involved_namespace(object: &Value) -> &str {
    as_core_v1_ref(object)["namespace"].as_str().unwrap_or("")
}

fn as_core_v1_ref(object: &Value) -> &Value {
    object
        .get("involvedObject")
        .or_else(|| object.get("regarding"))
        .unwrap_or(&Value::Null)
}

fn check(expression: &str, reviews: &[(PathBuf, Value)]) -> Vec<String> {
    let reviewer = Reviewer::new(
        Arc::new(Config::embedded_default()),
        Arc::new(ScopeResolver::new()),
    );
    let mut wrong = Vec::new();
    let mut labelled = 0;
    let mut namespaced = 0;
    for (path, review) in reviews {
        if !is_event_write(review) {
            continue;
        }
        let shown = path.file_name().map(Path::new).unwrap_or(path).display();
        let matched = match eval(expression, review) {
            Ok(b) => b,
            Err(e) => {
                wrong.push(format!("{shown}: {e}"));
                continue;
            }
        };
        let object = &review["request"]["object"];
        let decided = reviewer.review(review.to_string().as_bytes());
        let labels_it = decided.is_ok_and(|r| r.decision.classified.is_some());
        if labels_it {
            labelled += 1;
            if !matched {
                wrong.push(format!(
                    "{shown}: the webhook labels this event but the condition filters it out"
                ));
            }
        }
        if !involved_namespace(object).is_empty() {
            namespaced += 1;
            if matched {
                wrong.push(format!(
                    "{shown}: about a namespaced object, yet the condition sends it to the webhook"
                ));
            }
        }
    }
    assert!(
        labelled >= 20 && namespaced >= 3,
        "too few reviews checked: {labelled} labelled, {namespaced} namespaced"
    );
    wrong
}

#[test]
fn shipped_match_conditions_send_exactly_the_cluster_scoped_events() {
    let conditions = shipped_conditions();
    assert!(!conditions.is_empty(), "no matchConditions in manifests/");
    let reviews = reviews();
    // The real API server's captures: ../shared/data/real-reviews when it is beside the
    // checkout, and always their copies in tests/fixtures (real-*.json).
    let real = reviews
        .iter()
        .filter(|(p, _)| {
            p.to_string_lossy().contains("real-reviews")
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("real-"))
        })
        .count();
    assert!(
        real >= 8,
        "only {real} of the real API server's reviews found"
    );
    for (file, hook, name, expression) in conditions {
        let wrong = check(&expression, &reviews);
        assert!(
            wrong.is_empty(),
            "{} webhook {hook} condition {name} ({expression}):\n  {}",
            file.display(),
            wrong.join("\n  ")
        );
    }
}

/// The mistake the real API server found: CRD-rule escaping (`__namespace__`) does not apply
/// to webhook match conditions, so that expression matched every event. The checker must
/// catch it.
#[test]
fn the_escaped_field_name_is_caught() {
    let reviews = reviews();
    let wrong = check(
        "has(object.involvedObject) && (!has(object.involvedObject.__namespace__) || object.involvedObject.__namespace__ == '')",
        &reviews,
    );
    assert!(
        wrong.iter().any(|w| w.contains("namespaced object")),
        "{wrong:?}"
    );
}
