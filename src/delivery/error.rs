//! Why a write failed ([`SinkError`], [`Failure`]), and the one decision of what happens next
//! ([`SinkError::action`]): try again with backoff, wait what the server asked, or give up.
//! Every sink and the mirror's label patches return these; none decides retries itself
//! (kube-runtime's `error_policy -> Action`, with the writer's rules as its argument).

use std::sync::Arc;

/// What went wrong, in words: the error it comes from put in words whole, with its causes
/// ([`Cause::of`]), or translated ([`describe`](crate::history::describe)). Not kept beside
/// them as a source, which would have every line say it twice. Shared, so that a failure
/// reported for every row of a batch is one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    said: Arc<str>,
}

impl Cause {
    /// `error` and its causes, each once.
    pub fn of(error: &dyn std::error::Error) -> Self {
        crate::errors::error_chain(error).into()
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.said)
    }
}

impl From<String> for Cause {
    fn from(said: String) -> Self {
        Cause { said: said.into() }
    }
}

impl From<&str> for Cause {
    fn from(said: &str) -> Self {
        said.to_owned().into()
    }
}

/// [`SinkError::Collector`]'s `said` when the collector said nothing (unreachable, a TLS
/// handshake refused, no answer within the timeout).
pub const NO_ANSWER: &str = "no answer";

/// Why a write failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// The API server could not be reached or the connection broke.
    Transport(Cause),
    /// The API server answered with an error status.
    Status {
        code: u16,
        /// Kubernetes' machine-readable reason (`AlreadyExists`, `NotFound`, ...).
        reason: String,
        message: String,
    },
    /// The API server asked to come back later: 429 with `retryAfterSeconds` (API Priority and
    /// Fairness rejecting a request its priority level has no room for, or the max-in-flight
    /// filter). Pacing, not a failure: the write waits that long, and is not counted as a try.
    Throttled {
        retry_after: std::time::Duration,
        message: String,
    },
    /// The API server refused to create anything in the namespace because it is being deleted
    /// (403 with the cause `NamespaceTerminating`, from the NamespaceLifecycle admission plugin):
    /// a namespace being deleted never opens again, so no writer tries again.
    /// The API server's message names the namespace.
    NamespaceTerminating(String),
    /// The API server's answer could not be read (kube's `SerdeError`; building the request
    /// cannot fail this way for an Event). Whatever the server did, a later try settles it, as
    /// client-go retries every error that is not an API status.
    Unreadable(Cause),
    /// The write could not even be built.
    Invalid(Cause),
    /// An object that is not the writer's holds the name it writes (an event that is not
    /// clusterscope's copy of this source): left alone, never retried. Says which.
    Foreign(String),
    /// A batch sink answered fewer results than it was given deliveries: the ones without an
    /// answer are not known to be written, so they are tried again.
    Unanswered { sink: &'static str },
    /// The log stream (standard output) could not be written.
    Stream(Cause),
    /// A sink's own store (a database...) failed (`transient`: down or busy) or refused the
    /// write; `store` names it for the operator.
    Store {
        store: &'static str,
        cause: Cause,
        transient: bool,
    },
    /// An OpenTelemetry collector did not take an export: `said` is its answer as its protocol
    /// names it (`gRPC UNAVAILABLE`, `HTTP 400`, `no answer`), `retryable` as the OTLP
    /// specification says of that answer.
    Collector {
        said: String,
        message: Cause,
        retryable: bool,
    },
    /// The collector asked to come back after `retry_after` (gRPC `RetryInfo`, HTTP
    /// `Retry-After`): pacing, as an API server's 429 is.
    CollectorPaced {
        retry_after: std::time::Duration,
        said: String,
        message: Cause,
    },
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Transport(m) => write!(f, "cannot reach the API server: {m}"),
            SinkError::Status {
                code,
                reason,
                message,
            } => write!(f, "API server answered {code} {reason}: {message}"),
            SinkError::Throttled {
                retry_after,
                message,
            } => write!(
                f,
                "API server answered 429 TooManyRequests, retry after {}s: {message}",
                retry_after.as_secs()
            ),
            SinkError::NamespaceTerminating(message) => write!(
                f,
                "the namespace is being deleted, nothing more is written there: API server answered 403 NamespaceTerminating: {message}"
            ),
            SinkError::Unreadable(m) => write!(f, "cannot read the API server's answer: {m}"),
            SinkError::Invalid(m) => write!(f, "invalid event: {m}"),
            SinkError::Foreign(m) => f.write_str(m),
            SinkError::Unanswered { sink } => write!(
                f,
                "the {sink} sink gave no result for this delivery; it is tried again"
            ),
            SinkError::Stream(m) => write!(f, "cannot write the log stream: {m}"),
            SinkError::Store { store, cause, .. } => write!(f, "{store}: {cause}"),
            SinkError::Collector { said, message, .. } if said == NO_ANSWER => {
                write!(f, "no answer from the OTLP collector: {message}")
            }
            SinkError::Collector { said, message, .. } => {
                write!(f, "the OTLP collector answered {said}: {message}")
            }
            SinkError::CollectorPaced {
                retry_after,
                said,
                message,
            } => write!(
                f,
                "the OTLP collector answered {said}, retry after {}: {message}",
                humantime::format_duration(*retry_after)
            ),
        }
    }
}

