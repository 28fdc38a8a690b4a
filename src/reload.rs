//! Hot reload of the configuration file: re-read when the file watcher ([`crate::watch`]) or
//! the periodic check says so, swapped in atomically when it validates, refused (the
//! configuration in use stays) when it does not. The configuration itself ([`crate::config`])
//! is only data and parsing.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError, SharedConfig};
use crate::metrics::Metrics;
use crate::status::StatusLine;

/// Re-reads the configuration file when it changes and swaps it in; a file that does not
/// validate is refused and the configuration in use stays.
pub struct ConfigReloader {
    pub path: PathBuf,
    pub shared: SharedConfig,
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusLine>,
    /// A refused file is told in an event about this replica, once a cluster is connected.
    pub own_events: Arc<crate::recorder::OwnEvents>,
    /// The file and what was last seen in it (taken or refused).
    file: crate::watch::Files,
}

impl ConfigReloader {
    /// `loaded` is the text the configuration in use was read from.
    pub fn new(
        path: PathBuf,
        shared: SharedConfig,
        metrics: Arc<Metrics>,
        status: Arc<StatusLine>,
        loaded: Vec<u8>,
    ) -> Self {
        status.set(format!("configuration: {} loaded", path.display()));
        ConfigReloader {
            file: crate::watch::Files::new(vec![path.clone()], vec![loaded]),
            path,
            shared,
            metrics,
            status,
            own_events: Arc::default(),
        }
    }

    /// Tells refusals with `own_events` too.
    pub fn with_own_events(mut self, own_events: Arc<crate::recorder::OwnEvents>) -> Self {
        self.own_events = own_events;
        self
    }

    fn count(&self, result: &str) {
        self.metrics.runtime.config_reloads.count(result);
    }

    /// Checks the file once: `None` when unchanged, else whether the new version was taken.
    pub fn check(&mut self) -> Option<Result<(), ConfigError>> {
        let bytes = self.file.changed()?.pop()?;
        let parsed = Config::from_bytes(&bytes, &self.path.display().to_string());
        match parsed {
            Ok(config) => {
                let (channels, routes) = (config.channels.len(), config.routes.len());
                for warning in config.warnings(&crate::classify::builtin_kind_names()) {
                    tracing::warn!(%warning, "configuration: a route that can never match");
                }
                self.metrics
                    .channels(config.channels.iter().map(|c| c.name.as_str()));
                self.shared.store(Arc::new(config));
                self.count("success");
                self.status
                    .set(format!("configuration: {} reloaded", self.path.display()));
                tracing::info!(file = %self.path.display(), channels, routes, "configuration reloaded");
                Some(Ok(()))
            }
            Err(e) => {
                self.count("error");
                self.status.set(format!(
                    "configuration: new version refused ({e}); the previous one stays in use"
                ));
                tracing::warn!(error = %e, "new configuration refused; the previous one stays in use");
                let message = format!(
                    "configuration {} refused; the previous one stays in use: {}",
                    self.path.display(),
                    crate::telemetry::clip(&e.to_string(), 768)
                );
                // A full queue drops it; the recorder counts that.
                let _ = self.own_events.warn("ConfigurationRefused", &message);
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{LogSink, OwnEvents, Recorder, RecorderOptions};

    use crate::recorder::sink::tests::Shared as Buffer;

    #[tokio::test]
    async fn a_refused_file_is_kept_out_and_told_in_an_event_about_this_replica() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let good = b"channels:\n  - name: a\nroutes:\n  - channel: a\n".to_vec();
        std::fs::write(&path, &good).unwrap();
        let shared = crate::config::shared(Config::from_bytes(&good, "t").unwrap());
        let metrics = Arc::new(Metrics::new());
        // Recorded events land in a buffer, one JSON line each.
        let written = Buffer::default();
        let recorder = Arc::new(Recorder::new(
            vec![Arc::new(LogSink::new(Box::new(written.clone())))],
            &RecorderOptions::default(),
            ("clusterscope", "host"),
            Arc::new(crate::recorder::SystemClock),
            crate::metrics::RecorderMetrics::default(),
        ));
        let mut writers = tokio::task::JoinSet::new();
        recorder.start(&mut writers);
        let own = Arc::new(OwnEvents::new());
        let mut reloader = ConfigReloader::new(
            path.clone(),
            shared.clone(),
            metrics.clone(),
            Arc::new(StatusLine::default()),
            good,
        )
        .with_own_events(own.clone());
        // Not connected yet: refused, logged, counted, no event.
        std::fs::write(&path, "routes:\n  - channel: nowhere\n").unwrap();
        assert!(matches!(reloader.check(), Some(Err(_))));
        own.connect(
            recorder,
            crate::recorder::pod_reference("clusterscope-system", "clusterscope-0", Some("u-0")),
        );
        std::fs::write(
            &path,
            "channels:\n  - name: a\nroutes:\n  - channel: elsewhere\n",
        )
        .unwrap();
        assert!(matches!(reloader.check(), Some(Err(_))));
        assert_eq!(
            shared.load().channels[0].name,
            "a",
            "the refused file was taken"
        );
        let mut lines = Vec::new();
        for _ in 0..100 {
            lines = String::from_utf8(written.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect();
            if !lines.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(lines.len(), 1, "{lines:?}");
        let event = &lines[0];
        assert_eq!(event["reason"], "ConfigurationRefused");
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["involvedObject"]["kind"], "Pod");
        assert_eq!(event["involvedObject"]["name"], "clusterscope-0");
        assert_eq!(event["metadata"]["namespace"], "clusterscope-system");
        let message = event["message"].as_str().unwrap();
        assert!(message.contains("elsewhere"), "{message}");
    }
}
