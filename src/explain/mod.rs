//! `clusterscope explain`: what the webhook and the mirror would do with events, in words and
//! as JSON, so a configuration can be tried on a cluster's real events before installing.
//!
//! Takes an AdmissionReview, an Event (core/v1 or events.k8s.io/v1), or a list of events as
//! `kubectl get events -A -o json` (or `-o yaml`) prints it, read one event at a time
//! ([`input`]), and ends with a [`Summary`]. Judged with the built-in kind table (no cluster
//! is contacted): a kind outside it, with no namespace in its reference, counts as
//! cluster-scoped, as the webhook does when discovery is off.

mod context;
mod input;
mod output;
mod summary;

pub use context::{Context, read_subscriptions, stored_events};
pub use output::{Format, Output};
pub use summary::Summary;

use serde_json::{Value, json};

use crate::classify::KindSource;
use crate::config::{Channel, Config};
use crate::decide::{Classified, Outcome, decide};
use crate::event::EventView;
use crate::owners::{Object, OwnerState};
use crate::route::EventFacts;
use crate::subscription::relation_rules;

/// Why explaining failed: the input is not one of the accepted shapes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExplainError(String);

impl ExplainError {
    /// Writing the explanation failed (`what` says where).
    pub fn output(what: &str, e: &std::io::Error) -> Self {
        ExplainError(format!("cannot write {what}: {e}"))
    }
}

/// One event explained, as JSON.
fn explain_one(namespace: &str, object: &Value, config: &Config, context: &Context) -> Value {
    let text = object.to_string();
    let name = format!(
        "{}/{}",
        namespace,
        object["metadata"]["name"].as_str().unwrap_or("")
    );
    let view: EventView<'_> = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return json!({"event": name, "error": format!("not an Event: {e}")}),
    };
    let decision = decide(&view, namespace, config, &context.resolver);
    let reference = view.reference();
    let mut out = json!({
        "event": name,
        "outcome": decision.outcome.as_str(),
        "involvedObject": reference.map(|r| json!({
            "apiVersion": r.api_version(), "kind": r.kind(), "namespace": r.namespace(), "name": r.name()
        })),
    });
    if let Some(skip) = decision.skip {
        out["skip"] = json!(skip.as_str());
        out["why"] = json!(skip.words(reference.map_or("", |r| r.namespace())));
    }
    let Some(classified) = &decision.classified else {
        if decision.outcome == Outcome::Unlabelled {
            out["why"] = json!(
                "not about a cluster-scoped object, yet it carries clusterscope's labels: they would be removed"
            );
        }
        return out;
    };
    out["scope"] = json!("cluster");
    out["why"] = json!(why_cluster_scoped(classified));
    out["group"] = json!(crate::route::shown_group(&classified.group));
    out["kind"] = json!(classified.kind);
    let facts = EventFacts {
        group: &classified.group,
        kind: &classified.kind,
        name: &classified.name,
        reason: view.reason(),
        type_: view.type_(),
        reporter: view.reporter(),
        message: view.message(),
    };
    if let Some((index, route)) = config
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.matcher.matches(&facts))
    {
        out["route"] = json!({"index": index + 1, "line": route.line});
    }
    let channel = classified
        .channel
        .as_deref()
        .and_then(|c| config.channel(c));
    if let Some(ch) = channel {
        out["channel"] = json!(ch.name);
    }
    out["labels"] = labels_of(classified, channel, config);
    out["deliveries"] = json!(
        channel
            .map(|ch| deliveries_of(ch, classified, &view, config, context))
            .unwrap_or_default()
    );
    out
}

/// Why the event counts as one about a cluster-scoped object.
fn why_cluster_scoped(classified: &Classified) -> String {
    match classified.kind_source {
        KindSource::Builtin => format!(
            "no namespace in its reference, and {} is cluster-scoped in the built-in kind table",
            classified.kind
        ),
        KindSource::Discovered => {
            format!("API discovery says {} is cluster-scoped", classified.kind)
        }
        KindSource::Unknown => format!(
            "no namespace in its reference; {} is outside the built-in table, so it counts as cluster-scoped (with a cluster, discovery decides)",
            classified.kind
        ),
    }
}

