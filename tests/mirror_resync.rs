//! Re-syncing by listing: a restart, leader change or re-list reads the copies already stored
//! with one paginated LIST per channel namespace and writes only what is missing or differs;
//! an update is one PUT. A stale view (a copy changed or deleted behind the mirror's back)
//! still ends with exactly one current copy.

mod support;

use support::events::node_event;

use support::fake_apiserver;

use std::time::Duration;

use fake_apiserver::FakeApiServer;
use serde_json::Value;

const CONFIG: &str =
    "channels:\n  - name: nodes\n    namespace: team-infra\nroutes:\n  - channel: nodes\n";

fn start(api: &FakeApiServer) -> fake_apiserver::RunningController {
    api.run_controller(CONFIG, Duration::from_millis(20))
}

/// Calls in `ns` by verb since the call log was last cleared.
fn calls(api: &FakeApiServer, verb: &str, ns: &str) -> usize {
    api.store
        .lock()
        .unwrap()
        .calls
        .iter()
        .filter(|(v, _, _, n)| v == verb && n == ns)
        .count()
}

fn copy_of(api: &FakeApiServer, i: usize) -> Option<Value> {
    api.events_in("team-infra").into_iter().find(|c| {
        c["metadata"]["annotations"]["clusterscope.dev/source-name"]
            == format!("node{i}.{i:016x}").as_str()
    })
}

/// Stores `n` labelled sources and lets a first controller copy them all.
async fn copied(n: usize) -> FakeApiServer {
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra"]).await;
    for i in 0..n {
        api.put("default", node_event(i, 1));
    }
    let first = start(&api);
    assert!(
        fake_apiserver::eventually(30, || api.events_in("team-infra").len() == n).await,
        "first run copied {} of {n}",
        api.events_in("team-infra").len()
    );
    api.quiet().await;
    first.stop().await;
    api.store.lock().unwrap().calls.clear();
    api
}

#[tokio::test]
async fn a_restart_lists_the_copies_in_pages_and_writes_nothing() {
    // 1,200 copies: three pages of 500.
    let api = copied(1_200).await;
    let again = start(&api);
    api.quiet().await;
    again.stop().await;
    assert_eq!(calls(&api, "list", "team-infra"), 3, "one paginated LIST");
    for verb in ["create", "get", "update", "patch"] {
        assert_eq!(calls(&api, verb, "team-infra"), 0, "{verb} in team-infra");
        assert_eq!(calls(&api, verb, "default"), 0, "{verb} in default");
    }
    assert_eq!(api.events_in("team-infra").len(), 1_200);
}

#[tokio::test]
async fn a_restart_writes_only_what_changed_while_it_was_down() {
    let api = copied(20).await;
    // While no controller ran: a count bump, a new source, a copy deleted, a copy edited.
    let mut bumped = api.event("default", &format!("node1.{:016x}", 1)).unwrap();
    bumped["count"] = 7.into();
    api.put("default", bumped);
    api.put("default", node_event(20, 1));
    let gone = copy_of(&api, 2).unwrap();
    api.expire("team-infra", gone["metadata"]["name"].as_str().unwrap());
    let mut edited = copy_of(&api, 3).unwrap();
    edited["message"] = "edited by hand".into();
    api.put("team-infra", edited);
    api.store.lock().unwrap().calls.clear();

    let again = start(&api);
    api.quiet().await;
    again.stop().await;
    assert_eq!(calls(&api, "list", "team-infra"), 1);
    // Copies of node1 and node3 updated, node2's and node20's created: one call each.
    assert_eq!(calls(&api, "update", "team-infra"), 2);
    assert_eq!(calls(&api, "create", "team-infra"), 2);
    assert_eq!(calls(&api, "get", "team-infra"), 0);
    assert_eq!(copy_of(&api, 1).unwrap()["count"], 7);
    assert_eq!(
        copy_of(&api, 3).unwrap()["message"],
        "Node node3 status is now: NodeNotReady"
    );
    assert!(copy_of(&api, 2).is_some() && copy_of(&api, 20).is_some());
    assert_eq!(api.events_in("team-infra").len(), 21);
}

#[tokio::test]
async fn live_updates_are_one_put_and_a_stale_view_still_converges() {
    let api = copied(3).await;
    let running = start(&api);
    api.quiet().await;
    api.store.lock().unwrap().calls.clear();
    // A count bump while running: one PUT, no read.
    let mut bumped = api.event("default", &format!("node0.{:016x}", 0)).unwrap();
    bumped["count"] = 2.into();
    api.put("default", bumped.clone());
    assert!(
        fake_apiserver::eventually(10, || copy_of(&api, 0).is_some_and(|c| c["count"] == 2)).await
    );
    api.quiet().await;
    assert_eq!(calls(&api, "update", "team-infra"), 1);
    assert_eq!(calls(&api, "get", "team-infra"), 0);

    // Someone else changes the copy (its resourceVersion moves on), then the source changes:
    // the PUT with the remembered version conflicts, the copy is read and updated.
    let mut edited = copy_of(&api, 0).unwrap();
    edited["message"] = "edited by hand".into();
    api.put("team-infra", edited);
    // And another copy disappears behind our back: its update finds it gone and creates it.
    let gone = copy_of(&api, 1).unwrap();
    api.expire("team-infra", gone["metadata"]["name"].as_str().unwrap());
    bumped["count"] = 3.into();
    api.put("default", bumped);
    let mut other = api.event("default", &format!("node1.{:016x}", 1)).unwrap();
    other["count"] = 9.into();
    api.put("default", other);
    assert!(
        fake_apiserver::eventually(10, || {
            copy_of(&api, 0).is_some_and(|c| {
                c["count"] == 3 && c["message"] == "Node node0 status is now: NodeNotReady"
            }) && copy_of(&api, 1).is_some_and(|c| c["count"] == 9)
        })
        .await,
        "copies: {:?}",
        api.events_in("team-infra")
    );
    running.stop().await;
    assert_eq!(api.events_in("team-infra").len(), 3);
}