/// Its causes are in its words ([`Cause`]): no source.
impl std::error::Error for SinkError {}

/// Who writes: the two ways clusterscope writes to the API server retry different answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// client-go's recorder, writing clusterscope's own events: transport errors, 5xx and 429
    /// may pass on a later try; AlreadyExists, Forbidden, NotFound and Invalid are final, as
    /// client-go treats them (a 404 on a patch becomes a create instead).
    Recorder,
    /// The mirror, keeping what it owns in line (copies, label patches): also 403 and 404 (a
    /// missing channel namespace or Role is fixed by an operator, and the tries are capped),
    /// 408 and 409 (a conflict is read again). Other 4xx (the API server refuses this object,
    /// e.g. 422 past the annotation limit) are final.
    Mirror,
    /// An OTLP exporter: its errors say themselves whether a later try can pass
    /// ([`SinkError::Collector`]), as the OTLP specification lists the answers.
    Collector,
}

/// What follows a failed try: the one decision, from the error and the writer's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try again after the lane's backoff (a try is counted; the tries are capped).
    Retry,
    /// Try again after this wait, which the server asked for (pacing: no try is counted).
    WaitFor(std::time::Duration),
    /// No later try can succeed (until the source changes again).
    GiveUp,
}

impl SinkError {
    /// What to do after this error, for `writer`: the one place retries are decided.
    pub fn action(&self, writer: Writer) -> Action {
        if let SinkError::Throttled { retry_after, .. }
        | SinkError::CollectorPaced { retry_after, .. } = self
        {
            return Action::WaitFor(*retry_after);
        }
        if self.retryable_for(writer) {
            Action::Retry
        } else {
            Action::GiveUp
        }
    }

    /// Whether a later try of the same write can succeed, for `writer`.
    fn retryable_for(&self, writer: Writer) -> bool {
        match self {
            SinkError::Transport(_)
            | SinkError::Unreadable(_)
            | SinkError::Stream(_)
            | SinkError::Throttled { .. }
            | SinkError::CollectorPaced { .. }
            | SinkError::Unanswered { .. } => true,
            SinkError::Collector { retryable, .. } => *retryable,
            SinkError::Invalid(_) | SinkError::NamespaceTerminating(_) | SinkError::Foreign(_) => {
                false
            }
            SinkError::Store { transient, .. } => *transient,
            SinkError::Status { code, .. } => match writer {
                Writer::Recorder | Writer::Collector => *code >= 500 || *code == 429,
                Writer::Mirror => {
                    !(400..500).contains(code) || matches!(code, 403 | 404 | 408 | 409 | 429)
                }
            },
        }
    }

    /// Whether the API server said the object is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SinkError::Status { code: 404, .. })
    }
}

/// What a write was doing when it failed (`mirror_writes_total{operation}` names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    /// A strategic-merge patch of a repeat (the recorder's own events).
    Patch,
    /// A line of the log stream.
    Append,
    /// A row of the history database.
    Upsert,
    /// Records sent to an OTLP collector.
    Export,
    /// The mirror's labels put on a stored source.
    Label,
    /// The mirror's labels taken off a stored event that is not about a cluster-scoped object.
    Unlabel,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Patch => "patch",
            Operation::Append => "append",
            Operation::Upsert => "upsert",
            Operation::Export => "export",
            Operation::Label => "label",
            Operation::Unlabel => "unlabel",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed delivery or label patch: which step failed and why. What follows is
/// [`Failure::action`], decided from the error alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub operation: Operation,
    pub error: SinkError,
}

impl Failure {
    pub fn new(operation: Operation, error: impl Into<SinkError>) -> Self {
        Failure {
            operation,
            error: error.into(),
        }
    }

    /// See [`SinkError::action`].
    pub fn action(&self, writer: Writer) -> Action {
        self.error.action(writer)
    }

