//! The server under hostile load, as anyone who can reach port 8443 could make it: bodies
//! that would exhaust memory, request data that would explode metric series, and one address
//! opening connection after connection.

mod support;

use support::{fake_apiserver, fixtures};

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn tls_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// `clusterscope serve` as its own process; stopped (SIGTERM, then waited for) when dropped.
struct Serve {
    child: std::process::Child,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Starts `serve`: (the process, webhook address, admin address, CA).
fn serve(dir: &std::path::Path, extra: &[&str]) -> (Serve, String, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_clusterscope"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--cluster",
            "off",
            "--log-format",
            "json",
        ])
        .args(extra)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Serve { child };
    let stderr = child.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve did not start");
        let entry: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if entry["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("serving admission reviews")
        {
            let ca = std::fs::read_to_string(dir.join("certs/ca.crt")).unwrap();
            return (
                child,
                entry["listen"].as_str().unwrap().to_owned(),
                entry["admin"].as_str().unwrap().to_owned(),
                ca,
            );
        }
    }
}

fn kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One HTTP/1.1 POST of `body` to /mutate; the status.
async fn post(addr: String, config: Arc<rustls::ClientConfig>, body: Arc<Vec<u8>>) -> u16 {
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let mut tls = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /mutate?timeout=30s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (503) before taking the whole body: stop writing then.
    let _ = tls.write_all(&body).await;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Nine concurrent 7 MiB bodies, three times over: without a byte budget that is some
/// 130 MB of buffers against a 64 MiB pod limit. With it, the server stays far below the
/// limit and sheds what does not fit with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_seven_mib_bodies_at_once_stay_under_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, admin, ca) = serve(dir.path(), &["--max-body-memory", "16MiB"]);
    let pid = child.child.id();
    let mut review: Value = serde_json::from_slice(
        &std::fs::read(fixtures::fixtures_dir().join("kubelet-node-not-ready.json")).unwrap(),
    )
    .unwrap();
    review["request"]["object"]["message"] = "m".repeat(7 * 1024 * 1024 - 4096).into();
    let body = Arc::new(serde_json::to_vec(&review).unwrap());
    assert!(body.len() <= 7 * 1024 * 1024);
    let config = tls_config(&ca);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let rounds: Vec<_> = (0..9)
            .map(|_| tokio::spawn(post(addr.clone(), config.clone(), body.clone())))
            .map(|h| async { h.await.unwrap() })
            .collect();
        statuses.extend(futures::future::join_all(rounds).await);
    }
    let peak_kib = kib(pid, "VmHWM:");
    let metrics = reqwest_free_get(&admin, "/metrics").await;
    drop(child);
    eprintln!("statuses {statuses:?}; serve peak RSS {peak_kib} kB");
    // Served, shed (503), or, on a starved machine, cut at the request's timeout (408): each
    // a clean answer on which the API server fails open.
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 503 | 408)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "nothing was served: {statuses:?}");
    assert!(statuses.contains(&503), "nothing was shed: {statuses:?}");
    // Every 503 was the memory budget's, none the in-flight limit's (9 is far below it).
    let shed = statuses.iter().filter(|s| **s == 503).count() as f64;
    assert_eq!(
        fake_apiserver::series(
            &metrics,
            r#"clusterscope_admission_shed_requests_total{why="memory"}"#
        ),
        shed,
        "{metrics}"
    );
    assert_eq!(
        fake_apiserver::series(
            &metrics,
            r#"clusterscope_admission_shed_requests_total{why="in-flight"}"#
        ),
        0.0
    );
    assert!(
        peak_kib < 64 * 1024,
        "serve peaked at {peak_kib} kB, over the 64 MiB pod limit"
    );
}

