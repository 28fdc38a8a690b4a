//! Hot reload of the configuration file: re-read when the file watcher ([`crate::watch`]) or
//! the periodic check says so, swapped in atomically when it validates, refused (the
//! configuration in use stays) when it does not. The configuration itself ([`crate::config`])
//! is only data and parsing.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError, SharedConfig};
use crate::metrics::{Metrics, ResultLabels};
use crate::status::StatusLine;

/// Re-reads the configuration file when it changes and swaps it in; a file that does not
/// validate is refused and the configuration in use stays.
pub struct ConfigReloader {
    pub path: PathBuf,
    pub shared: SharedConfig,
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusLine>,
    last_seen: Vec<u8>,
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
            path,
            shared,
            metrics,
            status,
            last_seen: loaded,
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .config_reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Checks the file once: `None` when unchanged, else whether the new version was taken.
    pub fn check(&mut self) -> Option<Result<(), ConfigError>> {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        if bytes == self.last_seen {
            return None;
        }
        let parsed = Config::from_bytes(&bytes, &self.path.display().to_string());
        self.last_seen = bytes;
        match parsed {
            Ok(config) => {
                let (channels, routes) = (config.channels.len(), config.routes.len());
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
                Some(Err(e))
            }
        }
    }
}
