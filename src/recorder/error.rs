//! Why a write failed, and the one classification of whether trying again can help.

/// Why a write failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// The API server could not be reached or the connection broke.
    Transport(String),
    /// The API server answered with an error status.
    Status {
        code: u16,
        /// Kubernetes' machine-readable reason (`AlreadyExists`, `NotFound`, ...).
        reason: String,
        message: String,
    },
    /// The write could not even be built.
    Invalid(String),
    /// The history database failed (`transient`: down or busy) or refused the write.
    Database { message: String, transient: bool },
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
            SinkError::Invalid(m) => write!(f, "invalid event: {m}"),
            SinkError::Database { message, .. } => write!(f, "history database: {message}"),
        }
    }
}

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
}

impl SinkError {
    /// Whether a later try of the same write can succeed, for `writer` (the one retry
    /// classification; each sink names its writer).
    pub fn retryable_for(&self, writer: Writer) -> bool {
        match self {
            SinkError::Transport(_) => true,
            SinkError::Invalid(_) => false,
            SinkError::Database { transient, .. } => *transient,
            SinkError::Status { code, .. } => match writer {
                Writer::Recorder => *code >= 500 || *code == 429,
                Writer::Mirror => {
                    !(400..500).contains(code) || matches!(code, 403 | 404 | 408 | 409 | 429)
                }
            },
        }
    }

    /// [`Self::retryable_for`] the recorder.
    pub fn is_retryable(&self) -> bool {
        self.retryable_for(Writer::Recorder)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, SinkError::Status { code: 404, .. })
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, SinkError::Status { code: 409, reason, .. } if reason == "AlreadyExists")
    }
}

impl From<kube::Error> for SinkError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => SinkError::Status {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            kube::Error::SerdeError(e) => SinkError::Invalid(e.to_string()),
            other => SinkError::Transport(other.to_string()),
        }
    }
}