async fn reqwest_free_get(addr: &str, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

/// 10,000 requests whose operation and reason are random (reasons up to 20 KB): the metric
/// series stay a fixed, small set, and no label value is long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_request_data_does_not_grow_metric_series() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, admin, ca) = serve(dir.path(), &[]);
    let pid = child.child.id();
    let template: Value = serde_json::from_slice(
        &std::fs::read(fixtures::fixtures_dir().join("kubelet-node-not-ready.json")).unwrap(),
    )
    .unwrap();
    let config = tls_config(&ca);
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let (addr, config, template) = (addr.clone(), config.clone(), template.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(&addr).await.unwrap();
            let tls = TlsConnector::from(config)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut rng = fastrand::Rng::with_seed(worker);
            for i in 0..1_250u64 {
                let mut review = template.clone();
                let op = if i % 2 == 0 {
                    "CREATE".to_owned()
                } else {
                    (0..rng.usize(1..40)).map(|_| rng.alphanumeric()).collect()
                };
                review["request"]["operation"] = op.into();
                let reason: String = (0..rng.usize(1..20_000))
                    .map(|_| rng.alphanumeric())
                    .collect();
                review["request"]["object"]["reason"] = reason.into();
                let req = hyper::Request::post("https://localhost/mutate")
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        serde_json::to_vec(&review).unwrap(),
                    )))
                    .unwrap();
                send.ready().await.unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let metrics = reqwest_free_get(&admin, "/metrics").await;
    let peak_kib = kib(pid, "VmHWM:");
    drop(child);
    eprintln!("serve peak RSS {peak_kib} kB");
    let requests: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("clusterscope_admission_requests_total{"))
        .collect();
    for line in &requests {
        let op = line
            .split("operation=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        assert!(
            matches!(
                op,
                Some("CREATE" | "UPDATE" | "DELETE" | "CONNECT" | "unknown" | "other")
            ),
            "{line}"
        );
    }
    // Fixed label sets: six operations by six outcomes at most, however random the input
    // (the CREATE and UPDATE series exist from the start, at zero).
    for line in &requests {
        let outcome = line
            .split("outcome=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        assert!(
            matches!(
                outcome,
                Some("patched" | "unchanged" | "skipped" | "unlabelled" | "invalid" | "error")
            ),
            "{line}"
        );
    }
    assert!(requests.len() <= 36, "{requests:?}");
    let counted = requests.iter().filter(|l| !l.ends_with(" 0")).count();
    assert!(counted <= 6, "{requests:?}");
    let reasons: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("clusterscope_events_by_reason_total{"))
        .collect();
    assert!(reasons.len() <= 129, "{} reason series", reasons.len());
    assert!(reasons.iter().all(|l| l.len() < 300), "a long reason label");
    assert!(peak_kib < 64 * 1024, "serve peaked at {peak_kib} kB");
}

/// One address may hold at most --max-connections-per-peer connections; the others are
/// closed at once and counted, and a freed slot is usable again.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, addr, admin, ca) = serve(dir.path(), &["--max-connections-per-peer", "3"]);
    let config = tls_config(&ca);
    let connect = || async {
        let tcp = TcpStream::connect(&addr).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            TlsConnector::from(config.clone())
                .connect(ServerName::try_from("localhost").unwrap(), tcp),
        )
        .await
        .expect("no answer")
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            connect()
                .await
                .expect("a connection under the cap was refused"),
        );
    }
    for _ in 0..2 {
        assert!(connect().await.is_err(), "a fourth connection was served");
    }
    let metrics = reqwest_free_get(&admin, "/metrics").await;
    assert!(
        metrics.contains("clusterscope_connections_rejected_by_peer_total 2"),
        "{metrics}"
    );
    held.pop();
    // The server has seen it close: two connections open.
    let mut open = f64::NAN;
    for _ in 0..250 {
        let metrics = reqwest_free_get(&admin, "/metrics").await;
        open = fake_apiserver::series(&metrics, "clusterscope_connections_open ");
        if open == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open, 2.0, "the closed connection is still counted open");
    assert!(connect().await.is_ok(), "a freed slot was not reusable");
}
