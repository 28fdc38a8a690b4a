//! The HTTPS admission server and the plain-HTTP admin server.
//!
//! Lifecycle: [`Server::bind`] loads what the server needs (configuration, certificate) and
//! binds both listeners, so every start-up problem is reported before anything is served;
//! [`Server::run`] serves until the shutdown future resolves, then turns readiness off, stops
//! accepting, lets requests in flight finish, closes idle keep-alive connections at once
//! (HTTP/1 `Connection: close`, HTTP/2 GOAWAY) and returns within the drain time.

pub mod args;
mod plain;

pub use args::{Args, Certificates, Limits};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode, Uri, header};
use axum::routing::get;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::Reviewer;
use crate::classify::ScopeResolver;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::tls::{CertReloader, CertResolver, TlsError};

/// Largest AdmissionReview body accepted (as controller-runtime).
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;
/// Default memory for request bodies being read or reviewed, all requests together.
///
/// The arithmetic against the shipped 64 MiB memory limit: the process idles at about 12 MB
/// and the mirror adds about 180 bytes a stored copy (20,000 copies: 17 MB peak measured);
/// a body held for review costs its size plus a few kilobytes (the decision reads it in
/// place), and bodies are counted by the capacity actually allocated. 16 MiB of bodies leaves
/// the rest of the limit for connection buffers (HTTP/2 windows below: at most 256 KiB a
/// stream, 1 MiB a connection) and the allocator.
pub const DEFAULT_BODY_MEMORY: usize = 16 * 1024 * 1024;
/// Default cap on connections from one address.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 512;
/// Bodies are reserved in steps of this many bytes.
const BUDGET_UNIT: usize = 1024;
/// The API server's own ceiling for `timeoutSeconds`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// Used when the request names no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A start-up failure, in an operator's words, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Generating or writing the self-signed pair failed.
    #[error("{0}")]
    SelfSigned(String),
    #[error("cannot listen on {addr} ({flag})")]
    Listen {
        addr: SocketAddr,
        /// The flag that gave the address: `--listen` or `--admin-listen`.
        flag: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the cluster")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot use the history database: {0}")]
    History(#[from] crate::history::StoreError),
}

impl ServeError {
    /// Whether the system failed rather than the input (exit 1, not 2): a port in use, a file
    /// that cannot be read or written. A refused configuration, certificate or flag is input.
    pub fn is_io(&self) -> bool {
        match self {
            ServeError::Listen { .. } | ServeError::SelfSigned(_) => true,
            ServeError::Tls(TlsError::Read { .. }) => true,
            ServeError::Config(c) => c.unreadable(),
            ServeError::Cluster(c) => c.unreadable(),
            ServeError::Tls(_) | ServeError::History(_) => false,
        }
    }
}

/// Shared by every request.
#[derive(Debug)]
pub struct AppState {
    pub reviewer: Reviewer,
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    /// What `/readyz` says about mirroring and discovery.
    pub cluster: Arc<crate::status::StatusLine>,
    /// What `/readyz` says about the configuration file.
    pub config_status: Arc<crate::status::StatusLine>,
    /// What `/readyz` says about the history database.
    pub history_status: Arc<crate::status::StatusLine>,
    /// Pokes discovery when a review meets a kind nobody knows.
    pub discovery: Option<crate::discovery::Trigger>,
    /// How long the cluster side waits for discovery's first answer (for `/readyz`).
    pub discovery_wait: Duration,
    /// Requests being served, and the most allowed.
    pub in_flight: std::sync::atomic::AtomicUsize,
    pub max_in_flight: usize,
    /// Request body memory left, in units of [`BUDGET_UNIT`] bytes.
    pub body_budget: Arc<tokio::sync::Semaphore>,
    pub body_memory: usize,
    /// Refusal log lines: one a second, with a count of those held back.
    pub refusal_log: crate::telemetry::Throttle,
}

/// A bound, not yet serving, server.
pub struct Server {
    state: Arc<AppState>,
    webhook: TcpListener,
    /// Moved into the admin server's task by [`Server::run`].
    admin: Option<TcpListener>,
    acceptor: TlsAcceptor,
    reloader: Option<CertReloader>,
    config_reloader: Option<crate::reload::ConfigReloader>,
    options: ServeOptions,
    /// The cluster to use and discovery's poke receiver, when one is configured.
    cluster: Option<(crate::cluster::Target, tokio::sync::mpsc::Receiver<()>)>,
    /// clusterscope's own events (connected by the cluster side).
    own_events: Arc<crate::recorder::OwnEvents>,
    /// The history database, when `--postgres-url` names one (connected when first used).
    history: Option<crate::history::Store>,
}

