//! Where the history schema lives, on a real PostgreSQL set up as the README says (the
//! non-superuser role `clusterscope` owning database `clusterscope`, with a password): starts
//! and restarts, databases left by earlier builds (their bookkeeping in `public`, broken after
//! their second start) repaired without losing a row, another role name, a `search_path` a DBA
//! set, a role given only a schema (managed PostgreSQL), two replicas at once.

mod support;

use support::postgres;

use clusterscope::history::schema::{Adopted, schema_version};
use clusterscope::history::{Row, Store, StoreOptions};
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use postgres::{Postgres, Setup, previous_layout};

fn row(uid: &str, count: i32) -> Row {
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("n.{uid}")),
            namespace: Some("default".into()),
            uid: Some(uid.into()),
            resource_version: Some(format!("{uid}-{count}")),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            kind: Some("Node".into()),
            name: Some("n".into()),
            ..ObjectReference::default()
        },
        reason: Some("NodeNotReady".into()),
        count: Some(count),
        ..Event::default()
    };
    let team_a = clusterscope::owners::Destination {
        namespace: "team-a".into(),
        how: clusterscope::owners::How::Owner,
        why: String::new(),
    };
    Row::of(&event, "nodes", &[team_a])
}

/// A new pool, as a new start of `serve` makes.
fn store(options: &StoreOptions) -> Store {
    Store::connect_lazy(options).unwrap()
}

/// The schemas holding a table named `_sqlx_migrations`, and each one's record count.
fn bookkeeping(pg: &Postgres, db: &str) -> String {
    let tables = pg.psql(
        db,
        "SELECT string_agg(n.nspname, ',' ORDER BY n.nspname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = '_sqlx_migrations'",
    );
    tables
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|schema| {
            let n = pg.psql(
                db,
                &format!("SELECT count(*) FROM {schema}._sqlx_migrations"),
            );
            format!("{schema}:{n}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn readme_role(pg: &Postgres) -> (&str, &str) {
    ("clusterscope", pg.password.as_str())
}

#[tokio::test]
async fn started_three_times_on_the_readme_database_it_migrates_once_and_keeps_recording() {
    let Some(pg) = Postgres::start() else { return };
    for start in 0..3 {
        let s = store(&pg.options());
        let done = s.migrate().await.unwrap();
        if start == 0 {
            assert!(done.created_schema);
            assert_eq!(done.applied, [1, 2]);
        } else {
            assert!(
                !done.created_schema && done.applied.is_empty(),
                "start {start}: {done:?}"
            );
        }
        assert!(done.adopted.is_empty());
        assert_eq!(done.version, schema_version());
        s.upsert(&[&row(&format!("u{start}"), 1)]).await.unwrap();
        s.pool().close().await;
    }
    assert_eq!(bookkeeping(&pg, "clusterscope"), "clusterscope:2");
    assert_eq!(
        pg.psql("clusterscope", "SELECT count(*) FROM clusterscope.events"),
        "3"
    );
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0",
        "nothing is created outside the schema"
    );
}

/// The state the issue found on a real cluster: an earlier build's first start left its records
/// in `public`, its second created an empty `clusterscope._sqlx_migrations` and failed on
/// migration 1. This build repairs it, says so, keeps every row, and restarts cleanly.
#[tokio::test]
async fn the_state_an_earlier_build_broke_after_its_second_start_is_repaired_and_keeps_its_rows() {
    let Some(pg) = Postgres::start() else { return };
    let (user, password) = readme_role(&pg);
    previous_layout::start(&pg, user, password, "clusterscope", 2).unwrap();
    assert_eq!(bookkeeping(&pg, "clusterscope"), "public:2");
    store(&pg.options())
        .upsert(&[&row("kept-1", 4), &row("kept-2", 1)])
        .await
        .unwrap();
    let second = previous_layout::start(&pg, user, password, "clusterscope", 2);
    assert!(
        second
            .as_ref()
            .is_err_and(|e| e.contains("relation \"events\" already exists")),
        "{second:?}"
    );
    assert_eq!(bookkeeping(&pg, "clusterscope"), "clusterscope:0 public:2");

    let done = store(&pg.options()).migrate().await.unwrap();
    assert_eq!(
        done.adopted,
        [Adopted {
            table: "public._sqlx_migrations".into(),
            versions: vec![1, 2],
            dropped: true
        }]
    );
    assert!(done.applied.is_empty(), "nothing ran twice: {done:?}");
    assert_eq!(bookkeeping(&pg, "clusterscope"), "clusterscope:2");
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT string_agg(uid || ':' || count, ',' ORDER BY uid) FROM clusterscope.events"
        ),
        "kept-1:4,kept-2:1"
    );
    for _ in 0..2 {
        let again = store(&pg.options()).migrate().await.unwrap();
        assert!(
            again.adopted.is_empty() && again.applied.is_empty(),
            "{again:?}"
        );
    }
    // An earlier build still running during the rollout finds the records too (its
    // unqualified table is now, by the role's search_path, the schema's).
    previous_layout::start(&pg, user, password, "clusterscope", 2).unwrap();
}

