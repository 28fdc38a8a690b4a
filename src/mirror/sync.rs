//! Bringing one stored event and its copy in line: label the source if it was written
//! without labels (the webhook was down, or failed open), and create or update its copy in the
//! channel's namespace. Idempotent: running it twice, from two replicas, or after a restart
//! changes nothing more.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::classify::ScopeResolver;
use crate::config::Config;
use crate::decide::{Outcome, decide};
use crate::mirror::copies::{CopyIndex, Lookup};
use crate::mirror::{copy_is_current, is_copy_of, make_copy};
use crate::recorder::{EventSink, SinkError};

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncReport {
    /// The source was patched with its labels.
    pub labelled: bool,
    /// The copy was created.
    pub created: bool,
    /// The existing copy was updated.
    pub updated: bool,
    /// The channel (if the event was routed).
    pub channel: Option<String>,
    /// The event was not one of ours (namespaced, mirror copy, ...).
    pub skipped: bool,
    /// Not ours, yet it carried our labels (its kind was misjudged): they were removed.
    pub unlabelled: bool,
}

impl SyncReport {
    /// The writes this sync made, as metric operation names.
    pub fn writes(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.labelled, "label"),
            (self.unlabelled, "unlabel"),
            (self.created, "create"),
            (self.updated, "update"),
        ]
        .into_iter()
        .filter_map(|(done, op)| done.then_some(op))
    }
}

/// A failed sync: what had been done, which step failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncError {
    pub report: SyncReport,
    /// `label`, `unlabel`, `create`, `update` or `log`.
    pub operation: &'static str,
    pub error: SinkError,
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.operation, self.error)
    }
}

impl std::error::Error for SyncError {}

impl SyncError {
    /// Whether trying again later can succeed: transport errors, 5xx, 429 and conflicts can;
    /// so can 403 and 404 (a missing channel namespace or Role is fixed by an operator, and
    /// the retries are capped). Any other 4xx (the API server refuses this object, e.g. 422
    /// for a copy past the annotation limit) and a foreign event under the copy's name cannot.
    pub fn retryable(&self) -> bool {
        if self.operation == FOREIGN {
            return false;
        }
        match &self.error {
            SinkError::Transport(_) => true,
            SinkError::Invalid(_) => false,
            SinkError::Status { code, .. } => {
                !(400..500).contains(code) || matches!(code, 403 | 404 | 408 | 409 | 429)
            }
        }
    }
}

/// The failed "operation" of a copy that could not be written because an event that is not
/// clusterscope's copy of that source holds its name.
pub const FOREIGN: &str = "foreign";

/// Syncs stored events; cheap to clone.
#[derive(Clone)]
pub struct Syncer {
    pub client: kube::Client,
    pub config: crate::config::SharedConfig,
    pub resolver: Arc<ScopeResolver>,
    /// Where `log: true` channels write.
    pub log_sink: Option<Arc<dyn EventSink>>,
    /// The copies already stored, as far as known (shared by the clones).
    pub copies: Arc<CopyIndex>,
}

/// The decision's JSON Patch (which only touches `metadata`, `metadata.labels` and
/// `metadata.annotations`) as the equivalent JSON merge patch.
pub fn merge_patch_of(ops: &[json_patch::PatchOperation]) -> serde_json::Value {
    use json_patch::PatchOperation as Op;
    let mut patch = serde_json::json!({});
    for op in ops {
        let (path, value) = match op {
            Op::Add(a) => (&a.path, a.value.clone()),
            Op::Replace(r) => (&r.path, r.value.clone()),
            Op::Remove(r) => (&r.path, serde_json::Value::Null),
            _ => continue,
        };
        let mut target = &mut patch;
        let tokens: Vec<String> = path.tokens().map(|t| t.decoded().into_owned()).collect();
        let Some((last, parents)) = tokens.split_last() else {
            continue;
        };
        for t in parents {
            target = &mut target[t.as_str()];
            if !target.is_object() {
                *target = serde_json::json!({});
            }
        }
        target[last.as_str()] = value;
    }
    patch
}

