//! The connection to the cluster, and what runs on it beside the webhook: API discovery and
//! the mirror controller (on the replica holding the lease). Without a reachable cluster the
//! webhook serves alone; the log and `/readyz` say that mirroring and discovery are off.

use std::sync::Arc;
use std::time::Duration;

use crate::classify::{DiscoveryState, ScopeResolver};
use crate::discovery::DiscoveryOptions;
use crate::event::EventType;
use crate::leader::{LeaseLock, LeaseOptions, run_while_leader};
use crate::metrics::Metrics;
use crate::mirror::controller::{self, ControllerOptions};
use crate::mirror::outputs::Output;
use crate::mirror::sync::Syncer;
use crate::recorder::{KubeSink, LogSink, Recorder, RecorderOptions, SystemClock};
use k8s_openapi::api::core::v1::ObjectReference;
use tokio_util::sync::CancellationToken;

/// How `serve` finds its cluster. Only a pod's own service account is used unasked: a
/// kubeconfig on a laptop may well point at production.
#[derive(Clone, Default)]
pub enum ClusterMode {
    /// No cluster: the webhook alone.
    Off,
    /// The in-cluster configuration when running in a pod; otherwise no cluster.
    #[default]
    InCluster,
    /// In-cluster configuration or kubeconfig, as kubectl finds them (`--cluster on`).
    Infer,
    /// This kubeconfig file, and this context of it (or its current one).
    Kubeconfig {
        path: std::path::PathBuf,
        context: Option<String>,
    },
    /// This client (tests, embedding).
    Client(kube::Client),
}

impl ClusterMode {
    /// Whether the operator asked for a cluster: then failing to reach one stops the start.
    pub fn required(&self) -> bool {
        matches!(
            self,
            ClusterMode::Infer | ClusterMode::Kubeconfig { .. } | ClusterMode::Client(_)
        )
    }
}

impl std::fmt::Debug for ClusterMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterMode::Off => f.write_str("Off"),
            ClusterMode::InCluster => f.write_str("InCluster"),
            ClusterMode::Infer => f.write_str("Infer"),
            ClusterMode::Kubeconfig { path, context } => {
                write!(f, "Kubeconfig({}, {context:?})", path.display())
            }
            ClusterMode::Client(_) => f.write_str("Client"),
        }
    }
}

/// The cluster to talk to: a client (built, not yet used) and where it points, for the log.
#[derive(Clone)]
pub struct ApiServer {
    pub client: kube::Client,
    /// `in-cluster service account`, `kubeconfig <path>`, ...
    pub source: String,
    pub context: Option<String>,
    pub server: String,
}

impl ApiServer {
    /// A client given by the caller (tests, embedding).
    pub fn client(client: kube::Client) -> Self {
        ApiServer {
            client,
            source: "a client given by the caller".to_owned(),
            context: None,
            server: "(the given client's server)".to_owned(),
        }
    }
}

/// What `/readyz` says about API discovery.
pub fn discovery_line(state: DiscoveryState, wait: Duration) -> String {
    match state {
        DiscoveryState::Off => "discovery: off (built-in kind table only)".to_owned(),
        DiscoveryState::Pending => "discovery: waiting for the first answer; events about kinds outside the built-in table are left alone until then".to_owned(),
        DiscoveryState::Answered => "discovery: on".to_owned(),
        DiscoveryState::TimedOut => format!(
            "discovery: no answer within {}; kinds outside the built-in table count as cluster-scoped until it answers",
            humantime::format_duration(wait)
        ),
    }
}

/// Waits for discovery's first answer (at most `wait`); past that, unknown kinds count as
/// cluster-scoped from now on, and the log says so.
pub async fn await_discovery(resolver: &ScopeResolver, wait: Duration) {
    if resolver.wait_for_discovery(wait).await == DiscoveryState::Pending {
        resolver.give_up_waiting();
        tracing::warn!(
            waited = %humantime::format_duration(wait),
            "discovery has not answered: mirroring starts anyway, and events about kinds outside the built-in table count as cluster-scoped until it does (a namespaced custom resource may be labelled; the label is removed once discovery answers)"
        );
    }
}

