//! API discovery feeds the scope resolver: every kind the cluster serves, built-in, custom
//! or aggregated, with its real scope. Refreshed periodically and when the webhook meets a
//! kind nobody knows (rate-limited); without a cluster the built-in table alone is used.

use std::sync::Arc;
use std::time::Duration;

use kube::discovery::{Discovery, Scope as KubeScope};
use tokio::sync::mpsc;

use crate::classify::{Scope, ScopeResolver};
use crate::metrics::ByResult;

/// Runs discovery once and teaches `resolver` what it found; returns how many kinds.
pub async fn refresh(
    client: &kube::Client,
    resolver: &ScopeResolver,
) -> Result<usize, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut kinds = Vec::new();
    for group in discovery.groups() {
        for (resource, caps) in group.resources_by_stability() {
            let scope = match caps.scope {
                KubeScope::Cluster => Scope::Cluster,
                KubeScope::Namespaced => Scope::Namespaced,
            };
            kinds.push((resource.group.clone(), resource.kind.clone(), scope));
        }
    }
    let n = kinds.len();
    resolver.learn(kinds);
    Ok(n)
}

/// Asks for a refresh (an unknown kind was seen); never blocks; pokes coalesce.
#[derive(Debug, Clone)]
pub struct Trigger(mpsc::Sender<()>);

impl Trigger {
    pub fn poke(&self) {
        let _ = self.0.try_send(());
    }
}

/// A trigger and the receiver [`run`] listens on.
pub fn trigger() -> (Trigger, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel(1);
    (Trigger(tx), rx)
}

/// Discovery settings.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// Periodic refresh.
    pub interval: Duration,
    /// Least time between two refreshes triggered by unknown kinds.
    pub min_gap: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            interval: Duration::from_secs(600),
            min_gap: Duration::from_secs(30),
        }
    }
}

/// Refreshes every `interval`, and on [`Trigger`] pokes at most every `min_gap` (pokes in
/// between are folded into one refresh), until `stop` is cancelled.
pub async fn run(
    client: kube::Client,
    resolver: Arc<ScopeResolver>,
    refreshes: ByResult,
    mut pokes: mpsc::Receiver<()>,
    options: DiscoveryOptions,
    stop: tokio_util::sync::CancellationToken,
) {
    let shutdown = stop.cancelled();
    tokio::pin!(shutdown);
    loop {
        let result = refresh(&client, &resolver).await;
        let last = tokio::time::Instant::now();
        let label = match &result {
            Ok(n) => {
                tracing::info!(
                    kinds = n,
                    "discovery: scopes of the cluster's kinds refreshed"
                );
                "success"
            }
            Err(e) => {
                tracing::warn!(error = %crate::errors::Chain(&e), "discovery failed; the built-in kind table stays in use");
                "error"
            }
        };
        refreshes.count(label);
        // A failed refresh is tried again sooner than the periodic one.
        let next = if result.is_ok() {
            options.interval
        } else {
            options.min_gap.min(options.interval)
        };
        let periodic = tokio::time::sleep(next);
        tokio::pin!(periodic);
        tokio::select! {
            () = &mut shutdown => return,
            () = &mut periodic => {}
            Some(()) = pokes.recv() => {
                // Rate limit: no sooner than `min_gap` after the last refresh.
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep_until(last + options.min_gap) => {}
                }
                while pokes.try_recv().is_ok() {}
            }
        }
    }
}