/// An event that is not our copy of this source holds the copy's name: left alone.
fn foreign(ns: &str, name: &str) -> (&'static str, SinkError) {
    (
        FOREIGN,
        SinkError::Status {
            code: 409,
            reason: "AlreadyExists".into(),
            message: format!(
                "{ns}/{name} exists and is not clusterscope's copy of this source (no mirror label, or it names another source); it is left alone"
            ),
        },
    )
}

/// Conflicts tolerated while updating one copy before giving up until the next sync.
const UPDATE_ATTEMPTS: usize = 3;

impl Syncer {
    pub fn new(
        client: kube::Client,
        config: crate::config::SharedConfig,
        resolver: Arc<ScopeResolver>,
        log_sink: Option<Arc<dyn EventSink>>,
    ) -> Self {
        Syncer {
            client,
            config,
            resolver,
            log_sink,
            copies: Arc::new(CopyIndex::new()),
        }
    }

    /// Forgets the copies of a deleted source (they expire with it).
    pub fn forget(&self, source: &Event) {
        let (Some(ns), Some(name)) = (
            source.metadata.namespace.as_deref(),
            source.metadata.name.as_deref(),
        ) else {
            return;
        };
        let copy = crate::mirror::copy_name(ns, name);
        let config = self.config.load();
        for channel_ns in config
            .channels
            .iter()
            .filter_map(|c| c.namespace.as_deref())
        {
            self.copies.forget(channel_ns, &copy);
        }
    }

