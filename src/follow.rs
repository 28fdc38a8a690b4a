//! Following a Kubernetes resource: kube-runtime's watcher (a list, then a watch, a new list
//! after a 410 or a broken watch, its default backoff after errors), with the one way
//! clusterscope reports a failing watch and a re-list on demand. The mirror controller follows
//! the stored events with it, the owner state the volumes, attachments, namespaces, pods and
//! custom kinds its rules read.
//!
//! Hand-written over kube-runtime's `reflector`: a reflector store keeps every object whole
//! for as long as it exists (a store of 20,000 Node events measured +101 MB RSS), where the
//! callers here keep only what they need of each (a queue entry while it waits, a trimmed
//! record), so they take the watcher's events themselves.

use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::de::DeserializeOwned;

/// Every watch's failures, counted by the resource watched (one family, registered by
/// `metrics` as `watch_errors`).
#[derive(Clone, Debug, Default)]
pub struct WatchErrors(Family<ResourceLabel, Counter>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: String,
}

impl WatchErrors {
    /// The family, to register.
    pub fn family(&self) -> Family<ResourceLabel, Counter> {
        self.0.clone()
    }

    /// The failure counter of `resource`'s watch, present (at zero) from now on.
    pub fn of(&self, resource: &str) -> Counter {
        self.0
            .get_or_create(&ResourceLabel {
                resource: resource.to_owned(),
            })
            .clone()
    }
}

/// What is followed, for the log, and what to do about a failing watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// `events in default`, `persistentvolumes`, ...
    pub what: String,
    /// Counts every failure (from [`WatchErrors::of`] the resource).
    pub errors: Counter,
    /// Said with every failure: what it means for the caller and what to check.
    pub hint: &'static str,
    /// Woken when the caller wants everything listed again (a new watcher, so a new list).
    pub relist: Option<Arc<tokio::sync::Notify>>,
}

/// Follows `api` with `config` until the watch stream ends (it does not on its own: the
/// caller drops or stops the future): every event goes to `handle`, every failure is logged as
/// one warning naming what is followed and counted in `how.errors`; the watcher retries by
/// itself.
pub async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    how: WatchSpec,
    mut handle: impl FnMut(watcher::Event<K>),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    loop {
        // Registered before the watch starts: a request made meanwhile is not lost.
        let asked = how.relist.as_deref().map(tokio::sync::Notify::notified);
        let asked = async move {
            match asked {
                Some(notified) => notified.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(asked);
        let mut stream = watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed();
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = &mut asked => break,
            };
            match item {
                None => return,
                Some(Ok(event)) => handle(event),
                Some(Err(e)) => {
                    how.errors.inc();
                    tracing::warn!(watch = %how.what, error = %crate::errors::Chain(&e),
                        "watch failed; retrying with backoff ({})", how.hint);
                }
            }
        }
        tracing::info!(watch = %how.what, "listing again, as asked");
    }
}

/// Lists `api` once, page by page (`params`' limit each, the continue token followed), handing
/// each page's objects to `page` as it arrives: the memory of one page, however many objects
/// there are. The first failure ends it: a list's, said by `failed`, or `page`'s own.
pub async fn list_pages<K, E>(
    api: &Api<K>,
    mut params: kube::api::ListParams,
    mut page: impl FnMut(Vec<K>) -> Result<(), E>,
    failed: impl Fn(kube::Error) -> E,
) -> Result<(), E>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    loop {
        let list = api.list(&params).await.map_err(&failed)?;
        page(list.items)?;
        match list.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}
