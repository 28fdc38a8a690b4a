//! The history sink against a real PostgreSQL (a throwaway server per test): schema and
//! migrations, the upsert, retention, hostile strings, two writers, row-level security, and
//! a database that goes away under load.

mod support;

use support::postgres;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterscope::delivery::{Action, Delivered, Delivery, Sink};
use clusterscope::history::{PostgresSink, Row, SinkOptions, Store};
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use postgres::Postgres;

fn at(rfc3339: &str) -> Time {
    Time(rfc3339.parse().unwrap())
}

fn event(uid: &str, kind: &str, name: &str, reason: &str, count: i32, last: &str) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{uid}")),
            namespace: Some("default".into()),
            uid: Some(uid.into()),
            resource_version: Some(format!("{uid}-{count}")),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(kind.into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        },
        reason: Some(reason.into()),
        type_: Some("Warning".into()),
        message: Some(format!("{reason} on {name}")),
        first_timestamp: Some(at("2026-11-20T10:00:00Z")),
        last_timestamp: Some(at(last)),
        count: Some(count),
        reporting_component: Some("node-controller".into()),
        ..Event::default()
    }
}

/// The namespaces an event reached (by its channel: how does not matter to history).
fn reached(namespaces: &[&str]) -> Vec<clusterscope::owners::Destination> {
    namespaces
        .iter()
        .map(|ns| clusterscope::owners::Destination {
            namespace: (*ns).to_owned(),
            how: clusterscope::owners::How::Channel,
            why: String::new(),
        })
        .collect()
}

fn delivery(ev: Event, channel: &str, namespaces: &[&str]) -> Delivery {
    Delivery {
        key: ev.metadata.uid.clone().unwrap(),
        fingerprint: 0,
        event: ev,
        channel: channel.into(),
        source: ObjectReference::default(),
        since: Instant::now(),
        destinations: reached(namespaces),
    }
}

async fn store(pg: &Postgres) -> Store {
    let store = Store::connect_lazy(&pg.options()).unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn the_schema_is_created_from_empty_and_again_is_a_no_op() {
    let Some(pg) = Postgres::start() else { return };
    let store = Store::connect_lazy(&pg.options()).unwrap();
    assert_eq!(store.version().await.unwrap(), 0);
    store.migrate().await.unwrap();
    assert_eq!(
        store.version().await.unwrap(),
        clusterscope::history::schema::schema_version()
    );
    store.migrate().await.unwrap();
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT count(*) FROM clusterscope._sqlx_migrations WHERE success"
        ),
        clusterscope::history::schema::schema_version().to_string()
    );
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'clusterscope' AND tablename = 'events'"
        ),
        "events_kind_reason,events_last_time,events_namespaces,events_object,events_pkey"
    );
}

#[tokio::test]
async fn two_replicas_migrating_at_once_both_succeed_and_apply_each_version_once() {
    let Some(pg) = Postgres::start() else { return };
    let a = Store::connect_lazy(&pg.options()).unwrap();
    let b = Store::connect_lazy(&pg.options()).unwrap();
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT count(*) FROM clusterscope._sqlx_migrations"
        ),
        "2"
    );
}

#[tokio::test]
async fn ten_updates_of_one_event_are_one_row_with_its_count_and_times() {
    let Some(pg) = Postgres::start() else { return };
    let store = store(&pg).await;
    let mut results = Vec::new();
    for count in 1..=10 {
        let last = format!("2026-11-20T10:{:02}:00Z", count * 5);
        let row = Row::of(
            &event("u1", "Node", "n1", "NodeNotReady", count, &last),
            "nodes",
            &[],
        );
        results.extend(store.upsert(&[&row]).await.unwrap());
    }
    assert_eq!(results[0], Delivered::Created);
    assert!(results[1..].iter().all(|r| *r == Delivered::Updated));
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT count(*) || ' ' || max(count) || ' ' || to_char(min(first_time) AT TIME ZONE 'UTC', 'HH24:MI') || ' ' || to_char(max(last_time) AT TIME ZONE 'UTC', 'HH24:MI') FROM clusterscope.events"
        ),
        "1 10 10:00 10:50"
    );
    // The same state again (a re-list, another replica): nothing written.
    let same = Row::of(
        &event(
            "u1",
            "Node",
            "n1",
            "NodeNotReady",
            10,
            "2026-11-20T10:50:00Z",
        ),
        "nodes",
        &[],
    );
    assert_eq!(
        store.upsert(&[&same]).await.unwrap(),
        [Delivered::Unchanged]
    );
    // An older state arriving late (a retry) never wins.
    let old = Row::of(
        &event(
            "u1",
            "Node",
            "n1",
            "NodeNotReady",
            4,
            "2026-11-20T10:20:00Z",
        ),
        "nodes",
        &[],
    );
    assert_eq!(store.upsert(&[&old]).await.unwrap(), [Delivered::Unchanged]);
    assert_eq!(
        pg.psql("clusterscope", "SELECT count FROM clusterscope.events"),
        "10"
    );
    // Delivered somewhere new (an owner appeared) without a new count: updated.
    let moved = Row::of(
        &event(
            "u1",
            "Node",
            "n1",
            "NodeNotReady",
            10,
            "2026-11-20T10:50:00Z",
        ),
        "nodes",
        &reached(&["team-b"]),
    );
    assert_eq!(store.upsert(&[&moved]).await.unwrap(), [Delivered::Updated]);
}