impl Server {
    /// Loads the configuration and certificate and binds both listeners.
    pub async fn bind(options: ServeOptions, metrics: Arc<Metrics>) -> Result<Server, ServeError> {
        let (config, config_text) = match &options.config {
            Some(path) => Config::read(path),
            None => Ok((Config::embedded_default(), Vec::new())),
        }?;
        // The ports first: an address in use is said before any certificate is made.
        let listen = |addr: SocketAddr, flag: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr, flag, source })
        };
        let webhook = listen(options.listen, "--listen").await?;
        let admin = listen(options.admin_listen, "--admin-listen").await?;
        let (acceptor, reloader) = serving_certificate(&options, &metrics)?;
        let cluster_state = Arc::new(crate::status::StatusLine::default());
        let (cluster, discovery) = plan_cluster(&options, &cluster_state).await?;
        let history_status = Arc::new(crate::status::StatusLine::default());
        let history = open_history(&options, &metrics, &history_status, cluster.is_some())?;
        metrics.channels(config.channels.iter().map(|c| c.name.as_str()));
        for warning in config.warnings(&crate::classify::builtin_kind_names()) {
            tracing::warn!(%warning, "configuration: a route that can never match");
        }
        let shared_config = crate::config::shared(config);
        let config_status = Arc::new(crate::status::StatusLine::default());
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
        let state = Arc::new(AppState {
            reviewer: Reviewer::with_shared(shared_config, Arc::new(scope_resolver)),
            config_status,
            history_status,
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            max_in_flight: options.limits.max_in_flight.max(1),
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                (options.limits.body_memory / BUDGET_UNIT)
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            body_memory: options.limits.body_memory,
            refusal_log: crate::telemetry::Throttle::new(Duration::from_secs(1)),
            metrics,
            ready: AtomicBool::new(false),
            cluster: cluster_state,
            discovery,
            discovery_wait: options.cluster.discovery_wait,
        });
        Ok(Server {
            state,
            webhook,
            admin: Some(admin),
            acceptor,
            reloader: Some(reloader),
            config_reloader,
            options,
            cluster,
            own_events,
            history,
        })
    }

    /// The HTTPS address actually bound (useful with port 0).
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.local_addr().ok()
    }

    /// The admin address actually bound.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then drains: starts what runs beside the webhook,
    /// accepts connections until told to stop, then drains and stops the rest.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let background = self.start_background();
        let graceful = GracefulShutdown::new();
        self.state.ready.store(true, Ordering::SeqCst);
        let bound = |addr: std::io::Result<SocketAddr>| {
            addr.map_or_else(|_| "?".to_owned(), |a| a.to_string())
        };
        let (webhook_addr, admin_addr) = (
            bound(self.webhook.local_addr()),
            background.admin_addr.clone(),
        );
        tracing::info!(
            listen = %webhook_addr,
            admin = %admin_addr,
            "serving admission reviews on https://{webhook_addr}/mutate, health and metrics on http://{admin_addr}"
        );
        self.accept_until(shutdown, &graceful).await;
        self.drain(graceful, background).await;
        Ok(())
    }

    /// The certificate and configuration reloaders, the admin server and the cluster side, all
    /// stopped by one token once the webhook has drained.
    fn start_background(&mut self) -> Background {
        let stop = CancellationToken::new();
        let interval = self.options.certificates.reload_interval;
        let mut reloaders: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        reloaders.extend(
            self.reloader
                .take()
                .map(|r| r.spawn(interval, stop.clone())),
        );
        reloaders.extend(self.config_reloader.take().map(|mut r| {
            let paths = vec![r.path.clone()];
            crate::watch::spawn(paths, interval, stop.clone(), move || {
                r.check();
            })
        }));
        let admin_addr = self
            .admin_addr()
            .map_or_else(|| "?".to_owned(), |a| a.to_string());
        let listener = self.admin.take();
        let app = admin_router(self.state.clone());
        let admin = tokio::spawn({
            let stop = stop.clone();
            async move {
                let Some(listener) = listener else { return };
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "admin server stopped");
                }
            }
        });
        let mut history_task = None;
        let cluster = match self.cluster.take() {
            Some((target, pokes)) => {
                let history = self.history.take().zip(self.options.history.as_ref()).map(
                    |(store, options)| {
                        let (sink, task) = crate::history::spawn(
                            store,
                            options,
                            self.state.reviewer.config.clone(),
                            self.state.metrics.clone(),
                            self.state.history_status.clone(),
                            stop.clone(),
                        );
                        history_task = Some(task);
                        sink as Arc<dyn crate::mirror::outputs::Output>
                    },
                );
                crate::cluster::spawn(
                    target,
                    crate::cluster::Shared {
                        config: self.state.reviewer.config.clone(),
                        resolver: self.state.reviewer.resolver.clone(),
                        metrics: self.state.metrics.clone(),
                        state: self.state.cluster.clone(),
                        own_events: self.own_events.clone(),
                        outputs: history.into_iter().collect(),
                    },
                    self.options.cluster.clone(),
                    pokes,
                    stop.clone(),
                )
            }
            None => Vec::new(),
        };
        Background {
            stop,
            reloaders,
            admin,
            admin_addr,
            cluster,
            history: history_task,
        }
    }

    /// Accepts webhook connections until `shutdown`, each within the connection limits and
    /// served with the drain watcher of `graceful`.
    async fn accept_until(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
        graceful: &GracefulShutdown,
    ) {
        let app = webhook_service(self.state.clone());
        let builder = Arc::new(connection_builder(self.options.limits.header_read_timeout));
        let connections = Arc::new(tokio::sync::Semaphore::new(
            self.options.limits.max_connections.max(1),
        ));
        let peers = Arc::new(PeerCounts::default());
        let per_peer = self.options.limits.max_connections_per_peer.max(1);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.webhook.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                // At the cap: close at once rather than queue behind the others.
                let rejected = self.state.metrics.connections_rejected.inc() + 1;
                if rejected % 100 == 1 {
                    tracing::warn!(%peer, max = self.options.limits.max_connections, rejected_total = rejected, "connection limit reached; closing new connections");
                }
                continue;
            };
            let Some(peer_slot) = peers.clone().enter(peer.ip(), per_peer) else {
                let rejected = self.state.metrics.connections_rejected_by_peer.inc() + 1;
                if rejected % 100 == 1 {
                    tracing::warn!(%peer, max = per_peer, rejected_total = rejected, "connection limit for one address reached; closing its new connections");
                }
                continue;
            };
            let open = OpenConnection::new(
                self.state.metrics.connections_open.clone(),
                permit,
                peer_slot,
            );
            // Every log line about this connection names the peer; requests that HTTP/2 serves
            // in tasks of their own get the span from the executor (`InSpanExecutor`).
            let span = tracing::info_span!("connection", %peer);
            let serve = serve_connection(
                tcp,
                self.acceptor.clone(),
                builder.clone(),
                TowerToHyperService::new(app.clone()),
                graceful.watcher(),
                self.options.limits.handshake_timeout,
                open,
            );
            tokio::spawn(tracing::Instrument::instrument(serve, span));
        }
    }

    /// Readiness off, no new connections, requests in flight finished (within the drain
    /// time), then the admin server, the reloaders and the cluster side stopped.
    async fn drain(self, graceful: GracefulShutdown, background: Background) {
        self.state.ready.store(false, Ordering::SeqCst);
        drop(self.webhook);
        tracing::info!(
            drain_timeout = ?self.options.limits.drain_timeout,
            "shutting down: readiness off, draining connections"
        );
        let drained =
            tokio::time::timeout(self.options.limits.drain_timeout, graceful.shutdown()).await;
        if drained.is_err() {
            tracing::warn!("drain time over; closing the remaining connections");
        }
        // Everything beside the webhook stops; mirroring hands its lease over.
        background.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), background.admin).await;
        for task in background.reloaders.into_iter().chain(background.history) {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        for task in background.cluster {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("a cluster task did not stop in time");
            }
        }
        tracing::info!("stopped");
    }
}

