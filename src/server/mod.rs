//! The HTTPS admission server and the plain-HTTP admin server, and nothing else (the program
//! is assembled in [`crate::runtime`]).
//!
//! Lifecycle: [`Server::listen`] binds both listeners and [`serving_certificate`] loads (or
//! makes) the serving pair, so that start-up problems are reported before anything is served;
//! [`Server::serve`] serves until the shutdown future resolves, then turns readiness off, stops
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

/// A failure to bind the server: a port, or its serving certificate.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Generating or writing the self-signed pair in `--cert-dir` failed.
    #[error("cannot make a self-signed pair in --cert-dir")]
    SelfSigned(#[source] crate::certs::CertsError),
    #[error("cannot listen on {addr} ({flag})")]
    Listen {
        addr: SocketAddr,
        /// The flag that gave the address: `--listen` or `--admin-listen`.
        flag: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl BindError {
    /// Whether the system failed rather than the input: a port in use, a file that cannot be
    /// read or written. A refused certificate is input.
    pub fn is_io(&self) -> bool {
        match self {
            BindError::Listen { .. } | BindError::SelfSigned(_) => true,
            BindError::Tls(TlsError::Read { .. }) => true,
            BindError::Tls(_) => false,
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
    /// What `/readyz` says about the background tasks (held once one stopped early).
    pub background: Arc<crate::status::StatusLine>,
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

/// The two listeners, bound.
pub struct Bound {
    webhook: TcpListener,
    admin: TcpListener,
}

/// Request body memory, in units of [`BUDGET_UNIT`] bytes.
pub fn body_budget(bytes: usize) -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(
        (bytes / BUDGET_UNIT).clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
    ))
}

/// A bound, not yet serving, server: the HTTPS webhook and the plain-HTTP admin endpoints.
pub struct Server {
    state: Arc<AppState>,
    webhook: TcpListener,
    /// Moved into the admin server's task by [`Server::serve_admin`].
    admin: Option<TcpListener>,
    admin_addr: String,
    acceptor: TlsAcceptor,
    limits: Limits,
}

impl Server {
    /// Binds both listeners.
    pub async fn listen(webhook: SocketAddr, admin: SocketAddr) -> Result<Bound, BindError> {
        let listen = |addr: SocketAddr, flag: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError::Listen { addr, flag, source })
        };
        Ok(Bound {
            webhook: listen(webhook, "--listen").await?,
            admin: listen(admin, "--admin-listen").await?,
        })
    }

    /// A server on `bound`, serving the webhook through `acceptor` within `limits`.
    pub fn new(bound: Bound, acceptor: TlsAcceptor, state: Arc<AppState>, limits: Limits) -> Self {
        let admin_addr = bound
            .admin
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        Server {
            state,
            webhook: bound.webhook,
            admin: Some(bound.admin),
            admin_addr,
            acceptor,
            limits,
        }
    }

    /// The HTTPS address actually bound (useful with port 0).
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.local_addr().ok()
    }

    /// The admin address actually bound.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr.parse().ok()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` until `stop` is cancelled.
    pub fn serve_admin(&mut self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let listener = self.admin.take();
        let app = admin_router(self.state.clone());
        tokio::spawn(async move {
            let Some(listener) = listener else { return };
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "admin server stopped");
            }
        })
    }

    /// Ready, serves the webhook until `shutdown` resolves, then drains: readiness off, no
    /// new connections, requests in flight finished (within the drain time), idle keep-alive
    /// connections closed at once.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()> + Send) {
        let graceful = GracefulShutdown::new();
        self.state.ready.store(true, Ordering::SeqCst);
        let webhook_addr = self
            .webhook
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let admin_addr = &self.admin_addr;
        tracing::info!(
            listen = %webhook_addr,
            admin = %admin_addr,
            "serving admission reviews on https://{webhook_addr}/mutate, health and metrics on http://{admin_addr}"
        );
        self.accept_until(shutdown, &graceful).await;
        self.drain(graceful).await;
    }

    /// Accepts webhook connections until `shutdown`, each within the connection limits and
    /// served with the drain watcher of `graceful`.
    async fn accept_until(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
        graceful: &GracefulShutdown,
    ) {
        let app = webhook_service(self.state.clone());
        let builder = Arc::new(connection_builder(self.limits.header_read_timeout));
        let connections = Arc::new(tokio::sync::Semaphore::new(
            self.limits.max_connections.max(1),
        ));
        let peers = Arc::new(PeerCounts::default());
        let per_peer = self.limits.max_connections_per_peer.max(1);
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
                let rejected = self.state.metrics.server.connections_rejected.inc() + 1;
                if rejected % 100 == 1 {
                    tracing::warn!(%peer, max = self.limits.max_connections, rejected_total = rejected, "connection limit reached; closing new connections");
                }
                continue;
            };
            let Some(peer_slot) = peers.clone().enter(peer.ip(), per_peer) else {
                let rejected = self.state.metrics.server.connections_rejected_by_peer.inc() + 1;
                if rejected % 100 == 1 {
                    tracing::warn!(%peer, max = per_peer, rejected_total = rejected, "connection limit for one address reached; closing its new connections");
                }
                continue;
            };
            let open = OpenConnection::new(
                self.state.metrics.server.connections_open.clone(),
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
                self.limits.handshake_timeout,
                open,
            );
            tokio::spawn(tracing::Instrument::instrument(serve, span));
        }
    }

    /// Readiness off, no new connections, requests in flight finished (within the drain
    /// time).
    async fn drain(self, graceful: GracefulShutdown) {
        self.state.ready.store(false, Ordering::SeqCst);
        drop(self.webhook);
        tracing::info!(
            drain_timeout = ?self.limits.drain_timeout,
            "shutting down: readiness off, draining connections"
        );
        let drained = tokio::time::timeout(self.limits.drain_timeout, graceful.shutdown()).await;
        if drained.is_err() {
            tracing::warn!("drain time over; closing the remaining connections");
        }
    }
}

