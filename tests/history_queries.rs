//! The README's history queries and the Grafana history dashboard's panel queries, run against
//! a real PostgreSQL holding a known week of events: each returns exactly the rows it promises.
//! `now()` is pinned to 2026-11-20 15:00 UTC (the query text is otherwise run as written).

mod support;

use support::postgres;

use clusterscope::history::{Row, Store};
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use postgres::Postgres;

const NOW: &str = "'2026-11-20T15:00:00Z'::timestamptz";

struct Seed {
    uid: &'static str,
    kind: &'static str,
    name: &'static str,
    reason: &'static str,
    type_: &'static str,
    first: &'static str,
    last: &'static str,
    count: i32,
    namespaces: &'static [&'static str],
}

const SEEDS: &[Seed] = &[
    Seed {
        uid: "u1",
        kind: "Node",
        name: "node-1",
        reason: "NodeNotReady",
        type_: "Warning",
        first: "2026-11-19T10:00:00Z",
        last: "2026-11-19T11:00:00Z",
        count: 3,
        namespaces: &["team-a"],
    },
    Seed {
        uid: "u2",
        kind: "Node",
        name: "node-1",
        reason: "NodeHasDiskPressure",
        type_: "Warning",
        first: "2026-11-20T13:00:00Z",
        last: "2026-11-20T14:00:00Z",
        count: 2,
        namespaces: &["team-a"],
    },
    Seed {
        uid: "u3",
        kind: "Node",
        name: "node-1",
        reason: "NodeNotReady",
        type_: "Warning",
        first: "2026-11-10T10:00:00Z",
        last: "2026-11-10T10:00:00Z",
        count: 1,
        namespaces: &[],
    },
    Seed {
        uid: "u4",
        kind: "Node",
        name: "node-2",
        reason: "NodeNotReady",
        type_: "Warning",
        first: "2026-11-17T00:00:00Z",
        last: "2026-11-17T01:00:00Z",
        count: 1,
        namespaces: &[],
    },
    Seed {
        uid: "u5",
        kind: "Node",
        name: "node-3",
        reason: "NodeNotReady",
        type_: "Warning",
        first: "2026-11-18T18:00:00Z",
        last: "2026-11-20T14:59:00Z",
        count: 5,
        namespaces: &["team-b"],
    },
    Seed {
        uid: "u6",
        kind: "PersistentVolume",
        name: "pv-1",
        reason: "VolumeFailedDelete",
        type_: "Warning",
        first: "2026-11-20T12:00:00Z",
        last: "2026-11-20T14:30:00Z",
        count: 4,
        namespaces: &["team-a", "storage"],
    },
    Seed {
        uid: "u7",
        kind: "PersistentVolume",
        name: "pv-2",
        reason: "ProvisioningFailed",
        type_: "Warning",
        first: "2026-11-20T10:00:00Z",
        last: "2026-11-20T11:00:00Z",
        count: 2,
        namespaces: &["team-b"],
    },
    Seed {
        uid: "u8",
        kind: "PersistentVolume",
        name: "pv-3",
        reason: "ProvisioningSucceeded",
        type_: "Normal",
        first: "2026-11-20T14:00:00Z",
        last: "2026-11-20T14:00:00Z",
        count: 1,
        namespaces: &["team-b"],
    },
];

fn at(t: &str) -> Time {
    Time(t.parse().unwrap())
}

async fn seeded() -> Option<Postgres> {
    let pg = Postgres::start()?;
    let store = Store::connect_lazy(&pg.options()).unwrap();
    store.migrate().await.unwrap();
    let rows: Vec<Row> = SEEDS
        .iter()
        .map(|s| {
            let ev = Event {
                metadata: ObjectMeta {
                    name: Some(format!("{}.{}", s.name, s.uid)),
                    namespace: Some("default".into()),
                    uid: Some(s.uid.into()),
                    resource_version: Some("1".into()),
                    ..ObjectMeta::default()
                },
                involved_object: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some(s.kind.into()),
                    name: Some(s.name.into()),
                    ..ObjectReference::default()
                },
                reason: Some(s.reason.into()),
                type_: Some(s.type_.into()),
                message: Some(format!("{} on {}", s.reason, s.name)),
                first_timestamp: Some(at(s.first)),
                last_timestamp: Some(at(s.last)),
                count: Some(s.count),
                ..Event::default()
            };
            let reached: Vec<clusterscope::owners::Destination> = s
                .namespaces
                .iter()
                .map(|n| clusterscope::owners::Destination {
                    namespace: (*n).to_owned(),
                    how: clusterscope::owners::How::Owner,
                    why: String::new(),
                })
                .collect();
            Row::of(&ev, "cluster", &reached)
        })
        .collect();
    let refs: Vec<&Row> = rows.iter().collect();
    store.upsert(&refs).await.unwrap();
    Some(pg)
}

