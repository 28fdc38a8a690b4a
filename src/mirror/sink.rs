//! The Kubernetes copy sink: writes a mirror copy into its channel namespace, asking the API
//! server only about what the [`CopyIndex`] does not already settle (create, or one PUT with
//! the known resourceVersion, or nothing). It never overwrites an event that is not
//! clusterscope's copy of the same source.
//!
//! Create-or-update rather than server-side apply: an apply sends the whole object as well and
//! the API server computes managed fields on every write, while the index makes an unchanged
//! copy cost no call at all (`benches/resync.rs`: 83 calls for 20,000 copies re-synced).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::{Api, PostParams};

use crate::config::{Keys, SharedConfig};
use crate::delivery::{
    DeliverFuture, Delivered, Delivery, Failure, Operation, Sink, SinkError, Writer,
};
use crate::mirror::budget::WriteBudget;
use crate::mirror::copies::{CopyIndex, Lookup};
use crate::mirror::outputs::{Counted, Output, Routed};
use crate::mirror::{copy_is_current, is_copy_of};

/// Conflicts tolerated while updating one copy before the try counts as failed.
const UPDATE_ATTEMPTS: usize = 3;

/// Writes copies through the Kubernetes API.
pub struct CopySink {
    client: kube::Client,
    config: SharedConfig,
    /// The copies already stored, as far as known.
    pub copies: Arc<CopyIndex>,
    /// Every create and update waits for room in it.
    budget: Arc<WriteBudget>,
}

type Step<T> = Result<T, Failure>;

impl CopySink {
    pub fn new(client: kube::Client, config: SharedConfig, budget: Arc<WriteBudget>) -> Self {
        CopySink {
            client,
            config,
            copies: Arc::new(CopyIndex::new()),
            budget,
        }
    }

    /// Creates `copy` or brings the stored one in line; `fingerprint` is
    /// [`crate::mirror::copies::fingerprint`] of `copy` (the planner computed it already).
    async fn upsert(&self, copy: &Event, fingerprint: u64) -> Result<Delivered, Failure> {
        let config = self.config.load_full();
        self.write(&config.keys, copy, fingerprint).await
    }

    async fn write(&self, keys: &Keys, copy: &Event, fingerprint: u64) -> Step<Delivered> {
        let ns = copy.metadata.namespace.as_deref().unwrap_or_default();
        let name = copy.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        match self.copies.lookup(&self.client, keys, ns, name).await {
            Lookup::Stored(known) => {
                if known.owner != crate::mirror::copies::owner(copy, keys) {
                    return Err(foreign(ns, name));
                }
                if known.fingerprint == fingerprint {
                    return Ok(Delivered::Unchanged);
                }
                let how = updated(known.content, copy);
                let mut wanted = copy.clone();
                wanted.metadata.resource_version = Some(known.resource_version.into());
                self.budget.take().await;
                match api.replace(name, &PostParams::default(), &wanted).await {
                    Ok(stored) => {
                        self.copies.record(&stored, keys);
                        return Ok(how);
                    }
                    // Changed or gone since it was seen: read it.
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                        self.copies.forget(ns, name);
                    }
                    Err(e) => return Err(Failure::new(Operation::Update, e)),
                }
            }
            Lookup::Absent | Lookup::Unknown => {
                self.budget.take().await;
                match api.create(&PostParams::default(), copy).await {
                    Ok(stored) => {
                        self.copies.record(&stored, keys);
                        return Ok(Delivered::Created);
                    }
                    // Written meanwhile (another replica, or before the listing): update it.
                    Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {}
                    Err(e) => return Err(Failure::new(Operation::Create, e)),
                }
            }
        }
        self.read_and_update(&api, keys, copy).await
    }

    /// Reads the stored copy and updates it if it differs (creating it if it is gone).
    async fn read_and_update(
        &self,
        api: &Api<Event>,
        keys: &Keys,
        copy: &Event,
    ) -> Step<Delivered> {
        let ns = copy.metadata.namespace.as_deref().unwrap_or_default();
        let name = copy.metadata.name.as_deref().unwrap_or_default();
        for _ in 0..UPDATE_ATTEMPTS {
            let stored = match api.get(name).await {
                Ok(s) => s,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    // Expired meanwhile: create again.
                    self.budget.take().await;
                    let stored = api
                        .create(&PostParams::default(), copy)
                        .await
                        .map_err(|e| Failure::new(Operation::Create, e))?;
                    self.copies.record(&stored, keys);
                    return Ok(Delivered::Created);
                }
                Err(e) => return Err(Failure::new(Operation::Update, e)),
            };
            if !is_copy_of(&stored, copy, keys) {
                return Err(foreign(ns, name));
            }
            if copy_is_current(&stored, copy) {
                self.copies.record(&stored, keys);
                return Ok(Delivered::Unchanged);
            }
            let how = updated(crate::delivery::content_fingerprint(&stored), copy);
            let mut wanted = copy.clone();
            wanted.metadata.resource_version = stored.metadata.resource_version.clone();
            self.budget.take().await;
            match api.replace(name, &PostParams::default(), &wanted).await {
                Ok(stored) => {
                    self.copies.record(&stored, keys);
                    return Ok(how);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(Failure::new(Operation::Update, e)),
            }
        }
        Err(Failure::new(
            Operation::Update,
            SinkError::Status {
                code: 409,
                reason: "Conflict".into(),
                message: format!("copy {ns}/{name} kept changing while being updated"),
            },
        ))
    }
}

