//! What the mirror knows about the copies already stored in the channel namespaces, so that
//! a re-sync (start, leader change, 410 re-list) costs one paginated LIST per channel
//! namespace instead of a create-then-get per stored source, and an update is one PUT.
//!
//! Each channel namespace is listed once (label selector on the mirror label) the first time
//! a copy there is written; every successful write then records what it stored. Entries hold
//! the copy's resourceVersion and a fingerprint of the fields the mirror writes, never the
//! copy itself. The index is only a hint: a stale entry shows up as 404 or 409 on the write,
//! and the caller falls back to reading the copy. It is cleared on every re-list of the
//! sources and loses a source's entries when the source is deleted, so it holds at most the
//! copies of the sources the API server still stores.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::locks::lock;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

use crate::config::Keys;

/// Page size of the copy listings (as kube-runtime's watcher lists).
const PAGE: u32 = 500;

/// The fields the mirror writes into a copy, hashed: equal fingerprints mean the stored copy
/// already says what the wanted one says (the pipeline's fingerprint of what a delivery says).
pub use crate::delivery::fingerprint;

/// Which source a copy belongs to, hashed (0 when it names none: not a copy of ours).
pub fn owner(copy: &Event, keys: &Keys) -> u64 {
    let Some(source) = crate::mirror::source_of(copy, keys) else {
        return 0;
    };
    let mut h = DefaultHasher::new();
    source.hash(&mut h);
    h.finish().max(1)
}

/// One stored copy, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub resource_version: Box<str>,
    pub fingerprint: u64,
    /// [`crate::delivery::content_fingerprint`] of the stored copy: what its event says.
    pub content: u64,
    /// [`owner`] of the stored copy.
    pub owner: u64,
}

impl Known {
    pub fn of(stored: &Event, keys: &Keys) -> Option<Known> {
        let content = crate::delivery::content_fingerprint(stored);
        Some(Known {
            resource_version: stored.metadata.resource_version.as_deref()?.into(),
            fingerprint: crate::delivery::fingerprint_with(content, stored),
            content,
            owner: owner(stored, keys),
        })
    }
}

/// What the index says about one copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Stored, as last seen.
    Stored(Known),
    /// The namespace was listed and holds no such copy.
    Absent,
    /// The namespace could not be listed: ask the API server.
    Unknown,
}

type Listing = Arc<tokio::sync::OnceCell<()>>;

/// The copies known per channel namespace; cheap to share.
#[derive(Debug, Default)]
pub struct CopyIndex {
    /// namespace → its listing (done once; retried after a failure).
    listings: Mutex<HashMap<String, Listing>>,
    /// namespace → copy name → what was stored (about 100 bytes a copy).
    known: Mutex<HashMap<String, HashMap<Box<str>, Known>>>,
}

impl CopyIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything: the next write to each namespace lists it again.
    pub fn reset(&self) {
        lock(&self.listings).clear();
        lock(&self.known).clear();
    }

    /// Number of copies known.
    pub fn len(&self) -> usize {
        lock(&self.known).values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records what a write or a read returned.
    pub fn record(&self, stored: &Event, keys: &Keys) {
        let (Some(ns), Some(name)) = (
            stored.metadata.namespace.as_deref(),
            stored.metadata.name.as_deref(),
        ) else {
            return;
        };
        match Known::of(stored, keys) {
            Some(k) => {
                lock(&self.known)
                    .entry(ns.to_owned())
                    .or_default()
                    .insert(name.into(), k);
            }
            None => self.forget(ns, name),
        }
    }

    /// Forgets one copy (gone, or replaced by something we did not see).
    pub fn forget(&self, namespace: &str, name: &str) {
        if let Some(copies) = lock(&self.known).get_mut(namespace) {
            copies.remove(name);
        }
    }

    /// What is known of `namespace/name`, listing the namespace first if that was not done.
    pub async fn lookup(
        &self,
        client: &kube::Client,
        keys: &Keys,
        namespace: &str,
        name: &str,
    ) -> Lookup {
        let listing = lock(&self.listings)
            .entry(namespace.to_owned())
            .or_default()
            .clone();
        let listed = listing
            .get_or_try_init(|| self.list(client, keys, namespace))
            .await;
        if let Err(e) = listed {
            tracing::debug!(namespace, error = %e, "mirror: cannot list copies; reading them one by one");
            return Lookup::Unknown;
        }
        match lock(&self.known).get(namespace).and_then(|c| c.get(name)) {
            Some(k) => Lookup::Stored(k.clone()),
            None => Lookup::Absent,
        }
    }

    /// One paginated LIST of the copies in `namespace`.
    async fn list(
        &self,
        client: &kube::Client,
        keys: &Keys,
        namespace: &str,
    ) -> Result<(), kube::Error> {
        let api: Api<Event> = Api::namespaced(client.clone(), namespace);
        let mut params = ListParams::default().labels(&keys.mirror).limit(PAGE);
        let mut found = Vec::new();
        loop {
            let page = api.list(&params).await?;
            found.extend(page.items.iter().filter_map(|copy| {
                let name: Box<str> = copy.metadata.name.as_deref()?.into();
                Some((name, Known::of(copy, keys)?))
            }));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        tracing::debug!(
            namespace,
            copies = found.len(),
            "mirror: listed the copies already stored"
        );
        lock(&self.known)
            .entry(namespace.to_owned())
            .or_default()
            .extend(found);
        Ok(())
    }
}
