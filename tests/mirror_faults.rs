//! The mirror path under faults (scaled down in time): an API server outage, a 429 storm, and
//! the leader killed mid-work. Nothing is lost and nothing is duplicated.

mod support;

use support::events::node_event;

use support::fake_apiserver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterscope::leader::{LeaseLock, run_while_leader};
use clusterscope::metrics::Metrics;
use clusterscope::mirror::controller::{self, ControllerOptions};
use clusterscope::mirror::sync::Syncer;
use fake_apiserver::FakeApiServer;

const CONFIG: &str =
    "channels:\n  - name: nodes\n    namespace: team-infra\nroutes:\n  - channel: nodes\n";

fn syncer(api: &FakeApiServer) -> Syncer {
    api.syncer(CONFIG)
}

fn options() -> ControllerOptions {
    ControllerOptions {
        workers: 4,
        retry_base: Duration::from_millis(50),
        ..ControllerOptions::default()
    }
}

/// Exactly one copy per source, each naming its own source.
fn exactly_one_copy_each(api: &FakeApiServer, n: usize) -> bool {
    let copies = api.events_in("team-infra");
    let mut sources: Vec<String> = copies
        .iter()
        .filter_map(|c| {
            c["metadata"]["annotations"]["clusterscope.dev/source-name"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    sources.sort();
    sources.dedup();
    copies.len() == n && sources.len() == n
}

use fake_apiserver::eventually;

#[tokio::test]
async fn an_api_server_outage_loses_nothing() {
    let api = FakeApiServer::start(&["default", "team-infra"]).await;
    let running = api.run_controller(CONFIG, options().retry_base);
    for i in 0..10 {
        api.put("default", node_event(i, 1));
    }
    assert!(eventually(20, || exactly_one_copy_each(&api, 10)).await);
    // The API server goes away for 3 s; events keep being stored meanwhile (another apiserver).
    api.store.lock().unwrap().down_until = Some(Instant::now() + Duration::from_secs(3));
    api.drop_watches();
    for i in 10..30 {
        api.put("default", node_event(i, 1));
    }
    assert!(
        eventually(40, || exactly_one_copy_each(&api, 30)).await,
        "{} copies after the outage",
        api.events_in("team-infra").len()
    );
    running.stop().await;
}

#[tokio::test]
async fn a_429_storm_loses_nothing() {
    let api = FakeApiServer::start(&["default", "team-infra"]).await;
    let running = api.run_controller(CONFIG, options().retry_base);
    // Writes are throttled: 24 creates answered 429 (no Retry-After). kube's client retries a
    // 429 itself (up to 15 times from 5 ms, doubling, holding the worker; it honours a
    // Retry-After); past that the controller's per-event backoff takes over.
    api.inject_for("create", 429, "TooManyRequests", 24);
    for i in 0..40 {
        api.put("default", node_event(i, 1));
    }
    let done = eventually(120, || exactly_one_copy_each(&api, 40)).await;
    let (left, creates) = {
        let s = api.store.lock().unwrap();
        (
            s.faults.len(),
            s.calls.iter().filter(|c| c.0 == "create").count(),
        )
    };
    assert!(
        done,
        "{} copies; {left} faults left after {creates} creates",
        api.events_in("team-infra").len()
    );
    assert!(
        api.store.lock().unwrap().faults.is_empty(),
        "the storm was not even felt"
    );
    running.stop().await;
}

/// Writes rejected as API Priority and Fairness rejects them (429, `Retry-After: 1`) wait what
/// the API server asked before they are tried again, rather than the controller's 50 ms retry,
/// and are never counted as failed tries: the copy arrives, no error, nothing given up.
#[tokio::test]
async fn apf_rejections_are_waited_out() {
    let api = FakeApiServer::start(&["default", "team-infra"]).await;
    let running = api.run_controller(CONFIG, options().retry_base);
    api.throttle("create", 1, 3);
    let stored = Instant::now();
    api.put("default", node_event(1, 1));
    assert!(eventually(20, || exactly_one_copy_each(&api, 1)).await);
    let waited = stored.elapsed();
    assert!(
        waited >= Duration::from_millis(2_900),
        "three 1 s Retry-Afters took {waited:?}"
    );
    assert!(api.store.lock().unwrap().faults.is_empty());
    assert_eq!(
        running.metric(r#"clusterscope_deliveries_total{sink="kubernetes",result="error"}"#),
        0.0,
        "a paced write counted as failed"
    );
    assert_eq!(
        running.metric(r#"clusterscope_mirror_given_up_total{channel="nodes"}"#),
        0.0
    );
    running.stop().await;
}

/// The write budget holds: copies past it wait (none is lost), no second sees many more
/// creates than the budget, and when copies wait, Warnings go first even when they came last.
#[tokio::test]
async fn the_write_budget_paces_copies_warnings_first() {
    let api = FakeApiServer::start(&["default", "team-infra"]).await;
    // Stored before the start, Normal ones first (the order they are listed in).
    for i in 0..60 {
        let mut ev = node_event(i, 1);
        ev["metadata"]["name"] = format!("n{i:03}.x").into();
        ev["type"] = if i < 30 { "Normal" } else { "Warning" }.into();
        api.put("default", ev);
    }
    let started = Instant::now();
    let running = api.run_controller_with(
        CONFIG,
        ControllerOptions {
            max_writes_per_second: 20,
            ..options()
        },
    );
    assert!(eventually(30, || exactly_one_copy_each(&api, 60)).await);
    let took = started.elapsed();
    // 60 creates at 20 a second (one at once): about 3 s.
    assert!(
        took >= Duration::from_millis(2_500),
        "60 copies in {took:?}"
    );
    let created: Vec<(Instant, bool)> = {
        let s = api.store.lock().unwrap();
        s.created_at
            .iter()
            .filter(|((ns, _), _)| ns == "team-infra")
            .map(|((_, name), at)| {
                (
                    *at,
                    s.events[&("team-infra".to_owned(), name.clone())]["type"] == "Warning",
                )
            })
            .collect()
    };
    let mut times: Vec<Instant> = created.iter().map(|(t, _)| *t).collect();
    times.sort();
    let busiest = times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && u.duration_since(*t) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        busiest <= 24,
        "{busiest} creates within one second, budget 20"
    );
    let last_warning = created
        .iter()
        .filter(|(_, w)| *w)
        .map(|(t, _)| *t)
        .max()
        .unwrap();
    let normals_before = created
        .iter()
        .filter(|(t, w)| !*w && *t < last_warning)
        .count();
    assert!(
        normals_before <= 15,
        "{normals_before} of 30 Normal copies were written before the last Warning one"
    );
    assert_eq!(running.metric("clusterscope_write_budget_per_second"), 20.0);
    assert_eq!(running.metric("clusterscope_budgeted_writes_total"), 60.0);
    running.stop().await;
}

/// The copy sink's queue fills up (every create fails, so every key it holds waits for a
/// retry) and refuses further deliveries; the controller offers them again later. Once the
/// API server takes writes again, every source has exactly one copy: what the full queue
/// refused was recovered, nothing was doubled.
#[tokio::test]
async fn a_full_delivery_queue_loses_nothing() {
    let api = FakeApiServer::start(&["default", "team-infra"]).await;
    let running = api.run_controller_with(
        CONFIG,
        ControllerOptions {
            workers: 2,
            retry_base: Duration::from_millis(50),
            queue_capacity: 4,
            // Hardly any patience for room: refusals come at once.
            full_wait: Duration::from_millis(20),
            full_retry: Duration::from_millis(100),
            ..ControllerOptions::default()
        },
    );
    // Three failures for each key the queue can hold, retried by the pipeline within half a
    // second. (500, not 503: kube's client retries 503 and 429 itself, holding the worker.)
    api.inject_for("create", 500, "InternalError", 12);
    // Labelled as the webhook would have: no label patch echoes back as a second chance, so
    // only the controller's offering again can recover what the full queue refused.
    for i in 0..20 {
        let mut ev = node_event(i, 1);
        ev["metadata"]["labels"] = serde_json::json!({"clusterscope.dev/scope": "cluster",
            "clusterscope.dev/kind": "Node", "clusterscope.dev/channel": "nodes"});
        ev["metadata"]["annotations"] =
            serde_json::json!({"clusterscope.dev/involved-object": format!("core/Node/node{i}")});
        api.put("default", ev);
    }
    let full = r#"clusterscope_delivery_queue_full_total{sink="kubernetes"}"#;
    assert!(
        eventually(20, || running.seen(full) >= 1.0).await,
        "the queue never filled: {}",
        running.metrics.encode()
    );
    assert!(
        eventually(60, || exactly_one_copy_each(&api, 20)).await,
        "{} copies; {} faults left",
        api.events_in("team-infra").len(),
        api.store.lock().unwrap().faults.len()
    );
    let text = running.metrics.encode();
    // Every failure was the pipeline's to retry, and no copy was written twice.
    assert!(
        running.metric(r#"clusterscope_deliveries_total{sink="kubernetes",result="error"}"#)
            >= 12.0,
        "{text}"
    );
    assert!(
        running.metric(r#"clusterscope_deliveries_total{sink="kubernetes",result="create"}"#)
            <= 20.0,
        "{text}"
    );
    assert_eq!(
        running.metric(r#"clusterscope_mirror_given_up_total{channel="nodes"}"#),
        0.0,
        "{text}"
    );
    running.stop().await;
}

#[tokio::test]
async fn the_leader_killed_mid_work_is_replaced_and_nothing_is_lost_or_doubled() {
    let api = FakeApiServer::start(&["default", "team-infra", "clusterscope-system"]).await;
    let replica = |id: &str| {
        let lock = LeaseLock::new(api.client(), fake_apiserver::short_lease(id));
        let syncer = syncer(&api);
        tokio::spawn(run_while_leader(
            lock,
            move |lost: tokio_util::sync::CancellationToken| {
                controller::run(
                    syncer.clone(),
                    Arc::new(Metrics::new()),
                    options(),
                    Arc::default(),
                    lost,
                )
            },
            |_| {},
            tokio_util::sync::CancellationToken::new(),
        ))
    };
    let a = replica("a");
    assert!(eventually(10, || !api.store.lock().unwrap().leases.is_empty()).await);
    let b = replica("b");
    for i in 0..50 {
        api.put("default", node_event(i, 1));
    }
    // Kill whichever leads while it is mirroring: no release, no goodbye.
    let holder =
        api.store.lock().unwrap().leases.values().next().unwrap()["spec"]["holderIdentity"].clone();
    let (dead, survivor) = if holder == "a" { (a, b) } else { (b, a) };
    assert!(eventually(10, || !api.events_in("team-infra").is_empty()).await);
    dead.abort();
    for i in 50..80 {
        api.put("default", node_event(i, 1));
    }
    assert!(
        eventually(40, || exactly_one_copy_each(&api, 80)).await,
        "{} copies",
        api.events_in("team-infra").len()
    );
    let new_holder =
        api.store.lock().unwrap().leases.values().next().unwrap()["spec"]["holderIdentity"].clone();
    assert_ne!(new_holder, holder, "the survivor never took over");
    survivor.abort();
}