/// The serving pair (given, or made self-signed in `--cert-dir`), the TLS acceptor over it,
/// and the reloader that follows its files.
fn serving_certificate(
    options: &ServeOptions,
    metrics: &Arc<Metrics>,
) -> Result<(TlsAcceptor, CertReloader), ServeError> {
    let (cert_path, key_path, (loaded, fingerprint)) = match &options.certificates.pair {
        Some((cert, key)) => (cert.clone(), key.clone(), crate::tls::load_pair(cert, key)?),
        None => self_signed_pair(&options.certificates.dir)?,
    };
    metrics.cert_expiry.set(loaded.not_after);
    let resolver = Arc::new(CertResolver::new(loaded.key));
    let tls_config =
        crate::tls::server_config(resolver.clone(), options.certificates.client_ca.as_deref())?;
    let reloader = CertReloader::new(cert_path, key_path, resolver, metrics.clone(), fingerprint);
    Ok((TlsAcceptor::from(Arc::new(tls_config)), reloader))
}

/// The cluster to connect to in the background, resolved from local files and the
/// environment only (binding never waits on the API server, see `cluster::spawn`), and the
/// trigger that asks discovery for a refresh; said on `state`. A cluster asked for explicitly
/// that cannot be used stops the start: starting without it would hide the mistake.
async fn plan_cluster(
    options: &ServeOptions,
    state: &crate::status::StatusLine,
) -> Result<Cluster, ServeError> {
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
            let reason = crate::telemetry::error_chain(&reason);
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
    status: &crate::status::StatusLine,
    with_cluster: bool,
) -> Result<Option<crate::history::Store>, ServeError> {
    let Some(h) = &options.history else {
        status.set("history: off (no --postgres-url)");
        return Ok(None);
    };
    let store = crate::history::Store::connect_lazy(&h.store)?;
    metrics.delivery_sink(crate::history::POSTGRES);
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
    Option<(crate::cluster::Target, tokio::sync::mpsc::Receiver<()>)>,
    Option<crate::discovery::Trigger>,
);

