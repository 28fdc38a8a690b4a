//! Routing conditions: what one route of the configuration requires of an event. The
//! configuration ([`crate::config::Config::route`]) tries its routes in order; the first whose
//! [`Match`] fits names the channel.

use regex::Regex;

/// How the core API group (`""`) is written for people: in the configuration's `groups:`
/// and in the involved-object annotation.
pub const CORE_GROUP: &str = "core";

/// `group` as people write it (`core` for the empty core group).
pub fn shown_group(group: &str) -> &str {
    if group.is_empty() { CORE_GROUP } else { group }
}

/// The involved-object annotation's value: `<group or core>/<Kind>/<name>`.
pub fn involved_object(group: &str, kind: &str, name: &str) -> String {
    format!("{}/{kind}/{name}", shown_group(group))
}

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
                let shown: Vec<&str> = list.iter().map(|v| shown_group(v)).collect();
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