#[tokio::test]
async fn retention_removes_only_rows_last_seen_before_it() {
    let Some(pg) = Postgres::start() else { return };
    let store = store(&pg).await;
    let now = k8s_openapi::jiff::Timestamp::now();
    let ago = |hours: i64| (now - k8s_openapi::jiff::SignedDuration::from_hours(hours)).to_string();
    let mut rows = Vec::new();
    for (i, hours) in [1, 20, 23, 25, 48, 24 * 40].into_iter().enumerate() {
        let mut ev = event(&format!("u{i}"), "Node", "n1", "Ping", 1, &ago(hours));
        ev.first_timestamp = Some(Time(ago(hours + 1).parse().unwrap()));
        rows.push(Row::of(&ev, "nodes", &[]));
    }
    let refs: Vec<&Row> = rows.iter().collect();
    store.upsert(&refs).await.unwrap();
    // Batches of 2 rows: the loop goes on until a batch comes back short.
    let deleted = store
        .expire(Duration::from_secs(24 * 3600), 2)
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT string_agg(uid, ',' ORDER BY uid) FROM clusterscope.events"
        ),
        "u0,u1,u2"
    );
}

/// Strings that would break a query built by concatenation, and characters PostgreSQL text
/// cannot hold: each lands as data.
#[tokio::test]
async fn hostile_strings_in_every_field_land_as_data() {
    let Some(pg) = Postgres::start() else { return };
    let store = store(&pg).await;
    let hostile = [
        "'); DROP TABLE clusterscope.events; --",
        "\" OR 1=1; --",
        "$1::text[]",
        "\\'; SELECT pg_sleep(10); --",
        "nul\0byte",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ \u{202e}",
    ];
    let mut rows = Vec::new();
    for (i, s) in hostile.iter().enumerate() {
        let mut ev = event(&format!("{s}-{i}"), s, s, s, 1, "2026-11-20T11:00:00Z");
        ev.message = Some(s.to_string());
        ev.type_ = Some(s.to_string());
        ev.reporting_component = Some(s.to_string());
        ev.reporting_instance = Some(s.to_string());
        ev.metadata.name = Some(s.to_string());
        ev.involved_object.api_version = Some(format!("{s}/v1"));
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("k".to_owned(), s.to_string());
        ev.metadata.labels = Some(labels);
        rows.push(Row::of(&ev, s, &reached(&[s])));
    }
    let refs: Vec<&Row> = rows.iter().collect();
    let done = store.upsert(&refs).await.unwrap();
    assert!(done.iter().all(|d| *d == Delivered::Created), "{done:?}");
    assert_eq!(
        pg.psql("clusterscope", "SELECT count(*) FROM clusterscope.events"),
        hostile.len().to_string()
    );
    let pool = store.pool();
    for (i, s) in hostile.iter().enumerate() {
        let stored = s.replace('\0', "\u{FFFD}");
        let uid = format!("{stored}-{i}");
        let row: (String, String, String, String, String, Vec<String>, String, String) =
            sqlx::query_as(
                "SELECT reason, message, involved_kind, involved_group, channel, namespaces, event->>'message', event->'metadata'->'labels'->>'k' FROM clusterscope.events WHERE uid = $1",
            )
            .bind(&uid)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(
            row,
            (
                stored.clone(),
                stored.clone(),
                stored.clone(),
                stored.clone(),
                stored.clone(),
                vec![stored.clone()],
                stored.clone(),
                stored.clone()
            )
        );
    }
}