/// What runs beside the webhook while it serves.
struct Background {
    /// The one shutdown token of everything here.
    stop: CancellationToken,
    reloaders: Vec<tokio::task::JoinHandle<()>>,
    admin: tokio::task::JoinHandle<()>,
    admin_addr: String,
    cluster: Vec<tokio::task::JoinHandle<()>>,
    /// Migrations and retention of the history database.
    history: Option<tokio::task::JoinHandle<()>>,
}

/// HTTP/1.1 and HTTP/2 settings of every webhook connection.
fn connection_builder(header_read_timeout: Duration) -> auto::Builder<InSpanExecutor> {
    let mut builder = auto::Builder::new(InSpanExecutor);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    // HTTP/2: a dead peer is found by pings within 50 s; a client may push at most 256 KiB
    // a stream and 1 MiB a connection before we read (the default would be far more), and
    // header blocks stay small (an AdmissionReview's headers are a few hundred bytes).
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024);
    builder
}

/// Spawns what hyper runs beside a connection (HTTP/2 serves each stream in a task of its
/// own) in the span current at the spawn, the connection's: every line logged while
/// answering names the peer, whatever the protocol, at no cost per request.
#[derive(Clone, Copy, Debug)]
struct InSpanExecutor;

impl<F> hyper::rt::Executor<F> for InSpanExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(tracing::Instrument::in_current_span(future));
    }
}

/// One webhook connection: the TLS handshake (bounded), then HTTP until it ends or the
/// drain closes it. `open` counts it while it lives.
async fn serve_connection<S>(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<InSpanExecutor>>,
    service: TowerToHyperService<S>,
    watcher: hyper_util::server::graceful::Watcher,
    handshake_timeout: Duration,
    open: OpenConnection,
) where
    S: tower::Service<
            Request<hyper::body::Incoming>,
            Response = Response<Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _open = open;
    let _ = tcp.set_nodelay(true);
    // One deadline for the first byte and the handshake together.
    let deadline = tokio::time::Instant::now() + handshake_timeout;
    if tokio::time::timeout_at(deadline, plain::is_plain_http(&tcp))
        .await
        .unwrap_or(false)
    {
        plain::refuse(tcp).await;
        return;
    }
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The pair in `dir` when it loads, else a new self-signed CA and certificate for localhost
/// written there: the paths of certificate and key, and the pair loaded. A pair that is there
/// but does not load is moved aside (`*.invalid`), with a warning saying why.
pub fn self_signed_pair(
    dir: &std::path::Path,
) -> Result<(PathBuf, PathBuf, crate::tls::LoadedPair), ServeError> {
    let (ca, cert, key) = crate::certs::paths(dir);
    if cert.exists() || key.exists() {
        match crate::tls::load_pair(&cert, &key) {
            Ok(pair) if ca.exists() => {
                tracing::info!(ca = %ca.display(), "using the certificate in {}; clients trust {}", dir.display(), ca.display());
                return Ok((cert, key, pair));
            }
            Ok(pair) => {
                tracing::info!(
                    "using the certificate in {} (no ca.crt beside it: clients must trust its issuer)",
                    dir.display()
                );
                return Ok((cert, key, pair));
            }
            Err(e) => {
                let mut moved = Vec::new();
                for path in [&cert, &key] {
                    let aside = path.with_extension(format!(
                        "{}.invalid",
                        path.extension()
                            .map(|e| e.to_string_lossy())
                            .unwrap_or_default()
                    ));
                    if path.exists() && std::fs::rename(path, &aside).is_ok() {
                        moved.push(aside.display().to_string());
                    }
                }
                tracing::warn!(error = %e, moved_to = %moved.join(", "),
                    "the certificate pair in {} does not load; moved it aside and creating a new self-signed pair (give --tls-cert/--tls-key to use a pair of your own)",
                    dir.display());
            }
        }
    }
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let bundle = crate::certs::generate(&names).map_err(ServeError::SelfSigned)?;
    crate::certs::write(dir, &bundle)
        .map_err(|e| ServeError::SelfSigned(format!("--cert-dir: {e}")))?;
    tracing::info!(
        ca = %ca.display(),
        "no --tls-cert/--tls-key given: created a self-signed CA and a certificate for localhost and 127.0.0.1; trust {} to call the webhook",
        ca.display()
    );
    let pair = crate::tls::load_pair(&cert, &key)?;
    Ok((cert, key, pair))
}

