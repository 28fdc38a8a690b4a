//! Logs (tracing, text or JSON), the process's shutdown signal, and the two guards every
//! text taken from a request needs before it reaches a log line or a metric label: a length
//! cap ([`clip`]) and a rate limit ([`Throttle`]).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

/// `text` cut to at most `max` bytes (on a character boundary), saying how much was cut.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}... ({} more bytes)",
        &text[..end],
        text.len() - end
    ))
}

/// Lets one event through per `every`, and counts the ones it held back meanwhile.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    start: Instant,
    /// Milliseconds since `start` of the last event let through, plus one (0: never).
    last: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            start: Instant::now(),
            last: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last one)` when this event may be logged.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let every = u64::try_from(self.every.as_millis()).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= every;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `serve`'s log flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "log_flags")]
pub struct Args {
    /// Log format.
    #[arg(long, env = "CLUSTERSCOPE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `clusterscope=debug`); RUST_LOG wins when set.
    #[arg(long, env = "CLUSTERSCOPE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// kube's client logs every failed request at ERROR (`failed with error client error
/// (Connect)`), beside clusterscope's own line for the same failure at the level it deserves
/// (a WARN, naming what waits, once every ten tries): silenced unless a filter names it.
const QUIET: &str = "kube_client::client::builder=off";

/// Why logging could not be set up: which setting, the parser's words as the source.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `setting` is `RUST_LOG` or `--log-level`.
    #[error("{setting} {value:?} is not a log filter")]
    Filter {
        setting: &'static str,
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot install the logger")]
    Install(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The filter: `RUST_LOG` when set (as given), else `level` with kube's request errors off
/// (unless `level` names `kube_client`).
fn filter(rust_log: Option<&str>, level: &str) -> Result<EnvFilter, LogError> {
    let parse = |setting: &'static str, value: &str| {
        EnvFilter::try_new(value).map_err(|source| LogError::Filter {
            setting,
            value: value.to_owned(),
            source,
        })
    };
    if let Some(v) = rust_log.filter(|v| !v.is_empty()) {
        return parse("RUST_LOG", v);
    }
    let filter = parse("--log-level", level)?;
    if level.contains("kube_client") {
        return Ok(filter);
    }
    Ok(
        filter.add_directive(QUIET.parse().map_err(|source| LogError::Filter {
            setting: "the built-in filter",
            value: QUIET.to_owned(),
            source,
        })?),
    )
}

/// Installs the global subscriber: `RUST_LOG` when set, else `level`.
pub fn init(format: LogFormat, level: &str) -> Result<(), LogError> {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), level)?;
    // A log line that cannot be written (stderr closed) is dropped: by default the subscriber
    // would report it with `eprintln!`, which panics the task that logged.
    // Colours only for a person at a terminal: a pod's log or a file gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(LogError::Install)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed by this call, not when
/// the future is first polled: a SIGTERM that comes right after start-up (a pod deleted at
/// once, a busy machine) is a clean shutdown, never the default action's kill. Call it inside
/// the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(int) => tracing::info!("SIGINT received"),
                () = wait(term) => tracing::info!("SIGTERM received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("SIGINT received");
        } else {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn kubes_request_errors_are_off_unless_a_filter_names_them() {
        let said = |rust_log: Option<&str>, level: &str| {
            filter(rust_log, level).map(|f| f.to_string()).unwrap()
        };
        assert!(said(None, "info").contains(QUIET), "{}", said(None, "info"));
        assert!(!said(None, "info,kube_client=debug").contains(QUIET));
        assert!(
            !said(Some("debug"), "info").contains(QUIET),
            "RUST_LOG is taken as given"
        );
        assert!(filter(None, "info,=bad=").is_err());
    }

    use super::*;

    #[test]
    fn clip_cuts_on_a_character_boundary_and_says_how_much() {
        assert_eq!(clip("short", 10), "short");
        let cut = clip("ééééé", 3);
        assert_eq!(cut, "é... (8 more bytes)");
        assert!(clip(&"x".repeat(7_000_000), 200).len() < 240);
    }

    #[test]
    fn throttle_lets_one_through_per_period_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(t.allow(), None);
        }
        let t = Throttle::new(Duration::ZERO);
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), Some(0));
    }
}