/// What an update of a stored copy whose event said `stored` (its content fingerprint) to
/// `wanted` is: a new occurrence, or only our labels and annotations.
fn updated(stored: u64, wanted: &Event) -> Delivered {
    if stored == crate::delivery::content_fingerprint(wanted) {
        Delivered::Relabelled
    } else {
        Delivered::Updated
    }
}

/// An event that is not our copy of this source holds the copy's name: left alone.
fn foreign(ns: &str, name: &str) -> Failure {
    Failure::new(
        Operation::Update,
        SinkError::Foreign(format!(
            "{ns}/{name} exists and is not clusterscope's copy of this source (no mirror label, or it names another source); it is left alone"
        )),
    )
}

impl Sink for CopySink {
    fn name(&self) -> &'static str {
        KUBERNETES
    }

    /// What the mirror owns it keeps in line: see [`Writer::Mirror`].
    fn writer(&self) -> Writer {
        Writer::Mirror
    }

    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> DeliverFuture<'a> {
        Box::pin(self.upsert(&delivery.event, delivery.fingerprint))
    }
}

impl Output for CopySink {
    /// One delivery per copy, keyed by the copy's namespace and name.
    fn counted(&self) -> Counted {
        Counted::AsCopies
    }

    fn plan(&self, routed: &Routed) -> Vec<Delivery> {
        routed
            .copies
            .iter()
            .map(|(destination, copy)| {
                let key = format!(
                    "{}/{}",
                    copy.metadata.namespace.as_deref().unwrap_or_default(),
                    copy.metadata.name.as_deref().unwrap_or_default()
                );
                routed.delivery(key, copy.clone(), vec![destination.clone()])
            })
            .collect()
    }

    /// The copies in every channel namespace are forgotten by the index, and their keys
    /// returned (copies a delivery rule put elsewhere expire with the source).
    fn forget(&self, source: &ObjectReference) -> Vec<String> {
        let (Some(ns), Some(name)) = (source.namespace.as_deref(), source.name.as_deref()) else {
            return Vec::new();
        };
        let copy = crate::mirror::copy_name(ns, name);
        let config = self.config.load();
        config
            .channels
            .iter()
            .filter_map(|c| c.namespace.as_deref())
            .map(|channel_ns| {
                self.copies.forget(channel_ns, &copy);
                format!("{channel_ns}/{copy}")
            })
            .collect()
    }

    /// What another leader (or the time the watch was down) changed is not known: the index
    /// lists each channel namespace again when first needed.
    fn relisted(&self) {
        self.copies.reset();
    }
}

/// The name of the copy sink's lane.
pub const KUBERNETES: &str = "kubernetes";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Action;

    #[test]
    fn retry_classes_of_copy_writes() {
        let status = |code: u16| SinkError::Status {
            code,
            reason: String::new(),
            message: String::new(),
        };
        let action = |e: SinkError| Failure::new(Operation::Create, e).action(Writer::Mirror);
        for code in [403, 404, 408, 409, 429, 500, 503] {
            assert_eq!(action(status(code)), Action::Retry, "{code}");
        }
        for code in [400, 401, 410, 413, 422] {
            assert_eq!(action(status(code)), Action::GiveUp, "{code}");
        }
        assert_eq!(action(SinkError::Transport("x".into())), Action::Retry);
        assert_eq!(action(SinkError::Invalid("x".into())), Action::GiveUp);
        let foreign = foreign("team-a", "n1.abc");
        assert_eq!(
            foreign.action(Writer::Mirror),
            Action::GiveUp,
            "a foreign event stays"
        );
        assert_eq!(foreign.metric_operation(), "foreign");
    }
}