/// An earlier build migrated only to version 1: the record moves, version 2 is applied, rows stay.
#[tokio::test]
async fn a_database_at_version_1_in_the_earlier_layout_is_upgraded() {
    let Some(pg) = Postgres::start() else { return };
    let (user, password) = readme_role(&pg);
    previous_layout::start(&pg, user, password, "clusterscope", 1).unwrap();
    store(&pg.options())
        .upsert(&[&row("v1-row", 2)])
        .await
        .unwrap();
    let done = store(&pg.options()).migrate().await.unwrap();
    assert_eq!(done.adopted.len(), 1);
    assert_eq!(done.adopted[0].versions, [1]);
    assert_eq!(done.applied, [2]);
    assert_eq!(bookkeeping(&pg, "clusterscope"), "clusterscope:2");
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT uid || ':' || count FROM clusterscope.events"
        ),
        "v1-row:2"
    );
    assert_eq!(policies(&pg), "events_by_namespace");
}

/// The same upgrade in this layout (as the next schema version will be applied).
#[tokio::test]
async fn a_database_at_version_1_is_upgraded_and_keeps_its_rows() {
    let Some(pg) = Postgres::start() else { return };
    let s = store(&pg.options());
    assert_eq!(s.migrate_to(1).await.unwrap().applied, [1]);
    s.upsert(&[&row("u1", 3)]).await.unwrap();
    assert_eq!(policies(&pg), "");
    assert_eq!(store(&pg.options()).migrate().await.unwrap().applied, [2]);
    assert_eq!(s.version().await.unwrap(), 2);
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT uid || ':' || count FROM clusterscope.events"
        ),
        "u1:3"
    );
    assert_eq!(policies(&pg), "events_by_namespace");
}

/// The row-level security policies of the schema (version 2 adds one).
fn policies(pg: &Postgres) -> String {
    pg.psql(
        "clusterscope",
        "SELECT coalesce(string_agg(policyname, ','), '') FROM pg_policies WHERE schemaname = 'clusterscope'",
    )
}

/// The reverse: complete records in the schema beside an empty table elsewhere (dropped), and
/// another application's bookkeeping in a schema of its own, which keeps its records.
#[tokio::test]
async fn an_empty_table_elsewhere_is_dropped_and_another_applications_records_stay() {
    let Some(pg) = Postgres::start() else { return };
    store(&pg.options()).migrate().await.unwrap();
    let (user, password) = readme_role(&pg);
    let as_role = |sql: &str| {
        let out = pg.psql_with_password(user, password, "clusterscope", sql);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let table = "(version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
        installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, \
        checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)";
    as_role(&format!("CREATE TABLE public._sqlx_migrations {table}"));
    as_role(&format!(
        "CREATE SCHEMA billing; CREATE TABLE billing._sqlx_migrations {table}; \
         INSERT INTO billing._sqlx_migrations VALUES (1, 'invoices', now(), true, '\\x00', 5), \
         (20240101, 'payments', now(), true, '\\x01', 5)"
    ));
    let done = store(&pg.options()).migrate().await.unwrap();
    assert_eq!(
        done.adopted,
        [Adopted {
            table: "public._sqlx_migrations".into(),
            versions: vec![],
            dropped: true
        }]
    );
    assert_eq!(bookkeeping(&pg, "clusterscope"), "billing:2 clusterscope:2");
}

/// Nothing in the role's name matters: a role `historian` owning database `events_db`.
#[tokio::test]
async fn a_role_with_another_name_restarts_as_well() {
    let Some(pg) = Postgres::start() else { return };
    pg.psql_script(
        "postgres",
        "CREATE ROLE historian LOGIN PASSWORD 'h-pw';\nCREATE DATABASE events_db OWNER historian;\n",
    );
    let options = StoreOptions {
        password: Some("h-pw".into()),
        ..StoreOptions::new(&pg.url_for("historian", "events_db"))
    };
    for i in 0..3 {
        let s = store(&options);
        s.migrate().await.unwrap();
        s.upsert(&[&row(&format!("h{i}"), 1)]).await.unwrap();
    }
    assert_eq!(bookkeeping(&pg, "events_db"), "clusterscope:2");
    assert_eq!(
        pg.psql("events_db", "SELECT count(*) FROM clusterscope.events"),
        "3"
    );
}