/// The labels the event carries once labelled.
fn labels_of(classified: &Classified, channel: Option<&Channel>, config: &Config) -> Value {
    let keys = &config.keys;
    let mut labels = serde_json::Map::new();
    labels.insert(keys.scope.clone(), json!("cluster"));
    labels.insert(keys.kind.clone(), json!(classified.kind_label));
    if let Some(ch) = channel {
        labels.insert(keys.channel.clone(), json!(ch.name));
        for (k, v) in &ch.labels {
            labels.insert(k.clone(), json!(v));
        }
    }
    Value::Object(labels)
}

/// Where `channel` delivers the event: its namespace, the log, history, and what each delivery
/// rule does with this kind and type (the gate the controller applies, `owners::Rules::reach`),
/// "not delivered" included; with the cluster's state, the namespaces the rules and the
/// tenants' subscriptions reach; with subscriptions, the ones that do not take it and why.
/// Each is `{"to": ..., "says": ...}` with what it names as fields (`namespace`, `how`,
/// `rule`, `delivers`, `subscription`).
fn deliveries_of(
    ch: &Channel,
    classified: &Classified,
    view: &EventView<'_>,
    config: &Config,
    context: &Context,
) -> Vec<Value> {
    let mut out = Deliveries {
        copies: ch.copies,
        ..Deliveries::default()
    };
    if let Some(ns) = &ch.namespace {
        out.copy(ns, "channel", "the channel's namespace", None);
    }
    if ch.log {
        out.list
            .push(json!({"to": "log", "says": "a line on the log stream"}));
    }
    if ch.history {
        out.list.push(json!({"to": "history", "says": "a row in the history database (when serve has --postgres-url)"}));
    }
    let object = Object {
        group: &classified.group,
        kind: &classified.kind,
        name: &classified.name,
    };
    let custom = config
        .owner_rules
        .iter()
        .find(|r| r.group == classified.group && r.kind == classified.kind);
    for reach in ch.deliver.reach(object, view.type_(), custom) {
        out.list.push(json!({
            "to": "rule",
            "rule": reach.rule.as_str(),
            "delivers": reach.delivers,
            "says": format!("{}: {}", reach.rule.as_str(), reach.says),
        }));
    }
    if let Some(state) = &context.owners {
        let resolution = state.resolve(&ch.deliver, object, view.type_());
        for d in resolution.destinations {
            out.copy(&d.namespace, d.how.as_str(), &d.why, None);
        }
        if resolution.cut > 0 {
            out.list.push(json!({"to": "not", "cut": resolution.cut,
                "says": format!("{} more namespaces left out: nodePods.maxNamespaces caps the namespaces of one event", resolution.cut)}));
        }
    }
    if let Some(judged) = &context.subscriptions {
        subscribed(
            judged,
            context.owners.as_ref(),
            object,
            view,
            config,
            &mut out,
        );
    }
    if ch.otlp {
        out.otlp(context.owners.is_some());
    }
    out.list
}

/// The deliveries said so far, and the namespaces given a copy (each gets one, from the first
/// to name it, as the mirror's targets do).
#[derive(Default)]
struct Deliveries {
    list: Vec<Value>,
    namespaces: std::collections::BTreeSet<String>,
    /// The channel writes copies (`copies: true`); else its namespaces only attribute.
    copies: bool,
}

