//! Leader election with a coordination.k8s.io/v1 Lease, as client-go's `leaderelection`:
//! the holder renews the lease every `retry_period`; another replica takes it over only after
//! `lease_duration` without seeing the lease change (measured on its own clock from when it
//! saw the last change, never by comparing the holder's `renewTime` with local time: clocks
//! differ); updates carry the resourceVersion read, so two replicas can never both win the
//! same round. Every API call is bounded: a leader that cannot renew within `renew_deadline`
//! stops leading, which is before anyone else may take over (`renew_deadline` <
//! `lease_duration`). Mirroring is idempotent, so a short overlap during a handover costs a
//! few redundant writes, never a duplicate.
//!
//! Why not a crate. kubert's `LeaseManager` and kube-lease-manager were read side by side
//! with this file; adopting either would change what was checked on a real API server:
//!
//! - **Expiry without trusting clocks.** Both judge a claim by the holder's `renewTime` plus
//!   the duration against the local wall clock (kubert's `Claim::is_current`; kube-lease-manager
//!   with a configurable skew allowance). Here a lease is taken over only after
//!   `lease_duration` of this replica's monotonic clock without seeing the record change, as
//!   client-go does, so a node whose clock runs ahead cannot steal a live lease.
//! - **Stepping down before anyone may step up.** The holder stops leading (the mirror and
//!   subscription controllers are cancelled) once `renew_deadline` passes without a renewal,
//!   every API call bounded by it; the others wait `lease_duration` > `renew_deadline`.
//!   kubert publishes the claim on a watch channel and leaves stopping to the caller.
//! - **The Lease is created when missing** (kubert's `init` answers 404 and needs it made
//!   beforehand); with the RBAC of `manifests/` nothing else has to exist.
//! - **Leadership is said**: the `clusterscope_mirror_leader` gauge, LeaderElected/LeaderLost
//!   events about the Lease, the `/readyz` line (`cluster::leadership_said`).
//!
//! Shared with both: updates carry the resourceVersion read (kubert and kube-lease-manager
//! through server-side apply), and the lease is given up on shutdown ([`LeaseLock::release`])
//! so another replica takes over at once. Not taken over: kubert's lease diagnostics on its
//! admin server; `/readyz` says who mirrors.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::{CancellationToken, DropGuard};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// Lease settings; the defaults are client-go's usual ones.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// This replica (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseOptions {
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaseOptions {
            namespace: namespace.to_owned(),
            name: "clusterscope-mirror".to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One replica's view of the lease.
pub struct LeaseLock {
    api: Api<Lease>,
    options: LeaseOptions,
    /// The lease record as last seen and the local time it was first seen so.
    observed: Mutex<Option<(Observed, Instant)>>,
}

/// What identifies a version of the lease record (as client-go compares the raw record).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: String,
    renew_time: Option<String>,
    transitions: i32,
}

/// Whole seconds, rounded up and at least 1: a Lease counts in seconds.
fn secs(d: Duration) -> i32 {
    let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(whole.max(1)).unwrap_or(i32::MAX)
}

impl LeaseLock {
    pub fn new(client: kube::Client, options: LeaseOptions) -> Self {
        LeaseLock {
            api: Api::namespaced(client, &options.namespace),
            options,
            observed: Mutex::new(None),
        }
    }

    /// Notes the record as seen now; returns how long ago (local clock) it last changed.
    fn observe(&self, record: Observed) -> Duration {
        let now = Instant::now();
        let mut guard = crate::locks::lock(&self.observed);
        match guard.as_ref() {
            Some((seen, at)) if *seen == record => now.saturating_duration_since(*at),
            _ => {
                *guard = Some((record, now));
                Duration::ZERO
            }
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.options.identity.clone()),
            lease_duration_seconds: Some(secs(self.options.lease_duration)),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the lease; true while this replica holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = match self.api.get_opt(&self.options.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.options.name.clone()),
                        namespace: Some(self.options.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, None, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.options.identity;
        let duration = spec
            .lease_duration_seconds
            .map_or(self.options.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        let unchanged_for = self.observe(Observed {
            holder: holder.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            transitions: spec.lease_transitions.unwrap_or(0),
        });
        // Released (no holder or no renewTime), or not renewed for a whole lease duration as
        // this replica's own clock counts.
        let expired = spec.renew_time.is_none() || unchanged_for > duration;
        if !ours && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let transitions = spec
            .lease_transitions
            .unwrap_or(0)
            .max(0)
            .saturating_add(i32::from(!ours));
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut lease = current;
        lease.spec = Some(self.spec(now, acquired, transitions));
        match self
            .api
            .replace(&self.options.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Somebody else wrote it first this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on shutdown) so another replica takes over at once; bounded by the
    /// renew deadline (an unreachable API server only means the others wait for expiry).
    pub async fn release(&self) {
        let _ = tokio::time::timeout(self.options.renew_deadline, self.release_now()).await;
    }

    async fn release_now(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.options.name).await {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(self.options.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                let _ = self
                    .api
                    .replace(&self.options.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

/// Runs `lead` while this replica holds the lease, until `shutdown` is cancelled. `lead` gets a
/// token (a child of `shutdown`) cancelled when leadership is lost; `on_change` is told every
/// change of leadership.
pub async fn run_while_leader<L, F>(
    lock: LeaseLock,
    lead: L,
    on_change: impl Fn(bool) + Send,
    shutdown: CancellationToken,
) where
    L: Fn(CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    // The leader's token is cancelled when leadership is lost, at shutdown, and when this
    // future is dropped (its guard goes with it): the work never outlives the election.
    let mut leading: Option<(DropGuard, tokio::task::JoinHandle<()>)> = None;
    let deadline = lock.options.renew_deadline;
    let mut last_renewed = Instant::now();
    loop {
        // A leader may wait only what is left of its renew deadline; a candidate a whole one.
        let budget = if leading.is_some() {
            deadline.saturating_sub(last_renewed.elapsed())
        } else {
            deadline
        };
        let attempt = tokio::time::timeout(budget, lock.try_acquire_or_renew()).await;
        let held = match attempt {
            Ok(Ok(held)) => {
                if held {
                    last_renewed = Instant::now();
                }
                held
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::errors::Chain(&e), "leader election: cannot reach the lease");
                // Keep leading until the renew deadline passes without a renewal.
                leading.is_some() && last_renewed.elapsed() < deadline
            }
            Err(_) => {
                tracing::warn!(
                    waited = %humantime::format_duration(budget),
                    "leader election: the API server did not answer in time"
                );
                leading.is_some() && last_renewed.elapsed() < deadline
            }
        };
        match (held, leading.is_some()) {
            (true, false) => {
                tracing::info!(identity = %lock.options.identity, "leader election: this replica now mirrors");
                on_change(true);
                let lost = shutdown.child_token();
                leading = Some((lost.clone().drop_guard(), tokio::spawn(lead(lost))));
            }
            (false, true) => {
                tracing::warn!(identity = %lock.options.identity, "leader election: lease lost; mirroring stops here");
                on_change(false);
                if let Some((lost, task)) = leading.take() {
                    drop(lost);
                    let _ = task.await;
                }
            }
            _ => {}
        }
        // A leader never sleeps past its renew deadline.
        let pause = if leading.is_some() {
            lock.options
                .retry_period
                .min(deadline.saturating_sub(last_renewed.elapsed()))
        } else {
            lock.options.retry_period
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    if let Some((lost, task)) = leading.take() {
        drop(lost);
        let _ = task.await;
        on_change(false);
        lock.release().await;
    }
}
