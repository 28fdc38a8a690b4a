//! TLS to PostgreSQL as the README documents it: a server with `ssl=on` and a certificate for
//! `localhost` from a test CA. `sslmode=verify-full` with `sslrootcert` connects (encrypted);
//! a wrong CA or a host the certificate does not name is refused, and the error names the
//! setting to look at; `verify-ca` checks the CA only, `require` only encrypts.

mod support;

use support::postgres;

use clusterscope::history::{Store, StoreOptions};
use postgres::{Postgres, Setup};

struct Tls {
    pg: Postgres,
    dir: tempfile::TempDir,
}

impl Tls {
    fn start() -> Option<Tls> {
        let bundle = clusterscope::certs::generate(&["localhost".to_owned()]).unwrap();
        let other = clusterscope::certs::generate(&["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &bundle.ca_pem).unwrap();
        std::fs::write(dir.path().join("other-ca.crt"), &other.ca_pem).unwrap();
        let pg = Postgres::start_as(Setup {
            tls: Some((bundle.cert_pem, bundle.key_pem)),
            ..Setup::default()
        })?;
        Some(Tls { pg, dir })
    }

    /// The store for `host` with `query` (sslmode, sslrootcert as a file in the temp dir).
    fn store(&self, host: &str, mode: &str, ca: &str) -> Store {
        let url = format!(
            "postgres://clusterscope@{host}:{}/clusterscope?sslmode={mode}&sslrootcert={}",
            self.pg.port,
            self.dir.path().join(ca).display()
        );
        Store::connect_lazy(&StoreOptions {
            acquire_timeout: std::time::Duration::from_secs(5),
            ..self.pg.options_for(&url)
        })
        .unwrap()
    }
}

async fn encrypted(store: &Store) -> bool {
    sqlx::query_scalar(
        "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()",
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn verify_full_with_the_servers_ca_connects_encrypted() {
    let Some(tls) = Tls::start() else { return };
    let store = tls.store("localhost", "verify-full", "ca.crt");
    store.migrate().await.unwrap();
    assert!(encrypted(&store).await);
    // verify-ca does not check the name: an IP address the certificate does not hold is fine.
    let store = tls.store("127.0.0.1", "verify-ca", "ca.crt");
    store.migrate().await.unwrap();
    assert!(encrypted(&store).await);
    // require encrypts without checking anything.
    let store = tls.store("127.0.0.1", "require", "other-ca.crt");
    store.migrate().await.unwrap();
    assert!(encrypted(&store).await);
}

#[tokio::test]
async fn a_wrong_ca_is_refused_naming_sslrootcert() {
    let Some(tls) = Tls::start() else { return };
    let err = tls
        .store("localhost", "verify-full", "other-ca.crt")
        .migrate()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not signed by a CA in sslrootcert") && err.contains("other-ca.crt"),
        "{err}"
    );
}

#[tokio::test]
async fn a_host_the_certificate_does_not_name_is_refused_naming_verify_full() {
    let Some(tls) = Tls::start() else { return };
    let err = tls
        .store("127.0.0.1", "verify-full", "ca.crt")
        .migrate()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not name the host the URL connects to")
            && err.contains("host 127.0.0.1 with sslmode=verify-full"),
        "{err}"
    );
}
