//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir, `postgres` on a free
//! loopback port, stopped by PID when the guard drops. Debian's PostgreSQL 15 (`.ci/run`
//! installs it); without it a test skips with a printed notice, unless
//! CLUSTERSCOPE_REQUIRE_POSTGRES is set (CI), where it fails.
//!
//! Set up as the README says, literally: the README's SQL (its "Setting up the database"
//! block) is run as the superuser, so clusterscope connects as the non-superuser role
//! `clusterscope`, owner of database `clusterscope`, with a password (scram-sha-256 over TCP;
//! only the superuser `postgres`, which the tests use to look, is trusted).
//!
//! PostgreSQL refuses to run as root: as root the server runs as the `postgres` user (or
//! `nobody`), which owns the temp dir.

use super::tools;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    user: Option<(u32, u32)>,
    child: Option<Child>,
    /// fsync and full-page writes on (benchmarks); off for tests.
    durable: bool,
    /// TLS on, with this certificate and key (PEM).
    tls: Option<(String, String)>,
    /// The password the README's setup gave the role `clusterscope`.
    pub password: String,
}

/// How to start a server.
#[derive(Default)]
pub struct Setup {
    /// fsync and full-page writes on, as a production server runs (benchmarks).
    pub durable: bool,
    /// `ssl=on` with this certificate chain and key (PEM).
    pub tls: Option<(String, String)>,
    /// Run the README's setup (role and database `clusterscope`): true but for tests that
    /// set up a database another way.
    pub skip_readme_setup: bool,
}

/// The documentation of the history (`docs/history.md`, linked from the README).
pub const HISTORY_DOC: &str = "docs/history.md";

/// The SQL block under `heading` of the history documentation (its first ```sql block after
/// it), as users copy it.
pub fn readme_sql(heading: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(HISTORY_DOC))
        .expect(HISTORY_DOC);
    let after = readme
        .split_once(heading)
        .unwrap_or_else(|| panic!("{HISTORY_DOC} has no {heading:?}"))
        .1;
    let block = after
        .split_once("```sql\n")
        .expect("a ```sql block after the heading")
        .1;
    block
        .split_once("```")
        .expect("the block ends")
        .0
        .to_owned()
}

/// The heading of the README's setup.
pub const README_SETUP: &str = "### Setting up the database";
/// The password the README's setup shows, replaced by each test's own.
pub const README_PASSWORD: &str = "'choose-a-password'";