/// Settings of the cluster side.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub mode: ClusterMode,
    /// This replica's name (the pod name), for the lease and its own events.
    pub identity: String,
    /// This replica's pod uid, so that `kubectl describe pod` shows its own events.
    pub pod_uid: Option<String>,
    /// Namespace of the lease (the pod's namespace).
    pub lease_namespace: String,
    pub lease: Option<LeaseOptions>,
    pub controller: ControllerOptions,
    /// The tenants' Subscriptions (their statuses).
    pub subscriptions: crate::subscription::controller::Options,
    pub discovery: DiscoveryOptions,
    /// How long to wait for the API server at start before going on without it.
    pub connect_timeout: Duration,
    /// How long the mirror waits for discovery's first answer before it judges unknown kinds
    /// as cluster-scoped.
    pub discovery_wait: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            mode: ClusterMode::InCluster,
            identity: "clusterscope".to_owned(),
            pod_uid: None,
            lease_namespace: "clusterscope-system".to_owned(),
            lease: None,
            controller: ControllerOptions::default(),
            subscriptions: crate::subscription::controller::Options::default(),
            discovery: DiscoveryOptions::default(),
            connect_timeout: Duration::from_secs(10),
            discovery_wait: Duration::from_secs(30),
        }
    }
}

/// `--cluster` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterFlag {
    Auto,
    On,
    Off,
}

/// `serve`'s cluster flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "cluster_flags")]
pub struct Args {
    /// Cluster side (mirroring, discovery): `auto` uses the pod's service account when running
    /// in a pod and nothing otherwise; `on` also uses a kubeconfig (KUBECONFIG or
    /// ~/.kube/config, as kubectl does) and refuses to start without a usable one (an API
    /// server that does not answer yet is waited for: the webhook serves, /readyz says so);
    /// `off` runs the webhook alone.
    #[arg(long, env = "CLUSTERSCOPE_CLUSTER", value_enum, default_value_t = ClusterFlag::Auto)]
    pub cluster: ClusterFlag,
    /// Use this kubeconfig (implies `--cluster on`; never read unless given).
    #[arg(long, value_name = "FILE", conflicts_with = "cluster")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (its current context by default).
    #[arg(long, value_name = "NAME", requires = "kubeconfig")]
    pub context: Option<String>,
    /// This replica's name, for the mirror lease (the Downward API's pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// This replica's pod uid (the Downward API's), named in its own events.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,
    /// Namespace of the mirror lease (the Downward API's pod namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "clusterscope-system")]
    pub pod_namespace: String,
    /// Events mirrored at once (1-256).
    #[arg(long, env = "CLUSTERSCOPE_MIRROR_WORKERS", default_value_t = 8,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub mirror_workers: usize,
    /// Copies written to the API server a second at most (creates and updates; 0: no
    /// budget). Copies past it wait, Warnings first; none is dropped that the delivery queue
    /// can hold.
    #[arg(long, env = "CLUSTERSCOPE_MAX_WRITES_PER_SECOND",
          default_value_t = crate::mirror::budget::DEFAULT_PER_SECOND,
          value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(0..=100_000))]
    pub max_writes_per_second: u32,
}