/// The webhook: `POST /mutate`; another method on it is a 405, another path a 404, and a panic
/// while answering a 500. One route is matched by hand: a router's boxed, cloned services and
/// bodies cost allocations on every request.
pub fn webhook_service(
    state: Arc<AppState>,
) -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<hyper::body::Incoming>| {
        // Plain combinators, no async block: HTTP/2 moves each request's future into a task
        // of its own, and an async block would hold the answer's state twice.
        let answer = webhook(state.clone(), request.map(Body::new));
        futures_util::FutureExt::map(recovered(answer, state.metrics.clone()), Ok)
    })
}

async fn webhook(state: Arc<AppState>, request: Request<Body>) -> Response<Body> {
    if request.uri().path() != "/mutate" {
        let response = text(
            StatusCode::NOT_FOUND,
            &format!(
                "no such path {:?}; the webhook serves POST /mutate",
                request.uri().path()
            ),
        );
        return after_unread(request.into_body(), response).await;
    }
    if request.method() != axum::http::Method::POST {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use POST /mutate");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return after_unread(request.into_body(), response).await;
    }
    mutate(state, request).await
}

/// `answer`, or a 500 and a metric if it panics, instead of a dead connection.
pub fn recovered(
    answer: impl Future<Output = Response<Body>>,
    metrics: Arc<Metrics>,
) -> impl Future<Output = Response<Body>> {
    let caught = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(answer));
    futures_util::FutureExt::map(caught, move |answered| {
        answered.unwrap_or_else(|_panic| {
            metrics.panics.inc();
            tracing::error!("a request handler panicked; answered 500");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        })
    })
}

