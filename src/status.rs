//! Lines of status for `/readyz`, set by whoever knows (the cluster side, the configuration
//! reloader) and read by the admin server. A line is ready unless something holds it: a
//! [`Hold`] says what is not ready yet (the mirror listing the owner state, say) for as long as
//! it lives, so that whatever way its holder ends (done, lease lost, shut down, panicked), the
//! hold ends with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A line of status for `/readyz` (the cluster side, the configuration).
#[derive(Debug, Default)]
pub struct StatusLine {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    text: String,
    /// What holds the line not ready, by hold.
    holds: BTreeMap<u64, String>,
    next: u64,
}

impl StatusLine {
    pub fn set(&self, text: impl Into<String>) {
        crate::locks::lock(&self.inner).text = text.into();
    }

    /// The line, then what holds it, if anything, each on a line of its own.
    pub fn get(&self) -> String {
        let inner = crate::locks::lock(&self.inner);
        let mut out = inner.text.clone();
        for why in inner.holds.values() {
            out.push_str("\nnot ready: ");
            out.push_str(why);
        }
        out
    }

    /// Whether nothing holds the line.
    pub fn is_ready(&self) -> bool {
        crate::locks::lock(&self.inner).holds.is_empty()
    }

    /// Holds the line not ready, for `why`, until the returned hold is dropped.
    pub fn hold(self: &Arc<Self>, why: impl Into<String>) -> Hold {
        let mut inner = crate::locks::lock(&self.inner);
        let id = inner.next;
        inner.next += 1;
        inner.holds.insert(id, why.into());
        Hold {
            line: self.clone(),
            id,
        }
    }
}

/// Holds a [`StatusLine`] not ready while it lives; see [`StatusLine::hold`].
#[derive(Debug)]
pub struct Hold {
    line: Arc<StatusLine>,
    id: u64,
}

impl Hold {
    /// Says anew what is not ready yet (progress, say).
    pub fn say(&self, why: impl Into<String>) {
        if let Some(text) = crate::locks::lock(&self.line.inner).holds.get_mut(&self.id) {
            *text = why.into();
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        crate::locks::lock(&self.line.inner).holds.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_ready_until_held_and_again_once_every_hold_is_gone() {
        let line = Arc::new(StatusLine::default());
        line.set("mirroring: on");
        assert!(line.is_ready());
        let listing = line.hold("listing pods");
        let other = line.hold("waiting");
        assert!(!line.is_ready());
        listing.say("listing pods: 500 so far");
        line.set("mirroring: on (this replica holds the lease)");
        assert_eq!(
            line.get(),
            "mirroring: on (this replica holds the lease)\nnot ready: listing pods: 500 so far\nnot ready: waiting"
        );
        drop(listing);
        assert!(!line.is_ready());
        drop(other);
        assert!(line.is_ready());
        assert_eq!(line.get(), "mirroring: on (this replica holds the lease)");
    }
}
