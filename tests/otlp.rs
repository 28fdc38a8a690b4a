//! The OpenTelemetry logs export end to end: the mirror controller against the fake API server
//! (owner state, delivery rules), the OTLP sink in its lane, and a receiver built from the
//! official protocol definitions (tests/support/otlp.rs) on loopback: records attributed to the
//! namespaces each event concerns, both protocols, gzip, headers from the environment, TLS, and
//! the collector's failures.

mod support;

use std::sync::Arc;
use std::time::Duration;

use clusterscope::metrics::Metrics;
use serde_json::{Value, json};
use support::fake_apiserver::{FakeApiServer, eventually};
use support::otlp::{Answer, Receiver};

/// Node Warnings attributed to the namespaces of the node's pods without copies; volumes and
/// namespaces to their owner, with copies; everything exported to `endpoint` over `protocol`.
fn config(endpoint: &str, protocol: &str, extra: &str) -> String {
    format!(
        "channels:
  - name: nodes
    copies: false
    otlp: true
    deliver:
      nodePods: {{types: [Warning]}}
  - name: storage
    otlp: true
    deliver:
      owners: true
  - name: cluster
    otlp: true
    deliver:
      owners: true
routes:
  - channel: nodes
    match: {{kinds: [Node]}}
  - channel: storage
    match: {{kinds: [PersistentVolume, StorageClass]}}
  - channel: cluster
otlp:
  endpoint: {endpoint}
  protocol: {protocol}
  resource:
    k8s.cluster.name: test-cluster
{extra}"
    )
}

fn event(
    name: &str,
    (api_version, kind, object): (&str, &str, &str),
    type_: &str,
    count: i32,
) -> Value {
    json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "involvedObject": {"kind": kind, "name": object, "apiVersion": api_version, "uid": format!("obj-{object}")},
        "reason": "Checked", "message": format!("{kind} {object} checked"), "type": type_,
        "source": {"component": "kubelet", "host": "node1"}, "count": count,
        "firstTimestamp": "2026-12-08T10:00:00Z", "lastTimestamp": "2026-12-08T10:05:00Z"})
}

/// node1 runs pods of team-a and team-b, node2 of team-c; pv-7 is team-a's claim's.
async fn cluster() -> FakeApiServer {
    support::fake_apiserver::three_teams().await
}

/// The stored events of the scenario.
fn put_events(api: &FakeApiServer) {
    api.put(
        "default",
        event("node1.w", ("v1", "Node", "node1"), "Warning", 3),
    );
    api.put(
        "default",
        event("pv-7.w", ("v1", "PersistentVolume", "pv-7"), "Warning", 1),
    );
    api.put(
        "default",
        event("team-c.n", ("v1", "Namespace", "team-c"), "Normal", 1),
    );
    api.put(
        "default",
        event(
            "fast-ssd.w",
            ("storage.k8s.io/v1", "StorageClass", "fast-ssd"),
            "Warning",
            1,
        ),
    );
}

/// The mirror controller with the OTLP sink registered (as `serve` registers it), counting into
/// the returned metrics.
fn run(
    api: &FakeApiServer,
    yaml: &str,
) -> (support::fake_apiserver::RunningController, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let syncer = api
        .syncer(yaml)
        .with_cluster(clusterscope::owners::SharedOwnerState::default());
    let sink = clusterscope::otlp::OtlpSink::new(
        syncer.config.clone(),
        metrics.otlp.clone(),
        clusterscope::otlp::OtlpOptions {
            linger: Duration::from_millis(10),
            ..Default::default()
        },
    );
    let syncer = syncer.with_output(Arc::new(sink));
    let options = clusterscope::mirror::controller::ControllerOptions {
        workers: 2,
        retry_base: Duration::from_millis(50),
        owners_every: Duration::from_millis(200),
        ..Default::default()
    };
    let running = api.run_syncer_with(syncer, options, metrics.clone());
    (running, metrics)
}

