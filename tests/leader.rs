//! Leader election over a Lease on the fake API server.

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clusterscope::leader::{LeaseLock, LeaseOptions, run_while_leader};
use fake_apiserver::FakeApiServer;

fn options(identity: &str) -> LeaseOptions {
    LeaseOptions {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(700),
        retry_period: Duration::from_millis(50),
        ..LeaseOptions::new("clusterscope-system", identity)
    }
}

#[tokio::test]
async fn one_holder_at_a_time_and_takeover_after_expiry() {
    let api = FakeApiServer::start(&[]).await;
    let a = LeaseLock::new(api.client(), options("a"));
    let b = LeaseLock::new(api.client(), options("b"));
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "b took a lease a holds"
    );
    assert!(a.try_acquire_or_renew().await.unwrap(), "a could not renew");
    // a stops renewing: b waits out the lease duration, then takes over.
    let mut took = false;
    for _ in 0..100 {
        if b.try_acquire_or_renew().await.unwrap() {
            took = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(took, "b never took over the expired lease");
    assert!(
        !a.try_acquire_or_renew().await.unwrap(),
        "a still thinks it leads"
    );
    let lease = api
        .store
        .lock()
        .unwrap()
        .leases
        .values()
        .next()
        .cloned()
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn the_leader_runs_the_work_and_hands_over_on_shutdown() {
    let api = FakeApiServer::start(&[]).await;
    let leaders = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for id in ["a", "b"] {
        let lock = LeaseLock::new(api.client(), options(id));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        let leaders = leaders.clone();
        let max_seen = max_seen.clone();
        tasks.push(tokio::spawn(run_while_leader(
            lock,
            move |lost| {
                let leaders = leaders.clone();
                let max_seen = max_seen.clone();
                async move {
                    let n = leaders.fetch_add(1, Ordering::SeqCst) + 1;
                    max_seen.fetch_max(n, Ordering::SeqCst);
                    let _ = lost.await;
                    leaders.fetch_sub(1, Ordering::SeqCst);
                }
            },
            |_| {},
            async {
                let _ = rx.await;
            },
        )));
    }
    let wait_for = |n: usize| {
        let leaders = leaders.clone();
        async move {
            for _ in 0..200 {
                if leaders.load(Ordering::SeqCst) == n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    assert!(wait_for(1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(max_seen.load(Ordering::SeqCst), 1, "two leaders at once");
    let holder =
        api.store.lock().unwrap().leases.values().next().unwrap()["spec"]["holderIdentity"]
            .as_str()
            .unwrap()
            .to_owned();
    // Stop the leader: it releases the lease and the other replica takes over.
    let idx = if holder == "a" { 0 } else { 1 };
    let _ = stops.remove(idx).send(());
    tasks.remove(idx).await.unwrap();
    assert!(wait_for(1).await, "nobody took over");
    let new_holder =
        api.store.lock().unwrap().leases.values().next().unwrap()["spec"]["holderIdentity"].clone();
    assert_ne!(new_holder, holder.as_str());
    let _ = stops.remove(0).send(());
    tasks.remove(0).await.unwrap();
}
