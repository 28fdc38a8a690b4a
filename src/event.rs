//! A borrowed, tolerant view of an Event in either shape: core/v1 (`involvedObject`,
//! `message`, `source`, `reportingComponent`) or events.k8s.io/v1 and v1beta1 (`regarding`,
//! `note`, `deprecatedSource`, `reportingController`).
//!
//! Only the fields the decision needs are decoded; everything else is skipped without
//! building a tree. Every field may be missing or an explicit `null`, as real producers send.

use std::borrow::Cow;
use std::fmt;

/// The two event types the API server accepts (client-go's `EventTypeNormal` and
/// `EventTypeWarning`); anything else is refused, as client-go's recorder refuses it.
#[derive(
    serde::Serialize,
    serde::Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    schemars::JsonSchema,
)]
// What `kubectl explain csub.spec.types` says: the Subscription CRD is generated from this.
#[schemars(description = "An event type a subscription may ask for.")]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }

    /// The type an event's `type` field names, if it is one of the two.
    pub fn of(type_: Option<&str>) -> Option<Self> {
        match type_? {
            "Normal" => Some(EventType::Normal),
            "Warning" => Some(EventType::Warning),
            _ => None,
        }
    }
}

/// Whether an event's `type` field says Warning.
pub fn is_warning(type_: Option<&str>) -> bool {
    EventType::of(type_) == Some(EventType::Warning)
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};

/// A string that borrows from the document when it can (no escapes in it). serde's own
/// `Cow<str>` always copies, even under `#[serde(borrow)]` inside an `Option` or a map:
/// a 7 MiB message would be held twice.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

type Str<'a> = Option<Text<'a>>;

fn or_empty<'s>(s: &'s Str<'_>) -> &'s str {
    s.as_deref().unwrap_or("")
}

/// A reference to the object an event is about.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef<'a> {
    #[serde(borrow, default)]
    api_version: Str<'a>,
    #[serde(borrow, default)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    namespace: Str<'a>,
    #[serde(borrow, default)]
    name: Str<'a>,
}

impl<'a> ObjectRef<'a> {
    pub fn api_version(&self) -> &str {
        or_empty(&self.api_version)
    }
    pub fn kind(&self) -> &str {
        or_empty(&self.kind)
    }
    pub fn namespace(&self) -> &str {
        or_empty(&self.namespace)
    }
    pub fn name(&self) -> &str {
        or_empty(&self.name)
    }

    /// A reference built from plain strings.
    pub fn new(api_version: &'a str, kind: &'a str, namespace: &'a str, name: &'a str) -> Self {
        Self {
            api_version: Some(Text(Cow::Borrowed(api_version))),
            kind: Some(Text(Cow::Borrowed(kind))),
            namespace: Some(Text(Cow::Borrowed(namespace))),
            name: Some(Text(Cow::Borrowed(name))),
        }
    }
}

/// `source` (core/v1) or `deprecatedSource` (events.k8s.io).
#[derive(Debug, Default, Deserialize)]
struct EventSource<'a> {
    #[serde(borrow, default)]
    component: Str<'a>,
}

/// A string map (labels, annotations) kept in document order, without hashing.
/// A later duplicate key wins on lookup, as in Go's decoder.
#[derive(Debug, Default)]
pub struct StringMap<'a>(pub Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl StringMap<'_> {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for StringMap<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = StringMap<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(4).min(64));
                while let Some((k, v)) = map.next_entry::<Text<'a>, Text<'a>>()? {
                    out.push((k.0, v.0));
                }
                Ok(StringMap(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The parts of `metadata` the decision reads.
#[derive(Debug, Default, Deserialize)]
pub struct Metadata<'a> {
    #[serde(borrow, default)]
    pub name: Str<'a>,
    #[serde(borrow, default, rename = "generateName")]
    pub generate_name: Str<'a>,
    #[serde(borrow, default)]
    pub namespace: Str<'a>,
    #[serde(borrow, default)]
    pub labels: Option<StringMap<'a>>,
    #[serde(borrow, default)]
    pub annotations: Option<StringMap<'a>>,
}

impl Metadata<'_> {
    /// `metadata.namespace`, empty when absent.
    pub fn namespace(&self) -> &str {
        or_empty(&self.namespace)
    }
}

/// An Event in either API shape.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView<'a> {
    #[serde(borrow, default)]
    api_version: Str<'a>,
    #[serde(borrow, default)]
    kind: Str<'a>,
    /// `None` when the object has no `metadata` at all (`null` counts as none).
    #[serde(borrow, default)]
    pub metadata: Option<Metadata<'a>>,
    #[serde(borrow, default)]
    involved_object: Option<ObjectRef<'a>>,
    #[serde(borrow, default)]
    regarding: Option<ObjectRef<'a>>,
    #[serde(borrow, default)]
    reason: Str<'a>,
    #[serde(borrow, default, rename = "type")]
    type_: Str<'a>,
    #[serde(borrow, default)]
    message: Str<'a>,
    #[serde(borrow, default)]
    note: Str<'a>,
    #[serde(borrow, default)]
    reporting_component: Str<'a>,
    #[serde(borrow, default)]
    reporting_controller: Str<'a>,
    #[serde(borrow, default)]
    source: Option<EventSource<'a>>,
    #[serde(borrow, default)]
    deprecated_source: Option<EventSource<'a>>,
}

