//! Event history in PostgreSQL: every event a `history: true` channel routes becomes one row,
//! keyed by the source event's uid and updated as its count and last time grow, so that a
//! platform team can ask a week later which Nodes went NotReady and which volumes failed.
//!
//! - [`Row`]: what is stored of one event (the columns people filter on, and the event whole);
//! - [`schema`]: where the tables live, the embedded migrations, and bringing a database (also
//!   one an earlier release left) to this binary's version;
//! - [`store`]: the database: connection pool, batched upserts, retention;
//! - [`sink`]: the recorder pipeline's `postgres` destination, which gathers the deliveries
//!   its lane's workers hand it into batches, and the retention task.
//!
//! The rows come from the mirror controller's deliveries (the stored events, not admission):
//! its list at every start re-delivers what the API server holds, and the upsert makes that
//! idempotent, so a restart or a second replica misses nothing and duplicates nothing.

pub mod schema;
pub mod sink;
pub mod store;

use k8s_openapi::api::core::v1::Event;

pub use sink::{PostgresSink, SinkOptions};
pub use store::{Store, StoreError, StoreOptions};

/// The sink's name in metrics and logs.
pub const POSTGRES: &str = "postgres";

/// Everything `serve` needs to record history.
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    pub store: StoreOptions,
    pub sink: SinkOptions,
    /// How often rows past the retention are deleted.
    pub retention_every: std::time::Duration,
}

impl HistoryOptions {
    pub fn new(url: &str) -> Self {
        HistoryOptions {
            store: StoreOptions::new(url),
            sink: SinkOptions::default(),
            retention_every: std::time::Duration::from_secs(600),
        }
    }
}

/// `serve`'s history flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "history_flags")]
pub struct Args {
    /// Record the events of `history: true` channels in this PostgreSQL database
    /// (`postgres://user@host:5432/db?sslmode=verify-full&sslrootcert=/etc/ca.crt`).
    #[arg(long, env = "CLUSTERSCOPE_POSTGRES_URL", value_name = "URL")]
    pub postgres_url: Option<String>,
    /// The database password (instead of one in the URL; from a Secret).
    #[arg(
        long,
        env = "CLUSTERSCOPE_POSTGRES_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD",
        requires = "postgres_url"
    )]
    pub postgres_password: Option<String>,
    /// Connections to the history database at most (1-64).
    #[arg(long, env = "CLUSTERSCOPE_POSTGRES_CONNECTIONS", default_value_t = 4,
          value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(1..=64))]
    pub postgres_connections: u32,
    /// Rows written to the history database in one statement at most (1-5000).
    #[arg(long, env = "CLUSTERSCOPE_HISTORY_BATCH_ROWS", default_value_t = 500,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=5000))]
    pub history_batch_rows: usize,
    /// Rows held while the history database is slow or down (100-1000000); past it, events
    /// are dropped (counted) and written at the re-list that follows once it answers.
    #[arg(long, env = "CLUSTERSCOPE_HISTORY_BUFFER", default_value_t = 20_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(100..=1_000_000))]
    pub history_buffer: usize,
}

impl Args {
    /// What `serve` records with, when a database is named.
    pub fn options(&self) -> Option<HistoryOptions> {
        let url = self.postgres_url.as_deref()?;
        let mut h = HistoryOptions::new(url);
        h.store.password = self.postgres_password.clone();
        h.store.connections = self.postgres_connections;
        h.sink.batch_rows = self.history_batch_rows;
        h.sink.buffer = self.history_buffer;
        // Each writer holds a connection; leave one for retention.
        h.sink.writers = (self.postgres_connections.saturating_sub(1).max(1) as usize).min(4);
        Some(h)
    }
}

