//! Leader election over a Lease on the fake API server.

mod support;

use support::fake_apiserver;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    let renewed = std::time::Instant::now();
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
    // b saw a's renewal on its next try at the earliest, and waited a whole lease from there.
    assert!(
        renewed.elapsed() >= Duration::from_secs(1),
        "b took over {:?} after a's last renewal, within the 1 s lease",
        renewed.elapsed()
    );
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
        let stop = CancellationToken::new();
        stops.push(stop.clone());
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
                    lost.cancelled().await;
                    leaders.fetch_sub(1, Ordering::SeqCst);
                }
            },
            |_| {},
            stop,
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
    lease_asks(&api, 10).await;
    assert_eq!(max_seen.load(Ordering::SeqCst), 1, "two leaders at once");
    let holder =
        api.store.lock().unwrap().leases.values().next().unwrap()["spec"]["holderIdentity"]
            .as_str()
            .unwrap()
            .to_owned();
    // Stop the leader: it releases the lease and the other replica takes over.
    let idx = if holder == "a" { 0 } else { 1 };
    stops.remove(idx).cancel();
    tasks.remove(idx).await.unwrap();
    assert!(wait_for(1).await, "nobody took over");
    let new_holder =
        api.store.lock().unwrap().leases.values().next().unwrap()["spec"]["holderIdentity"].clone();
    assert_ne!(new_holder, holder.as_str());
    stops.remove(0).cancel();
    tasks.remove(0).await.unwrap();
}

/// Waits until the replicas have asked the API server about the lease `n` more times: each
/// has had its chances to take it (wrongly, where a check follows).
async fn lease_asks(api: &FakeApiServer, n: usize) {
    let asked = || {
        let s = api.store.lock().unwrap();
        s.calls.iter().filter(|c| c.2 == "leases").count()
    };
    let from = asked();
    assert!(
        fake_apiserver::eventually(10, || asked() >= from + n).await,
        "the replicas stopped asking for the lease"
    );
}

/// Leadership changes of one replica, with the time each was seen.
type Changes = Arc<std::sync::Mutex<Vec<(bool, std::time::Instant)>>>;

fn run_replica(
    api: &FakeApiServer,
    identity: &str,
    options: LeaseOptions,
) -> (Changes, CancellationToken) {
    let lock = LeaseLock::new(api.client_with_token(identity), options);
    let changes: Changes = Arc::default();
    let seen = changes.clone();
    let stop = CancellationToken::new();
    tokio::spawn(run_while_leader(
        lock,
        |lost: CancellationToken| async move {
            lost.cancelled().await;
        },
        move |leading| {
            seen.lock()
                .unwrap()
                .push((leading, std::time::Instant::now()))
        },
        stop.clone(),
    ));
    (changes, stop)
}

fn first(changes: &Changes, leading: bool) -> Option<std::time::Instant> {
    changes
        .lock()
        .unwrap()
        .iter()
        .find(|(l, _)| *l == leading)
        .map(|(_, t)| *t)
}

/// The leader's path to the API server stalls (calls hang, no error). It must stop leading
/// within its renew deadline, before the other replica may take the lease over.
#[tokio::test]
async fn a_stalled_leader_steps_down_before_anyone_takes_over() {
    let api = FakeApiServer::start(&[]).await;
    let opts = |id: &str| LeaseOptions {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(100),
        ..LeaseOptions::new("clusterscope-system", id)
    };
    let (a, _stop_a) = run_replica(&api, "a", opts("a"));
    for _ in 0..100 {
        if first(&a, true).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(first(&a, true).is_some(), "a never led");
    let (b, _stop_b) = run_replica(&api, "b", opts("b"));
    lease_asks(&api, 6).await;
    assert!(first(&b, true).is_none(), "b took a held lease");

    api.store.lock().unwrap().stalled_token = Some("a".into());
    let stalled = std::time::Instant::now();
    for _ in 0..300 {
        if first(&a, false).is_some() && first(&b, true).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let down = first(&a, false).expect("a never stepped down while stalled");
    let up = first(&b, true).expect("b never took over");
    assert!(down < up, "b led before a stopped");
    // Within the renew deadline (1 s) plus one retry period and scheduling slack; never
    // as late as the lease duration (2 s).
    assert!(
        down.duration_since(stalled) < Duration::from_millis(1_900),
        "a stepped down {:?} after the stall",
        down.duration_since(stalled)
    );
}

/// Expiry is judged by the local clock from when the record last changed, not by the
/// holder's `renewTime`: a dead holder whose clock ran an hour ahead is still taken over after
/// one lease duration.
#[tokio::test]
async fn expiry_does_not_trust_the_holders_clock() {
    let api = FakeApiServer::start(&[]).await;
    let ahead = k8s_openapi::jiff::Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(1))
        .unwrap();
    api.store.lock().unwrap().leases.insert(
        ("clusterscope-system".into(), "clusterscope-mirror".into()),
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "clusterscope-mirror", "namespace": "clusterscope-system", "resourceVersion": "1"},
            "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 1,
                     "renewTime": ahead.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                     "leaseTransitions": 2147483647}
        }),
    );
    let b = LeaseLock::new(api.client(), options("b"));
    let start = std::time::Instant::now();
    let mut took = false;
    while start.elapsed() < Duration::from_secs(5) {
        if b.try_acquire_or_renew().await.unwrap() {
            took = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(took, "b trusted the holder's clock and never took over");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "took over before the lease duration"
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
    // The transition count saturates instead of overflowing.
    assert_eq!(lease["spec"]["leaseTransitions"], 2147483647);
}