/// Borrows an optional string of a typed object.
fn borrowed(s: &Option<String>) -> Str<'_> {
    s.as_deref().map(|v| Text(Cow::Borrowed(v)))
}

fn borrowed_map(m: &Option<std::collections::BTreeMap<String, String>>) -> Option<StringMap<'_>> {
    m.as_ref().map(|m| {
        StringMap(
            m.iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
                .collect(),
        )
    })
}

impl<'a> From<&'a k8s_openapi::api::core::v1::Event> for EventView<'a> {
    /// The view of a stored core/v1 Event (as the mirror lists it), borrowing from it: the
    /// same decision as for an admission request, without a JSON round trip.
    fn from(e: &'a k8s_openapi::api::core::v1::Event) -> Self {
        let r = &e.involved_object;
        EventView {
            api_version: Some(Text(Cow::Borrowed("v1"))),
            kind: Some(Text(Cow::Borrowed("Event"))),
            metadata: Some(Metadata {
                name: borrowed(&e.metadata.name),
                generate_name: borrowed(&e.metadata.generate_name),
                namespace: borrowed(&e.metadata.namespace),
                labels: borrowed_map(&e.metadata.labels),
                annotations: borrowed_map(&e.metadata.annotations),
            }),
            involved_object: Some(ObjectRef {
                api_version: borrowed(&r.api_version),
                kind: borrowed(&r.kind),
                namespace: borrowed(&r.namespace),
                name: borrowed(&r.name),
            }),
            regarding: None,
            reason: borrowed(&e.reason),
            type_: borrowed(&e.type_),
            message: borrowed(&e.message),
            note: None,
            reporting_component: borrowed(&e.reporting_component),
            reporting_controller: None,
            source: e.source.as_ref().map(|s| EventSource {
                component: borrowed(&s.component),
            }),
            deprecated_source: None,
        }
    }
}

/// Picks the first non-empty string.
fn first_set<'s>(candidates: [&'s Str<'_>; 2]) -> &'s str {
    candidates
        .into_iter()
        .map(or_empty)
        .find(|s| !s.is_empty())
        .unwrap_or("")
}

impl<'a> EventView<'a> {
    /// The object's own `kind`, empty when absent.
    pub fn kind(&self) -> &str {
        or_empty(&self.kind)
    }

    /// True when the object is written in the events.k8s.io shape.
    fn is_events_api_shape(&self) -> bool {
        self.api_version().starts_with("events.k8s.io/")
    }

    pub fn api_version(&self) -> &str {
        or_empty(&self.api_version)
    }

