//! What a decision changes on an event, typed: entries of `metadata.labels` and
//! `metadata.annotations` to add, replace or remove. Every consumer reads this one value in
//! its own form: the webhook as a JSON Patch, the mirror as a merge patch of the stored
//! event, the log and history lines applied to typed metadata.

use std::collections::BTreeMap;

use json_patch::PatchOperation;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};

/// One entry's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Absent today: added with this value.
    Add(String),
    /// Present with another value: replaced.
    Replace(String),
    /// Present: removed.
    Remove,
}

impl Change {
    /// The value the entry ends with (`None`: absent).
    pub fn value(&self) -> Option<&str> {
        match self {
            Change::Add(v) | Change::Replace(v) => Some(v),
            Change::Remove => None,
        }
    }
}

/// The changes to one string map of the metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapChanges {
    /// The map is absent today (only additions then, made in one step).
    pub missing: bool,
    pub entries: Vec<(String, Change)>,
}

/// What a decision changes; empty when the event already carries everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The event has no `metadata` at all (labels and annotations are added with it).
    pub metadata_missing: bool,
    pub labels: MapChanges,
    pub annotations: MapChanges,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.labels.entries.is_empty() && self.annotations.entries.is_empty()
    }

    fn maps(&self) -> [(&'static str, &MapChanges); 2] {
        [("labels", &self.labels), ("annotations", &self.annotations)]
    }

    /// As the minimal JSON Patch (RFC 6902) the webhook answers with, typed: a missing map (or
    /// metadata) is added in one operation, each other entry by its own. The operations are
    /// those [`Self::as_json_patch`] writes (one description of them), read back.
    pub fn json_patch(&self) -> Vec<PatchOperation> {
        serde_json::to_value(self.as_json_patch())
            .and_then(serde_json::from_value)
            .unwrap_or_default()
    }

    /// The JSON Patch as the webhook sends it, serialized without building operations first
    /// (the review's hot path).
    pub fn as_json_patch(&self) -> JsonPatch<'_> {
        JsonPatch(self)
    }

    /// As a JSON merge patch (RFC 7386) of the stored event: values set, removals null.
    pub fn merge_patch(&self) -> Value {
        let mut meta = Map::new();
        for (field, map) in self.maps() {
            if map.entries.is_empty() {
                continue;
            }
            let entries: Map<String, Value> = map
                .entries
                .iter()
                .map(|(k, c)| {
                    let value = c
                        .value()
                        .map_or(Value::Null, |v| Value::String(v.to_owned()));
                    (k.clone(), value)
                })
                .collect();
            meta.insert(field.to_owned(), Value::Object(entries));
        }
        serde_json::json!({ "metadata": meta })
    }

    /// Applied to typed metadata (what a log line or a history row records).
    pub fn apply(&self, meta: &mut ObjectMeta) {
        for (map, changes) in [
            (&mut meta.labels, &self.labels),
            (&mut meta.annotations, &self.annotations),
        ] {
            if changes.entries.is_empty() {
                continue;
            }
            let map = map.get_or_insert_with(BTreeMap::new);
            for (key, change) in &changes.entries {
                match change.value() {
                    Some(v) => map.insert(key.clone(), v.to_owned()),
                    None => map.remove(key),
                };
            }
        }
    }
}

/// [`Changes`] serialized as their JSON Patch (see [`Changes::as_json_patch`]).
pub struct JsonPatch<'c>(&'c Changes);

/// One operation, as JSON Patch writes it.
#[derive(serde::Serialize)]
struct Op<'a, V: serde::Serialize> {
    op: &'static str,
    path: Path<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<V>,
}

/// `/metadata[/field[/key]]`, each token escaped as RFC 6901 says (`~` as `~0`, `/` as `~1`).
struct Path<'a>(&'a [&'a str]);

impl serde::Serialize for Path<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = String::with_capacity(64);
        for token in self.0 {
            text.push('/');
            let mut rest = *token;
            while let Some(at) = rest.find(['~', '/']) {
                text.push_str(&rest[..at]);
                text.push_str(if rest[at..].starts_with('~') {
                    "~0"
                } else {
                    "~1"
                });
                rest = &rest[at + 1..];
            }
            text.push_str(rest);
        }
        s.serialize_str(&text)
    }
}

/// The entries a missing map gets, as a JSON object.
struct Added<'a>(&'a MapChanges);

impl serde::Serialize for Added<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .entries
                .iter()
                .filter_map(|(k, c)| c.value().map(|v| (k, v))),
        )
    }
}

