//! The history schema: where it lives, the migrations embedded in the binary, and bringing a
//! database to this binary's version whatever its `search_path`, the role's name, or what an
//! earlier release left behind.
//!
//! Everything is named with its schema: the tables in `clusterscope`, and the record of the
//! applied versions in [`BOOKKEEPING`], beside them. Connections also pin `search_path` to
//! `pg_catalog` (see [`super::store`]), so what a DBA set on the role or the database changes
//! nothing. Releases before this one let sqlx create an unqualified `_sqlx_migrations`, which
//! landed wherever `search_path` pointed: in `public` on the first start with the README's role
//! `clusterscope`, then in the new schema `clusterscope` (the role's `"$user"` schema) on the
//! next, which ran migration 1 again and failed for good. [`migrate_to`] finds such tables,
//! moves their records here and drops what it emptied (see [`adopt_earlier_records`]).

use std::borrow::Cow;

use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{AssertSqlSafe, Connection, SqlSafeStr};

use super::store::{Store, StoreError, describe};

/// The schema that holds the history.
pub const SCHEMA: &str = "clusterscope";

/// Where the applied versions are recorded (sqlx's bookkeeping table, named with its schema).
pub const BOOKKEEPING: &str = "clusterscope._sqlx_migrations";

/// The schema versions, oldest first, as they are embedded in the binary: version, description,
/// the file. Each is applied once, in one transaction, under PostgreSQL's advisory lock, so two
/// replicas starting at once wait for each other instead of both creating the tables.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "events",
        include_str!("../../migrations/0001_events.sql"),
    ),
    (
        2,
        "namespace access",
        include_str!("../../migrations/0002_namespace_access.sql"),
    ),
];

/// The newest schema version this binary knows.
pub fn schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Migration 1 as shipped opens with this line. PostgreSQL checks CREATE on the database
/// before it looks whether the schema exists, so the line fails for a role that was given a
/// schema made by an administrator (a managed PostgreSQL). [`ensure_schema`] makes the schema
/// when it is missing, before any migration runs, so the line is not executed; the recorded
/// checksum stays the file's, which databases migrated by earlier releases hold.
const CREATE_SCHEMA_LINE: &str = "CREATE SCHEMA IF NOT EXISTS clusterscope;\n";

/// The migrations up to `up_to`, with the file's checksum and the SQL that is executed.
pub fn migrations(up_to: i64) -> Vec<Migration> {
    MIGRATIONS
        .iter()
        .filter(|(version, _, _)| *version <= up_to)
        .map(|&(version, description, file)| {
            let mut migration = Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                file.into_sql_str(),
                false,
            );
            if version == 1 {
                let executed = file.replacen(CREATE_SCHEMA_LINE, "", 1);
                migration.sql = AssertSqlSafe(executed).into_sql_str();
            }
            migration
        })
        .collect()
}

impl Store {
    /// Brings the schema to this binary's version.
    pub async fn migrate(&self) -> Result<Migrated, StoreError> {
        migrate_to(self, schema_version()).await
    }

    /// Brings the schema to `version` (tests of an upgrade from an older one).
    pub async fn migrate_to(&self, version: i64) -> Result<Migrated, StoreError> {
        migrate_to(self, version).await
    }

    /// The schema version the database is at (0 when none).
    pub async fn version(&self) -> Result<i64, StoreError> {
        version(self.pool()).await
    }
}

/// What bringing the schema up to date did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    /// The schema did not exist and was created.
    pub created_schema: bool,
    /// Versions applied now, oldest first.
    pub applied: Vec<i64>,
    /// Records of applied versions found where an earlier release wrote them, moved here.
    pub adopted: Vec<Adopted>,
    /// The version the database is at now (it may be newer than this binary's).
    pub version: i64,
}

/// One bookkeeping table an earlier release left outside the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The table, schema-qualified and quoted as PostgreSQL quotes it.
    pub table: String,
    /// The versions moved from it into [`BOOKKEEPING`].
    pub versions: Vec<i64>,
    /// It was empty then (or held only those), and was dropped.
    pub dropped: bool,
}

/// Brings the database to `up_to` (this binary's [`schema_version`] in `serve`; older in the
/// tests of an upgrade). Runs on a connection of its own, closed at the end whatever happened,
/// so the advisory lock never outlives the attempt in a pooled connection. A database at a
/// newer version (a newer replica during a rolling upgrade) is accepted: migrations only add.
pub async fn migrate_to(store: &Store, up_to: i64) -> Result<Migrated, StoreError> {
    let mut conn = PgConnection::connect_with(&store.pool().connect_options())
        .await
        .map_err(|e| StoreError::migrating_as(store.explain(&e)))?;
    let done = migrate_locked(&mut conn, up_to).await;
    let _ = conn.close().await;
    let done = done?;
    if !done.adopted.is_empty() {
        tracing::warn!(
            repaired = %said(&done.adopted),
            "history: repaired the schema's bookkeeping left by an earlier release; nothing was lost"
        );
    }
    Ok(done)
}