    /// Syncs `source` (an event as stored in `default` or `kube-system`).
    pub async fn sync(&self, source: &Event) -> Result<SyncReport, SyncError> {
        let fail = |report: &SyncReport, operation, error| SyncError {
            report: report.clone(),
            operation,
            error,
        };
        // The same view the webhook decides on, borrowed from the typed event.
        let view = crate::event::Event::from(source);
        // One consistent configuration for the whole sync, even if it is reloaded meanwhile.
        let config = self.config.load_full();
        let source_ns = source.metadata.namespace.as_deref().unwrap_or("default");
        let decision = decide(&view, source_ns, &config, &self.resolver);
        let source_name = source.metadata.name.as_deref().unwrap_or("");
        let Some(classified) = decision.classified.clone() else {
            let mut report = SyncReport {
                skipped: true,
                ..SyncReport::default()
            };
            if decision.outcome == Outcome::Unlabelled && !source_name.is_empty() {
                report.unlabelled = self
                    .patch_source(source_ns, source_name, &decision.patch)
                    .await
                    .map_err(|e| fail(&report, "unlabel", e))?;
            }
            return Ok(report);
        };
        let mut report = SyncReport {
            channel: classified.channel.clone(),
            ..SyncReport::default()
        };
        // A failed label does not hold back the copy: it is reported once the copy is done.
        let mut label_error = None;
        if decision.outcome == Outcome::Patched && !source_name.is_empty() {
            match self
                .patch_source(source_ns, source_name, &decision.patch)
                .await
            {
                Ok(labelled) => report.labelled = labelled,
                Err(e) => label_error = Some(e),
            }
        }
        let copied = self.copy(&config, source, &classified, &mut report).await;
        match (copied, label_error) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(e)) => Err(fail(&report, "label", e)),
            (Ok(()), None) => Ok(report),
        }
    }

    /// Applies the decision's patch to the stored source (as a merge patch); false when the
    /// source is gone already (TTL), which needs nothing more.
    async fn patch_source(
        &self,
        namespace: &str,
        name: &str,
        ops: &[json_patch::PatchOperation],
    ) -> Result<bool, SinkError> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let patch = merge_patch_of(ops);
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(SinkError::from(e)),
        }
    }

    /// Writes the event to its channel's log stream and mirror namespace.
    async fn copy(
        &self,
        config: &Config,
        source: &Event,
        classified: &crate::decide::Classified,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let fail = |report: &SyncReport, operation, error| SyncError {
            report: report.clone(),
            operation,
            error,
        };
        let Some(channel) = classified
            .channel
            .as_deref()
            .and_then(|c| config.channel(c))
        else {
            return Ok(());
        };
        if channel.log
            && let Some(sink) = &self.log_sink
        {
            sink.create(source)
                .await
                .map_err(|e| fail(report, "log", e))?;
        }
        let Some(copy) = make_copy(source, classified, channel, config) else {
            return Ok(());
        };
        self.upsert(config, &copy, report)
            .await
            .map_err(|(operation, e)| fail(report, operation, e))
    }

    /// Creates the copy or brings the stored one in line, asking the API server only about
    /// what the copy index does not already settle.
    async fn upsert(
        &self,
        config: &Config,
        copy: &Event,
        report: &mut SyncReport,
    ) -> Result<(), (&'static str, SinkError)> {
        let ns = copy.metadata.namespace.as_deref().unwrap_or_default();
        let name = copy.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let keys = &config.keys;
        match self.copies.lookup(&self.client, keys, ns, name).await {
            Lookup::Stored(known) => {
                if known.owner != crate::mirror::copies::owner(copy, keys) {
                    return Err(foreign(ns, name));
                }
                if known.fingerprint == crate::mirror::copies::fingerprint(copy) {
                    return Ok(());
                }
                let mut wanted = copy.clone();
                wanted.metadata.resource_version = Some(known.resource_version.into());
                match api.replace(name, &PostParams::default(), &wanted).await {
                    Ok(stored) => {
                        self.copies.record(&stored, keys);
                        report.updated = true;
                        return Ok(());
                    }
                    // Changed or gone since it was seen: read it.
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                        self.copies.forget(ns, name);
                    }
                    Err(e) => return Err(("update", e.into())),
                }
            }
            Lookup::Absent | Lookup::Unknown => {
                match api.create(&PostParams::default(), copy).await {
                    Ok(stored) => {
                        self.copies.record(&stored, keys);
                        report.created = true;
                        return Ok(());
                    }
                    // Written meanwhile (another replica, or before the listing): update it.
                    Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {}
                    Err(e) => return Err(("create", e.into())),
                }
            }
        }
        self.read_and_update(&api, keys, copy, report).await
    }

    /// Reads the stored copy and updates it if it differs (creating it if it is gone).
    async fn read_and_update(
        &self,
        api: &Api<Event>,
        keys: &crate::config::Keys,
        copy: &Event,
        report: &mut SyncReport,
    ) -> Result<(), (&'static str, SinkError)> {
        let ns = copy.metadata.namespace.as_deref().unwrap_or_default();
        let name = copy.metadata.name.as_deref().unwrap_or_default();
        for _ in 0..UPDATE_ATTEMPTS {
            let stored = match api.get(name).await {
                Ok(s) => s,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    // Expired meanwhile: create again.
                    let stored = api
                        .create(&PostParams::default(), copy)
                        .await
                        .map_err(|e| ("create", e.into()))?;
                    self.copies.record(&stored, keys);
                    report.created = true;
                    return Ok(());
                }
                Err(e) => return Err(("update", e.into())),
            };
            if !is_copy_of(&stored, copy, keys) {
                return Err(foreign(ns, name));
            }
            if copy_is_current(&stored, copy) {
                self.copies.record(&stored, keys);
                return Ok(());
            }
            let mut wanted = copy.clone();
            wanted.metadata.resource_version = stored.metadata.resource_version.clone();
            match api.replace(name, &PostParams::default(), &wanted).await {
                Ok(stored) => {
                    self.copies.record(&stored, keys);
                    report.updated = true;
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(("update", e.into())),
            }
        }
        Err((
            "update",
            SinkError::Status {
                code: 409,
                reason: "Conflict".into(),
                message: format!("copy {ns}/{name} kept changing while being updated"),
            },
        ))
    }
}