/// The scenario's cluster with one Node Warning stored, exported to `receiver` over `protocol`.
async fn one_warning(
    receiver: &Receiver,
    protocol: &str,
) -> (
    FakeApiServer,
    support::fake_apiserver::RunningController,
    Arc<Metrics>,
) {
    let api = cluster().await;
    api.put(
        "default",
        event("node1.w", ("v1", "Node", "node1"), "Warning", 1),
    );
    let yaml = config(&format!("http://{}", receiver.addr), protocol, "");
    let (running, metrics) = run(&api, &yaml);
    (api, running, metrics)
}

fn metric(metrics: &Metrics, line_start: &str) -> f64 {
    support::fake_apiserver::metric(metrics, line_start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_the_collector_once_per_namespace_it_concerns() {
    let receiver = Receiver::grpc().await;
    let api = cluster().await;
    put_events(&api);
    let yaml = config(&format!("http://{}", receiver.addr), "grpc", "");
    let (running, metrics) = run(&api, &yaml);
    assert!(
        eventually(10, || receiver.records().len() == 5).await,
        "{:?}",
        receiver.records()
    );
    // A query for team-a or team-b finds the Node Warning; one for team-c does not.
    assert_eq!(receiver.namespaces_of("node1.w"), ["team-a", "team-b"]);
    // gRPC messages are gzip-compressed unless `compression: none`.
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| r.headers.get("grpc-encoding").is_some_and(|v| v == "gzip")),
        "{:?}",
        receiver.requests()[0].headers
    );
    assert_eq!(receiver.namespaces_of("pv-7.w"), ["team-a"]);
    assert_eq!(receiver.namespaces_of("team-c.n"), ["team-c"]);
    // Concerning no namespace: exported with the namespace it is stored in.
    assert_eq!(receiver.namespaces_of("fast-ssd.w"), ["default"]);
    let records = receiver.records();
    let node = records
        .iter()
        .find(|r| r.attr("k8s.event.name") == "node1.w")
        .unwrap();
    assert_eq!(
        (node.severity_number, node.severity_text.as_str()),
        (13, "Warning")
    );
    assert_eq!(node.body, "Node node1 checked");
    assert_eq!(node.attr("k8s.cluster.name"), "test-cluster");
    assert_eq!(node.attr("k8s.node.name"), "node1");
    assert_eq!(node.attr("k8s.object.kind"), "Node");
    assert_eq!(node.attr("k8s.object.name"), "node1");
    assert_eq!(node.attr("k8s.object.uid"), "obj-node1");
    assert_eq!(node.attr("k8s.event.reason"), "Checked");
    assert_eq!(node.attr("k8s.event.uid"), "uid-node1.w");
    assert_eq!(node.attributes["k8s.event.count"], 3);
    assert_eq!(node.attr("clusterscope.channel"), "nodes");
    assert_eq!(node.attr("clusterscope.delivery"), "node");
    assert!(
        node.attr("clusterscope.delivered_because")
            .starts_with("Node node1 runs 1 pod of namespace team-")
    );
    // lastTimestamp 2026-12-08T10:05:00Z
    assert_eq!(node.time_unix_nano, 1_796_724_300_000_000_000);
    let namespace = records
        .iter()
        .find(|r| r.attr("k8s.event.name") == "team-c.n")
        .unwrap();
    assert_eq!(
        (namespace.severity_number, namespace.severity_text.as_str()),
        (9, "Normal")
    );
    // `copies: false`: attributed, not copied; the storage channel copies as well.
    assert!(api.copies_of("team-a", "node1.w").is_empty());
    assert!(api.copies_of("team-b", "node1.w").is_empty());
    assert_eq!(api.copies_of("team-a", "pv-7.w").len(), 1);
    assert!(
        eventually(5, || metric(
            &metrics,
            "clusterscope_otlp_records_total{result=\"exported\"}"
        ) == 5.0)
        .await
    );
    // A new occurrence is a new record, with its count; one already exported is not sent again.
    api.put(
        "default",
        event("pv-7.w", ("v1", "PersistentVolume", "pv-7"), "Warning", 2),
    );
    assert!(eventually(10, || receiver.records().len() == 6).await);
    assert_eq!(receiver.records()[5].attributes["k8s.event.count"], 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.records().len(), 6);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_with_gzip_and_a_header_from_the_environment() {
    let receiver = Receiver::http().await;
    let api = cluster().await;
    put_events(&api);
    // SAFETY: set before anything in this test process reads it; no other test reads it.
    unsafe { std::env::set_var("CLUSTERSCOPE_TEST_OTLP_KEY", "Bearer s3cret") };
    let yaml = config(
        &format!("http://{}", receiver.addr),
        "http/protobuf",
        "  compression: gzip\n  headers:\n    authorization: {fromEnv: CLUSTERSCOPE_TEST_OTLP_KEY}\n",
    );
    let (running, _metrics) = run(&api, &yaml);
    assert!(eventually(10, || receiver.records().len() == 5).await);
    assert_eq!(receiver.namespaces_of("node1.w"), ["team-a", "team-b"]);
    for request in receiver.requests() {
        assert_eq!(request.headers["authorization"], "Bearer s3cret");
        assert_eq!(request.headers["content-encoding"], "gzip");
        assert_eq!(request.headers["content-type"], "application/x-protobuf");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_answer_is_counted_and_not_retried_and_a_partial_success_is_counted() {
    let receiver = Receiver::grpc().await;
    receiver.answer([Answer::Grpc(tonic::Code::InvalidArgument, None)]);
    let (api, running, metrics) = one_warning(&receiver, "grpc").await;
    assert!(
        eventually(10, || metric(
            &metrics,
            "clusterscope_otlp_exports_total{result=\"final\"}"
        ) == 1.0)
        .await
    );
    assert!(
        eventually(10, || metric(
            &metrics,
            "clusterscope_deliveries_total{sink=\"otlp\",result=\"given_up\"}"
        ) == 1.0)
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.requests().len(),
        1,
        "a final answer is not tried again"
    );
    assert_eq!(
        metric(
            &metrics,
            "clusterscope_otlp_records_total{result=\"failed\"}"
        ),
        2.0
    );
    // The next occurrence goes; the collector takes it but rejects one of its two records.
    receiver.answer([Answer::Partial(1, "attribute too long".into())]);
    api.put(
        "default",
        event("node1.w", ("v1", "Node", "node1"), "Warning", 2),
    );
    assert!(
        eventually(10, || metric(
            &metrics,
            "clusterscope_otlp_records_total{result=\"rejected\"}"
        ) == 1.0)
        .await
    );
    assert_eq!(
        metric(
            &metrics,
            "clusterscope_otlp_records_total{result=\"exported\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "clusterscope_otlp_exports_total{result=\"partial\"}"
        ),
        1.0
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_and_retry_after_waited_for() {
    let receiver = Receiver::grpc().await;
    receiver.answer([
        Answer::Grpc(tonic::Code::Unavailable, None),
        Answer::Grpc(tonic::Code::ResourceExhausted, Some(Duration::from_secs(2))),
    ]);
    let (_api, running, metrics) = one_warning(&receiver, "grpc").await;
    assert!(eventually(15, || receiver.records().len() == 2).await);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    let waited = requests[2].at - requests[1].at;
    assert!(
        waited >= Duration::from_secs(2),
        "RetryInfo's 2 s were not waited: {waited:?}"
    );
    assert_eq!(
        metric(
            &metrics,
            "clusterscope_otlp_exports_total{result=\"retry\"}"
        ),
        2.0
    );
    running.stop().await;

    // HTTP: 429 with Retry-After, then 503.
    let receiver = Receiver::http().await;
    receiver.answer([Answer::Http(429, Some(2)), Answer::Http(503, None)]);
    let (_api, running, _) = one_warning(&receiver, "http/protobuf").await;
    assert!(eventually(15, || receiver.records().len() == 2).await);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_secs(2),
        "Retry-After's 2 s were not waited: {waited:?}"
    );
    running.stop().await;
}

/// The receiver down for 15 s: nothing is lost (the lane holds what waits, and what it drops
/// while the collector fails is exported by the re-list once it answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_for_15_seconds_loses_nothing() {
    let receiver = Receiver::grpc().await;
    let (addr, state) = (receiver.addr, receiver.state.clone());
    let api = cluster().await;
    let yaml = config(&format!("http://{addr}"), "grpc", "");
    let (running, metrics) = run(&api, &yaml);
    drop(receiver);
    for i in 0..30 {
        api.put(
            "default",
            event(&format!("node1.{i}"), ("v1", "Node", "node1"), "Warning", 1),
        );
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    let receiver = Receiver::grpc_at(addr, None, state).await;
    assert!(
        eventually(30, || receiver.records().len() == 60).await,
        "{} records; {}",
        receiver.records().len(),
        metrics
            .encode()
            .lines()
            .filter(|l| l.contains("otlp") && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for i in 0..30 {
        assert_eq!(
            receiver.namespaces_of(&format!("node1.{i}")),
            ["team-a", "team-b"]
        );
    }
    running.stop().await;
}

/// TLS with a test CA: the collector's certificate issued by `otlp.tls.caFile` is trusted;
/// another CA's is refused, in words that name the setting to look at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_trusts_the_configured_ca_and_refuses_another_naming_the_setting() {
    let server = clusterscope::certs::generate(&["localhost".into()]).unwrap();
    let other = clusterscope::certs::generate(&["localhost".into()]).unwrap();
    let receiver = Receiver::grpc_at(
        "127.0.0.1:0".parse().unwrap(),
        Some((server.cert_pem.clone(), server.key_pem.clone())),
        Arc::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let export = async |ca: &str| {
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, ca).unwrap();
        let yaml = config(
            &format!("https://localhost:{}", receiver.addr.port()),
            "grpc",
            &format!("  tls:\n    caFile: {}\n", path.display()),
        );
        let settings = clusterscope::config::Config::from_yaml(&yaml, "t")
            .unwrap()
            .otlp
            .unwrap();
        let exporter = clusterscope::otlp::client::Exporter::new(&settings).unwrap();
        let batch = [clusterscope::delivery::Delivery::new(
            "default/node1.w".into(),
            serde_json::from_value(event("node1.w", ("v1", "Node", "node1"), "Warning", 1))
                .unwrap(),
            &Default::default(),
        )];
        let (request, _) = clusterscope::otlp::record::request(&batch, &settings.resource, 0);
        exporter.export(request).await
    };
    export(&server.ca_pem)
        .await
        .expect("the configured CA's certificate is trusted");
    assert_eq!(receiver.records().len(), 1);
    let refused = export(&other.ca_pem).await.unwrap_err().to_string();
    assert!(refused.contains("the TLS handshake failed"), "{refused}");
    assert!(refused.contains("otlp.tls.caFile"), "{refused}");
    assert_eq!(receiver.records().len(), 1);
}

/// What the user does: the otlp overlay's configuration as shipped (its collector and
/// CA replaced by the test's, over TLS, its header from the Secret's variable): a Node Warning
/// about a node running pods of team-a and team-b is found by k8s.namespace.name = team-a and =
/// team-b, not by team-c, and carries the credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overlays_configuration_attributes_a_node_warning_to_its_pods_namespaces() {
    let pair = clusterscope::certs::generate(&["localhost".into()]).unwrap();
    let receiver = Receiver::grpc_at(
        "127.0.0.1:0".parse().unwrap(),
        Some((pair.cert_pem.clone(), pair.key_pem.clone())),
        Arc::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &pair.ca_pem).unwrap();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/overlays/otlp/config.yaml"
    ))
    .unwrap();
    let configmap: Value = serde_saphyr::from_str(&shipped).unwrap();
    let yaml = configmap["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .replace(
            "https://otel-collector.observability.svc:4317",
            &format!("https://localhost:{}", receiver.addr.port()),
        )
        .replace("/etc/clusterscope/otlp-ca/ca.crt", ca.to_str().unwrap());
    // SAFETY: set before anything in this test process reads it; no other test reads it.
    unsafe { std::env::set_var("OTLP_AUTHORIZATION", "Bearer team-token") };
    let api = cluster().await;
    put_events(&api);
    let (running, _) = run(&api, &yaml);
    assert!(
        eventually(10, || receiver.namespaces_of("node1.w").len() == 2).await,
        "{:?}",
        receiver.records()
    );
    let records = receiver.records();
    let found_by = |ns: &str| {
        records
            .iter()
            .filter(|r| r.attr("k8s.namespace.name") == ns && r.attr("k8s.event.name") == "node1.w")
            .count()
    };
    assert_eq!(
        (found_by("team-a"), found_by("team-b"), found_by("team-c")),
        (1, 1, 0)
    );
    assert!(
        records
            .iter()
            .all(|r| r.attr("k8s.cluster.name") == "my-cluster")
    );
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| r.headers["authorization"] == "Bearer team-token")
    );
    // Node Warnings are attributed, not copied; the volume's event is copied too.
    assert!(api.copies_of("team-a", "node1.w").is_empty());
    assert!(eventually(10, || api.copies_of("team-a", "pv-7.w").len() == 1).await);
    running.stop().await;
}

/// `serve` (its own process, as deployed) restarted mid-stream: every event reaches the
/// collector, those exported before the restart are exported again (the docs' promise: what
/// was exported is known in memory only), and a repeat carries the uid and count of the record
/// it repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_serve_mid_stream_loses_nothing_and_repeats_are_recognisable() {
    let receiver = Receiver::grpc().await;
    let api = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(&format!("http://{}", receiver.addr), "grpc", "");
    let first = support::serve::serve_with(&api, dir.path(), &yaml, &[]);
    let name = |i: usize| format!("node1.{i}");
    for i in 0..10 {
        api.put(
            "default",
            event(&name(i), ("v1", "Node", "node1"), "Warning", 1),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        eventually(30, || receiver.namespaces_of(&name(0)).len() == 2).await,
        "serve exported nothing"
    );
    tokio::task::spawn_blocking(move || support::serve::stop(first))
        .await
        .unwrap();
    // Written while no serve runs.
    for i in 10..20 {
        api.put(
            "default",
            event(&name(i), ("v1", "Node", "node1"), "Warning", 1),
        );
    }
    let second = support::serve::serve_with(&api, dir.path(), &yaml, &[]);
    let all_there = || {
        (0..20).all(|i| {
            let ns = receiver.namespaces_of(&name(i));
            ns.contains(&"team-a".to_owned()) && ns.contains(&"team-b".to_owned())
        })
    };
    let arrived = eventually(30, all_there).await;
    tokio::task::spawn_blocking(move || support::serve::stop(second))
        .await
        .unwrap();
    assert!(
        arrived,
        "{:?}",
        receiver
            .records()
            .iter()
            .map(|r| r.attr("k8s.event.name").to_owned())
            .collect::<Vec<_>>()
    );
    // Exported before the restart and again after it: the same uid and count.
    assert!(
        receiver.namespaces_of(&name(0)).len() >= 4,
        "{:?}",
        receiver.namespaces_of(&name(0))
    );
    for r in receiver.records() {
        assert_eq!(r.attributes["k8s.event.count"], 1);
        assert_eq!(
            r.attr("k8s.event.uid"),
            format!("uid-{}", r.attr("k8s.event.name"))
        );
    }
}

/// A CA file that cannot be read fails the export with words naming the setting and the
/// file, finally (nothing passes until the configuration or the file changes).
#[tokio::test]
async fn an_unreadable_ca_file_is_named_and_final() {
    use clusterscope::delivery::Sink;
    let yaml = config(
        "https://localhost:4317",
        "grpc",
        "  tls:\n    caFile: /nonexistent/otlp-ca.crt\n",
    );
    let config =
        clusterscope::config::shared(clusterscope::config::Config::from_yaml(&yaml, "t").unwrap());
    let metrics = Metrics::new();
    let sink = clusterscope::otlp::OtlpSink::new(config, metrics.otlp.clone(), Default::default());
    sink.prepare();
    let batch = [clusterscope::delivery::Delivery::new(
        "default/node1.w".into(),
        serde_json::from_value(event("node1.w", ("v1", "Node", "node1"), "Warning", 1)).unwrap(),
        &Default::default(),
    )];
    let answer = sink.deliver_batch(&batch).await;
    let failure = answer[0].as_ref().unwrap_err();
    assert!(
        failure
            .to_string()
            .contains("otlp.tls.caFile /nonexistent/otlp-ca.crt: cannot read"),
        "{failure}"
    );
    assert_eq!(
        failure.action(clusterscope::delivery::Writer::Collector),
        clusterscope::delivery::Action::GiveUp
    );
}