/// The steps, under the lock that sqlx's migrator takes (the same key as earlier releases, so
/// an old replica still running during a rolling upgrade waits too).
async fn migrate_locked(conn: &mut PgConnection, up_to: i64) -> Result<Migrated, StoreError> {
    conn.lock().await.map_err(migrate_error)?;
    let created_schema = ensure_schema(conn).await?;
    conn.ensure_migrations_table(BOOKKEEPING)
        .await
        .map_err(migrate_error)?;
    let adopted = adopt_earlier_records(conn).await?;
    refuse_unrecorded_tables(conn).await?;
    let before = applied_versions(conn).await?;
    let mut migrator = Migrator::with_migrations(migrations(up_to));
    migrator.dangerous_set_table_name(BOOKKEEPING);
    migrator.set_ignore_missing(true).set_locking(false);
    // `run_direct` is `run` on a connection (sqlx's way around `Acquire` not being general
    // enough for a spawned future).
    migrator
        .run_direct(None, &mut *conn, false)
        .await
        .map_err(migrate_error)?;
    let after = applied_versions(conn).await?;
    conn.unlock().await.map_err(migrate_error)?;
    Ok(Migrated {
        created_schema,
        applied: after
            .iter()
            .filter(|v| !before.contains(v))
            .copied()
            .collect(),
        adopted,
        version: after.last().copied().unwrap_or(0),
    })
}

/// Creates the schema when it does not exist (only then is CREATE on the database needed).
async fn ensure_schema(conn: &mut PgConnection) -> Result<bool, StoreError> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'clusterscope')",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| StoreError::migrating(&e))?;
    if exists {
        return Ok(false);
    }
    match sqlx::query("CREATE SCHEMA clusterscope")
        .execute(&mut *conn)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if code_of(&e).as_deref() == Some("42501") => {
            let said = format!(
                "{}; the schema {SCHEMA} does not exist and this role may not create it: make \
                 the role own the database (CREATE DATABASE ... OWNER ...), or have an \
                 administrator run CREATE SCHEMA {SCHEMA} AUTHORIZATION <the role>",
                describe(&e)
            );
            Err(StoreError::migrating_as(said))
        }
        Err(e) => Err(StoreError::migrating(&e)),
    }
}

fn code_of(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(Cow::into_owned),
        _ => None,
    }
}

/// A row of a bookkeeping table, as sqlx writes it: version, description, installed_on (as
/// text), success, checksum, execution_time.
type Record = (i64, String, String, bool, Vec<u8>, i64);

/// Moves the records of this binary's migrations from every other `_sqlx_migrations` table the
/// role owns (where earlier releases wrote them) into [`BOOKKEEPING`], and drops such a table
/// once it is empty. A record is ours when its version and checksum are one of
/// [`MIGRATIONS`]'; another application's table keeps its own records.
async fn adopt_earlier_records(conn: &mut PgConnection) -> Result<Vec<Adopted>, StoreError> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT pg_catalog.quote_ident(n.nspname) || '._sqlx_migrations'
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = '_sqlx_migrations' AND c.relkind = 'r' AND n.nspname <> 'clusterscope'
           AND pg_catalog.pg_has_role(c.relowner, 'USAGE')
         ORDER BY n.nspname",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| StoreError::migrating(&e))?;
    let ours = migrations(schema_version());
    let mut adopted = Vec::new();
    for table in tables {
        if let Some(moved) = adopt_table(conn, &table, &ours).await? {
            adopted.push(moved);
        }
    }
    Ok(adopted)
}

/// [`adopt_earlier_records`] for one table, in one transaction.
async fn adopt_table(
    conn: &mut PgConnection,
    table: &str,
    ours: &[Migration],
) -> Result<Option<Adopted>, StoreError> {
    let fail =
        |e: sqlx::Error| StoreError::migrating_as(format!("repairing {table}: {}", describe(&e)));
    let mut tx = conn.begin().await.map_err(fail)?;
    let records: Vec<Record> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT version, description, installed_on::text, success, checksum, execution_time
         FROM {table} ORDER BY version FOR UPDATE"
    )))
    .fetch_all(&mut *tx)
    .await
    .map_err(fail)?;
    let mine: Vec<&Record> = records
        .iter()
        .filter(|r| ours.iter().any(|m| m.version == r.0 && *m.checksum == *r.4))
        .collect();
    if records.len() > mine.len() {
        if mine.is_empty() {
            return Ok(None);
        }
        tracing::debug!(%table, "history: an earlier bookkeeping table also holds another application's records; they stay");
    }
    for r in &mine {
        sqlx::query(
            "INSERT INTO clusterscope._sqlx_migrations
                 (version, description, installed_on, success, checksum, execution_time)
             VALUES ($1, $2, $3::timestamptz, $4, $5, $6) ON CONFLICT (version) DO NOTHING",
        )
        .bind(r.0)
        .bind(&r.1)
        .bind(&r.2)
        .bind(r.3)
        .bind(&r.4)
        .bind(r.5)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    }
    let versions: Vec<i64> = mine.iter().map(|r| r.0).collect();
    let dropped = records.len() == mine.len();
    let statement = if dropped {
        format!("DROP TABLE {table}")
    } else {
        format!("DELETE FROM {table} WHERE version = ANY($1)")
    };
    let mut query = sqlx::query(AssertSqlSafe(statement));
    if !dropped {
        query = query.bind(&versions);
    }
    query.execute(&mut *tx).await.map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    Ok(Some(Adopted {
        table: table.to_owned(),
        versions,
        dropped,
    }))
}