impl serde::Serialize for JsonPatch<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let changes = self.0;
        let mut seq = s.serialize_seq(None)?;
        if changes.is_empty() {
            return seq.end();
        }
        if changes.metadata_missing {
            let meta = serde_json::json!({
                "labels": Added(&changes.labels),
                "annotations": Added(&changes.annotations),
            });
            seq.serialize_element(&Op {
                op: "add",
                path: Path(&["metadata"]),
                value: Some(meta),
            })?;
            return seq.end();
        }
        for (field, map) in changes.maps() {
            if map.missing {
                if !map.entries.is_empty() {
                    seq.serialize_element(&Op {
                        op: "add",
                        path: Path(&["metadata", field]),
                        value: Some(Added(map)),
                    })?;
                }
                continue;
            }
            for (key, change) in &map.entries {
                let op = match change {
                    Change::Add(_) => "add",
                    Change::Replace(_) => "replace",
                    Change::Remove => "remove",
                };
                seq.serialize_element(&Op {
                    op,
                    path: Path(&["metadata", field, key]),
                    value: change.value(),
                })?;
            }
        }
        seq.end()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The JSON Patch's operations and paths, e.g. `add /metadata/labels/a~1scope`.
    pub(crate) fn paths(changes: &Changes) -> Vec<String> {
        changes
            .json_patch()
            .iter()
            .map(|op| match op {
                PatchOperation::Add(a) => format!("add {}", a.path),
                PatchOperation::Replace(r) => format!("replace {}", r.path),
                PatchOperation::Remove(r) => format!("remove {}", r.path),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn changes() -> Changes {
        Changes {
            metadata_missing: false,
            labels: MapChanges {
                missing: false,
                entries: vec![
                    ("a/scope".into(), Change::Add("cluster".into())),
                    ("a/kind".into(), Change::Replace("node".into())),
                    ("a/channel".into(), Change::Remove),
                ],
            },
            annotations: MapChanges {
                missing: true,
                entries: vec![("a/object".into(), Change::Add("Node/n1".into()))],
            },
        }
    }

    /// The three forms say the same: the JSON Patch and the merge patch applied to the same
    /// object (by the json_patch crate's RFC implementations) and the typed application agree.
    #[test]
    fn every_form_ends_in_the_same_metadata() {
        let before = serde_json::json!({"metadata": {"name": "e", "labels": {
            "a/kind": "pod", "a/channel": "x", "keep": "1"}}});
        let c = changes();
        let mut by_json_patch = before.clone();
        json_patch::patch(&mut by_json_patch, &c.json_patch()).unwrap();
        let mut by_merge = before.clone();
        json_patch::merge(&mut by_merge, &c.merge_patch());
        assert_eq!(by_json_patch, by_merge);
        let mut typed: ObjectMeta = serde_json::from_value(before["metadata"].clone()).unwrap();
        c.apply(&mut typed);
        assert_eq!(serde_json::to_value(&typed).unwrap(), by_merge["metadata"]);
        assert_eq!(by_merge["metadata"]["labels"]["a/scope"], "cluster");
        assert!(by_merge["metadata"]["labels"].get("a/channel").is_none());
        assert_eq!(by_merge["metadata"]["annotations"]["a/object"], "Node/n1");
    }

    /// Keys with `~` and `/` are escaped as RFC 6901 says: the json_patch crate (an RFC 6902
    /// implementation) applies the serialized patch to the keys meant, and a missing metadata
    /// gets both maps in one operation.
    #[test]
    fn the_serialized_json_patch_applies_to_the_keys_meant() {
        let odd = Changes {
            labels: MapChanges {
                missing: false,
                entries: vec![("we~ird/key".into(), Change::Replace("v\"q".into()))],
            },
            annotations: MapChanges::default(),
            metadata_missing: false,
        };
        let mut event = serde_json::json!({"metadata": {"labels": {"we~ird/key": "old"}}});
        json_patch::patch(&mut event, &odd.json_patch()).unwrap();
        assert_eq!(event["metadata"]["labels"]["we~ird/key"], "v\"q");
        let whole = Changes {
            metadata_missing: true,
            ..changes()
        };
        let mut bare = serde_json::json!({"kind": "Event"});
        json_patch::patch(&mut bare, &whole.json_patch()).unwrap();
        assert_eq!(bare["metadata"]["labels"]["a/scope"], "cluster");
        assert_eq!(bare["metadata"]["annotations"]["a/object"], "Node/n1");
        assert!(bare["metadata"]["labels"].get("a/channel").is_none());
    }

    #[test]
    fn a_missing_map_or_metadata_is_added_in_one_operation() {
        let c = changes();
        assert_eq!(
            paths(&c),
            [
                "add /metadata/labels/a~1scope",
                "replace /metadata/labels/a~1kind",
                "remove /metadata/labels/a~1channel",
                "add /metadata/annotations"
            ]
        );
        let whole = Changes {
            metadata_missing: true,
            ..c
        };
        assert_eq!(whole.json_patch().len(), 1);
        assert!(Changes::default().json_patch().is_empty());
        assert!(Changes::default().is_empty());
    }
}