/// As the webhook left it: labelled, so the mirror's own label patch does not make a new state.
fn labelled(mut ev: Value) -> Value {
    let node = ev["involvedObject"]["name"].as_str().unwrap().to_owned();
    ev["metadata"]["labels"] = serde_json::json!({"clusterscope.dev/scope": "cluster",
        "clusterscope.dev/kind": "Node", "clusterscope.dev/channel": "nodes"});
    ev["metadata"]["annotations"] =
        serde_json::json!({"clusterscope.dev/involved-object": format!("core/Node/{node}")});
    ev
}

/// A copy the API server refuses for good (422: the source's annotations push it past the
/// 256 KiB limit) is given up at once: counted, logged, and never tried again.
#[tokio::test]
async fn a_refused_copy_is_given_up_and_not_retried() {
    let api = FakeApiServer::start(&[
        "default",
        "kube-system",
        "team-infra",
        "clusterscope-system",
    ])
    .await;
    let mut big = labelled(node_event(1, 1));
    big["metadata"]["annotations"]["note"] = "x".repeat(256 * 1024 - 60).into();
    api.put("default", big);
    api.put("default", labelled(node_event(2, 1)));
    let running = start(&api);
    assert!(
        fake_apiserver::eventually(10, || running
            .seen(r#"clusterscope_mirror_given_up_total{channel="nodes"}"#)
            == 1.0)
        .await,
        "{}",
        running.metrics.encode()
    );
    assert!(fake_apiserver::eventually(10, || copy_of(&api, 2).is_some()).await);
    api.quiet().await;
    let creates = calls(&api, "create", "team-infra");
    api.quiet().await;
    assert_eq!(calls(&api, "create", "team-infra"), creates, "retried");
    // Two creates: the refused one (once) and node2's.
    assert_eq!(creates, 2);
    // clusterscope says so in an event about its own pod (where its Role lets it write).
    let source = format!("default/node1.{:016x}", 1);
    let told = api
        .events_in("clusterscope-system")
        .into_iter()
        .find(|e| e["reason"] == "DeliveryGivenUp")
        .expect("an event of clusterscope's own about the given-up copy");
    assert_eq!(told["type"], "Warning");
    assert_eq!(told["involvedObject"]["kind"], "Pod");
    assert_eq!(told["involvedObject"]["uid"], "pod-uid-0");
    assert_eq!(told["source"]["component"], "clusterscope");
    let message = told["message"].as_str().unwrap();
    assert!(
        message.contains(&source)
            && message.contains("kubernetes")
            && message.contains("channel nodes")
            && message.contains("422"),
        "{message}"
    );
    running.stop().await;
}

/// A copy that keeps failing with a retryable error (the channel namespace is missing) stops
/// being retried once its source expires: the key is forgotten.
#[tokio::test]
async fn an_expired_source_is_forgotten() {
    let api = FakeApiServer::start(&["default", "kube-system"]).await;
    api.put("default", labelled(node_event(1, 1)));
    let running = start(&api);
    assert!(fake_apiserver::eventually(10, || calls(&api, "create", "team-infra") >= 2).await);
    api.expire("default", &format!("node1.{:016x}", 1));
    // Let any retry already scheduled run out (backoff from 20 ms: at most a few hundred ms).
    api.quiet().await;
    let tried = calls(&api, "create", "team-infra");
    api.quiet().await;
    assert_eq!(
        calls(&api, "create", "team-infra"),
        tried,
        "still retrying an expired source"
    );
    running.stop().await;
}

/// An event that is not clusterscope's copy holds the copy's name: it is left as it is,
/// reported once, and not retried.
#[tokio::test]
async fn a_foreign_event_at_the_copys_name_is_left_alone() {
    let api = FakeApiServer::start(&["default", "kube-system", "team-infra"]).await;
    api.put("default", labelled(node_event(1, 1)));
    let copy_name = clusterscope::mirror::copy_name("default", &format!("node1.{:016x}", 1));
    let mut squatter = node_event(9, 1);
    squatter["metadata"]["name"] = copy_name.clone().into();
    squatter["involvedObject"]["namespace"] = "team-infra".into();
    squatter["message"] = "not yours".into();
    api.put("team-infra", squatter);
    let running = start(&api);
    assert!(
        fake_apiserver::eventually(10, || running
            .seen(r#"clusterscope_mirror_given_up_total{channel="nodes"}"#)
            == 1.0)
        .await
    );
    api.quiet().await;
    assert_eq!(calls(&api, "update", "team-infra"), 0, "overwritten");
    let stored = api.event("team-infra", &copy_name).unwrap();
    assert_eq!(stored["message"], "not yours");
    assert!(
        running.metrics.encode().contains(
            r#"clusterscope_mirror_writes_total{channel="nodes",operation="foreign",result="error"} 1"#
        ),
        "{}",
        running.metrics.encode()
    );
    running.stop().await;
}
