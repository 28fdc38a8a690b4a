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
        *crate::locks::lock(&self.inner) = text.into();
    }

    pub fn get(&self) -> String {
        crate::locks::lock(&self.inner).clone()
    }
}