/// Two replicas (during a lease handover) writing the same events through their own sinks
/// and pools: one row per event, each with its newest count.
#[tokio::test]
async fn two_replicas_writing_the_same_events_leave_one_row_each() {
    let Some(pg) = Postgres::start() else { return };
    let a = store(&pg).await;
    let b = Store::connect_lazy(&pg.options()).unwrap();
    let options = SinkOptions {
        batch_rows: 100,
        ..SinkOptions::default()
    };
    let sinks: Vec<Arc<PostgresSink>> = [a, b]
        .into_iter()
        .map(|s| Arc::new(PostgresSink::start(s, options, Arc::new(()))))
        .collect();
    // Each replica's lane hands its sink batches of 100 (two writers each), and sees counts
    // 1..=3 of every event in its own order.
    let mut tasks = tokio::task::JoinSet::new();
    for (n, sink) in sinks.iter().enumerate() {
        for writer in 0..2 {
            let sink = sink.clone();
            tasks.spawn(async move {
                for chunk in (writer * 100..2_000).step_by(200) {
                    for count in if n == 0 { [1, 2, 3] } else { [3, 1, 2] } {
                        let last = format!("2026-11-20T11:00:{:02}Z", count * 10);
                        let batch: Vec<Delivery> = (chunk..chunk + 100)
                            .map(|i| {
                                delivery(
                                    event(
                                        &format!("u{i}"),
                                        "Node",
                                        &format!("n{i}"),
                                        "R",
                                        count,
                                        &last,
                                    ),
                                    "nodes",
                                    &[],
                                )
                            })
                            .collect();
                        for result in sink.deliver_batch(&batch).await {
                            result.unwrap();
                        }
                    }
                }
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(
        pg.psql(
            "clusterscope",
            "SELECT count(*) || ' ' || count(DISTINCT uid) || ' ' || min(count) FROM clusterscope.events"
        ),
        "2000 2000 3"
    );
}

/// A row the database refuses fails alone: the rest of its batch is written.
#[tokio::test]
async fn a_refused_row_fails_alone_and_final() {
    let Some(pg) = Postgres::start() else { return };
    let store = store(&pg).await;
    pg.psql(
        "clusterscope",
        "ALTER TABLE clusterscope.events ADD CONSTRAINT no_poison CHECK (reason <> 'Poison')",
    );
    let sink = Arc::new(PostgresSink::start(
        store,
        SinkOptions {
            linger: Duration::from_millis(200),
            ..SinkOptions::default()
        },
        Arc::new(()),
    ));
    // The batch its lane hands it: one statement, refused, then row by row.
    let batch: Vec<Delivery> = (0..20)
        .map(|i| {
            let reason = if i == 7 { "Poison" } else { "Fine" };
            delivery(
                event(
                    &format!("u{i}"),
                    "Node",
                    "n",
                    reason,
                    1,
                    "2026-11-20T11:00:00Z",
                ),
                "nodes",
                &[],
            )
        })
        .collect();
    let mut failed = Vec::new();
    for (i, result) in sink.deliver_batch(&batch).await.into_iter().enumerate() {
        if let Err(f) = result {
            assert_eq!(
                f.action(sink.writer()),
                Action::GiveUp,
                "refused data is not retried: {f}"
            );
            assert!(f.to_string().contains("no_poison"), "{f}");
            failed.push(i);
        }
    }
    assert_eq!(failed, [7]);
    assert_eq!(
        pg.psql("clusterscope", "SELECT count(*) FROM clusterscope.events"),
        "19"
    );
}

/// A team's role reads only the rows delivered to the namespaces granted to it; clusterscope's
/// own role (which owns the schema, as the README sets it up) reads every row.
#[tokio::test]
async fn a_team_role_reads_only_its_namespaces_rows() {
    let Some(pg) = Postgres::start() else { return };
    let store = Store::connect_lazy(&pg.options()).unwrap();
    store.migrate().await.unwrap();
    let at = "2026-11-20T11:00:00Z";
    let rows = [
        Row::of(
            &event("u1", "Node", "n1", "R", 1, at),
            "nodes",
            &reached(&["team-a"]),
        ),
        Row::of(
            &event("u2", "Node", "n2", "R", 1, at),
            "nodes",
            &reached(&["team-b"]),
        ),
        Row::of(
            &event("u3", "PersistentVolume", "pv", "R", 1, at),
            "storage",
            &reached(&["team-b", "team-a"]),
        ),
        Row::of(&event("u4", "Node", "n4", "R", 1, at), "nodes", &[]),
    ];
    let refs: Vec<&Row> = rows.iter().collect();
    store.upsert(&refs).await.unwrap();
    let run = |user: &str, sql: &str| {
        let password = if user == "team_a" {
            "team-a-pw"
        } else {
            &pg.password
        };
        let out = pg.psql_with_password(user, password, "clusterscope", sql);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    pg.psql("postgres", "CREATE ROLE team_a LOGIN PASSWORD 'team-a-pw'");
    // The README's grant, run as clusterscope's role.
    let (ok, _, err) = run(
        "clusterscope",
        "GRANT USAGE ON SCHEMA clusterscope TO team_a; \
         GRANT SELECT ON clusterscope.events TO team_a; \
         INSERT INTO clusterscope.namespace_access (role, namespace) VALUES ('team_a', 'team-a'), ('gone_role', 'team-b')",
    );
    assert!(ok, "{err}");
    let sql = "SELECT string_agg(uid, ',' ORDER BY uid) FROM clusterscope.events";
    assert_eq!(run("team_a", sql).1, "u1,u3");
    assert_eq!(run("clusterscope", sql).1, "u1,u2,u3,u4");
    // The grants table itself is not readable to the team.
    let (ok, _, err) = run("team_a", "SELECT * FROM clusterscope.namespace_access");
    assert!(!ok && err.contains("permission denied"), "{err}");
}