impl Deliveries {
    /// A copy in `namespace`, `how` it got there (the delivery label's value) and why; a
    /// source namespace is said not to get one.
    fn copy(&mut self, namespace: &str, how: &str, why: &str, subscriptions: Option<&[String]>) {
        if crate::decide::SOURCE_NAMESPACES.contains(&namespace) {
            self.list.push(json!({"to": "not", "namespace": namespace, "how": how,
                "says": format!("not to {namespace} ({how}: {why}): copies are never written where the sources are stored")}));
            return;
        }
        if !self.namespaces.insert(namespace.to_owned()) {
            return;
        }
        let copied = self.copies || subscriptions.is_some();
        let said = if copied {
            format!("a copy in namespace {namespace} ({how}: {why})")
        } else {
            format!(
                "namespace {namespace}, attributed without a copy (copies: false) ({how}: {why})"
            )
        };
        let mut copy = json!({"to": "namespace", "namespace": namespace, "how": how, "why": why,
            "copy": copied, "says": said});
        if let Some(names) = subscriptions {
            let listed = names.join(", ");
            copy["says"] = json!(format!(
                "a copy in namespace {namespace} (subscription {listed}: {why})"
            ));
            copy["subscriptions"] = json!(names);
        }
        self.list.push(copy);
    }

    /// The OTLP records: one per namespace named so far, else one attributed to where the
    /// event is stored; `resolved` when the cluster's state named them (else the delivery
    /// rules' namespaces are not known).
    fn otlp(&mut self, resolved: bool) {
        let namespaces: Vec<&String> = self.namespaces.iter().collect();
        let said = match (namespaces.is_empty(), resolved) {
            (false, _) => format!(
                "OTLP log records, one per namespace it concerns: {}",
                namespaces.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
            ),
            (true, true) => "one OTLP log record, with the namespace it is stored in (it concerns none)".to_owned(),
            (true, false) => "OTLP log records, one per namespace the delivery rules name (explain --cluster on names them), else one with the namespace it is stored in".to_owned(),
        };
        self.list
            .push(json!({"to": "otlp", "namespaces": namespaces, "says": said}));
    }

    /// Not to `namespace` for `subscription`, and why.
    fn not_for(&mut self, namespace: &str, subscription: &str, why: String) {
        self.list.push(
            json!({"to": "not", "namespace": namespace, "subscription": subscription,
            "says": format!("not for subscription {namespace}/{subscription}: {why}")}),
        );
    }
}

/// What the tenants' subscriptions do with the event. With the cluster's state: a copy in each
/// namespace their relation ties the object to where one of them takes it (the mirror's own
/// `Subscribers::wanted`), and, in the other tied namespaces, which subscription turned it
/// away and why (its filters, or the admin's ceiling). Without it: each subscription whose
/// relation covers the kind, with what it would do where the relation ties the object.
fn subscribed(
    judged: &context::Judged,
    state: Option<&OwnerState>,
    object: Object<'_>,
    view: &EventView<'_>,
    config: &Config,
    out: &mut Deliveries,
) {
    let (kind, type_, reason) = (object.kind, view.type_(), view.reason());
    let tied = |relation| {
        state.map(|s| {
            s.resolve(&relation_rules(relation), object, type_)
                .destinations
                .into_iter()
                .map(|d| d.namespace)
                .collect::<Vec<_>>()
        })
    };
    let tied = [
        (
            crate::owners::Relation::Owned,
            tied(crate::owners::Relation::Owned),
        ),
        (
            crate::owners::Relation::Nodes,
            tied(crate::owners::Relation::Nodes),
        ),
    ];
    if let Some(state) = state {
        for w in judged.subscribers.wanted(state, object, type_, reason) {
            out.copy(&w.namespace, "subscription", &w.why, Some(&w.subscriptions));
        }
    }
    for j in &judged.verdicts {
        let spec = &j.subscription.spec;
        if !spec.relation.covers(kind, &config.owner_rules) {
            continue;
        }
        let namespace = j.subscription.metadata.namespace.as_deref().unwrap_or("");
        let name = j.subscription.metadata.name.as_deref().unwrap_or("");
        let is_tied = tied
            .iter()
            .find(|(r, _)| *r == spec.relation)
            .and_then(|(_, t)| t.as_ref())
            .map(|t| t.iter().any(|ns| ns == namespace));
        if is_tied == Some(false) {
            continue;
        }
        let accepted = crate::subscription::Accepted {
            name: name.to_owned(),
            spec: spec.clone(),
        };
        match (&j.verdict, accepted.filtered_by(kind, type_, reason)) {
            (Err(refusal), _) => out.not_for(namespace, name, format!("refused ({}): {refusal}", refusal.reason())),
            (Ok(()), Some(filtered)) => out.not_for(namespace, name, filtered),
            (Ok(()), None) if is_tied.is_none() => out.list.push(json!({
                "to": "subscription", "namespace": namespace, "subscription": name,
                "says": format!("subscription {namespace}/{name} takes it where its relation ({}) ties {kind} {} to {namespace}; explain --cluster on knows whether it does", spec.relation.as_str(), object.name)})),
            (Ok(()), None) => {}
        }
    }
}