impl Args {
    /// The cluster side's options; `hostname` names this replica when no pod name is given.
    pub fn options(self, hostname: impl FnOnce() -> String) -> ClusterOptions {
        ClusterOptions {
            mode: match (self.kubeconfig, self.cluster) {
                (Some(path), _) => ClusterMode::Kubeconfig {
                    path,
                    context: self.context,
                },
                (None, ClusterFlag::Auto) => ClusterMode::InCluster,
                (None, ClusterFlag::On) => ClusterMode::Infer,
                (None, ClusterFlag::Off) => ClusterMode::Off,
            },
            identity: self.pod_name.unwrap_or_else(hostname),
            pod_uid: self.pod_uid,
            lease_namespace: self.pod_namespace,
            controller: ControllerOptions {
                workers: self.mirror_workers.max(1),
                max_writes_per_second: self.max_writes_per_second,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Why the cluster named on the command line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no cluster configuration found within {}", humantime::format_duration(*.0))]
    InferTimedOut(Duration),
    #[error("no in-cluster configuration or kubeconfig")]
    Infer(#[source] kube::config::InferConfigError),
    /// The kubeconfig file cannot be read (missing, unreadable, not YAML).
    #[error("cannot read kubeconfig {}", path.display())]
    ReadKubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// It was read, but names no usable cluster or context.
    #[error("kubeconfig {}", path.display())]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build a client for {server}")]
    Client {
        server: String,
        #[source]
        source: kube::Error,
    },
}

impl ClusterError {
    /// The file named could not be read at all (an I/O problem, not a refused kubeconfig).
    pub fn unreadable(&self) -> bool {
        match self {
            ClusterError::ReadKubeconfig { source, .. } => {
                matches!(source, kube::config::KubeconfigError::ReadConfig(..))
            }
            _ => false,
        }
    }
}

/// Finds the cluster configuration `mode` names; `Ok(None)` when there is none to use (off,
/// a client given, not in a pod).
async fn configure(
    mode: &ClusterMode,
    timeout: Duration,
) -> Result<Option<(kube::Config, String, Option<String>)>, ClusterError> {
    match mode {
        ClusterMode::Off | ClusterMode::Client(_) => Ok(None),
        ClusterMode::InCluster => match kube::Config::incluster() {
            Ok(config) => Ok(Some((
                config,
                "in-cluster service account".to_owned(),
                None,
            ))),
            // Not in a pod (no KUBERNETES_SERVICE_HOST or no service account token).
            Err(_) => Ok(None),
        },
        ClusterMode::Infer => {
            let config = tokio::time::timeout(timeout, kube::Config::infer())
                .await
                .map_err(|_| ClusterError::InferTimedOut(timeout))?
                .map_err(ClusterError::Infer)?;
            let context = kube::config::Kubeconfig::read()
                .ok()
                .and_then(|k| k.current_context);
            let source = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                "in-cluster service account or kubeconfig"
            } else {
                "kubeconfig (KUBECONFIG or ~/.kube/config)"
            };
            Ok(Some((config, source.to_owned(), context)))
        }
        ClusterMode::Kubeconfig { path, context } => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ClusterError::ReadKubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            let chosen = context.clone().or_else(|| file.current_context.clone());
            let options = kube::config::KubeConfigOptions {
                context: context.clone(),
                ..Default::default()
            };
            let config = kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|source| ClusterError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            Ok(Some((
                config,
                format!("kubeconfig {}", path.display()),
                chosen,
            )))
        }
    }
}

/// Resolves `mode` to a target without contacting it (local files and environment only, so
/// the webhook never waits on the API server to start). `Ok(None)`: no cluster to use (off,
/// or not in a pod with `InCluster`).
pub async fn plan(
    mode: &ClusterMode,
    timeout: Duration,
) -> Result<Option<ApiServer>, ClusterError> {
    if let ClusterMode::Client(c) = mode {
        return Ok(Some(ApiServer::client(c.clone())));
    }
    let Some((config, source, context)) = configure(mode, timeout).await? else {
        return Ok(None);
    };
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|source| ClusterError::Client {
        server: server.clone(),
        source,
    })?;
    Ok(Some(ApiServer {
        client,
        source,
        context,
        server,
    }))
}

/// Waits until the API server answers, retrying with a growing delay (1 s to 30 s) and saying
/// so in the log and on `/readyz`; false if `stop` came first.
async fn wait_for_api_server(
    target: &ApiServer,
    timeout: Duration,
    state: &crate::status::StatusLine,
    stop: &CancellationToken,
) -> bool {
    let mut delays = crate::backoff::RetryPolicy::reconnect().delays();
    let mut failures = 0u32;
    loop {
        let error = match tokio::time::timeout(timeout, target.client.apiserver_version()).await {
            Ok(Ok(_)) => {
                tracing::info!(
                    server = %target.server,
                    source = %target.source,
                    context = target.context.as_deref().unwrap_or(""),
                    "connected to the cluster at {}: discovery and the mirror controller run against it",
                    target.server
                );
                return true;
            }
            Ok(Err(e)) => crate::errors::error_chain(&e),
            Err(_) => format!("no answer within {}", humantime::format_duration(timeout)),
        };
        failures += 1;
        // The first failure, then every tenth: a long outage does not flood the log.
        if failures % 10 == 1 {
            tracing::warn!(server = %target.server, error = %error, failures,
                "the API server does not answer; the webhook serves meanwhile, mirroring and discovery wait");
        }
        state.set(format!(
            "mirroring: waiting for the API server at {} ({error})",
            target.server
        ));
        let delay = delays.next().unwrap_or(Duration::from_secs(30));
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// How long the last own events (LeaderLost) may take to be written when stopping.
const OWN_EVENTS_DRAIN: Duration = Duration::from_secs(5);

/// What the cluster side shares with the webhook.
#[derive(Clone)]
pub struct Shared {
    pub config: crate::config::SharedConfig,
    pub resolver: Arc<ScopeResolver>,
    pub metrics: Arc<Metrics>,
    pub state: Arc<crate::status::StatusLine>,
    /// clusterscope's own events: connected here once the API server answers.
    pub own_events: Arc<crate::recorder::OwnEvents>,
    /// Outputs besides the copies and the log stream (the history database, when configured).
    pub outputs: Vec<Arc<dyn Output>>,
}

/// Starts discovery and the leader-elected mirror controller; they stop when `stop` turns true.
///
/// Returns at once: a supervising task waits for the API server to answer (the webhook does
/// not wait for it), then runs the rest until `stop`; the discovery timer runs from now, so a
/// cluster that never answers does not leave unknown kinds undetermined for ever.
pub fn spawn(
    target: ApiServer,
    shared: Shared,
    options: ClusterOptions,
    pokes: tokio::sync::mpsc::Receiver<()>,
    stop: CancellationToken,
) -> Vec<(&'static str, tokio::task::JoinHandle<()>)> {
    // Settles discovery's first answer: past the wait, unknown kinds count as cluster-scoped.
    let discovery_timer = {
        let resolver = shared.resolver.clone();
        let wait = options.discovery_wait;
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.run_until_cancelled(await_discovery(&resolver, wait))
                .await;
            // Settled: it lives on until the stop, as every supervised task does (one that
            // ends before is reported as stopped).
            stop.cancelled().await;
        })
    };
    let supervisor = tokio::spawn(async move {
        if !wait_for_api_server(&target, options.connect_timeout, &shared.state, &stop).await {
            return;
        }
        let own_events = shared.own_events.clone();
        let mut supervised =
            crate::tasks::Tasks::new(stop.clone(), shared.metrics.clone(), shared.state.clone());
        let (tasks, recorder) = start(target.client, shared, options, pokes, stop);
        for (name, task) in tasks {
            supervised.watch(name, Duration::from_secs(5), task);
        }
        supervised.join().await;
        // The last own events (LeaderLost) are queued by now: nothing more is recorded.
        own_events.disconnect();
        recorder.stop().await;
    });
    vec![
        ("discovery-timer", discovery_timer),
        ("cluster", supervisor),
    ]
}

/// The recorder of clusterscope's own events, and its writers.
struct OwnRecorder {
    recorder: Arc<Recorder>,
    writers: tokio::task::JoinSet<()>,
}

impl OwnRecorder {
    /// Writes what is queued (a few seconds at most), then stops the writers.
    async fn stop(self) {
        if !self.recorder.drain(OWN_EVENTS_DRAIN).await {
            tracing::warn!(within = ?OWN_EVENTS_DRAIN, "stopping with some of clusterscope's own events unwritten");
        }
        drop(self.writers);
    }
}

/// Events about clusterscope itself, written the way client-go's recorder writes them, about
/// this replica's pod: the recorder (connected to `own_events`) and its writers.
fn record_own_events(
    client: &kube::Client,
    options: &ClusterOptions,
    own_events: &crate::recorder::OwnEvents,
    metrics: &Metrics,
) -> OwnRecorder {
    let recorder = Arc::new(Recorder::new(
        vec![Arc::new(KubeSink::new(client.clone()))],
        &RecorderOptions::default(),
        ("clusterscope", &options.identity),
        Arc::new(SystemClock),
        metrics.recorder.clone(),
    ));
    let mut writers = tokio::task::JoinSet::new();
    recorder.start(&mut writers);
    own_events.connect(
        recorder.clone(),
        crate::recorder::pod_reference(
            &options.lease_namespace,
            &options.identity,
            options.pod_uid.as_deref(),
        ),
    );
    OwnRecorder { recorder, writers }
}

/// What a change of leadership is said as: the leader metric, an event about the Lease
/// (LeaderElected, LeaderLost), the `/readyz` line.
fn leadership_said(
    lease: &LeaseOptions,
    identity: &str,
    state: &Arc<crate::status::StatusLine>,
    metrics: &Arc<Metrics>,
    recorder: Arc<Recorder>,
) -> impl Fn(bool) + Send + use<> {
    let lease_ref = ObjectReference {
        api_version: Some("coordination.k8s.io/v1".to_owned()),
        kind: Some("Lease".to_owned()),
        namespace: Some(lease.namespace.clone()),
        name: Some(lease.name.clone()),
        ..ObjectReference::default()
    };
    let (state, metrics, identity) = (state.clone(), metrics.clone(), identity.to_owned());
    move |leading: bool| {
        metrics.mirror.leader.set(i64::from(leading));
        let (type_, reason, message) = if leading {
            (
                EventType::Normal,
                "LeaderElected",
                format!("{identity} now mirrors events"),
            )
        } else {
            (
                EventType::Warning,
                "LeaderLost",
                format!("{identity} stopped mirroring events"),
            )
        };
        // A full queue drops it; the recorder counts that.
        let _ = recorder.event(&lease_ref, type_, reason, &message);
        state.set(if leading {
            "mirroring: on (this replica holds the lease)"
        } else {
            "mirroring: standby (another replica holds the lease)"
        });
    }
}

/// Starts discovery, the leader-elected mirror and subscription controllers and the recorder
/// of clusterscope's own events against an API server that answers; they stop when `stop` is cancelled, the
/// recorder (returned apart with its writers) once drained.
fn start(
    client: kube::Client,
    shared: Shared,
    options: ClusterOptions,
    pokes: tokio::sync::mpsc::Receiver<()>,
    stop: CancellationToken,
) -> (
    Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    OwnRecorder,
) {
    let Shared {
        config,
        resolver,
        metrics,
        state,
        own_events,
        outputs,
    } = shared;
    let discovery = tokio::spawn(crate::discovery::run(
        client.clone(),
        resolver.clone(),
        metrics.runtime.discovery_refreshes.clone(),
        pokes,
        options.discovery.clone(),
        stop.clone(),
    ));
    let own_recorder = record_own_events(&client, &options, &own_events, &metrics);
    // Delivery rules read live cluster state; the controller keeps it (on the leader only).
    let log_sink: Arc<dyn Output> = Arc::new(LogSink::stdout());
    let subscriptions = Arc::new(crate::subscription::SharedSubscriptions::default());
    let syncer = outputs.into_iter().fold(
        Syncer::new(client.clone(), config.clone(), resolver.clone())
            .with_output(log_sink)
            .with_own_events(own_events)
            .with_cluster(crate::owners::SharedOwnerState::default())
            .with_subscriptions(subscriptions.clone()),
        Syncer::with_output,
    );
    let lease = options
        .lease
        .clone()
        .unwrap_or_else(|| LeaseOptions::new(&options.lease_namespace, &options.identity));
    let on_change = leadership_said(
        &lease,
        &options.identity,
        &state,
        &metrics,
        own_recorder.recorder.clone(),
    );
    let lock = LeaseLock::new(client.clone(), lease);
    state.set("mirroring: standby (another replica holds the lease)");
    let controller_options = options.controller.clone();
    let subscription_options = options.subscriptions.clone();
    let mirror = tokio::spawn(run_while_leader(
        lock,
        move |lost: CancellationToken| {
            let mirror = controller::run(
                syncer.clone(),
                metrics.clone(),
                controller_options.clone(),
                state.clone(),
                lost.clone(),
            );
            let subscriptions = crate::subscription::controller::run(
                client.clone(),
                (config.clone(), resolver.clone()),
                subscriptions.clone(),
                metrics.clone(),
                subscription_options.clone(),
                lost,
            );
            async move {
                tokio::join!(mirror, subscriptions);
            }
        },
        on_change,
        stop,
    ));
    (
        vec![("discovery", discovery), ("mirror", mirror)],
        own_recorder,
    )
}
