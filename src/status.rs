//! Lines of status for `/readyz`, set by whoever knows (the cluster side, the configuration
//! reloader) and read by the admin server.

use std::sync::Mutex;

/// A line of status for `/readyz` (the cluster side, the configuration).
#[derive(Debug, Default)]
pub struct StatusLine {
    inner: Mutex<String>,
}

impl StatusLine {
    pub fn set(&self, text: impl Into<String>) {
        match self.inner.lock() {
            Ok(mut g) => *g = text.into(),
            Err(p) => *p.into_inner() = text.into(),
        }
    }

    pub fn get(&self) -> String {
        match self.inner.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}