/// The serving pair (given, or made self-signed in `--cert-dir`), the TLS acceptor over it,
/// and the reloader that follows its files.
pub fn serving_certificate(
    certificates: &Certificates,
    metrics: &crate::metrics::TlsMetrics,
) -> Result<(TlsAcceptor, CertReloader), BindError> {
    let (cert_path, key_path, (loaded, fingerprint)) = match &certificates.pair {
        Some((cert, key)) => (cert.clone(), key.clone(), crate::tls::load_pair(cert, key)?),
        None => self_signed_pair(&certificates.dir)?,
    };
    metrics.expiry.set(loaded.not_after);
    let resolver = Arc::new(CertResolver::new(loaded.key));
    let tls_config =
        crate::tls::server_config(resolver.clone(), certificates.client_ca.as_deref())?;
    let reloader = CertReloader::new(cert_path, key_path, resolver, metrics.clone(), fingerprint);
    Ok((TlsAcceptor::from(Arc::new(tls_config)), reloader))
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
) -> Result<(PathBuf, PathBuf, crate::tls::LoadedPair), BindError> {
    let crate::certs::Files { ca, cert, key, .. } = crate::certs::paths(dir);
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
                tracing::warn!(error = %crate::errors::Chain(&e), moved_to = %moved.join(", "),
                    "the certificate pair in {} does not load; moved it aside and creating a new self-signed pair (give --tls-cert/--tls-key to use a pair of your own)",
                    dir.display());
            }
        }
    }
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let bundle = crate::certs::generate(&names).map_err(BindError::SelfSigned)?;
    crate::certs::write(dir, &bundle).map_err(BindError::SelfSigned)?;
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
            metrics.server.panics.inc();
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
                    "{}\n{}\n{}\n{}\n{}",
                    state.config_status.get(),
                    state.cluster.get(),
                    state.history_status.get(),
                    state.background.get(),
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
                } else if !state.background.is_ready() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("not ready: a background task stopped\n{cluster}"),
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
        self.0.metrics.admission.in_flight.dec();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn mutate(state: Arc<AppState>, request: Request<Body>) -> Response<Body> {
    // Taken apart, not extracted piece by piece: extractors would copy the headers.
    let (parts, body) = request.into_parts();
    let started = Instant::now();
    let metrics = &state.metrics;
    metrics.admission.in_flight.inc();
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
    metrics
        .admission
        .duration
        .observe(started.elapsed().as_secs_f64());
    response
}

fn refuse(state: &AppState, status: StatusCode, reason: &str) -> Response<Body> {
    state.metrics.admission.request("unknown", "invalid");
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
    state.metrics.admission.request("unknown", "error");
    state.metrics.admission.shed(why);
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
            state.metrics.admission.request("unknown", "error");
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
        state.metrics.admission.classified(
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
        .admission
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
