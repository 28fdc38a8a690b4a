//! The Subscription CRD: its manifest is generated from the Rust type (this test writes it
//! with `CLUSTERSCOPE_WRITE_MANIFESTS=1` and otherwise keeps the two equal), and its schema's
//! CEL rules and patterns refuse malformed specs, checked with the `cel` crate (the CEL the API
//! server evaluates) and the regex crate.

use clusterscope::subscription::Subscription;
use kube::CustomResourceExt;
use serde_json::{Value, json};

const MANIFEST: &str = "manifests/components/subscriptions/crd.yaml";

const HEADER: &str = "# Generated from src/subscription/mod.rs by tests/subscription_crd.rs; do not edit.\n# Regenerate: CLUSTERSCOPE_WRITE_MANIFESTS=1 cargo test --test subscription_crd\n";

fn generated() -> Value {
    serde_json::to_value(Subscription::crd()).unwrap()
}

#[test]
fn the_manifest_is_the_types_crd() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(MANIFEST);
    let crd = generated();
    if std::env::var_os("CLUSTERSCOPE_WRITE_MANIFESTS").is_some() {
        let yaml = serde_saphyr::to_string(&crd).unwrap();
        std::fs::write(&path, format!("{HEADER}{yaml}")).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let shipped: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(
        shipped, crd,
        "{MANIFEST} differs from Subscription::crd(): regenerate it with CLUSTERSCOPE_WRITE_MANIFESTS=1 cargo test --test subscription_crd"
    );
    assert_eq!(crd["metadata"]["name"], "subscriptions.clusterscope.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(
        version["subresources"]["status"].is_object(),
        "a status subresource"
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Relation",
            "Accepted",
            "Ready",
            "Delivered",
            "Last delivery",
            "Age"
        ]
    );
}

/// The rules at `schema` (an object schema with `x-kubernetes-validations`).
fn rules(schema: &Value) -> Vec<String> {
    schema["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| r["rule"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn schema() -> Value {
    generated()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Evaluates `rule` with `self` bound to `value` (the API server binds `self` to the object
/// the rule sits on, as stored: an omitted list is absent, not empty).
fn holds(rule: &str, value: &Value) -> bool {
    let program = cel::Program::compile(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
    let mut ctx = cel::Context::default();
    ctx.add_variable("self", cel::to_value(value).unwrap())
        .unwrap();
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => b,
        other => panic!("{rule} on {value}: {other:?}"),
    }
}

fn spec(relation: &str, kinds: &[&str]) -> Value {
    json!({"relation": relation, "kinds": kinds, "types": [], "reasons": []})
}

#[test]
fn the_cel_rules_refuse_a_relation_asked_for_kinds_it_never_covers() {
    let spec_rules = rules(&schema()["properties"]["spec"]);
    assert_eq!(spec_rules.len(), 2, "{spec_rules:?}");
    let all = |value: &Value| spec_rules.iter().all(|r| holds(r, value));
    assert!(all(&spec("nodes", &["Node", "CSINode"])));
    assert!(
        all(&spec("nodes", &["GpuSlice"])),
        "a custom kind is judged by the controller"
    );
    assert!(all(&spec("owned", &["PersistentVolume", "Namespace"])));
    assert!(all(&spec("owned", &[])));
    assert!(
        all(&json!({"relation": "nodes"})),
        "a spec without kinds (the API server has no default to fill in) passes"
    );
    assert!(all(&json!({"relation": "owned"})));
    assert!(!all(&spec("nodes", &["PersistentVolume"])));
    assert!(!all(&spec("owned", &["Node"])));
    assert!(!all(&spec("owned", &["PersistentVolume", "CSINode"])));
}

#[test]
fn the_name_rule_keeps_it_a_label_value() {
    let top = rules(&schema());
    assert_eq!(top.len(), 1, "{top:?}");
    let named = |name: &str| json!({"metadata": {"name": name}});
    assert!(holds(&top[0], &named("node-noise")));
    assert!(!holds(&top[0], &named(&"n".repeat(64))));
}

#[test]
fn the_schema_bounds_and_patterns_refuse_malformed_specs() {
    let props = schema()["properties"]["spec"]["properties"].clone();
    assert_eq!(props["relation"]["enum"], json!(["owned", "nodes"]));
    assert_eq!(
        props["types"]["items"]["enum"],
        json!(["Normal", "Warning"])
    );
    assert_eq!(props["reasons"]["maxItems"], 32);
    assert_eq!(props["kinds"]["maxItems"], 16);
    let pattern = |field: &str| {
        regex::Regex::new(props[field]["items"]["pattern"].as_str().unwrap()).unwrap()
    };
    let reasons = pattern("reasons");
    for ok in [
        "FailedMount",
        "Failed*",
        "VolumeFailedDelete",
        "NodeNotReady",
    ] {
        assert!(reasons.is_match(ok), "{ok}");
    }
    for bad in [
        "",
        "*",
        "Fa*iled",
        "Failed**",
        &"R".repeat(129),
        "two words",
    ] {
        assert!(!reasons.is_match(bad), "{bad:?}");
    }
    let kinds = pattern("kinds");
    assert!(kinds.is_match("PersistentVolume"));
    for bad in ["node", "Node s", "", &"N".repeat(64)] {
        assert!(!kinds.is_match(bad), "{bad:?}");
    }
}

/// The YAML blocks of docs/subscriptions.md.
fn documented_yaml() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/subscriptions.md");
    let text = std::fs::read_to_string(path).unwrap();
    text.split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_owned())
        .collect()
}

/// What docs/subscriptions.md shows a team writing is a Subscription the CRD takes (its
/// rules hold, its patterns match), and the admin's ceiling it shows is a valid configuration.
#[test]
fn the_documented_examples_are_valid() {
    let blocks = documented_yaml();
    let docs: Vec<Value> = blocks
        .iter()
        .filter(|b| b.contains("kind: Subscription"))
        .flat_map(|b| serde_saphyr::from_multiple::<Value>(b).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    let props = schema()["properties"]["spec"]["properties"].clone();
    let reasons =
        regex::Regex::new(props["reasons"]["items"]["pattern"].as_str().unwrap()).unwrap();
    for doc in docs {
        let typed: Subscription = serde_json::from_value(doc.clone()).unwrap();
        for rule in rules(&schema()["properties"]["spec"]) {
            assert!(holds(&rule, &doc["spec"]), "{rule} on {doc}");
        }
        assert!(
            typed.spec.reasons.iter().all(|r| reasons.is_match(r)),
            "{doc}"
        );
    }
    let ceiling = blocks
        .iter()
        .find(|b| b.starts_with("subscriptions:"))
        .expect("the ceiling example");
    let config = clusterscope::config::Config::from_yaml(
        &format!("channels:\n  - name: a\n{ceiling}"),
        "docs/subscriptions.md",
    )
    .unwrap();
    let ceiling = config.subscriptions.expect("the example sets a ceiling");
    assert_eq!(
        clusterscope::config::Subscriptions {
            // Where it is written is not a setting.
            line: 0,
            ..ceiling
        },
        clusterscope::config::Subscriptions::default(),
        "the example shows the defaults"
    );
}
