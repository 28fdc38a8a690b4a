//! Where `serve` is assembled, as kubert's `Runtime` assembles a controller: [`Runtime::bind`]
//! loads what the program needs (configuration, certificate, cluster, history database) and
//! binds the server's listeners, so every start-up problem is reported before anything is
//! served; [`Runtime::run`] starts what runs beside the webhook (the reloaders, the admin
//! server, the cluster side, history) as supervised tasks (`crate::tasks`) on one shutdown token, serves
//! until the shutdown future resolves, lets the webhook drain, then stops the rest.
//!
//! [`crate::server`] is the HTTP server only; nothing else assembles the program.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::admission::Reviewer;
use crate::classify::ScopeResolver;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{AppState, BindError, Certificates, Limits, Server};
use crate::status::StatusLine;
use crate::tasks::Tasks;
use crate::tls::CertReloader;

/// Everything `serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub config: Option<PathBuf>,
    pub certificates: Certificates,
    pub limits: Limits,
    /// The cluster side: discovery and mirroring.
    pub cluster: crate::cluster::ClusterOptions,
    /// Event history in PostgreSQL (`--postgres-url`); recorded by the mirror controller.
    pub history: Option<crate::history::HistoryOptions>,
}

impl ServeOptions {
    /// The options `serve`'s flags make: the server's own, the cluster side's and the
    /// history's.
    pub fn from_flags(
        server: crate::server::Args,
        cluster: crate::cluster::ClusterOptions,
        history: Option<crate::history::HistoryOptions>,
    ) -> Self {
        let (c, l) = (server.certificates, server.limits);
        ServeOptions {
            listen: server.listen,
            admin_listen: server.admin_listen,
            config: server.config,
            certificates: Certificates {
                pair: c.tls_cert.zip(c.tls_key),
                dir: c.cert_dir,
                reload_interval: c.cert_reload_interval,
                client_ca: c.client_ca,
            },
            limits: Limits {
                max_connections: l.max_connections,
                max_in_flight: l.max_in_flight,
                body_memory: l.max_body_memory,
                max_connections_per_peer: l.max_connections_per_peer,
                header_read_timeout: l.header_read_timeout,
                drain_timeout: l.drain_timeout,
                ..Limits::default()
            },
            cluster,
            history,
        }
    }
}

/// A start-up failure, in an operator's words, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot use the cluster")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot use the history database")]
    History(#[from] crate::history::StoreError),
}

impl ServeError {
    /// Whether the system failed rather than the input (exit 1, not 2): a port in use, a file
    /// that cannot be read or written. A refused configuration, certificate or flag is input.
    pub fn is_io(&self) -> bool {
        match self {
            ServeError::Bind(b) => b.is_io(),
            ServeError::Config(c) => c.unreadable(),
            ServeError::Cluster(c) => c.unreadable(),
            ServeError::History(_) => false,
        }
    }
}

/// The whole program, bound and not yet serving.
pub struct Runtime {
    server: Server,
    options: ServeOptions,
    /// Follows the serving certificate's files.
    cert_reloader: Option<CertReloader>,
    config_reloader: Option<crate::reload::ConfigReloader>,
    /// The cluster to use and discovery's poke receiver, when one is configured.
    cluster: Option<(crate::cluster::ApiServer, tokio::sync::mpsc::Receiver<()>)>,
    /// clusterscope's own events (connected by the cluster side).
    own_events: Arc<crate::recorder::OwnEvents>,
    /// The history database, when `--postgres-url` names one (connected when first used).
    history: Option<crate::history::Store>,
}

