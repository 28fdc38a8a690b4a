//! What `explain` read, summed up: events per outcome, per channel, per delivery. Bounded by
//! the configuration (its channels and rules), never by the number of events.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// What the events were judged against: the built-in kind table, or the cluster read.
    pub against: String,
    pub events: usize,
    /// By outcome (`patched`, `skipped`, ...).
    pub outcomes: BTreeMap<String, usize>,
    /// Events about cluster-scoped objects, by channel (`none`: no route matches).
    pub channels: BTreeMap<String, usize>,
    /// Events by where they would be delivered: `namespace team-infra`, `log`, `history`,
    /// `rule owners` (it may deliver), `rule owners: not delivered`.
    pub deliveries: BTreeMap<String, usize>,
}

impl Summary {
    /// Counts one explained event.
    pub fn add(&mut self, explained: &Value) {
        self.events += 1;
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        *self
            .outcomes
            .entry(text(&explained["outcome"]))
            .or_default() += 1;
        if explained.get("scope").is_none() {
            return;
        }
        let channel = explained
            .get("channel")
            .map_or_else(|| "none".to_owned(), text);
        *self.channels.entry(channel).or_default() += 1;
        for d in explained["deliveries"].as_array().into_iter().flatten() {
            let key = match d["to"].as_str().unwrap_or("") {
                "namespace" => format!("namespace {}", text(&d["namespace"])),
                "rule" if d["delivers"] == true => format!("rule {}", text(&d["rule"])),
                "rule" => format!("rule {}: not delivered", text(&d["rule"])),
                "not" if d.get("namespace").is_some() => {
                    format!("not to namespace {}", text(&d["namespace"]))
                }
                "not" => "not: left out by nodePods.maxNamespaces".to_owned(),
                "subscription" => format!(
                    "subscription {}/{}, where its relation ties the object",
                    text(&d["namespace"]),
                    text(&d["subscription"])
                ),
                other => other.to_owned(),
            };
            *self.deliveries.entry(key).or_default() += 1;
        }
    }

    /// In words, a line per count.
    pub fn to_text(&self) -> String {
        let mut out = format!("summary: {} events", self.events);
        if !self.against.is_empty() {
            out.push_str(&format!("\n  judged against: {}", self.against));
        }
        let mut section = |title: &str, counts: &BTreeMap<String, usize>| {
            if counts.is_empty() {
                return;
            }
            out.push_str(&format!("\n  {title}:"));
            for (what, n) in counts {
                out.push_str(&format!("\n    {what}: {n}"));
            }
        };
        section("outcome", &self.outcomes);
        section("channel", &self.channels);
        section("delivery", &self.deliveries);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_are_by_outcome_channel_and_delivery() {
        let mut s = Summary::default();
        let copied = json!({"outcome": "patched", "scope": "cluster", "channel": "nodes",
            "deliveries": [{"to": "namespace", "namespace": "team-infra"},
                           {"to": "rule", "rule": "nodePods", "delivers": true},
                           {"to": "rule", "rule": "owners", "delivers": false}]});
        s.add(&copied);
        s.add(&copied);
        s.add(&json!({"outcome": "skipped", "skip": "namespaced"}));
        s.add(&json!({"outcome": "patched", "scope": "cluster", "deliveries": []}));
        assert_eq!(s.events, 4);
        assert_eq!(s.outcomes["patched"], 3);
        assert_eq!(s.outcomes["skipped"], 1);
        assert_eq!(s.channels["nodes"], 2);
        assert_eq!(s.channels["none"], 1);
        assert_eq!(s.deliveries["namespace team-infra"], 2);
        assert_eq!(s.deliveries["rule nodePods"], 2);
        assert_eq!(s.deliveries["rule owners: not delivered"], 2);
        let text = s.to_text();
        assert!(text.starts_with("summary: 4 events"), "{text}");
        assert!(text.contains("\n    namespace team-infra: 2"), "{text}");
    }
}
