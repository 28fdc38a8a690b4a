//! The history database: a pool of connections (TLS with rustls when the URL asks for it),
//! the batched upsert, and retention. The schema and its migrations are [`super::schema`]'s
//! (which adds [`Store::migrate`]).

use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use time::OffsetDateTime;

use super::Row;
use crate::delivery::Delivered;

/// How to reach the database.
#[derive(Clone)]
pub struct StoreOptions {
    /// `postgres://user@host:5432/db?sslmode=verify-full&sslrootcert=/path/ca.crt`.
    pub url: String,
    /// Overrides the URL's password (kept out of the URL: it comes from a Secret).
    pub password: Option<String>,
    /// Connections at most.
    pub connections: u32,
    /// How long a write waits for a free connection (or a new one) before it fails.
    pub acquire_timeout: Duration,
    /// How long one statement may run.
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &redacted(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connections", &self.connections)
            .finish()
    }
}

impl StoreOptions {
    pub fn new(url: &str) -> Self {
        StoreOptions {
            url: url.to_owned(),
            password: None,
            connections: 4,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// The URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// What went wrong with the database, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the PostgreSQL URL {url} is not valid")]
    Url {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// Migrating the schema failed: `said` says why in words an operator can act on (it
    /// translates the driver's error, [`describe`], which is therefore not kept as a source:
    /// the line would say it twice).
    #[error("migrating the history schema failed: {said}")]
    Migrate { said: String },
    /// The database failed: `said` puts the driver's error in words ([`describe`]).
    #[error("{said}")]
    Database { said: String },
}

impl StoreError {
    pub(super) fn database(e: &sqlx::Error) -> Self {
        StoreError::Database { said: describe(e) }
    }

    pub(super) fn migrating(e: &sqlx::Error) -> Self {
        Self::migrating_as(describe(e))
    }

    /// Migrating failed, or was refused, with `said`.
    pub(super) fn migrating_as(said: String) -> Self {
        StoreError::Migrate { said }
    }
}

/// An error of the database, with what the operator can do about it where that is known.
pub fn describe(e: &sqlx::Error) -> String {
    if let Some(refused) = refused_certificate(e) {
        return refused;
    }
    match e {
        sqlx::Error::PoolTimedOut => "no connection to PostgreSQL within the acquire timeout (the database is down, unreachable, or every connection is busy)".to_owned(),
        sqlx::Error::Io(io) => format!("cannot reach PostgreSQL: {io}"),
        sqlx::Error::Tls(t) => format!("TLS to PostgreSQL failed: {t} (check sslmode and sslrootcert in the URL)"),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let hint = match code.as_ref() {
                "28P01" | "28000" => " (wrong user or password: see --postgres-password / CLUSTERSCOPE_POSTGRES_PASSWORD)",
                "3D000" => " (the database does not exist: create it, or name another in the URL)",
                "42501" => " (the role lacks a privilege: it must own the clusterscope schema, or be allowed to create it)",
                "57014" => " (a statement ran past the statement timeout)",
                _ => "",
            };
            format!("PostgreSQL refused: {} [SQLSTATE {code}]{hint}", db.message())
        }
        other => other.to_string(),
    }
}

/// The server's certificate refused by rustls (sqlx passes it on inside an I/O error), in words
/// that say which setting of the URL decides.
fn refused_certificate(e: &sqlx::Error) -> Option<String> {
    use rustls::CertificateError as C;
    let inner: &(dyn std::error::Error + 'static) = match e {
        sqlx::Error::Io(io) => io.get_ref()?,
        sqlx::Error::Tls(t) => t.as_ref(),
        _ => return None,
    };
    let rustls::Error::InvalidCertificate(why) = inner.downcast_ref::<rustls::Error>()? else {
        return None;
    };
    let what = match why {
        C::UnknownIssuer | C::BadSignature => {
            "the server's certificate is not signed by a CA in sslrootcert (the CA file the URL names)".to_owned()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "the server's certificate does not name the host the URL connects to; sslmode=verify-full checks that name: connect by a name the certificate holds (an IP address must be among them to be used), or use sslmode=verify-ca to check the CA only".to_owned()
        }
        other => format!("the server's certificate was refused ({other:?}); check it, and sslmode and sslrootcert in the URL"),
    };
    Some(format!("TLS to PostgreSQL failed: {what} [{inner}]"))
}

/// What the URL asks of TLS, said beside a refused certificate: the host, `sslmode` and
/// `sslrootcert` as given.
fn tls_asked(url: &str) -> String {
    let Ok(u) = url::Url::parse(url) else {
        return String::new();
    };
    let query = |key: &str| {
        u.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    format!(
        "the URL connects to host {} with sslmode={} and sslrootcert={}",
        u.host_str().unwrap_or("?"),
        query("sslmode").unwrap_or_else(|| "prefer (the default)".to_owned()),
        query("sslrootcert").unwrap_or_else(|| "(none)".to_owned())
    )
}

/// Whether an error is the database being unreachable or busy (try the batch again later),
/// not something about the rows themselves.
pub fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // Connection exceptions, insufficient resources, operator intervention
            // (shutdown, cancel), serialization and deadlock failures, lock timeouts.
            ["08", "53", "57", "40", "55"]
                .iter()
                .any(|class| code.starts_with(class))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

/// The batched upsert: one statement for the whole batch (arrays, one per column, unnested).
/// A row already stored is updated only by a state at least as new (count, last time) that
/// differs (another resourceVersion, channel or delivery), so re-delivering the same state
/// (a re-list, a second replica, a retry) writes nothing, and an older state never wins.
const UPSERT: &str = r#"
INSERT INTO clusterscope.events AS e
    (uid, namespace, name, channel, involved_group, involved_kind, involved_name, reason, type,
     message, reporting_component, reporting_instance, namespaces, first_time, last_time, count,
     resource_version, event, stored_at, updated_at)
SELECT u.uid, u.namespace, u.name, u.channel, u.grp, u.kind, u.iname, u.reason, u.type,
       u.message, u.rc, u.ri,
       ARRAY(SELECT jsonb_array_elements_text(u.namespaces::jsonb)),
       u.first_time, u.last_time, u.count, u.rv, u.event::jsonb,
       clock_timestamp(), clock_timestamp()
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
            $14::timestamptz[], $15::timestamptz[], $16::int4[], $17::text[], $18::text[])
     AS u(uid, namespace, name, channel, grp, kind, iname, reason, type, message, rc, ri,
          namespaces, first_time, last_time, count, rv, event)
ON CONFLICT (uid) DO UPDATE SET
    namespace = excluded.namespace,
    name = excluded.name,
    channel = excluded.channel,
    involved_group = excluded.involved_group,
    involved_kind = excluded.involved_kind,
    involved_name = excluded.involved_name,
    reason = excluded.reason,
    type = excluded.type,
    message = excluded.message,
    reporting_component = excluded.reporting_component,
    reporting_instance = excluded.reporting_instance,
    namespaces = excluded.namespaces,
    first_time = least(e.first_time, excluded.first_time),
    last_time = excluded.last_time,
    count = excluded.count,
    resource_version = excluded.resource_version,
    event = excluded.event,
    updated_at = clock_timestamp()
WHERE (excluded.count, excluded.last_time) >= (e.count, e.last_time)
  AND (excluded.resource_version IS DISTINCT FROM e.resource_version
       OR excluded.channel IS DISTINCT FROM e.channel
       OR excluded.namespaces IS DISTINCT FROM e.namespaces)
RETURNING e.uid, (xmax = 0) AS inserted
"#;

/// A Kubernetes time as PostgreSQL's driver takes it (both span the years 1 to 9999 at least;
/// anything beyond cannot come from the API server and is held at the nearest end).
fn offset_date_time(t: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(t.as_nanosecond()).unwrap_or(if t.as_second() < 0 {
        OffsetDateTime::new_utc(time::Date::MIN, time::Time::MIDNIGHT)
    } else {
        OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT)
    })
}

/// Deletes one batch of rows last seen before the cutoff; `FOR UPDATE SKIP LOCKED` lets two
/// replicas (or a concurrent upsert) run it without waiting on each other.
const EXPIRE: &str = r#"
DELETE FROM clusterscope.events
WHERE uid IN (
    SELECT uid FROM clusterscope.events
    WHERE last_time < now() - make_interval(secs => $1)
    LIMIT $2
    FOR UPDATE SKIP LOCKED)
"#;

/// The database; cheap to clone (a pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    /// What the URL asks of TLS ([`tls_asked`]), for messages.
    tls: std::sync::Arc<str>,
}