/// Starts recording into `store`: migrates the schema (retrying with backoff while the
/// database cannot be reached, the writers waiting meanwhile), then deletes expired rows every
/// `retention_every`, until `stop`. Returns the pipeline's sink and the task.
pub fn spawn(
    store: Store,
    options: &HistoryOptions,
    config: crate::config::SharedConfig,
    metrics: crate::metrics::HistoryMetrics,
    status: std::sync::Arc<crate::status::StatusLine>,
    stop: tokio_util::sync::CancellationToken,
) -> (std::sync::Arc<PostgresSink>, tokio::task::JoinHandle<()>) {
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let sink = std::sync::Arc::new(PostgresSink::start_when(
        store.clone(),
        options.sink,
        std::sync::Arc::new(metrics.clone()),
        ready,
    ));
    let where_ = store::redacted(&options.store.url);
    let every = options.retention_every;
    status.set(format!("history: connecting to PostgreSQL at {where_}"));
    let work = async move {
        let mut delays = crate::backoff::RetryPolicy::reconnect().delays();
        let migrated = loop {
            match store.migrate().await {
                Ok(done) => break done,
                Err(e) => {
                    let wait = delays.next().unwrap_or(std::time::Duration::from_secs(30));
                    tracing::warn!(database = %where_, error = %crate::errors::Chain(&e), retry_in = %humantime::format_duration(wait),
                        "history: cannot prepare the PostgreSQL schema yet; events wait in the buffer");
                    status.set(format!("history: waiting for PostgreSQL at {where_}: {e}"));
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let version = migrated.version;
        metrics.schema_version.set(version);
        tracing::info!(database = %where_, schema_version = version, applied = ?migrated.applied,
            created_schema = migrated.created_schema, "history: recording into PostgreSQL");
        status.set(format!(
            "history: recording into PostgreSQL at {where_} (schema version {version})"
        ));
        let _ = ready_tx.send(true);
        sink::expire_forever(store, config, every, |pass| {
            metrics.retention(pass.ok());
        })
        .await;
    };
    let task = tokio::spawn(async move {
        stop.run_until_cancelled_owned(work).await;
    });
    (sink, task)
}

/// One event as stored: every field a string PostgreSQL accepts (no NUL characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub channel: String,
    pub involved_group: String,
    pub involved_kind: String,
    pub involved_name: String,
    pub reason: String,
    pub type_: String,
    pub message: String,
    pub reporting_component: String,
    pub reporting_instance: String,
    pub namespaces: Vec<String>,
    pub first_time: k8s_openapi::jiff::Timestamp,
    pub last_time: k8s_openapi::jiff::Timestamp,
    pub count: i32,
    pub resource_version: String,
    /// The event as JSON text, without `metadata.managedFields`.
    pub event: String,
}

/// PostgreSQL text holds no NUL character (a JSON `\u0000` is valid to the API server): each
/// becomes U+FFFD, so the row is stored instead of failing its whole batch.
pub fn storable(text: &str) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.to_owned()
    }
}

fn field(text: Option<&str>) -> String {
    storable(text.unwrap_or_default())
}

