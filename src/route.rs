//! Routing: the first route whose match fits an event names its channel.

use regex::Regex;

use crate::config::{Channel, Config};

/// What routing looks at in one event about a cluster-scoped object.
#[derive(Debug, Clone, Copy)]
pub struct EventFacts<'e> {
    /// API group of the involved object (`""` for core).
    pub group: &'e str,
    pub kind: &'e str,
    /// Name of the involved object.
    pub name: &'e str,
    pub reason: &'e str,
    pub type_: &'e str,
    /// `reportingController` / `reportingComponent`, else `source.component`.
    pub reporter: &'e str,
    /// `message` or `note`.
    pub message: &'e str,
}

/// Conditions of one route; an empty list or a missing regex matches anything.
#[derive(Debug, Clone, Default)]
pub struct Match {
    pub kinds: Vec<String>,
    pub groups: Vec<String>,
    pub reasons: Vec<String>,
    pub types: Vec<String>,
    pub reporting_controllers: Vec<String>,
    /// Searched in the involved object's name (unanchored; use `^...$` to anchor).
    pub name: Option<Regex>,
    /// Searched in the message.
    pub message: Option<Regex>,
}

fn one_of(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|x| x == value)
}

impl Match {
    pub fn matches(&self, e: &EventFacts<'_>) -> bool {
        one_of(&self.kinds, e.kind)
            && one_of(&self.groups, e.group)
            && one_of(&self.reasons, e.reason)
            && one_of(&self.types, e.type_)
            && one_of(&self.reporting_controllers, e.reporter)
            && self.name.as_ref().is_none_or(|re| re.is_match(e.name))
            && self
                .message
                .as_ref()
                .is_none_or(|re| re.is_match(e.message))
    }

    /// True when the route takes every event.
    pub fn is_catch_all(&self) -> bool {
        [
            &self.kinds,
            &self.groups,
            &self.reasons,
            &self.types,
            &self.reporting_controllers,
        ]
        .iter()
        .all(|l| l.is_empty())
            && self.name.is_none()
            && self.message.is_none()
    }

    /// A one-line description for `check-config`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let lists = [
            ("kind", &self.kinds),
            ("group", &self.groups),
            ("reason", &self.reasons),
            ("type", &self.types),
            ("reportingController", &self.reporting_controllers),
        ];
        for (field, list) in lists {
            if !list.is_empty() {
                let shown: Vec<&str> = list
                    .iter()
                    .map(|v| if v.is_empty() { "core" } else { v.as_str() })
                    .collect();
                parts.push(format!("{field} in [{}]", shown.join(", ")));
            }
        }
        if let Some(re) = &self.name {
            parts.push(format!("name =~ /{}/", re.as_str()));
        }
        if let Some(re) = &self.message {
            parts.push(format!("message =~ /{}/", re.as_str()));
        }
        if self.is_catch_all() {
            "every event".to_owned()
        } else {
            parts.join(" and ")
        }
    }
}

/// One route: its conditions and the index of its channel in [`Config::channels`].
#[derive(Debug, Clone)]
pub struct Route {
    pub channel: usize,
    /// Line of the route in its file, for messages.
    pub line: u64,
    pub matcher: Match,
}

impl Config {
    /// The channel of the first matching route, if any.
    pub fn route(&self, facts: &EventFacts<'_>) -> Option<&Channel> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(facts))
            .and_then(|r| self.channels.get(r.channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(group: &'a str, kind: &'a str) -> EventFacts<'a> {
        EventFacts {
            group,
            kind,
            name: "n1",
            reason: "R",
            type_: "Normal",
            reporter: "kubelet",
            message: "hello world",
        }
    }

    #[test]
    fn default_routes() {
        let c = Config::embedded_default();
        let ch = |g, k| c.route(&facts(g, k)).map(|c| c.name.as_str());
        assert_eq!(ch("", "Node"), Some("nodes"));
        assert_eq!(ch("", "PersistentVolume"), Some("storage"));
        assert_eq!(
            ch("storage.k8s.io", "VolumeAttributesClass"),
            Some("storage")
        );
        assert_eq!(
            ch("rbac.authorization.k8s.io", "ClusterRole"),
            Some("cluster")
        );
        assert_eq!(ch("example.com", "Widget"), Some("cluster"));
    }

    #[test]
    fn all_given_fields_must_match_and_first_route_wins() {
        let c = Config::from_yaml(
            r#"
channels: [{name: a}, {name: b}, {name: c}]
routes:
  - channel: a
    match: {kinds: [Node], types: [Warning], message: 'disk (full|pressure)'}
  - channel: b
    match: {reportingControllers: [kubelet], name: '^n\d$', groups: [core]}
  - channel: c
    match: {reasons: [Other]}
"#,
            "t",
        )
        .unwrap();
        let ch = |f: EventFacts| c.route(&f).map(|c| c.name.clone());
        let mut f = facts("", "Node");
        assert_eq!(ch(f), Some("b".into()));
        f.type_ = "Warning";
        f.message = "disk pressure on /";
        assert_eq!(ch(f), Some("a".into()));
        f.kind = "PersistentVolume";
        assert_eq!(ch(f), Some("b".into()));
        f.name = "n10";
        assert_eq!(ch(f), None);
        f.reason = "Other";
        assert_eq!(ch(f), Some("c".into()));
    }

    #[test]
    fn describe() {
        let c = Config::embedded_default();
        assert_eq!(c.routes[0].matcher.describe(), "kind in [Node]");
        assert_eq!(c.routes[2].matcher.describe(), "every event");
    }
}