/// A DBA set an odd search_path on the role and the database, with a schema holding tables of
/// the same names (`events`, another application's `_sqlx_migrations`) first in it: the
/// history goes to `clusterscope` all the same, start after start, and the rest is untouched.
#[tokio::test]
async fn a_search_path_set_on_the_role_and_database_changes_nothing() {
    let Some(pg) = Postgres::start() else { return };
    let (user, password) = readme_role(&pg);
    let out = pg.psql_with_password(
        user,
        password,
        "clusterscope",
        "CREATE SCHEMA odd; CREATE TABLE odd.events (uid text); \
         CREATE TABLE odd._sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, \
         checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL); \
         INSERT INTO odd._sqlx_migrations VALUES (1, 'not ours', now(), true, '\\xabcd', 1)",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.psql(
        "postgres",
        "ALTER ROLE clusterscope SET search_path = odd, \"$user\", public",
    );
    pg.psql(
        "postgres",
        "ALTER DATABASE clusterscope SET search_path = nowhere",
    );
    for i in 0..3 {
        let s = store(&pg.options());
        let done = s.migrate().await.unwrap();
        assert!(done.adopted.is_empty(), "{done:?}");
        s.upsert(&[&row(&format!("o{i}"), 1)]).await.unwrap();
        let path: String = sqlx::query_scalar("SHOW search_path")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(path, "pg_catalog");
    }
    assert_eq!(bookkeeping(&pg, "clusterscope"), "clusterscope:2 odd:1");
    assert_eq!(
        pg.psql("clusterscope", "SELECT count(*) FROM clusterscope.events"),
        "3"
    );
    assert_eq!(
        pg.psql("clusterscope", "SELECT count(*) FROM odd.events"),
        "0"
    );
}

/// The README's setup for a managed PostgreSQL, literally: the role may not create schemas (nor
/// own the database); an administrator made the schema for it. It migrates and restarts.
#[tokio::test]
async fn a_role_given_only_a_schema_by_an_administrator_migrates_and_restarts() {
    let Some(pg) = Postgres::start_as(Setup {
        skip_readme_setup: true,
        ..Setup::default()
    }) else {
        return;
    };
    pg.psql("postgres", "CREATE DATABASE shared");
    let sql = postgres::readme_sql("Where the role may not own a database or create schemas")
        .replace(postgres::README_PASSWORD, &format!("'{}'", pg.password));
    pg.psql_script("shared", &sql);
    assert_eq!(
        pg.psql(
            "shared",
            "SELECT has_database_privilege('clusterscope', 'shared', 'CREATE')"
        ),
        "f"
    );
    let options = pg.options_for(&pg.url_for("clusterscope", "shared"));
    for i in 0..2 {
        let s = store(&options);
        let done = s.migrate().await.unwrap();
        assert!(!done.created_schema);
        s.upsert(&[&row(&format!("m{i}"), 1)]).await.unwrap();
    }
    assert_eq!(bookkeeping(&pg, "shared"), "clusterscope:2");

    // Without the schema, the error says what an administrator can do.
    pg.psql("postgres", "CREATE DATABASE bare");
    pg.psql("bare", "GRANT CONNECT ON DATABASE bare TO clusterscope");
    let err = store(&pg.options_for(&pg.url_for("clusterscope", "bare")))
        .migrate()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("may not create it")
            && err.contains("CREATE SCHEMA clusterscope AUTHORIZATION"),
        "{err}"
    );
}

/// Two replicas starting at once on a database an earlier build broke: both succeed, the repair
/// happens once, and every version is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_starting_at_once_repair_once() {
    let Some(pg) = Postgres::start() else { return };
    let (user, password) = readme_role(&pg);
    previous_layout::start(&pg, user, password, "clusterscope", 2).unwrap();
    let _ = previous_layout::start(&pg, user, password, "clusterscope", 2);
    let (a, b) = (store(&pg.options()), store(&pg.options()));
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.adopted.len() + rb.adopted.len(), 1, "{ra:?} {rb:?}");
    assert!(ra.applied.is_empty() && rb.applied.is_empty());
    assert_eq!(bookkeeping(&pg, "clusterscope"), "clusterscope:2");
}

/// Tables without any record of how they got there are named as the problem, not retried as
/// "relation already exists" forever.
#[tokio::test]
async fn tables_without_records_are_refused_in_words() {
    let Some(pg) = Postgres::start() else { return };
    store(&pg.options()).migrate().await.unwrap();
    pg.psql("clusterscope", "DROP TABLE clusterscope._sqlx_migrations");
    let err = store(&pg.options())
        .migrate()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("clusterscope.events exists but no record of schema version 1"),
        "{err}"
    );
}