impl Store {
    /// A pool that connects when first used (the webhook must start whatever the database
    /// does); fails only on a URL that cannot be right.
    pub fn connect_lazy(options: &StoreOptions) -> Result<Store, StoreError> {
        let mut connect =
            PgConnectOptions::from_str(&options.url).map_err(|source| StoreError::Url {
                url: redacted(&options.url),
                source,
            })?;
        if let Some(password) = &options.password {
            connect = connect.password(password);
        }
        let timeout_ms = options.statement_timeout.as_millis().to_string();
        // Every statement names its schema; `search_path` is pinned to the system catalog so
        // that what a DBA set on the role or the database (`ALTER ROLE ... SET search_path`)
        // changes nothing: options sent at connection start override both.
        connect = connect.application_name("clusterscope").options([
            ("statement_timeout", timeout_ms.as_str()),
            ("search_path", "pg_catalog"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy_with(connect);
        Ok(Store {
            pool,
            tls: tls_asked(&options.url).into(),
        })
    }

    /// The pool (tests, queries of one's own).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// [`describe`], and for a refused certificate what the URL asked (host, `sslmode`,
    /// `sslrootcert`), so that the operator sees which setting to change.
    pub fn explain(&self, e: &sqlx::Error) -> String {
        let said = describe(e);
        if refused_certificate(e).is_some() {
            format!("{said}; {}", self.tls)
        } else {
            said
        }
    }

    /// Writes `rows` in one statement and says, per row in order, whether it was created,
    /// updated or already held. Rows must have distinct uids.
    pub async fn upsert(&self, rows: &[&Row]) -> Result<Vec<Delivered>, sqlx::Error> {
        fn column<'r>(rows: &[&'r Row], f: impl Fn(&'r Row) -> &'r str) -> Vec<&'r str> {
            rows.iter().map(|r| f(r)).collect()
        }
        fn times(rows: &[&Row], f: impl Fn(&Row) -> Timestamp) -> Vec<OffsetDateTime> {
            rows.iter().map(|r| offset_date_time(f(r))).collect()
        }
        // Each row's namespaces as a JSON array: an array per row is a jagged text[][], which
        // PostgreSQL cannot hold (nor UNNEST), so they travel as text and become text[] there.
        let namespaces: Vec<String> = rows
            .iter()
            .map(|r| serde_json::to_string(&r.namespaces).unwrap_or_else(|_| "[]".to_owned()))
            .collect();
        let counts: Vec<i32> = rows.iter().map(|r| r.count).collect();
        let written: Vec<(String, bool)> = sqlx::query_as(UPSERT)
            .bind(column(rows, |r| &r.uid))
            .bind(column(rows, |r| &r.namespace))
            .bind(column(rows, |r| &r.name))
            .bind(column(rows, |r| &r.channel))
            .bind(column(rows, |r| &r.involved_group))
            .bind(column(rows, |r| &r.involved_kind))
            .bind(column(rows, |r| &r.involved_name))
            .bind(column(rows, |r| &r.reason))
            .bind(column(rows, |r| &r.type_))
            .bind(column(rows, |r| &r.message))
            .bind(column(rows, |r| &r.reporting_component))
            .bind(column(rows, |r| &r.reporting_instance))
            .bind(&namespaces)
            .bind(times(rows, |r| r.first_time))
            .bind(times(rows, |r| r.last_time))
            .bind(&counts)
            .bind(column(rows, |r| &r.resource_version))
            .bind(column(rows, |r| &r.event))
            .fetch_all(&self.pool)
            .await?;
        let written: std::collections::HashMap<String, bool> = written.into_iter().collect();
        Ok(rows
            .iter()
            .map(|r| match written.get(&r.uid) {
                Some(true) => Delivered::Created,
                Some(false) => Delivered::Updated,
                None => Delivered::Unchanged,
            })
            .collect())
    }

    /// Deletes the rows whose event was last seen more than `retention` ago, `batch` rows a
    /// statement (short transactions, no long lock); returns how many.
    pub async fn expire(&self, retention: Duration, batch: i64) -> Result<u64, sqlx::Error> {
        let mut deleted = 0;
        loop {
            let done = sqlx::query(EXPIRE)
                .bind(retention.as_secs_f64())
                .bind(batch.max(1))
                .execute(&self.pool)
                .await?
                .rows_affected();
            deleted += done;
            if done < batch.max(1) as u64 {
                return Ok(deleted);
            }
        }
    }
}