/// Explains events one at a time under a configuration and a [`Context`], summing them up.
pub struct Explainer<'a> {
    config: &'a Config,
    context: &'a Context,
    summary: Summary,
}

impl<'a> Explainer<'a> {
    pub fn new(config: &'a Config, context: &'a Context) -> Self {
        Explainer {
            config,
            context,
            summary: Summary::default(),
        }
    }

    /// One event (stored, or to be stored, in `namespace`) explained, as JSON.
    pub fn explain(&mut self, namespace: &str, object: &Value) -> Value {
        let explained = explain_one(namespace, object, self.config, self.context);
        self.summary.add(&explained);
        explained
    }

    /// What was read and how it was judged, summed up.
    pub fn summary(self) -> Summary {
        let mut summary = self.summary;
        summary.against = self.context.describe();
        summary
    }
}

/// Explains every event in `input` under `config` and `context` as it is read, handing each
/// explanation (one JSON object) to `each`; what was read and how it was judged, summed up.
pub fn explain_each(
    input: impl std::io::Read,
    config: &Config,
    context: &Context,
    each: &mut dyn FnMut(&Value) -> Result<(), ExplainError>,
) -> Result<Summary, ExplainError> {
    let mut explainer = Explainer::new(config, context);
    input::read(input, &mut |(ns, object)| {
        each(&explainer.explain(&ns, &object))
    })?;
    Ok(explainer.summary())
}