/// The tables exist but nothing records how they got there: applying migration 1 would fail
/// on them forever with "relation already exists", so say what is wrong instead.
async fn refuse_unrecorded_tables(conn: &mut PgConnection) -> Result<(), StoreError> {
    let (tables, recorded): (bool, bool) = sqlx::query_as(
        "SELECT pg_catalog.to_regclass('clusterscope.events') IS NOT NULL,
                EXISTS (SELECT 1 FROM clusterscope._sqlx_migrations WHERE version = 1)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| StoreError::migrating(&e))?;
    if tables && !recorded {
        return Err(StoreError::migrating_as(format!(
            "the table clusterscope.events exists but no record of schema version 1 was found in \
             {BOOKKEEPING} nor in a _sqlx_migrations table this role owns elsewhere; restore \
             that record (or rename the schema {SCHEMA} to start a new history)"
        )));
    }
    Ok(())
}

/// The versions recorded as applied, oldest first.
async fn applied_versions(conn: &mut PgConnection) -> Result<Vec<i64>, StoreError> {
    sqlx::query_scalar(
        "SELECT version FROM clusterscope._sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| StoreError::migrating(&e))
}

/// The version a database is at (0 when it has no history schema yet).
pub async fn version(pool: &PgPool) -> Result<i64, StoreError> {
    let recorded: bool = sqlx::query_scalar(
        "SELECT pg_catalog.to_regclass('clusterscope._sqlx_migrations') IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| StoreError::database(&e))?;
    if !recorded {
        return Ok(0);
    }
    sqlx::query_scalar(
        "SELECT coalesce(max(version), 0) FROM clusterscope._sqlx_migrations WHERE success",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| StoreError::database(&e))
}

fn migrate_error(e: MigrateError) -> StoreError {
    let said = match &e {
        MigrateError::Execute(db) => describe(db),
        MigrateError::ExecuteMigration(db, version) => {
            format!("while applying schema version {version}: {}", describe(db))
        }
        MigrateError::VersionMismatch(version) => format!(
            "{BOOKKEEPING} records schema version {version} with another checksum than this \
             binary's migration {version}: the database was migrated by a build with other \
             migrations"
        ),
        MigrateError::Dirty(version) => format!(
            "{BOOKKEEPING} records schema version {version} as failed part-way; check the schema \
             and delete that record before starting again"
        ),
        other => other.to_string(),
    };
    StoreError::migrating_as(said)
}

/// The repairs in words, for the log line.
fn said(adopted: &[Adopted]) -> String {
    adopted
        .iter()
        .map(|a| {
            let versions: Vec<String> = a.versions.iter().map(i64::to_string).collect();
            let what = if versions.is_empty() {
                format!("{} was empty", a.table)
            } else {
                format!(
                    "moved the record of version {} from {} to {BOOKKEEPING}",
                    versions.join(", "),
                    a.table
                )
            };
            if a.dropped {
                format!("{what}, dropped {}", a.table)
            } else {
                format!("{what}; {} keeps other records", a.table)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_1_runs_without_its_create_schema_line_but_keeps_the_files_checksum() {
        let all = migrations(schema_version());
        let (_, _, file) = MIGRATIONS[0];
        assert!(
            file.contains(CREATE_SCHEMA_LINE),
            "the line to skip is in the file"
        );
        assert!(!all[0].sql.as_str().contains("CREATE SCHEMA"));
        let whole = Migration::new(
            1,
            "events".into(),
            MigrationType::Simple,
            file.into_sql_str(),
            false,
        );
        assert_eq!(all[0].checksum, whole.checksum);
        assert_eq!(all[1].sql.as_str(), MIGRATIONS[1].2);
    }

    #[test]
    fn every_statement_of_every_migration_names_the_schema() {
        for (version, _, file) in MIGRATIONS {
            for line in file.lines().map(str::trim_start) {
                let creates = [
                    "CREATE TABLE ",
                    "CREATE INDEX ",
                    "CREATE FUNCTION ",
                    "ALTER TABLE ",
                ];
                if let Some(start) = creates.iter().find(|c| line.starts_with(**c)) {
                    assert!(
                        line.contains("clusterscope."),
                        "version {version}: {line} ({start})"
                    );
                }
            }
        }
    }

    #[test]
    fn a_repair_is_said_in_one_line() {
        let line = said(&[
            Adopted {
                table: "public._sqlx_migrations".into(),
                versions: vec![1, 2],
                dropped: true,
            },
            Adopted {
                table: "odd._sqlx_migrations".into(),
                versions: vec![],
                dropped: true,
            },
        ]);
        assert_eq!(
            line,
            "moved the record of version 1, 2 from public._sqlx_migrations to clusterscope._sqlx_migrations, dropped public._sqlx_migrations; odd._sqlx_migrations was empty, dropped odd._sqlx_migrations"
        );
    }
}
