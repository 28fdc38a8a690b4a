//! Reading what `explain` is given, one event at a time: an AdmissionReview, an Event, or a
//! list of events as `kubectl get events -A -o json` or `-o yaml` prints it, however large. A
//! list's items are handed over one by one as they are read, never held together, so a
//! cluster's million events are read in the memory of one.

use std::fmt;
use std::io::{BufRead, Read};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::ExplainError;

/// An event and the namespace it is (or would be) stored in.
pub type Found = (String, Value);

/// Reads `input` (JSON, or YAML when it does not start with `{`), handing each event to `each`
/// as it is read; a list's items are explained before the next is read.
pub fn read(
    input: impl Read,
    each: &mut dyn FnMut(Found) -> Result<(), ExplainError>,
) -> Result<(), ExplainError> {
    let mut input = std::io::BufReader::with_capacity(1 << 16, input);
    let json = first_byte(&mut input)? == Some(b'{');
    let mut seed = Top { each, failed: None };
    let read = if json {
        let mut de = serde_json::Deserializer::from_reader(&mut input);
        let top = (&mut seed).deserialize(&mut de);
        top.and_then(|top| de.end().map(|()| top))
            .map_err(|e| ExplainError(format!("input is not JSON, or not a whole document: {e}")))
    } else {
        // No budget: the list is as large as the cluster's, and read one item at a time.
        let mut options = serde_saphyr::Options::default();
        options.budget = None;
        // One line, as every error clusterscope says; the line and column are in it.
        options.with_snippet = false;
        serde_saphyr::with_deserializer_from_reader_with_options(&mut input, options, |de| {
            (&mut seed).deserialize(de)
        })
        .map_err(|e| ExplainError(format!("input is neither JSON nor YAML: {e}")))
    };
    // A failure of `each` (writing the output) is the real one, not the parser's stop.
    if let Some(failed) = seed.failed.take() {
        return Err(failed);
    }
    match read? {
        (_, true) => Ok(()),
        (rest, false) => single(rest, each),
    }
}

/// The first byte that is not white space, without consuming it; `None` for empty input.
fn first_byte(input: &mut impl BufRead) -> Result<Option<u8>, ExplainError> {
    loop {
        let buf = input
            .fill_buf()
            .map_err(|e| ExplainError(format!("cannot read the input: {e}")))?;
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first.is_ascii_whitespace() {
            input.consume(1);
        } else {
            return Ok(Some(first));
        }
    }
}

/// A document without `items`: an AdmissionReview or an Event, whole (they are small).
fn single(
    doc: Map<String, Value>,
    each: &mut dyn FnMut(Found) -> Result<(), ExplainError>,
) -> Result<(), ExplainError> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    match kind {
        "AdmissionReview" => {
            let request = doc.get("request").unwrap_or(&Value::Null);
            let object = request
                .get("object")
                .filter(|o| o.is_object())
                .ok_or_else(|| {
                    ExplainError(
                        "request.object: absent (a DELETE carries none): nothing to explain"
                            .to_owned(),
                    )
                })?;
            let ns = request["namespace"]
                .as_str()
                .map_or_else(|| namespace_of(object), str::to_owned);
            each((ns, object.clone()))
        }
        "Event" => {
            let event = Value::Object(doc);
            each((namespace_of(&event), event))
        }
        "EventList" | "List" => Err(ExplainError(format!("{kind}: no `items` array"))),
        other => Err(ExplainError(format!(
            "kind is {other:?}: give an AdmissionReview, an Event, or an event list (kubectl get events -A -o json, or -o yaml)"
        ))),
    }
}

fn namespace_of(event: &Value) -> String {
    event["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// The top-level map: `items` streamed through `each`, every other field kept (an Event's or
/// a review's fields; a list's `kind` and `metadata`), and whether there were `items`.
struct Top<'a> {
    each: &'a mut dyn FnMut(Found) -> Result<(), ExplainError>,
    /// Why `each` stopped the reading, if it did.
    failed: Option<ExplainError>,
}

impl<'de> DeserializeSeed<'de> for &mut Top<'_> {
    type Value = (Map<String, Value>, bool);

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Top<'_> {
    type Value = (Map<String, Value>, bool);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AdmissionReview, an Event or an event list (a map)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rest = Map::new();
        let mut listed = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                map.next_value_seed(Items { top: &mut *self })?;
                listed = true;
            } else {
                rest.insert(key, map.next_value::<Value>()?);
            }
        }
        Ok((rest, listed))
    }
}

/// A list's `items`, each handed to [`Top::each`] as soon as it is read.
struct Items<'t, 'a> {
    top: &'t mut Top<'a>,
}

impl<'de> DeserializeSeed<'de> for Items<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`items`: a list of events")
    }

    /// `items: null` (an empty list, as some tools write it).
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        while let Some(event) = seq.next_element::<Value>()? {
            if let Err(e) = (self.top.each)((namespace_of(&event), event)) {
                self.top.failed = Some(e);
                return Err(serde::de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}