/// One explained event in words, one line per fact.
pub fn to_text(explained: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let mut out = format!("{}: {}", s(&explained["event"]), s(&explained["outcome"]));
    if let Some(e) = explained.get("error") {
        out.push_str(&format!(" ({})", s(e)));
        return out;
    }
    let o = &explained["involvedObject"];
    if o.is_object() {
        out.push_str(&format!("\n  about: {} {}", s(&o["kind"]), s(&o["name"])));
    }
    if let Some(skip) = explained.get("skip") {
        out.push_str(&format!(
            "\n  skipped ({}): {}",
            s(skip),
            s(&explained["why"])
        ));
        return out;
    }
    out.push_str(&format!("\n  cluster-scoped: {}", s(&explained["why"])));
    match explained.get("channel") {
        Some(ch) => {
            let route = &explained["route"];
            out.push_str(&format!(
                "\n  channel: {} (route {}, line {})",
                s(ch),
                route["index"],
                route["line"]
            ));
        }
        None => out.push_str("\n  channel: none (no route matches)"),
    }
    if let Some(labels) = explained["labels"].as_object() {
        let text: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", s(v)))
            .collect();
        out.push_str(&format!("\n  labels: {}", text.join(", ")));
    }
    let deliveries: Vec<String> = explained["deliveries"]
        .as_array()
        .map(|d| d.iter().map(|d| s(&d["says"])).collect())
        .unwrap_or_default();
    for delivery in deliveries {
        out.push_str(&format!("\n  delivery: {delivery}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event in `input` explained, in memory: one JSON object per event.
    fn explain(input: &[u8], config: &Config) -> Result<Vec<Value>, ExplainError> {
        let mut all = Vec::new();
        explain_each(input, config, &Context::offline(), &mut |explained| {
            all.push(explained.clone());
            Ok(())
        })?;
        Ok(all)
    }

    fn node(ns: &str, involved_ns: Option<&str>) -> Value {
        let mut e = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "node1.1", "namespace": ns},
            "involvedObject": {"kind": "Node", "name": "node1"},
            "reason": "NodeNotReady", "type": "Warning", "message": "not ready"});
        if let Some(n) = involved_ns {
            e["involvedObject"]["namespace"] = json!(n);
        }
        e
    }

    #[test]
    fn an_event_list_is_explained_event_by_event_with_the_route_and_the_reasons() {
        let config = Config::from_yaml(
            "channels:\n  - name: nodes\n    namespace: team-infra\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n",
            "t",
        )
        .unwrap();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [
            node("default", None), node("team-a", Some("team-a"))
        ]});
        let out = explain(list.to_string().as_bytes(), &config).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["outcome"], "patched");
        assert_eq!(out[0]["channel"], "nodes");
        assert_eq!(out[0]["route"]["index"], 1);
        assert_eq!(out[0]["labels"]["clusterscope.dev/scope"], "cluster");
        assert_eq!(out[0]["deliveries"][0]["to"], "namespace");
        assert_eq!(out[0]["deliveries"][0]["namespace"], "team-infra");
        assert_eq!(out[1]["skip"], "namespaced");
        let text = to_text(&out[0]);
        assert!(text.contains("channel: nodes (route 1, line 5)"), "{text}");
        assert!(to_text(&out[1]).contains("skipped (namespaced)"));
    }

    #[test]
    fn an_otlp_channel_says_its_records_per_namespace_and_copies_false_says_no_copy() {
        // SAFETY: this test alone reads or writes this variable.
        unsafe { std::env::set_var("CLUSTERSCOPE_UNIT_EXPLAIN_OTLP", "x") };
        let config = Config::from_yaml(
            "channels:\n  - name: nodes\n    otlp: true\n    copies: false\n    deliver: {nodePods: {}}\nroutes:\n  - channel: nodes\notlp:\n  endpoint: http://c:4317\n  headers: {a: {fromEnv: CLUSTERSCOPE_UNIT_EXPLAIN_OTLP}}\n",
            "t",
        )
        .unwrap();
        let event = node("default", None).to_string();
        let offline = explain(event.as_bytes(), &config).unwrap();
        let says = |e: &Value| -> Vec<String> {
            e["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["says"].as_str().unwrap().to_owned())
                .collect()
        };
        assert!(
            says(&offline[0])
                .last()
                .unwrap()
                .starts_with("OTLP log records, one per namespace the delivery rules name"),
            "{:?}",
            says(&offline[0])
        );
        let mut state = OwnerState::default();
        for ns in ["team-a", "team-b"] {
            state.namespaces.insert(ns.into(), Default::default());
            state.set_pod(ns, "web", Some("node1"));
        }
        let context = Context {
            owners: Some(state),
            ..Context::offline()
        };
        let mut explainer = Explainer::new(&config, &context);
        let live = explainer.explain("default", &node("default", None));
        let said = says(&live);
        assert!(said.contains(&"namespace team-a, attributed without a copy (copies: false) (node: Node node1 runs 1 pod of namespace team-a)".to_owned()), "{said:?}");
        assert_eq!(
            said.last().unwrap(),
            "OTLP log records, one per namespace it concerns: team-a, team-b"
        );
        assert_eq!(
            live["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["to"] == "otlp")
                .unwrap()["namespaces"],
            json!(["team-a", "team-b"])
        );
    }

    #[test]
    fn wrong_shapes_are_refused_with_what_to_give() {
        let config = Config::embedded_default();
        for (input, says) in [
            ("{", "not JSON"),
            (r#"{"kind": "Pod"}"#, "give an AdmissionReview"),
            (r#"{"kind": "List"}"#, "no `items`"),
            (
                r#"{"kind": "AdmissionReview", "request": {"operation": "DELETE"}}"#,
                "DELETE",
            ),
        ] {
            let e = explain(input.as_bytes(), &config).unwrap_err();
            assert!(e.to_string().contains(says), "{input}: {e}");
        }
    }
}