impl Runtime {
    /// Loads the configuration, binds both listeners, loads (or makes) the certificate, and
    /// resolves the cluster and the history database, in that order.
    pub async fn bind(options: ServeOptions, metrics: Arc<Metrics>) -> Result<Self, ServeError> {
        let (config, config_text) = match &options.config {
            Some(path) => Config::read(path),
            None => Ok((Config::embedded_default(), Vec::new())),
        }?;
        // The ports first: an address in use is said before any certificate is made.
        let bound = Server::listen(options.listen, options.admin_listen).await?;
        let (acceptor, cert_reloader) =
            crate::server::serving_certificate(&options.certificates, &metrics.tls)?;
        let cluster_state = Arc::new(StatusLine::default());
        let (cluster, discovery) = plan_cluster(&options, &cluster_state).await?;
        let history_status = Arc::new(StatusLine::default());
        let history = open_history(&options, &metrics, &history_status, cluster.is_some())?;
        metrics.channels(config.channels.iter().map(|c| c.name.as_str()));
        for warning in config.warnings(&crate::classify::builtin_kind_names()) {
            tracing::warn!(%warning, "configuration: a route that can never match");
        }
        let shared_config = crate::config::shared(config);
        let config_status = Arc::new(StatusLine::default());
        config_status.set("configuration: the embedded default");
        let own_events = Arc::new(crate::recorder::OwnEvents::new());
        let config_reloader = options.config.clone().map(|path| {
            crate::reload::ConfigReloader::new(
                path,
                shared_config.clone(),
                metrics.clone(),
                config_status.clone(),
                config_text,
            )
            .with_own_events(own_events.clone())
        });
        // With a cluster, kinds nobody knows stay undetermined until discovery answers.
        let scope_resolver = if cluster.is_some() {
            ScopeResolver::awaiting_discovery()
        } else {
            ScopeResolver::new()
        };
        let limits = &options.limits;
        let state = Arc::new(AppState {
            reviewer: Reviewer::with_shared(shared_config, Arc::new(scope_resolver)),
            config_status,
            history_status,
            background: Arc::new(StatusLine::default()),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            max_in_flight: limits.max_in_flight.max(1),
            body_budget: crate::server::body_budget(limits.body_memory),
            body_memory: limits.body_memory,
            refusal_log: crate::telemetry::Throttle::new(Duration::from_secs(1)),
            metrics,
            ready: AtomicBool::new(false),
            cluster: cluster_state,
            discovery,
            discovery_wait: options.cluster.discovery_wait,
        });
        Ok(Runtime {
            server: Server::new(bound, acceptor, state, options.limits.clone()),
            options,
            cert_reloader: Some(cert_reloader),
            config_reloader,
            cluster,
            own_events,
            history,
        })
    }

    /// The HTTPS address actually bound (useful with port 0).
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.server.webhook_addr()
    }

    /// The admin address actually bound.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.server.admin_addr()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.server.state()
    }

    /// Starts what runs beside the webhook, serves until `shutdown` resolves, lets the webhook
    /// drain, then stops the rest (mirroring hands its lease over).
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let state = self.server.state();
        state.background.set("background tasks: running");
        let stop = tokio_util::sync::CancellationToken::new();
        let mut tasks = Tasks::new(stop, state.metrics.clone(), state.background.clone());
        self.start_background(&mut tasks);
        self.server.serve(shutdown).await;
        tasks.stop().await;
        tracing::info!("stopped");
        Ok(())
    }

    /// The certificate and configuration reloaders, the admin server, history and the cluster
    /// side, each a supervised task on the one token.
    fn start_background(&mut self, tasks: &mut Tasks) {
        let stop = tasks.token();
        let interval = self.options.certificates.reload_interval;
        let second = Duration::from_secs(1);
        if let Some(reloader) = self.cert_reloader.take() {
            let reloading = reloader.spawn(interval, stop.clone());
            tasks.watch("certificate-reloader", second, reloading);
        }
        if let Some(mut reloader) = self.config_reloader.take() {
            let paths = vec![reloader.path.clone()];
            let watching = crate::watch::spawn(paths, interval, stop.clone(), move || {
                reloader.check();
            });
            tasks.watch("configuration-reloader", second, watching);
        }
        tasks.watch(
            "admin-server",
            second,
            self.server.serve_admin(stop.clone()),
        );
        let Some((target, pokes)) = self.cluster.take() else {
            return;
        };
        let state = self.server.state();
        let history =
            self.history
                .take()
                .zip(self.options.history.as_ref())
                .map(|(store, options)| {
                    let (sink, task) = crate::history::spawn(
                        store,
                        options,
                        state.reviewer.config.clone(),
                        state.metrics.history.clone(),
                        state.history_status.clone(),
                        stop.clone(),
                    );
                    tasks.watch("history", second, task);
                    sink as Arc<dyn crate::mirror::outputs::Output>
                });
        // Always registered: a reloaded configuration may turn it on; idle otherwise.
        let otlp = crate::otlp::OtlpSink::new(
            state.reviewer.config.clone(),
            state.metrics.otlp.clone(),
            crate::otlp::OtlpOptions::default(),
        );
        otlp.prepare();
        let otlp: Arc<dyn crate::mirror::outputs::Output> = Arc::new(otlp);
        let cluster = crate::cluster::spawn(
            target,
            crate::cluster::Shared {
                config: state.reviewer.config.clone(),
                resolver: state.reviewer.resolver.clone(),
                metrics: state.metrics.clone(),
                state: state.cluster.clone(),
                own_events: self.own_events.clone(),
                outputs: history.into_iter().chain([otlp]).collect(),
            },
            self.options.cluster.clone(),
            pokes,
            stop,
        );
        for (name, task) in cluster {
            tasks.watch(name, Duration::from_secs(5), task);
        }
    }
}

