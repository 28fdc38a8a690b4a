//! Where the recorder's events are written: the Kubernetes API ([`KubeSink`]) or the log
//! stream ([`LogSink`]). Both are delivery [`Sink`]s, run in lanes as every sink is; the log
//! stream is also an output of the mirror (a channel's `log: true`).

use std::io::Write;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::delivery::{
    Cause, DeliverFuture, Delivered, Delivery, Failure, LaneOptions, Operation, Sink, SinkError,
    Writer,
};

/// Writes events through the Kubernetes API, each into its own namespace, as client-go's
/// recorder writes them: a new event is created; a repeat (a count above 1, as the
/// [`super::Correlator`] makes it) is a strategic-merge patch of `count`, `lastTimestamp`
/// and `message` of the stored event, created again if it expired meanwhile (404).
#[derive(Clone)]
pub struct KubeSink {
    client: kube::Client,
}

impl KubeSink {
    /// Retried as client-go's recorder retries.
    const WRITER: Writer = Writer::Recorder;

    pub fn new(client: kube::Client) -> Self {
        KubeSink { client }
    }

    fn api(&self, event: &Event) -> Api<Event> {
        let ns = event.metadata.namespace.as_deref().unwrap_or("default");
        Api::namespaced(self.client.clone(), ns)
    }

    async fn create(&self, event: &Event) -> Result<Delivered, Failure> {
        let mut event = event.clone();
        // A create carries no resourceVersion (the correlator keeps the stored one).
        event.metadata.resource_version = None;
        self.api(&event)
            .create(&PostParams::default(), &event)
            .await
            .map(|_| Delivered::Created)
            .map_err(|e| Failure::new(Operation::Create, e))
    }

    async fn patch(&self, event: &Event, name: &str) -> Result<Delivered, Failure> {
        let patch = serde_json::json!({
            "count": event.count,
            "lastTimestamp": event.last_timestamp,
            "message": event.message,
        });
        match self
            .api(event)
            .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map_err(SinkError::from)
        {
            Ok(_) => Ok(Delivered::Updated),
            // The stored event expired (its TTL): the repeat creates it again.
            Err(e) if e.is_not_found() => self.create(event).await,
            Err(e) => Err(Failure::new(Operation::Patch, e)),
        }
    }
}

impl Sink for KubeSink {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn writer(&self) -> Writer {
        Self::WRITER
    }

    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> DeliverFuture<'a> {
        Box::pin(async move {
            let event = &delivery.event;
            match event.metadata.name.as_deref().filter(|n| !n.is_empty()) {
                None => Err(Failure::new(
                    Operation::Create,
                    SinkError::Invalid("the event has no name".into()),
                )),
                Some(name) if event.count.unwrap_or(1) > 1 => self.patch(event, name).await,
                Some(_) => self.create(event).await,
            }
        })
    }

    /// One writer, as client-go's broadcaster has per sink.
    fn lane(&self, defaults: &LaneOptions) -> LaneOptions {
        LaneOptions {
            workers: 1,
            ..defaults.clone()
        }
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

    fn write(&self, event: &Event) -> Result<(), SinkError> {
        let mut line = serde_json::to_vec(event).map_err(|e| SinkError::Invalid(Cause::of(&e)))?;
        line.push(b'\n');
        let mut out = crate::locks::lock(&self.out);
        out.write_all(&line)
            .and_then(|()| out.flush())
            .map_err(|e| SinkError::Stream(Cause::of(&e)))
    }
}

/// The log stream as a delivery sink: one line per source state (the source once labelled),
/// never retried for long (a broken standard output does not heal).
impl Sink for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    fn writer(&self) -> Writer {
        Writer::Recorder
    }

    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> DeliverFuture<'a> {
        Box::pin(async move {
            self.write(&delivery.event)
                .map(|()| Delivered::Appended)
                .map_err(|error| Failure::new(Operation::Append, error))
        })
    }

    /// One writer; a stream cannot tell what it already holds, so the lane remembers what it
    /// wrote and skips a repeat.
    fn lane(&self, defaults: &LaneOptions) -> LaneOptions {
        LaneOptions {
            workers: 1,
            skip_repeats: true,
            ..defaults.clone()
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::delivery::Action;
    use k8s_openapi::api::core::v1::ObjectReference;

    #[test]
    fn retry_classes() {
        let status = |code: u16, reason: &str| SinkError::Status {
            code,
            reason: reason.into(),
            message: String::new(),
        };
        let action = |e: SinkError| e.action(KubeSink::WRITER);
        assert_eq!(action(SinkError::Transport("x".into())), Action::Retry);
        assert_eq!(action(status(500, "InternalError")), Action::Retry);
        assert_eq!(action(status(503, "ServiceUnavailable")), Action::Retry);
        assert_eq!(action(status(429, "TooManyRequests")), Action::Retry);
        assert_eq!(action(status(409, "AlreadyExists")), Action::GiveUp);
        assert_eq!(action(status(422, "Invalid")), Action::GiveUp);
        assert_eq!(action(status(403, "Forbidden")), Action::GiveUp);
        assert!(status(404, "NotFound").is_not_found());
        assert_eq!(action(SinkError::Invalid("x".into())), Action::GiveUp);
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
    async fn log_sink_writes_one_json_line_per_delivery() {
        let buf = Shared::default();
        let sink = LogSink::new(Box::new(buf.clone()));
        let mut ev = Event::default();
        ev.metadata.name = Some("n1.abc".into());
        ev.reason = Some("NodeNotReady".into());
        let about = ObjectReference::default();
        let first = Delivery::new("default/n1.abc".into(), ev.clone(), &about);
        assert_eq!(sink.deliver(&first).await, Ok(Delivered::Appended));
        ev.count = Some(2);
        let repeat = Delivery::new("default/n1.abc".into(), ev, &about);
        assert_eq!(sink.deliver(&repeat).await, Ok(Delivered::Appended));
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