/// `/healthz`, `/readyz`, `/metrics`.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(state): State<Arc<AppState>>| async move {
                let cluster = format!(
                    "{}\n{}\n{}\n{}",
                    state.config_status.get(),
                    state.cluster.get(),
                    state.history_status.get(),
                    crate::cluster::discovery_line(
                        state.reviewer.resolver.discovery_state(),
                        state.discovery_wait,
                    )
                );
                if !state.ready.load(Ordering::SeqCst) {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("not ready: starting or shutting down\n{cluster}"),
                    )
                } else if !state.cluster.is_ready() {
                    // What the cluster side claims is not true yet (the lines say what).
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("not ready: mirroring is not ready yet\n{cluster}"),
                    )
                } else {
                    text(
                        StatusCode::OK,
                        &format!("ready: certificate loaded, configuration valid\n{cluster}"),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(state): State<Arc<AppState>>| async move {
                Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Body::from(state.metrics.encode()))
                    .unwrap_or_default()
            }),
        )
        .with_state(state)
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(format!("{msg}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The `timeout` query parameter the API server adds (`?timeout=10s`), capped at 30 s.
pub fn request_timeout(uri: &Uri) -> Duration {
    uri.query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|v| humantime::parse_duration(v).ok())
        .map_or(DEFAULT_TIMEOUT, |d| d.min(MAX_TIMEOUT))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Holds a connection's slot and counts it open while alive.
struct OpenConnection {
    open: prometheus_client::metrics::gauge::Gauge,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _peer: PeerSlot,
}

impl OpenConnection {
    fn new(
        open: prometheus_client::metrics::gauge::Gauge,
        slot: tokio::sync::OwnedSemaphorePermit,
        peer: PeerSlot,
    ) -> Self {
        open.inc();
        OpenConnection {
            open,
            _slot: slot,
            _peer: peer,
        }
    }
}

/// Open connections by client address.
#[derive(Default)]
struct PeerCounts(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PeerCounts {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        crate::locks::lock(&self.0)
    }

    /// A slot for one more connection from `ip`, unless it already has `max`.
    fn enter(self: Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut counts = self.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        drop(counts);
        Some(PeerSlot { peers: self, ip })
    }
}

/// One open connection counted against its address.
struct PeerSlot {
    peers: Arc<PeerCounts>,
    ip: std::net::IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.peers.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Counts the request in flight while alive.
struct InFlight<'a>(&'a AppState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn mutate(state: Arc<AppState>, request: Request<Body>) -> Response<Body> {
    // Taken apart, not extracted piece by piece: extractors would copy the headers.
    let (parts, body) = request.into_parts();
    let started = Instant::now();
    let metrics = &state.metrics;
    metrics.in_flight.inc();
    let now_in_flight = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _in_flight = InFlight(&state);
    if now_in_flight > state.max_in_flight {
        let message = format!(
            "too many requests in flight (at most {}, --max-in-flight)",
            state.max_in_flight
        );
        return holding(body, shed(&state, "in-flight", &message));
    }
    // Filled in once the review is decoded; every line logged while answering carries it,
    // and the connection's peer from the connection's span, the current one here.
    let span = tracing::debug_span!(
        "request",
        uid = tracing::field::Empty,
        operation = tracing::field::Empty,
        kind = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let response =
        tracing::Instrument::instrument(answer(&state, &parts.uri, &parts.headers, body), span)
            .await;
    metrics.duration.observe(started.elapsed().as_secs_f64());
    response
}

fn refuse(state: &AppState, status: StatusCode, reason: &str) -> Response<Body> {
    state.metrics.request("unknown", "invalid");
    // Anyone who can reach the port can send garbage: one line a second, of bounded length.
    if let Some(held_back) = state.refusal_log.allow() {
        tracing::warn!(
            status = status.as_u16(),
            reason = %crate::telemetry::clip(reason, 512),
            held_back,
            "refused an admission request"
        );
    }
    text(status, reason)
}

/// Answers 503 with `Retry-After: 1` when the server sheds load; the API server then fails
/// open (`failurePolicy: Ignore`) and the mirror labels the event later.
fn shed(state: &AppState, why: &'static str, message: &str) -> Response<Body> {
    state.metrics.request("unknown", "error");
    state.metrics.shed(why);
    if let Some(held_back) = state.refusal_log.allow() {
        tracing::warn!(why, held_back, "{message}; answered 503");
    }
    let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

/// Why reading a body failed.
enum BodyError {
    TooLarge,
    /// The body memory budget is spent.
    NoMemory,
    Broken(String),
}

/// Reads a body of at most [`MAX_BODY_BYTES`], reserving memory from the budget as it grows
/// (all of `declared` at once when known); the reservation lives as long as the returned
/// permit.
async fn read_body(
    body: Body,
    declared: Option<usize>,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Result<(axum::body::Bytes, tokio::sync::OwnedSemaphorePermit), (BodyError, Body)> {
    let units = |bytes: usize| u32::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX);
    let first = declared.unwrap_or(0).max(BUDGET_UNIT);
    let Ok(mut permit) = budget.clone().try_acquire_many_owned(units(first)) else {
        return Err((BodyError::NoMemory, body));
    };
    let mut received = Received::Nothing;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Err((BodyError::Broken(e.to_string()), body)),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if received.len() + data.len() > MAX_BODY_BYTES {
            return Err((BodyError::TooLarge, body));
        }
        received = received.and(data, declared.unwrap_or(0));
        let held = permit.num_permits() * BUDGET_UNIT;
        if received.memory() > held {
            match budget
                .clone()
                .try_acquire_many_owned(units(received.memory() - held))
            {
                Ok(more) => permit.merge(more),
                Err(_) => return Err((BodyError::NoMemory, body)),
            }
        }
    }
    Ok((received.into_bytes(), permit))
}

/// A body as it arrives. One frame (the usual case, on both protocols) is kept as received;
/// only a body in several frames is copied into one buffer.
enum Received {
    Nothing,
    One(axum::body::Bytes),
    Joined(bytes::BytesMut),
}

impl Received {
    /// With `data` appended; a buffer made for several frames has room for `declared`.
    fn and(self, data: axum::body::Bytes, declared: usize) -> Received {
        match self {
            Received::Nothing => Received::One(data),
            Received::One(first) => {
                let mut joined =
                    bytes::BytesMut::with_capacity(declared.max(first.len() + data.len()));
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                Received::Joined(joined)
            }
            Received::Joined(mut joined) => {
                joined.extend_from_slice(&data);
                Received::Joined(joined)
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Received::Nothing => 0,
            Received::One(bytes) => bytes.len(),
            Received::Joined(joined) => joined.len(),
        }
    }

    /// The memory it holds, as the budget counts it.
    fn memory(&self) -> usize {
        match self {
            Received::Joined(joined) => joined.capacity(),
            other => other.len(),
        }
    }

    fn into_bytes(self) -> axum::body::Bytes {
        match self {
            Received::Nothing => axum::body::Bytes::new(),
            Received::One(bytes) => bytes,
            Received::Joined(joined) => joined.freeze(),
        }
    }
}

/// Most of an unread request body discarded (never stored) before an early refusal is sent,
/// and how long that may take.
const DRAIN_LIMIT: usize = MAX_BODY_BYTES;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Sends `response` to a request whose body was not read, so that every client gets the
/// status. HTTP/2 is the hard case: a response that ends the stream while the client is still
/// uploading is followed by a reset (RST_STREAM, NO_ERROR at best), and clients such as curl
/// 7.88 then report a stream error instead of the status. So the body, up to the largest one
/// accepted, is read and discarded first; a larger or slower one is only dropped once the
/// response has been sent in full.
async fn after_unread(body: Body, response: Response<Body>) -> Response<Body> {
    let mut body = body;
    let drained = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return true };
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_LIMIT {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    if drained {
        return response;
    }
    holding(body, response)
}

/// `response`, keeping `body` alive until it has been sent.
fn holding(body: Body, response: Response<Body>) -> Response<Body> {
    let (parts, inner) = response.into_parts();
    Response::from_parts(parts, Body::new(Holding { inner, _held: body }))
}

/// A response body that keeps the request body alive until the response body is dropped.
struct Holding {
    inner: Body,
    _held: Body,
}

impl http_body::Body for Holding {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn answer(state: &AppState, uri: &Uri, headers: &HeaderMap, body: Body) -> Response<Body> {
    if !is_json(headers) {
        let got = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        let response = refuse(
            state,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("content type {got:?} is not supported; send application/json"),
        );
        return after_unread(body, response).await;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        // Not worth reading: answered at once, the body dropped after the answer.
        let response = refuse(state, StatusCode::PAYLOAD_TOO_LARGE, &too_large());
        return holding(body, response);
    }
    let declared = declared.and_then(|n| usize::try_from(n).ok());
    // The body's memory stays reserved until the answer is made.
    let (bytes, _reserved) = match read_request(state, uri, body, declared).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let started = Instant::now();
    match state.reviewer.review(&bytes) {
        Ok(reviewed) => reviewed_response(state, reviewed, started),
        Err(e) => refuse(state, StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn too_large() -> String {
    format!("request body is larger than {MAX_BODY_BYTES} bytes")
}

/// Reads the request body within the request's timeout and the memory budget; a body that
/// cannot be had is answered here.
async fn read_request(
    state: &AppState,
    uri: &Uri,
    body: Body,
    declared: Option<usize>,
) -> Result<(axum::body::Bytes, tokio::sync::OwnedSemaphorePermit), Response<Body>> {
    let deadline = request_timeout(uri);
    let read = tokio::time::timeout(deadline, read_body(body, declared, &state.body_budget)).await;
    match read {
        Err(_) => Err(refuse(
            state,
            StatusCode::REQUEST_TIMEOUT,
            &format!("request body not received within the request timeout of {deadline:?}"),
        )),
        Ok(Err((BodyError::TooLarge, body))) => Err(holding(
            body,
            refuse(state, StatusCode::PAYLOAD_TOO_LARGE, &too_large()),
        )),
        Ok(Err((BodyError::NoMemory, body))) => {
            let message = format!(
                "request bodies in memory would exceed {} (--max-body-memory)",
                bytesize::ByteSize::b(state.body_memory as u64)
                    .display()
                    .iec()
            );
            Err(holding(body, shed(state, "memory", &message)))
        }
        Ok(Err((BodyError::Broken(e), _))) => {
            // The client went away or broke the stream mid-body: not a bad AdmissionReview.
            state.metrics.request("unknown", "error");
            tracing::debug!(error = %e, "request body could not be read");
            Err(text(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
            ))
        }
        Ok(Ok(read)) => Ok(read),
    }
}

/// The answer to a reviewed request, once what was decided is recorded: the request's span,
/// metrics, a discovery poke for an unknown kind, a debug line.
fn reviewed_response(
    state: &AppState,
    reviewed: crate::admission::Reviewed,
    started: Instant,
) -> Response<Body> {
    let d = &reviewed.decision;
    let c = d.classified.as_ref();
    let span = tracing::Span::current();
    span.record("uid", reviewed.uid.as_str());
    span.record("operation", reviewed.operation.as_str());
    span.record("outcome", d.outcome.as_str());
    if let Some(c) = c {
        span.record("kind", c.kind.as_str());
        state.metrics.classified(
            &c.kind_label,
            c.builtin_kind(),
            &c.reason,
            c.channel.as_deref().unwrap_or(""),
        );
        if c.kind_source == crate::classify::KindSource::Unknown
            && let Some(trigger) = &state.discovery
        {
            trigger.poke();
        }
    }
    state
        .metrics
        .request(&reviewed.operation, d.outcome.as_str());
    tracing::debug!(
        uid = %reviewed.uid,
        operation = %reviewed.operation,
        namespace = %reviewed.namespace,
        name = %reviewed.name,
        kind = c.map_or("", |c| c.kind.as_str()),
        channel = c.and_then(|c| c.channel.as_deref()).unwrap_or(""),
        outcome = d.outcome.as_str(),
        skip = d.skip.map_or("", |s| s.as_str()),
        dry_run = reviewed.dry_run,
        micros = started.elapsed().as_micros() as u64,
        "reviewed"
    );
    let mut resp = Response::new(Body::from(reviewed.response));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_in_one_frame_is_kept_as_received_several_are_joined_within_the_budget() {
        let budget = Arc::new(tokio::sync::Semaphore::new(64));
        let review = axum::body::Bytes::from_static(br#"{"apiVersion":"admission.k8s.io/v1"}"#);
        let (read, permit) = read_body(Body::from(review.clone()), Some(review.len()), &budget)
            .await
            .unwrap_or_else(|_| panic!("one frame"));
        assert_eq!(read.as_ptr(), review.as_ptr(), "copied");
        assert_eq!(permit.num_permits(), 1);
        drop(permit);
        // Three frames of 1.5 KiB: joined in order, the reservation grown to their size.
        let parts: Vec<Result<http_body::Frame<axum::body::Bytes>, std::convert::Infallible>> =
            [b'a', b'b', b'c']
                .into_iter()
                .map(|c| Ok(http_body::Frame::data(vec![c; 1536].into())))
                .collect();
        let body = Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            parts,
        )));
        let (read, permit) = read_body(body, None, &budget)
            .await
            .unwrap_or_else(|_| panic!("three frames"));
        assert_eq!(read.len(), 3 * 1536);
        assert!(read[..1536].iter().all(|b| *b == b'a') && read[3072..].iter().all(|b| *b == b'c'));
        assert!(
            permit.num_permits() * BUDGET_UNIT >= read.len(),
            "the reservation covers what is held"
        );
        // Past the budget: refused, nothing held.
        let big = Body::from(vec![0u8; 65 * 1024]);
        assert!(matches!(
            read_body(big, None, &budget).await,
            Err((BodyError::NoMemory, _))
        ));
        drop(permit);
        assert_eq!(budget.available_permits(), 64);
    }

    #[test]
    fn work_hyper_spawns_logs_in_the_connection_span() {
        // The recorder's tests' writer: what was logged, read back.
        let lines = crate::recorder::sink::tests::Shared::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (done, finished) = tokio::sync::oneshot::channel();
            let span = tracing::info_span!("connection", peer = "192.0.2.7:40000");
            span.in_scope(|| {
                hyper::rt::Executor::execute(&InSpanExecutor, async move {
                    tracing::info!("stream answered");
                    let _ = done.send(());
                });
            });
            finished.await.unwrap();
        });
        let text = String::from_utf8(crate::locks::lock(&lines.0).clone()).unwrap();
        assert!(
            text.contains(
                "connection{peer=\"192.0.2.7:40000\"}: clusterscope::server::tests: stream answered"
            ),
            "{text}"
        );
    }

    #[test]
    fn timeouts_from_the_query() {
        let t = |s: &str| request_timeout(&s.parse::<Uri>().unwrap());
        assert_eq!(t("/mutate?timeout=2s"), Duration::from_secs(2));
        assert_eq!(t("/mutate?x=1&timeout=500ms"), Duration::from_millis(500));
        assert_eq!(t("/mutate"), DEFAULT_TIMEOUT);
        assert_eq!(t("/mutate?timeout=garbage"), DEFAULT_TIMEOUT);
        assert_eq!(t("/mutate?timeout=5m"), MAX_TIMEOUT);
    }

    #[test]
    fn json_content_types() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&m)
        };
        assert!(h("application/json"));
        assert!(h("application/json; charset=utf-8"));
        assert!(!h("text/plain"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
