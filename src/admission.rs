//! AdmissionReview in, AdmissionReview out.
//!
//! [`Reviewer::review`] takes the bytes the API server POSTs and returns the bytes to answer
//! with, plus the [`Decision`] for logs and metrics. It reads `admission.k8s.io/v1` and
//! `v1beta1`, never denies, echoes the apiVersion and `request.uid`, and sets
//! `patchType: JSONPatch` only when there is a patch. Input that is not an AdmissionReview is
//! a [`ReviewError`] that says what is wrong and where.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::classify::ScopeResolver;
use crate::config::Config;
use crate::decide::{Decision, SkipReason, decide};
use crate::event::EventView;

pub const ADMISSION_V1: &str = "admission.k8s.io/v1";
pub const ADMISSION_V1BETA1: &str = "admission.k8s.io/v1beta1";

/// Group, version and kind as AdmissionReview spells them.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind<'a> {
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
}

/// The parts of `request` the webhook uses; `O` is how the object is decoded.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
pub struct Request<'a, O> {
    #[serde(borrow)]
    pub uid: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: Option<GroupVersionKind<'a>>,
    #[serde(borrow, default)]
    pub request_kind: Option<GroupVersionKind<'a>>,
    #[serde(borrow, default)]
    pub sub_resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub operation: Cow<'a, str>,
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// An [`EventView`], or `&RawValue` to decode it only when the request is about an Event.
    #[serde(default)]
    pub object: Option<O>,
}

/// An AdmissionReview as received.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
pub struct AdmissionReview<'a, O> {
    #[serde(borrow)]
    pub api_version: Cow<'a, str>,
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub request: Option<Request<'a, O>>,
}

/// Why input is not an AdmissionReview we can answer. `Display` is one line for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewError {
    /// Where in the document, as a dotted path (`request.object.metadata.labels`), if known.
    pub path: Option<String>,
    /// 1-based line and column in the document, if known.
    pub position: Option<(usize, usize)>,
    pub reason: String,
}

impl fmt::Display for ReviewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid AdmissionReview: ")?;
        if let Some(path) = &self.path {
            // A key may hold any character: control characters are escaped, so the message
            // stays one line.
            if path.chars().any(char::is_control) {
                write!(f, "at `{}`: ", path.escape_debug())?;
            } else {
                write!(f, "at `{path}`: ")?;
            }
        }
        f.write_str(&self.reason)?;
        if let Some((line, column)) = self.position {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ReviewError {}

impl ReviewError {
    fn plain(reason: impl Into<String>) -> Self {
        ReviewError {
            path: None,
            position: None,
            reason: reason.into(),
        }
    }
}

/// Longest reason text in an error: serde quotes the offending value, which can be megabytes.
pub const MAX_REASON_BYTES: usize = 300;

/// serde_json's message without the " at line L column C" it appends, cut to a readable size.
fn json_reason(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => &msg,
    };
    crate::telemetry::clip(msg, MAX_REASON_BYTES).into_owned()
}

/// Decodes `text` as `T`; on failure, decodes again to learn the path of the error and
/// reports it with `base` (the position of `text` inside the whole document) added.
fn decode<'a, T: Deserialize<'a>>(
    text: &'a str,
    path_prefix: &str,
    base: (usize, usize),
) -> Result<T, ReviewError> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(first) => {
            let mut de = serde_json::Deserializer::from_str(text);
            let path = match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Err(e) => e.path().to_string(),
                Ok(_) => String::from("."),
            };
            let full = match (path_prefix, path.as_str()) {
                ("", "." | "?") => None,
                (p, "." | "?") => Some(p.to_owned()),
                ("", q) => Some(q.to_owned()),
                (p, q) => Some(format!("{p}.{q}")),
            };
            let position = (first.line() > 0).then(|| {
                if first.line() == 1 {
                    (base.0, base.1 + first.column().saturating_sub(1))
                } else {
                    (base.0 + first.line() - 1, first.column())
                }
            });
            Err(ReviewError {
                path: full,
                position,
                reason: json_reason(&first),
            })
        }
    }
}