    /// The object the event is about: `regarding` for the events.k8s.io shape,
    /// `involvedObject` for core/v1; whichever is present when the shape is unclear.
    pub fn reference(&self) -> Option<&ObjectRef<'a>> {
        let (preferred, other) = if self.is_events_api_shape() {
            (&self.regarding, &self.involved_object)
        } else {
            (&self.involved_object, &self.regarding)
        };
        preferred.as_ref().or(other.as_ref())
    }

    pub fn reason(&self) -> &str {
        or_empty(&self.reason)
    }

    pub fn type_(&self) -> &str {
        or_empty(&self.type_)
    }

    /// `message` (core/v1) or `note` (events.k8s.io).
    pub fn message(&self) -> &str {
        if self.is_events_api_shape() {
            first_set([&self.note, &self.message])
        } else {
            first_set([&self.message, &self.note])
        }
    }

    /// Who reported the event: `reportingController` / `reportingComponent`, else the
    /// `source.component` of old-style events.
    pub fn reporter(&self) -> &str {
        let reporting = first_set([&self.reporting_controller, &self.reporting_component]);
        if !reporting.is_empty() {
            return reporting;
        }
        let source = self.source.as_ref().map(|s| &s.component);
        let deprecated = self.deprecated_source.as_ref().map(|s| &s.component);
        [source, deprecated]
            .into_iter()
            .flatten()
            .map(or_empty)
            .find(|s| !s.is_empty())
            .unwrap_or("")
    }

    pub fn labels(&self) -> Option<&StringMap<'a>> {
        self.metadata.as_ref().and_then(|m| m.labels.as_ref())
    }

    pub fn annotations(&self) -> Option<&StringMap<'a>> {
        self.metadata.as_ref().and_then(|m| m.annotations.as_ref())
    }

    /// The event's name, or `generateName` + `*` when the client let the server name it.
    pub fn display_name(&self) -> Cow<'_, str> {
        let Some(meta) = &self.metadata else {
            return Cow::Borrowed("");
        };
        match (or_empty(&meta.name), or_empty(&meta.generate_name)) {
            ("", "") => Cow::Borrowed(""),
            ("", generate) => Cow::Owned(format!("{generate}*")),
            (name, _) => Cow::Borrowed(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_shape_with_nulls_and_unknown_fields() {
        let json = r#"{"kind":"Event","apiVersion":"v1","metadata":{"generateName":"node1.","labels":null},
            "involvedObject":{"kind":"Node","name":"node1","uid":"node1"},"eventTime":null,
            "source":{"component":"kubelet","host":"node1"},"reportingComponent":"","message":"m","whatever":[1,{"a":2}]}"#;
        let ev: EventView = serde_json::from_str(json).unwrap();
        let r = ev.reference().unwrap();
        assert_eq!((r.kind(), r.api_version(), r.namespace()), ("Node", "", ""));
        assert_eq!(ev.reporter(), "kubelet");
        assert_eq!(ev.message(), "m");
        assert!(ev.labels().is_none());
        assert_eq!(ev.display_name(), "node1.*");
    }

    #[test]
    fn events_api_shape() {
        let json = r#"{"apiVersion":"events.k8s.io/v1","regarding":{"kind":"PersistentVolume","name":"pv1"},
            "note":"n","reportingController":"csi.example.com/provisioner","deprecatedSource":{"component":"old"},
            "metadata":{"name":"e","labels":{"a":"1","a":"2"}}}"#;
        let ev: EventView = serde_json::from_str(json).unwrap();
        assert_eq!(ev.reference().unwrap().kind(), "PersistentVolume");
        assert_eq!(ev.message(), "n");
        assert_eq!(ev.reporter(), "csi.example.com/provisioner");
        assert_eq!(ev.labels().unwrap().get("a"), Some("2"));
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let json =
            r#"{"metadata":{"labels":{"a\/b":"\u0041"}},"involvedObject":{"kind":"No\u0064e"}}"#;
        let ev: EventView = serde_json::from_str(json).unwrap();
        assert_eq!(ev.labels().unwrap().get("a/b"), Some("A"));
        assert_eq!(ev.reference().unwrap().kind(), "Node");
    }
}

#[cfg(test)]
mod borrow_tests {
    use super::*;

    /// The view of a typed Event reads the same as the view decoded from its JSON.
    #[test]
    fn typed_and_decoded_views_agree() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "n.1", "namespace": "default", "labels": {"a": "b"},
                         "annotations": {"c": "d"}},
            "involvedObject": {"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "name": "node1"},
            "reason": "R", "type": "Warning", "message": "m",
            "reportingComponent": "", "source": {"component": "csi", "host": "node1"}
        });
        let typed: k8s_openapi::api::core::v1::Event =
            serde_json::from_value(json.clone()).unwrap();
        let text = json.to_string();
        let decoded: EventView = serde_json::from_str(&text).unwrap();
        let view = EventView::from(&typed);
        let (a, b) = (&view, &decoded);
        assert_eq!(a.kind(), b.kind());
        assert_eq!(a.reason(), b.reason());
        assert_eq!(a.type_(), b.type_());
        assert_eq!(a.message(), b.message());
        assert_eq!(a.reporter(), b.reporter());
        let (ra, rb) = (a.reference().unwrap(), b.reference().unwrap());
        assert_eq!(
            (ra.api_version(), ra.kind(), ra.namespace(), ra.name()),
            (rb.api_version(), rb.kind(), rb.namespace(), rb.name())
        );
        assert_eq!(a.labels().unwrap().get("a"), Some("b"));
        assert_eq!(
            a.annotations().unwrap().get("c"),
            b.annotations().unwrap().get("c")
        );
        assert_eq!(a.display_name(), b.display_name());
    }

    #[test]
    fn strings_without_escapes_are_borrowed_from_the_document() {
        let doc = r#"{"metadata":{"labels":{"a":"b"}},"message":"plain","reason":"esc\u0041ped"}"#;
        let ev: EventView = serde_json::from_str(doc).unwrap();
        assert!(matches!(ev.message, Some(Text(Cow::Borrowed("plain")))));
        assert!(matches!(ev.reason, Some(Text(Cow::Owned(_)))));
        assert_eq!(ev.reason(), "escAped");
        let labels = ev.labels().unwrap();
        assert!(matches!(
            labels.0[0],
            (Cow::Borrowed("a"), Cow::Borrowed("b"))
        ));
        let ev: EventView = serde_json::from_str(r#"{"message":null}"#).unwrap();
        assert_eq!(ev.message(), "");
    }
}