    /// The operation as `mirror_writes_total{operation}` counts it: a name held by an object
    /// that is not ours is counted apart, as `foreign`.
    pub fn metric_operation(&self) -> &'static str {
        match self.error {
            SinkError::Foreign(_) => "foreign",
            _ => self.operation.as_str(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.operation, self.error)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<kube::Error> for SinkError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) if namespace_terminating(&status) => {
                SinkError::NamespaceTerminating(status.message)
            }
            kube::Error::Api(status) if retry_after(&status).is_some() => SinkError::Throttled {
                retry_after: retry_after(&status).unwrap_or_default(),
                message: status.message,
            },
            kube::Error::Api(status) => SinkError::Status {
                code: status.code,
                reason: status.reason,
                message: status.message,
            },
            kube::Error::SerdeError(e) => SinkError::Unreadable(Cause::of(&e)),
            other => SinkError::Transport(Cause::of(&other)),
        }
    }
}

/// The wait a 429 asks for (`details.retryAfterSeconds`, which API Priority and Fairness
/// sets with the `Retry-After` header: apimachinery's `NewTooManyRequests`), at most 5 minutes.
fn retry_after(status: &kube::core::Status) -> Option<std::time::Duration> {
    let seconds = status.details.as_ref()?.retry_after_seconds;
    (status.code == 429 && seconds > 0)
        .then(|| std::time::Duration::from_secs(u64::from(seconds).min(300)))
}

/// A 403 whose cause is `NamespaceTerminating` (the NamespaceLifecycle admission plugin's
/// answer to a create in a namespace being deleted; the facts page has it as measured).
fn namespace_terminating(status: &kube::core::Status) -> bool {
    status.code == 403
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// An error that says its own part and gives its cause as its source, as hyper's do.
    #[derive(Debug)]
    struct Connect(std::io::Error);
    impl std::fmt::Display for Connect {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl std::error::Error for Connect {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_transport_error_says_the_kube_error_and_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let kube_error = kube::Error::Service(Box::new(Connect(io)));
        let e = SinkError::from(kube_error);
        assert_eq!(e.action(Writer::Recorder), Action::Retry);
        let said = e.to_string();
        assert!(
            said.starts_with("cannot reach the API server: ")
                && said.contains("client error (Connect)")
                && said.ends_with(": refused"),
            "{said}"
        );
        assert_eq!(said.matches("refused").count(), 1, "{said}");
        assert!(e.source().is_none(), "its causes are in its words");
    }

    #[test]
    fn a_create_in_a_namespace_being_deleted_is_final_for_every_writer() {
        // As a real API server answered (the facts page).
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "events \"e1\" is forbidden: unable to create new content in namespace gone because it is being terminated",
            "reason": "Forbidden", "code": 403,
            "details": {"name": "e1", "kind": "events", "causes": [{"reason": "NamespaceTerminating",
                "message": "namespace gone is being terminated", "field": "metadata.namespace"}]}
        }))
        .unwrap();
        let e = SinkError::from(kube::Error::Api(Box::new(status.clone())));
        assert!(matches!(e, SinkError::NamespaceTerminating(_)), "{e:?}");
        assert_eq!(e.action(Writer::Mirror), Action::GiveUp);
        assert_eq!(e.action(Writer::Recorder), Action::GiveUp);
        assert!(
            e.to_string().contains("being deleted") && e.to_string().contains("in namespace gone"),
            "{e}"
        );
        // Any other 403 (a Role missing, fixed by an operator) the mirror still retries.
        let mut other = status;
        other.details = None;
        let e = SinkError::from(kube::Error::Api(Box::new(other)));
        assert!(matches!(e, SinkError::Status { code: 403, .. }));
        assert_eq!(e.action(Writer::Mirror), Action::Retry);
        assert_eq!(e.action(Writer::Recorder), Action::GiveUp);
    }

    #[test]
    fn an_apf_rejection_is_pacing_with_its_wait() {
        // apimachinery's NewTooManyRequests, as API Priority and Fairness answers.
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Too many requests, please try again later.",
            "reason": "TooManyRequests", "details": {"retryAfterSeconds": 3}, "code": 429
        }))
        .unwrap();
        let e = SinkError::from(kube::Error::Api(Box::new(status.clone())));
        let three = Action::WaitFor(std::time::Duration::from_secs(3));
        assert_eq!(e.action(Writer::Mirror), three);
        assert_eq!(e.action(Writer::Recorder), three);
        assert!(e.to_string().contains("retry after 3s"), "{e}");
        // A 429 that asks for no wait is an ordinary retryable answer.
        let mut plain = status;
        plain.details = None;
        let e = SinkError::from(kube::Error::Api(Box::new(plain)));
        assert_eq!(e.action(Writer::Mirror), Action::Retry);
        assert!(matches!(e, SinkError::Status { code: 429, .. }));
    }
}