/// The cluster to connect to in the background, resolved from local files and the
/// environment only (binding never waits on the API server, see `cluster::spawn`), and the
/// trigger that asks discovery for a refresh; said on `state`. A cluster asked for explicitly
/// that cannot be used stops the start: starting without it would hide the mistake.
async fn plan_cluster(options: &ServeOptions, state: &StatusLine) -> Result<Cluster, ServeError> {
    let mode = &options.cluster.mode;
    match crate::cluster::plan(mode, options.cluster.connect_timeout).await {
        Ok(Some(target)) => {
            tracing::info!(
                server = %target.server,
                source = %target.source,
                context = target.context.as_deref().unwrap_or(""),
                "cluster configured ({}): connecting to {} in the background",
                target.source,
                target.server
            );
            let (trigger, pokes) = crate::discovery::trigger();
            state.set(format!("mirroring: connecting to {}", target.server));
            Ok((Some((target, pokes)), Some(trigger)))
        }
        Ok(None) => {
            let why = match mode {
                crate::cluster::ClusterMode::Off => "--cluster off",
                _ => "not running in a pod; --cluster on or --kubeconfig uses a kubeconfig",
            };
            tracing::info!(
                "no cluster ({why}): mirroring and discovery are off; the webhook serves with the built-in kind table"
            );
            state.set(format!("mirroring: off ({why})"));
            Ok((None, None))
        }
        Err(reason) if mode.required() => Err(ServeError::Cluster(reason)),
        Err(reason) => {
            let reason = crate::errors::error_chain(&reason);
            tracing::warn!(
                %reason,
                "no cluster: mirroring and discovery are off; the webhook serves with the built-in kind table"
            );
            state.set(format!("mirroring: off ({reason})"));
            Ok((None, None))
        }
    }
}

/// The history database when `--postgres-url` names one (connected when first used: a URL
/// that cannot be right stops the start, a database that does not answer yet does not), said
/// on `status`.
fn open_history(
    options: &ServeOptions,
    metrics: &Metrics,
    status: &StatusLine,
    with_cluster: bool,
) -> Result<Option<crate::history::Store>, ServeError> {
    let Some(h) = &options.history else {
        status.set("history: off (no --postgres-url)");
        return Ok(None);
    };
    let store = crate::history::Store::connect_lazy(&h.store)?;
    metrics.delivery.sink(crate::history::POSTGRES);
    if !with_cluster {
        tracing::warn!(
            "history: --postgres-url is set but there is no cluster: nothing is recorded (the mirror controller records history)"
        );
        status.set("history: off (no cluster: the mirror controller records history)");
    }
    Ok(Some(store))
}

/// What [`plan_cluster`] found: the target with discovery's pokes, and discovery's trigger.
type Cluster = (
    Option<(crate::cluster::ApiServer, tokio::sync::mpsc::Receiver<()>)>,
    Option<crate::discovery::Trigger>,
);