/// The ```sql blocks of the "### Queries" section of the history documentation.
fn readme_queries() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/history.md")).unwrap();
    let start = readme.find("### Queries").expect("a Queries section");
    let section = &readme[start..];
    let end = section[4..].find("\n#").map_or(section.len(), |i| i + 4);
    section[..end]
        .split("```sql\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_owned())
        .collect()
}

fn lines(out: String) -> Vec<String> {
    out.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn every_readme_query_returns_its_rows() {
    let Some(pg) = seeded().await else { return };
    let queries = readme_queries();
    let expected: [&[&str]; 5] = [
        // Events about one Node this week.
        &[
            "2026-11-20 14:00:00+00|Warning|NodeHasDiskPressure|2|NodeHasDiskPressure on node-1",
            "2026-11-19 11:00:00+00|Warning|NodeNotReady|3|NodeNotReady on node-1",
        ],
        // Which Nodes went NotReady yesterday.
        &[
            "node-1|2026-11-19 10:00:00+00|3",
            "node-3|2026-11-18 18:00:00+00|5",
        ],
        // Top reasons by kind over the last day.
        &[
            "Node|NodeNotReady|5",
            "PersistentVolume|VolumeFailedDelete|4",
            "Node|NodeHasDiskPressure|2",
            "PersistentVolume|ProvisioningFailed|2",
            "PersistentVolume|ProvisioningSucceeded|1",
        ],
        // PersistentVolume failures per claim namespace.
        &["storage|1|4", "team-a|1|4", "team-b|1|2"],
        // What team-a received.
        &[
            "2026-11-20 14:30:00+00|PersistentVolume|pv-1|VolumeFailedDelete|VolumeFailedDelete on pv-1",
            "2026-11-20 14:00:00+00|Node|node-1|NodeHasDiskPressure|NodeHasDiskPressure on node-1",
            "2026-11-19 11:00:00+00|Node|node-1|NodeNotReady|NodeNotReady on node-1",
        ],
    ];
    assert_eq!(queries.len(), expected.len(), "{queries:#?}");
    for (query, want) in queries.iter().zip(expected) {
        let sql = query.replace("now()", NOW);
        assert_eq!(lines(pg.psql("clusterscope", &sql)), want, "{query}");
    }
}

/// Grafana's macros and variables as Grafana expands them for a 7-day range ending at NOW.
fn expand(sql: &str, namespace: &str) -> String {
    let mut out = sql.to_owned();
    while let Some(i) = out.find("$__timeGroupAlias(") {
        let end = i + out[i..].find(')').unwrap();
        let args = &out[i + "$__timeGroupAlias(".len()..end];
        let column = args.split(',').next().unwrap().trim();
        let seconds = match args.split(',').nth(1).map(str::trim) {
            Some("'1h'") => 3600,
            other => panic!("interval {other:?}"),
        };
        out.replace_range(
            i..=end,
            &format!("floor(extract(epoch from {column})/{seconds})*{seconds} AS \"time\""),
        );
    }
    while let Some(i) = out.find("$__timeFilter(") {
        let end = i + out[i..].find(')').unwrap();
        let column = out[i + "$__timeFilter(".len()..end].trim().to_owned();
        out.replace_range(
            i..=end,
            &format!("{column} BETWEEN '2026-11-13T15:00:00Z' AND '2026-11-20T15:00:00Z'"),
        );
    }
    assert!(
        !out.contains("$__"),
        "a macro the test does not know: {out}"
    );
    out.replace("$namespace", namespace)
}

#[tokio::test]
async fn every_history_dashboard_panel_returns_data() {
    let Some(pg) = seeded().await else { return };
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/grafana/clusterscope-history.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let namespace = variables.iter().find(|v| v["name"] == "namespace").unwrap();
    let choices = lines(pg.psql("clusterscope", namespace["query"].as_str().unwrap()));
    assert_eq!(choices, ["storage", "team-a", "team-b"]);
    let all = namespace["allValue"].as_str().unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 4);
    for panel in panels {
        assert_eq!(panel["datasource"]["type"], "grafana-postgresql-datasource");
        for target in panel["targets"].as_array().unwrap() {
            let sql = target["rawSql"].as_str().unwrap();
            // "All", and one namespace (quoted, as Grafana quotes a single value for SQL).
            for ns in [all, "'team-a'"] {
                let out = lines(pg.psql("clusterscope", &expand(sql, ns)));
                assert!(
                    !out.is_empty() && out.iter().all(|l| l != "0"),
                    "panel {:?} with namespace {ns} returned no data: {out:?}",
                    panel["title"]
                );
            }
        }
    }
}