impl Row {
    /// The row of `event` (a stored core/v1 Event, as the mirror controller sees it), routed to
    /// `channel` and delivered to `namespaces`.
    pub fn of(event: &Event, channel: &str, destinations: &[crate::owners::Destination]) -> Row {
        let meta = &event.metadata;
        let involved = &event.involved_object;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let name = meta.name.as_deref().unwrap_or_default();
        let uid = meta
            .uid
            .clone()
            .unwrap_or_else(|| format!("{namespace}/{name}"));
        let first = event
            .first_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(event.event_time.as_ref().map(|t| t.0))
            .or(meta.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
        let series = event.series.as_ref();
        let last = series
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or(event.last_timestamp.as_ref().map(|t| t.0))
            .or(event.event_time.as_ref().map(|t| t.0))
            .unwrap_or(first)
            .max(first);
        let count = series
            .and_then(|s| s.count)
            .or(event.count)
            .unwrap_or(1)
            .max(1);
        let mut whole = event.clone();
        whole.metadata.managed_fields = None;
        let json = serde_json::to_string(&whole).unwrap_or_else(|_| "{}".to_owned());
        // `\u0000` escapes too: jsonb refuses them as text refuses NUL.
        let json = json.replace("\\u0000", "\\ufffd");
        let source = event.source.as_ref();
        Row {
            uid: storable(&uid),
            namespace: storable(namespace),
            name: storable(name),
            channel: storable(channel),
            // The group as the decision reads it (`""` for the core group and when unknown).
            involved_group: field(
                involved
                    .api_version
                    .as_deref()
                    .and_then(crate::classify::group_of),
            ),
            involved_kind: field(involved.kind.as_deref()),
            involved_name: field(involved.name.as_deref()),
            reason: field(event.reason.as_deref()),
            type_: field(event.type_.as_deref()),
            message: field(event.message.as_deref()),
            reporting_component: field(
                event
                    .reporting_component
                    .as_deref()
                    .filter(|c| !c.is_empty())
                    .or(source.and_then(|s| s.component.as_deref())),
            ),
            reporting_instance: field(
                event
                    .reporting_instance
                    .as_deref()
                    .filter(|c| !c.is_empty())
                    .or(source.and_then(|s| s.host.as_deref())),
            ),
            namespaces: destinations
                .iter()
                .map(|d| storable(&d.namespace))
                .collect(),
            first_time: first,
            last_time: last,
            count,
            resource_version: field(meta.resource_version.as_deref()),
            event: json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EventSeries, EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};

    fn ts(s: &str) -> k8s_openapi::jiff::Timestamp {
        s.parse().unwrap()
    }

    fn node_event() -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some("n1.17a".into()),
                namespace: Some("default".into()),
                uid: Some("u-1".into()),
                resource_version: Some("42".into()),
                managed_fields: Some(vec![Default::default()]),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some("n1".into()),
                ..ObjectReference::default()
            },
            reason: Some("NodeNotReady".into()),
            type_: Some("Warning".into()),
            message: Some("bad\0byte".into()),
            source: Some(EventSource {
                component: Some("node-controller".into()),
                host: Some("cp-1".into()),
            }),
            first_timestamp: Some(Time(ts("2026-11-20T10:00:00Z"))),
            last_timestamp: Some(Time(ts("2026-11-20T11:00:00Z"))),
            count: Some(7),
            ..Event::default()
        }
    }

    #[test]
    fn a_core_event_gives_its_filter_columns_and_loses_nul_and_managed_fields() {
        let team_a = crate::owners::Destination {
            namespace: "team-a".to_owned(),
            how: crate::owners::How::Owner,
            why: String::new(),
        };
        let row = Row::of(&node_event(), "nodes", &[team_a]);
        assert_eq!(row.uid, "u-1");
        assert_eq!(
            (row.involved_group.as_str(), row.involved_kind.as_str()),
            ("", "Node")
        );
        assert_eq!(row.involved_name, "n1");
        assert_eq!(row.message, "bad\u{FFFD}byte");
        assert_eq!(row.reporting_component, "node-controller");
        assert_eq!(row.reporting_instance, "cp-1");
        assert_eq!(row.count, 7);
        assert_eq!(row.first_time, ts("2026-11-20T10:00:00Z"));
        assert_eq!(row.last_time, ts("2026-11-20T11:00:00Z"));
        assert_eq!(row.namespaces, ["team-a"]);
        assert!(!row.event.contains("managedFields"));
        assert!(!row.event.contains("\\u0000"), "{}", row.event);
        let back: serde_json::Value = serde_json::from_str(&row.event).unwrap();
        assert_eq!(back["message"], "bad\u{FFFD}byte");
    }

    #[test]
    fn a_series_event_counts_and_times_by_its_series() {
        let mut ev = node_event();
        ev.first_timestamp = None;
        ev.last_timestamp = None;
        ev.count = None;
        ev.event_time = Some(MicroTime(ts("2026-11-20T09:00:00.5Z")));
        ev.reporting_component = Some("kubelet".into());
        ev.involved_object.api_version = Some("storage.k8s.io/v1".into());
        ev.series = Some(EventSeries {
            count: Some(12),
            last_observed_time: Some(MicroTime(ts("2026-11-20T09:30:00Z"))),
        });
        let row = Row::of(&ev, "storage", &[]);
        assert_eq!(row.involved_group, "storage.k8s.io");
        assert_eq!(row.reporting_component, "kubelet");
        assert_eq!(row.count, 12);
        assert_eq!(row.first_time, ts("2026-11-20T09:00:00.5Z"));
        assert_eq!(row.last_time, ts("2026-11-20T09:30:00Z"));
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        history: Args,
    }

    fn flags(args: &[&str]) -> Result<Option<HistoryOptions>, clap::Error> {
        use clap::Parser;
        Flags::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .map(|f| f.history.options())
    }

    #[test]
    fn the_flags_make_the_options_and_leave_a_connection_for_retention() {
        assert!(
            flags(&[]).unwrap().is_none(),
            "history is off without a URL"
        );
        let h = flags(&[
            "--postgres-url",
            "postgres://cs@db/cs",
            "--postgres-connections",
            "6",
            "--history-buffer",
            "500",
            "--history-batch-rows",
            "50",
        ])
        .unwrap()
        .unwrap();
        assert_eq!((h.store.connections, h.sink.writers), (6, 4));
        assert_eq!((h.sink.buffer, h.sink.batch_rows), (500, 50));
        let one = flags(&[
            "--postgres-url",
            "postgres://cs@db/cs",
            "--postgres-connections",
            "1",
        ]);
        assert_eq!(one.unwrap().unwrap().sink.writers, 1);
        assert!(
            flags(&["--postgres-password", "x"]).is_err(),
            "a password needs a URL"
        );
        assert!(flags(&["--postgres-url", "u", "--history-buffer", "5"]).is_err());
    }

    #[test]
    fn a_last_time_before_the_first_is_the_first() {
        let mut ev = node_event();
        ev.last_timestamp = Some(Time(ts("2026-11-19T00:00:00Z")));
        let row = Row::of(&ev, "nodes", &[]);
        assert_eq!(row.last_time, row.first_time);
    }
}