fn bin_dir() -> Option<PathBuf> {
    if let Some(initdb) = tools::on_path("initdb") {
        // /usr/local/bin may hold links to the server's own bin dir, which has the client
        // tools (pg_isready, psql) too.
        let real = std::fs::canonicalize(initdb).ok()?;
        return real.parent().map(Path::to_path_buf);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn id_of(user: &str) -> Option<(u32, u32)> {
    let out = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, user]).output().ok()?;
        String::from_utf8(o.stdout).ok()?.trim().parse().ok()
    };
    Some((out("-u")?, out("-g")?))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A number no other test run picks (for passwords).
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// A running server, or None (with a notice on stderr) when PostgreSQL is not installed
    /// and not required.
    pub fn start() -> Option<Postgres> {
        Self::start_with(false)
    }

    /// A server that syncs its writes to disk as a production one does (`durable`), or not.
    pub fn start_with(durable: bool) -> Option<Postgres> {
        Self::start_as(Setup {
            durable,
            ..Setup::default()
        })
    }

    /// A server as `setup` says.
    pub fn start_as(setup: Setup) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            tools::missing(
                "CLUSTERSCOPE_REQUIRE_POSTGRES",
                "PostgreSQL (initdb, postgres) is not installed: apt-get install postgresql",
                "this test is",
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let user = if is_root() {
            Some(
                id_of("postgres")
                    .or_else(|| id_of("nobody"))
                    .expect("a user to run PostgreSQL as"),
            )
        } else {
            None
        };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut pg = Postgres {
            dir,
            bin,
            port: free_port(),
            user,
            child: None,
            durable: setup.durable,
            tls: setup.tls,
            password: format!("pw-{:x}", fastrand_u64()),
        };
        let status = pg
            .command("initdb")
            .args(["-D"])
            .arg(pg.data())
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        pg.write_server_files();
        pg.resume();
        if !setup.skip_readme_setup {
            let sql = readme_sql(README_SETUP);
            assert!(
                sql.contains(README_PASSWORD),
                "the README's setup sets a password"
            );
            let sql = sql.replace(README_PASSWORD, &format!("'{}'", pg.password));
            pg.psql_script("postgres", &sql);
        }
        Some(pg)
    }

    /// Only the superuser is trusted (the tests' own look); every other role logs in with its
    /// password. The TLS pair, when there is one, readable by the server alone.
    fn write_server_files(&self) {
        std::fs::write(
            self.data().join("pg_hba.conf"),
            "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        if let Some((cert, key)) = &self.tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = self.data().join(name);
                std::fs::write(&path, pem).unwrap();
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .unwrap();
                if let Some((uid, gid)) = self.user {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
                }
            }
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c.current_dir(self.dir.path());
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The README's URL: `postgres://clusterscope@127.0.0.1:PORT/clusterscope` (the password
    /// apart, as `--postgres-password` / CLUSTERSCOPE_POSTGRES_PASSWORD gives it).
    pub fn url(&self) -> String {
        self.url_for("clusterscope", "clusterscope")
    }

    /// `postgres://USER@127.0.0.1:PORT/DB`.
    pub fn url_for(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// The store options of the README's setup: its URL and the role's password.
    pub fn options(&self) -> clusterscope::history::StoreOptions {
        self.options_for(&self.url())
    }

    /// The store options for `url`, with the README role's password.
    pub fn options_for(&self, url: &str) -> clusterscope::history::StoreOptions {
        clusterscope::history::StoreOptions {
            password: Some(self.password.clone()),
            ..clusterscope::history::StoreOptions::new(url)
        }
    }

    /// Starts the server (again, after [`Self::stop`]) and waits until it accepts queries.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "max_connections=200"])
            .args(if self.tls.is_some() {
                ["-c", "ssl=on"]
            } else {
                ["-c", "ssl=off"]
            })
            .args(if self.durable {
                ["-c", "fsync=on", "-c", "full_page_writes=on"]
            } else {
                ["-c", "fsync=off", "-c", "full_page_writes=off"]
            })
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: open connections are cut), waiting for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs SQL with psql as the superuser, returning its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_as("postgres", db, sql);
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Runs SQL with psql as `user` (logging in with `password`, for a role that has one);
    /// the whole output, for a test to judge.
    pub fn psql_as(&self, user: &str, db: &str, sql: &str) -> std::process::Output {
        self.psql_command(user, db)
            .args(["-c", sql])
            .output()
            .unwrap()
    }

    /// As [`Self::psql_as`], logging in with `password`.
    pub fn psql_with_password(
        &self,
        user: &str,
        password: &str,
        db: &str,
        sql: &str,
    ) -> std::process::Output {
        self.psql_command(user, db)
            .env("PGPASSWORD", password)
            .args(["-c", sql])
            .output()
            .unwrap()
    }

    /// Runs a script as the superuser, statement by statement as psql runs a file (so that
    /// `CREATE DATABASE` may be among them), stopping at the first error.
    pub fn psql_script(&self, db: &str, sql: &str) {
        let script = self.dir.path().join("script.sql");
        std::fs::write(&script, sql).unwrap();
        let out = self
            .psql_command("postgres", db)
            .arg("-f")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn psql_command(&self, user: &str, db: &str) -> Command {
        let psql = if self.bin.join("psql").is_file() {
            self.bin.join("psql")
        } else {
            Path::new("psql").to_path_buf()
        };
        let mut c = Command::new(psql);
        c.env("PGTZ", "UTC")
            .env_remove("PGPASSWORD")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-w"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user])
            .args(["-d", db]);
        c
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What builds before the explicit schema did at each start of `serve`, replayed as psql
/// statements: sqlx 0.8's migrator, connected as the README's role with the role's own
/// `search_path`, created an unqualified `_sqlx_migrations` (which lands in the first schema of
/// `"$user", public` that exists) and applied each version it did not find there, with its
/// record, in one transaction. The first start on the README's database leaves its records in
/// `public`; the second finds none (`"$user"` is now the schema `clusterscope`) and fails.
pub mod previous_layout {
    use super::Postgres;

    /// sqlx 0.8's bookkeeping table, unqualified as it created it.
    const TABLE: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
        version BIGINT PRIMARY KEY, description TEXT NOT NULL,
        installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL,
        checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)";

    /// One start of an earlier build, migrating up to `up_to` as `user` on `db`: Ok, or the
    /// error PostgreSQL gave.
    pub fn start(
        pg: &Postgres,
        user: &str,
        password: &str,
        db: &str,
        up_to: i64,
    ) -> Result<(), String> {
        let run = |sql: &str| {
            let out = pg.psql_with_password(user, password, db, sql);
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            }
        };
        let applied = run(&format!(
            "{TABLE}; SELECT coalesce(string_agg(version::text, ','), '') FROM _sqlx_migrations"
        ))?;
        let applied: Vec<i64> = applied
            .lines()
            .last()
            .unwrap_or_default()
            .split(',')
            .filter_map(|v| v.parse().ok())
            .collect();
        for (version, description, file) in clusterscope::history::schema::MIGRATIONS {
            if *version > up_to || applied.contains(version) {
                continue;
            }
            let checksum = clusterscope::history::schema::migrations(*version)
                .pop()
                .map(|m| {
                    m.checksum
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                })
                .unwrap_or_default();
            run(&format!(
                "BEGIN; {file}; INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES ({version}, '{description}', TRUE, '\\x{checksum}', -1); COMMIT;"
            ))?;
        }
        Ok(())
    }
}
