//! `clusterscope serve` as its own process, recording history into a PostgreSQL set up exactly
//! as the README says (role and database `clusterscope`, the URL and the password given as the
//! Deployment gives them: CLUSTERSCOPE_POSTGRES_URL and CLUSTERSCOPE_POSTGRES_PASSWORD), its
//! cluster the in-process fake API server. What a pod's life does to it: stopped and started
//! three times (over TLS with verify-full), killed with SIGKILL while events are written, two
//! replicas started at once on a database an earlier build left broken. Each ends with every
//! event the API server holds as exactly one row.

mod support;

use support::events::node_event_on;
use support::{fake_apiserver, postgres, serve};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use postgres::{Postgres, Setup, previous_layout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = "channels:\n  - name: nodes\n    namespace: team-infra\n    history: true\nroutes:\n  - channel: nodes\n    match: {kinds: [Node]}\n";
const NAMESPACES: &[&str] = &[
    "default",
    "kube-system",
    "team-infra",
    "clusterscope-system",
];

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One `serve` process; SIGKILLed when dropped if still running.
struct Serve {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Serve {
    /// Starts replica `name` with the database `url` and the README role's password in the
    /// environment, as the Deployment's Secret gives them; its log (stderr) in `dir/NAME.log`.
    fn start(api: &FakeApiServer, dir: &Path, pg: &Postgres, url: &str, name: &str) -> Serve {
        let admin = free_port();
        let log = dir.join(format!("{name}.log"));
        let child = serve::serve_command(
            api,
            dir,
            CONFIG,
            (free_port(), admin),
            &[format!("--pod-name={name}")],
        )
        .env("CLUSTERSCOPE_POSTGRES_URL", url)
        .env("CLUSTERSCOPE_POSTGRES_PASSWORD", &pg.password)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
        Serve { child, admin, log }
    }

    async fn readyz(&self) -> String {
        let Ok(mut s) = tokio::net::TcpStream::connect(self.admin).await else {
            return String::new();
        };
        let _ = s
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await;
        let mut body = Vec::new();
        let _ = s.read_to_end(&mut body).await;
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Waits until `/readyz` says history is recording (the schema is migrated).
    async fn recording(&self) {
        let end = Instant::now() + Duration::from_secs(30);
        let mut said = String::new();
        while Instant::now() < end {
            said = self.readyz().await;
            if said.contains("history: recording into PostgreSQL") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("serve never recorded: {said}\nlog:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as Kubernetes stops a pod, and the wait for its exit.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "serve exited with {status}:\n{}",
            self.log()
        );
        self.log()
    }

    /// SIGKILL, as a crash or an OOM kill ends it.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events the API server holds in `default`: uid → count.
fn held(api: &FakeApiServer) -> BTreeMap<String, i64> {
    api.events_in("default")
        .iter()
        .map(|e| {
            (
                e["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
                e["count"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

/// The rows: uid → count.
fn rows(pg: &Postgres) -> BTreeMap<String, i64> {
    pg.psql(
        "clusterscope",
        "SELECT uid || ' ' || count FROM clusterscope.events ORDER BY uid",
    )
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(uid, count)| (uid.to_owned(), count.parse().unwrap_or(-1)))
    .collect()
}

/// Waits until every event the API server holds is exactly one row at its count.
async fn recorded(api: &FakeApiServer, pg: &Postgres, what: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (want, got) = (held(api), rows(pg));
        let missing: Vec<_> = want
            .iter()
            .filter(|(u, c)| got.get(*u) != Some(c))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "{what}: {} of {} events not recorded at their count, e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The schemas that hold a table named `_sqlx_migrations`.
fn bookkeeping(pg: &Postgres) -> String {
    pg.psql(
        "clusterscope",
        "SELECT string_agg(n.nspname, ',' ORDER BY n.nspname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = '_sqlx_migrations'",
    )
}

/// Stop and start three times, over TLS as the README's Secret URL says (verify-full with the
/// CA file): every start records, the schema is migrated once, rows follow their counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_started_three_times_it_keeps_recording() {
    let bundle = clusterscope::certs::generate(&["localhost".to_owned()]).unwrap();
    let Some(pg) = Postgres::start_as(Setup {
        tls: Some((bundle.cert_pem, bundle.key_pem)),
        ..Setup::default()
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("postgres-ca.crt");
    std::fs::write(&ca, &bundle.ca_pem).unwrap();
    let url = format!(
        "postgres://clusterscope@localhost:{}/clusterscope?sslmode=verify-full&sslrootcert={}",
        pg.port,
        ca.display()
    );
    let api = FakeApiServer::start(NAMESPACES).await;
    for start in 0..3 {
        // New events, and a count bump of one written before.
        for i in start * 100..(start + 1) * 100 {
            api.put("default", node_event_on(i % 50, i, 1));
        }
        if start > 0 {
            api.put(
                "default",
                node_event_on((start * 7) % 50, start * 7, 1 + start as i64),
            );
        }
        let serve = Serve::start(&api, dir.path(), &pg, &url, "clusterscope-0");
        serve.recording().await;
        recorded(&api, &pg, &format!("start {}", start + 1)).await;
        let log = serve.stop();
        assert!(
            !log.contains("cannot prepare the PostgreSQL schema"),
            "start {}: {log}",
            start + 1
        );
    }
    assert_eq!(rows(&pg).len(), 300);
    assert_eq!(bookkeeping(&pg), "clusterscope");
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM clusterscope._sqlx_migrations"
        ),
        "1,2"
    );
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = 'clusterscope' AND NOT s.ssl"
        ),
        "0",
        "no connection without TLS"
    );
}

/// SIGKILL while events are written (and counts bumped), more written and some expired while it
/// is down, then a new start: every event the API server still holds is exactly one row at its
/// latest count, and no row exists that was never an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_and_started_again_every_held_event_is_one_row() {
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApiServer::start(NAMESPACES).await;
    let serve = Serve::start(&api, dir.path(), &pg, &pg.url(), "clusterscope-0");
    serve.recording().await;
    // 1,500 events at about 1,000/s, every fifth bumping an earlier one; the kill comes after
    // 500 and the rest is written while nothing runs, with ten events expired meanwhile.
    let mut serve = Some(serve);
    for n in 0..1500usize {
        if n % 5 == 4 {
            api.put(
                "default",
                node_event_on((n - 4) % 50, n - 4, 2 + (n % 3) as i64),
            );
        } else {
            api.put("default", node_event_on(n % 50, n, 1));
        }
        if n == 500 {
            let log = serve.take().map(Serve::kill).unwrap_or_default();
            assert!(!log.contains("panicked"), "{log}");
        }
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let before_restart = rows(&pg).len();
    for i in (600..700).step_by(10) {
        api.expire("default", &format!("node{}.{i:016x}", i % 50));
    }
    let serve = Serve::start(&api, dir.path(), &pg, &pg.url(), "clusterscope-0");
    serve.recording().await;
    recorded(&api, &pg, "after the restart").await;
    let got = rows(&pg);
    let ever: Vec<String> = (0..1500).map(|i| format!("ev-{i}")).collect();
    assert!(
        got.keys().all(|uid| ever.contains(uid)),
        "a row that was never an event"
    );
    assert!(
        before_restart < held(&api).len(),
        "the kill came before everything was recorded ({before_restart} rows)"
    );
    let log = serve.stop();
    assert!(!log.contains("cannot prepare"), "{log}");
}

/// Two replicas started at the same moment on the README's database as an earlier build left
/// it after its second start (records in `public`, an empty table in the schema): both come up
/// recording, the repair is done and said once, events are recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_started_at_once_on_a_database_an_earlier_build_broke() {
    let Some(pg) = Postgres::start() else { return };
    previous_layout::start(&pg, "clusterscope", &pg.password, "clusterscope", 2).unwrap();
    let second = previous_layout::start(&pg, "clusterscope", &pg.password, "clusterscope", 2);
    assert!(second.is_err(), "the earlier build's second start fails");
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApiServer::start(NAMESPACES).await;
    for i in 0..200 {
        api.put("default", node_event_on(i % 50, i, 1));
    }
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let a = Serve::start(&api, &a_dir, &pg, &pg.url(), "clusterscope-a");
    let b = Serve::start(&api, &b_dir, &pg, &pg.url(), "clusterscope-b");
    a.recording().await;
    b.recording().await;
    recorded(&api, &pg, "two replicas").await;
    let logs = [a.stop(), b.stop()];
    let repaired = logs
        .iter()
        .filter(|l| l.contains("repaired the schema's bookkeeping"))
        .count();
    assert_eq!(repaired, 1, "{logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains("public._sqlx_migrations")),
        "the line names the table: {logs:#?}"
    );
    assert_eq!(bookkeeping(&pg), "clusterscope");
    assert_eq!(rows(&pg).len(), 200);
}