/// serde accepts a JSON array for a struct; an AdmissionReview is always an object.
fn check_is_object(text: &str) -> Result<(), ReviewError> {
    let trimmed = text.trim_start();
    let found = match trimmed.bytes().next() {
        None => {
            return Err(ReviewError::plain(
                "the body is empty; expected an AdmissionReview JSON object",
            ));
        }
        Some(b'{') => return Ok(()),
        Some(b'[') => "a JSON array",
        Some(b'"') => "a JSON string",
        Some(b'-' | b'0'..=b'9') => "a JSON number",
        Some(b't' | b'f') => "a JSON boolean",
        Some(b'n') => "JSON null",
        // Not JSON at all: let the decoder say where.
        Some(_) => return Ok(()),
    };
    Err(ReviewError {
        path: None,
        position: Some(line_column(text, text.len() - trimmed.len())),
        reason: format!("expected an AdmissionReview JSON object, found {found}"),
    })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// What one review produced.
#[derive(Debug)]
pub struct Reviewed {
    /// The AdmissionReview to send back, serialized.
    pub response: Vec<u8>,
    pub decision: Decision,
    pub uid: String,
    pub operation: String,
    /// Event namespace and name (`generateName*` when the server names it).
    pub namespace: String,
    pub name: String,
    pub dry_run: bool,
}

/// Answers AdmissionReviews with a configuration and a scope resolver.
#[derive(Debug, Clone)]
pub struct Reviewer {
    pub config: crate::config::SharedConfig,
    pub resolver: Arc<ScopeResolver>,
}

fn is_event_kind(gvk: &GroupVersionKind<'_>) -> bool {
    gvk.kind == "Event" && (gvk.group.is_empty() || gvk.group == "events.k8s.io")
}

impl Reviewer {
    pub fn new(config: Arc<Config>, resolver: Arc<ScopeResolver>) -> Self {
        Reviewer {
            config: Arc::new(arc_swap::ArcSwap::new(config)),
            resolver,
        }
    }

    /// A reviewer whose configuration is swapped by whoever else holds `config`.
    pub fn with_shared(config: crate::config::SharedConfig, resolver: Arc<ScopeResolver>) -> Self {
        Reviewer { config, resolver }
    }

    /// Reviews one AdmissionReview given as bytes.
    ///
    /// The common case is decoded in one pass, the object straight into an [`EventView`]. When
    /// that fails, the document is decoded again with the object kept raw: a request that is
    /// not about an Event is then skipped without looking at its object, and anything else
    /// gets an error naming the path and position of the problem.
    pub fn review(&self, body: &[u8]) -> Result<Reviewed, ReviewError> {
        let text = std::str::from_utf8(body).map_err(|e| {
            let (line, column) = line_column(
                // The valid prefix is UTF-8 by definition.
                std::str::from_utf8(body.get(..e.valid_up_to()).unwrap_or_default())
                    .unwrap_or_default(),
                e.valid_up_to(),
            );
            ReviewError {
                path: None,
                position: Some((line, column)),
                reason: "body is not valid UTF-8".to_owned(),
            }
        })?;
        check_is_object(text)?;
        if let Ok(review) = serde_json::from_str::<AdmissionReview<EventView>>(text) {
            let request = check_header(&review)?;
            let decision = match skip_before_object(request) {
                Some(reason) => Decision::skipped(reason),
                None => self.decide_object(request, request.object.as_ref()),
            };
            return respond(&review, request, decision);
        }
        let review: AdmissionReview<&RawValue> = decode(text, "", (1, 1))?;
        let request = check_header(&review)?;
        let decision = match skip_before_object(request) {
            Some(reason) => Decision::skipped(reason),
            None => {
                let event = match request.object {
                    None => None,
                    Some(raw) => {
                        let object_text = raw.get();
                        // `object_text` is a slice of `text`: its offset locates errors.
                        let offset =
                            (object_text.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
                        Some(decode::<EventView>(
                            object_text,
                            "request.object",
                            line_column(text, offset),
                        )?)
                    }
                };
                self.decide_object(request, event.as_ref())
            }
        };
        respond(&review, request, decision)
    }

    fn decide_object<O>(
        &self,
        request: &Request<'_, O>,
        event: Option<&EventView<'_>>,
    ) -> Decision {
        let Some(event) = event else {
            return Decision::skipped(SkipReason::NoObject);
        };
        let kind = event.kind();
        if (!kind.is_empty() && kind != "Event") || (request.kind.is_none() && kind.is_empty()) {
            return Decision::skipped(SkipReason::NotAnEvent);
        }
        let namespace = request.namespace.as_deref().unwrap_or("");
        let mut decision = decide(event, namespace, &self.config.load(), &self.resolver);
        if request.name.as_deref().unwrap_or("").is_empty() {
            decision.event_name = Some(event.display_name().into_owned());
        }
        decision
    }
}

/// The review's apiVersion, kind and request, checked.
fn check_header<'r, 'a, O>(
    review: &'r AdmissionReview<'a, O>,
) -> Result<&'r Request<'a, O>, ReviewError> {
    if review.kind != "AdmissionReview" {
        return Err(ReviewError {
            path: Some("kind".into()),
            position: None,
            reason: format!(
                "kind is {:?}, expected \"AdmissionReview\"",
                crate::telemetry::clip(&review.kind, 100)
            ),
        });
    }
    if review.api_version != ADMISSION_V1 && review.api_version != ADMISSION_V1BETA1 {
        return Err(ReviewError {
            path: Some("apiVersion".into()),
            position: None,
            reason: format!(
                "apiVersion {:?} is not supported, expected {ADMISSION_V1} or {ADMISSION_V1BETA1}",
                crate::telemetry::clip(&review.api_version, 100)
            ),
        });
    }
    let Some(request) = &review.request else {
        return Err(ReviewError::plain("missing field `request`"));
    };
    if request.uid.is_empty() {
        return Err(ReviewError {
            path: Some("request.uid".into()),
            position: None,
            reason: "is empty; the API server always sends one".into(),
        });
    }
    Ok(request)
}

/// Requests that are skipped whatever their object: other operations, other resources.
fn skip_before_object<O>(request: &Request<'_, O>) -> Option<SkipReason> {
    if !matches!(request.operation.as_ref(), "CREATE" | "UPDATE") {
        return Some(SkipReason::Operation);
    }
    if request.kind.as_ref().is_some_and(|gvk| !is_event_kind(gvk))
        || request
            .sub_resource
            .as_deref()
            .is_some_and(|s| !s.is_empty())
    {
        return Some(SkipReason::NotAnEvent);
    }
    None
}

/// Builds the response AdmissionReview for `decision`.
fn respond<O>(
    review: &AdmissionReview<'_, O>,
    request: &Request<'_, O>,
    decision: Decision,
) -> Result<Reviewed, ReviewError> {
    let response = response_bytes(&review.api_version, &request.uid, &decision.changes)
        .map_err(|e| ReviewError::plain(format!("cannot encode the response: {e}")))?;
    let name = match &decision.event_name {
        Some(n) => n.clone(),
        None => request.name.as_deref().unwrap_or("").to_owned(),
    };
    Ok(Reviewed {
        response,
        uid: request.uid.to_string(),
        operation: request.operation.to_string(),
        namespace: request.namespace.as_deref().unwrap_or("").to_owned(),
        name,
        dry_run: request.dry_run.unwrap_or(false),
        decision,
    })
}

/// The AdmissionReview answered, serialized:
/// `{"apiVersion":…,"kind":"AdmissionReview","response":{"uid":…,"allowed":true}}`, with
/// `"patchType":"JSONPatch","patch":"<base64>"` in `response` when there are changes.
///
/// Written into one buffer of the right size: the patch is encoded once and its base64 goes
/// straight into the answer (base64 never needs JSON escaping); the echoed strings are
/// escaped by serde_json.
fn response_bytes(
    api_version: &str,
    uid: &str,
    changes: &crate::decide::Changes,
) -> Result<Vec<u8>, serde_json::Error> {
    let patch = if changes.is_empty() {
        None
    } else {
        Some(serde_json::to_vec(&changes.as_json_patch())?)
    };
    let encoded = patch
        .as_ref()
        .map_or(0, |p| base64::encoded_len(p.len(), true).unwrap_or(0));
    let mut out = Vec::with_capacity(112 + api_version.len() + uid.len() + encoded);
    out.extend_from_slice(b"{\"apiVersion\":");
    serde_json::to_writer(&mut out, api_version)?;
    out.extend_from_slice(b",\"kind\":\"AdmissionReview\",\"response\":{\"uid\":");
    serde_json::to_writer(&mut out, uid)?;
    out.extend_from_slice(b",\"allowed\":true");
    if let Some(patch) = patch {
        out.extend_from_slice(b",\"patchType\":\"JSONPatch\",\"patch\":\"");
        let start = out.len();
        out.resize(start + encoded, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(&patch, &mut out[start..])
            .map_err(serde::ser::Error::custom)?;
        out.truncate(start + written);
        out.push(b'"');
    }
    out.extend_from_slice(b"}}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviewer() -> Reviewer {
        Reviewer::new(
            Arc::new(Config::embedded_default()),
            Arc::new(ScopeResolver::new()),
        )
    }

    #[test]
    fn line_columns() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn a_key_with_a_newline_is_escaped_so_the_error_stays_one_line() {
        let e = ReviewError {
            path: Some("ki\nd".to_owned()),
            position: Some((2, 11)),
            reason: "expected value".to_owned(),
        };
        assert_eq!(
            e.to_string(),
            "invalid AdmissionReview: at `ki\\nd`: expected value (line 2, column 11)"
        );
    }

    #[test]
    fn errors_name_path_and_position() {
        let e = reviewer()
            .review(b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\n\"request\":{\"operation\":\"CREATE\"}}")
            .unwrap_err();
        assert_eq!(e.path.as_deref(), Some("request"));
        assert!(e.reason.contains("missing field `uid`"), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(2));

        let doc = "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\",\"operation\":\"CREATE\",\n\"object\":{\"kind\":\"Event\",\n  \"involvedObject\":{\"kind\":7}}}}";
        let e = reviewer().review(doc.as_bytes()).unwrap_err();
        assert_eq!(
            e.path.as_deref(),
            Some("request.object.involvedObject.kind")
        );
        assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
        assert!(
            e.to_string().starts_with(
                "invalid AdmissionReview: at `request.object.involvedObject.kind`: invalid type"
            ),
            "{e}"
        );
    }

    #[test]
    fn wrong_version_kind_and_utf8() {
        let e = reviewer()
            .review(br#"{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE"}}"#)
            .unwrap_err();
        assert!(e.reason.contains("not supported"), "{e}");
        let e = reviewer()
            .review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"u","operation":"CREATE"}}"#)
            .unwrap_err();
        assert!(e.reason.contains("expected \"AdmissionReview\""), "{e}");
        let e = reviewer().review(b"{\"a\":\"\xff\"}").unwrap_err();
        assert_eq!(e.position, Some((1, 7)));
    }

    #[test]
    fn the_answer_is_the_review_envelope_with_the_patch_in_base64() {
        let review = |uid: &str, extra: serde_json::Value| {
            let mut metadata = serde_json::json!({"name": "n1.1", "namespace": "default"});
            for (k, v) in extra.as_object().into_iter().flatten() {
                metadata[k] = v.clone();
            }
            let body = serde_json::json!({
                "apiVersion": ADMISSION_V1BETA1, "kind": "AdmissionReview",
                "request": {"uid": uid, "operation": "CREATE", "namespace": "default",
                    "object": {"kind": "Event", "apiVersion": "v1", "metadata": metadata,
                        "involvedObject": {"kind": "Node", "name": "n1"}}}
            });
            let reviewed = reviewer().review(body.to_string().as_bytes()).unwrap();
            let answer: serde_json::Value = serde_json::from_slice(&reviewed.response).unwrap();
            (reviewed, answer)
        };
        // A uid that needs escaping comes back as sent.
        let uid = "a\"b\\c\u{2028}\u{1}é";
        let (reviewed, answer) = review(uid, serde_json::json!({}));
        let patch = serde_json::to_value(reviewed.decision.changes.as_json_patch()).unwrap();
        assert!(patch.as_array().is_some_and(|ops| !ops.is_empty()));
        let encoded = answer["response"]["patch"].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&decoded).unwrap(),
            patch
        );
        assert_eq!(
            answer,
            serde_json::json!({
                "apiVersion": ADMISSION_V1BETA1, "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": encoded}
            })
        );
        // Labelled already: no patch and no patch type.
        let labelled = reviewed.decision.changes.merge_patch()["metadata"].clone();
        let (reviewed, answer) = review("u2", labelled);
        assert!(
            reviewed.decision.changes.is_empty(),
            "{:?}",
            reviewed.decision
        );
        assert_eq!(
            answer,
            serde_json::json!({
                "apiVersion": ADMISSION_V1BETA1, "kind": "AdmissionReview",
                "response": {"uid": "u2", "allowed": true}
            })
        );
    }
}
