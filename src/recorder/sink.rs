//! Where events are written: the Kubernetes API ([`KubeSink`]) or the log stream ([`LogSink`]).

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::{Api, Patch, PatchParams, PostParams};

pub use super::error::SinkError;

/// The future a sink returns.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<Event, SinkError>> + Send + 'a>>;

/// Writes events, as client-go's `EventSink`: create, update, and a strategic-merge patch
/// of an existing event (`count`, `lastTimestamp`, `message`).
pub trait EventSink: Send + Sync {
    fn create<'a>(&'a self, event: &'a Event) -> SinkFuture<'a>;
    fn update<'a>(&'a self, event: &'a Event) -> SinkFuture<'a>;
    fn patch<'a>(&'a self, event: &'a Event, patch: &'a serde_json::Value) -> SinkFuture<'a>;
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// Writes events through the Kubernetes API, each into its own namespace.
#[derive(Clone)]
pub struct KubeSink {
    client: kube::Client,
}

impl KubeSink {
    pub fn new(client: kube::Client) -> Self {
        KubeSink { client }
    }

    fn api(&self, event: &Event) -> Api<Event> {
        let ns = event.metadata.namespace.as_deref().unwrap_or("default");
        Api::namespaced(self.client.clone(), ns)
    }
}

fn name_of(event: &Event) -> Result<&str, SinkError> {
    event
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| SinkError::Invalid("the event has no name".into()))
}

impl EventSink for KubeSink {
    fn create<'a>(&'a self, event: &'a Event) -> SinkFuture<'a> {
        Box::pin(async move {
            Ok(self
                .api(event)
                .create(&PostParams::default(), event)
                .await?)
        })
    }

    fn update<'a>(&'a self, event: &'a Event) -> SinkFuture<'a> {
        Box::pin(async move {
            let name = name_of(event)?;
            Ok(self
                .api(event)
                .replace(name, &PostParams::default(), event)
                .await?)
        })
    }

    fn patch<'a>(&'a self, event: &'a Event, patch: &'a serde_json::Value) -> SinkFuture<'a> {
        Box::pin(async move {
            let name = name_of(event)?;
            Ok(self
                .api(event)
                .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
                .await?)
        })
    }

    fn name(&self) -> &'static str {
        "kubernetes"
    }
}

/// Writes one JSON line per event, for log shippers. Updates and patches are written as the
/// whole event again (with its new count), so every line stands on its own.
pub struct LogSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl LogSink {
    /// A sink writing to standard output.
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }

    pub fn new(out: Box<dyn Write + Send>) -> Self {
        LogSink {
            out: Mutex::new(out),
        }
    }

    fn write(&self, event: &Event) -> Result<Event, SinkError> {
        let mut line = serde_json::to_vec(event).map_err(|e| SinkError::Invalid(e.to_string()))?;
        line.push(b'\n');
        let mut out = crate::locks::lock(&self.out);
        out.write_all(&line)
            .and_then(|()| out.flush())
            .map_err(|e| SinkError::Transport(format!("cannot write the log stream: {e}")))?;
        Ok(event.clone())
    }
}

impl EventSink for LogSink {
    fn create<'a>(&'a self, event: &'a Event) -> SinkFuture<'a> {
        Box::pin(async move { self.write(event) })
    }

    fn update<'a>(&'a self, event: &'a Event) -> SinkFuture<'a> {
        Box::pin(async move { self.write(event) })
    }

    fn patch<'a>(&'a self, event: &'a Event, _patch: &'a serde_json::Value) -> SinkFuture<'a> {
        Box::pin(async move { self.write(event) })
    }

    fn name(&self) -> &'static str {
        "log"
    }
}

/// The channel switch that turns the log stream on (`log: true`).
pub const LOG_SWITCH: &str = "log";

/// The log stream as a pipeline destination: one line per source state (the source once
/// labelled), never retried for long (a broken standard output does not heal).
impl super::pipeline::Destination for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    fn plan(&self, routed: &super::pipeline::Routed<'_>) -> Vec<super::pipeline::Delivery> {
        if !routed.switched(LOG_SWITCH) {
            return Vec::new();
        }
        vec![routed.delivery(routed.source_key(), routed.event.clone(), Vec::new())]
    }

    fn deliver<'a>(
        &'a self,
        delivery: &'a super::pipeline::Delivery,
    ) -> super::pipeline::DeliverFuture<'a> {
        Box::pin(async move {
            self.write(&delivery.event)
                .map(|_| super::pipeline::Delivered::Appended)
                .map_err(|error| super::pipeline::Failure {
                    operation: "append",
                    retryable: error.is_retryable(),
                    error,
                })
        })
    }

    /// One writer; a stream cannot tell what it already holds, so the lane remembers what it
    /// wrote and skips a repeat.
    fn lane(&self, defaults: &super::pipeline::LaneOptions) -> super::pipeline::LaneOptions {
        super::pipeline::LaneOptions {
            workers: 1,
            skip_repeats: true,
            ..defaults.clone()
        }
    }

    fn forget(&self, source: &ObjectReference) -> Vec<String> {
        vec![super::pipeline::key_of_source(source)]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn retry_classes() {
        let status = |code: u16, reason: &str| SinkError::Status {
            code,
            reason: reason.into(),
            message: String::new(),
        };
        assert!(SinkError::Transport("x".into()).is_retryable());
        assert!(status(500, "InternalError").is_retryable());
        assert!(status(503, "ServiceUnavailable").is_retryable());
        assert!(status(429, "TooManyRequests").is_retryable());
        assert!(!status(409, "AlreadyExists").is_retryable());
        assert!(status(409, "AlreadyExists").is_already_exists());
        assert!(!status(422, "Invalid").is_retryable());
        assert!(!status(403, "Forbidden").is_retryable());
        assert!(status(404, "NotFound").is_not_found());
        assert!(!SinkError::Invalid("x".into()).is_retryable());
    }

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    pub(crate) struct Shared(pub(crate) std::sync::Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn log_sink_writes_one_json_line_per_write() {
        let buf = Shared::default();
        let sink = LogSink::new(Box::new(buf.clone()));
        let mut ev = Event::default();
        ev.metadata.name = Some("n1.abc".into());
        ev.reason = Some("NodeNotReady".into());
        sink.create(&ev).await.unwrap();
        ev.count = Some(2);
        sink.patch(&ev, &serde_json::json!({"count": 2}))
            .await
            .unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["count"], 2);
        assert_eq!(lines[0]["reason"], "NodeNotReady");
    }
}
