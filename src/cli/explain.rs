//! `clusterscope explain`: offline on what it is given, or against a cluster (`--cluster on`,
//! `--kubeconfig`): the cluster's kinds, its stored events (unless events are given), the
//! namespaces each would reach there and its Subscriptions. Read-only.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{CommandError, io_failure, refused};
use crate::cluster::ClusterMode;
use crate::config::Config;
use crate::errors::error_chain;
use crate::explain::{Context, ExplainError, Explainer, Output, Summary};
use crate::subscription::Subscription;

/// `explain`'s flags.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Routing configuration (YAML); the embedded default when omitted.
    #[arg(long, env = "CLUSTERSCOPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// `text` (one block per event, then the summary) or `json` (one document:
    /// `{"events": [...], "summary": {...}}`).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ExplainFormat::Text)]
    pub output: ExplainFormat,
    /// `on`: judge against the cluster kubectl would use (KUBECONFIG or ~/.kube/config): its
    /// kinds, its state the delivery rules read (the namespaces each event would reach), its
    /// Subscriptions, and, when no events are given, its stored events. Read-only: it lists,
    /// never writes (the RBAC it needs: manifests/rbac/explain.yaml). `off`: contact nothing.
    #[arg(long, value_enum, default_value_t = ExplainCluster::Off)]
    pub cluster: ExplainCluster,
    /// Judge against the cluster of this kubeconfig (implies `--cluster on`).
    #[arg(long, value_name = "FILE", conflicts_with = "cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (its current context by default).
    #[arg(long, value_name = "NAME", requires = "kubeconfig")]
    pub context: Option<String>,
    /// Subscriptions to judge (`kubectl get csub -A -o yaml`, or manifests): each against the
    /// configuration's ceiling, and what it would take; with a cluster, in place of the
    /// cluster's own (to try some before applying them).
    #[arg(long, value_name = "FILE")]
    pub subscriptions: Option<PathBuf>,
    /// The events to read; `-` for standard input. When omitted: standard input, or with a
    /// cluster and nothing piped in, the cluster's stored events.
    #[arg(value_name = "FILE")]
    pub input: Option<PathBuf>,
}

/// How `explain` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainFormat {
    Text,
    Json,
}

/// `--cluster` values of `explain` (never a cluster unasked: no `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainCluster {
    On,
    Off,
}

/// How long finding the kubeconfig may take.
const FIND_CLUSTER: std::time::Duration = std::time::Duration::from_secs(10);

impl ExplainArgs {
    /// The cluster asked for, if any.
    fn mode(&self) -> Option<ClusterMode> {
        match (&self.kubeconfig, self.cluster) {
            (Some(path), _) => Some(ClusterMode::Kubeconfig {
                path: path.clone(),
                context: self.context.clone(),
            }),
            (None, ExplainCluster::On) => Some(ClusterMode::Infer),
            (None, ExplainCluster::Off) => None,
        }
    }

    /// Where events come from when they are given: a file, or standard input (`-`; or
    /// nothing named, offline or with something piped in). `None`: the cluster's own.
    fn given_events(&self, cluster: bool) -> Result<Option<Box<dyn Read>>, CommandError> {
        match &self.input {
            Some(p) if p != Path::new("-") => {
                let file = std::fs::File::open(p)
                    .map_err(|e| io_failure(format!("cannot read {}: {e}", p.display())))?;
                Ok(Some(Box::new(file)))
            }
            Some(_) => Ok(Some(Box::new(std::io::stdin().lock()))),
            None if !cluster || super::stdin_carries_input() => {
                Ok(Some(Box::new(std::io::stdin().lock())))
            }
            None => Ok(None),
        }
    }
}

/// Runs `explain`.
pub fn explain(args: ExplainArgs) -> Result<(), CommandError> {
    let config = super::load_config(args.config.as_deref()).map_err(|e| refused(e.to_string()))?;
    let stdin = |p: &Option<PathBuf>| p.as_deref() == Some(Path::new("-"));
    if stdin(&args.subscriptions) && (stdin(&args.input) || args.input.is_none()) {
        return Err(refused(
            "--subscriptions - and the events cannot both come from standard input: name a file for one of them",
        ));
    }
    let given = args
        .subscriptions
        .as_deref()
        .map(read_subscriptions)
        .transpose()?;
    let format = match args.output {
        ExplainFormat::Text => crate::explain::Format::Text,
        ExplainFormat::Json => crate::explain::Format::Json,
    };
    let stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut out = Output::new(format, stdout);
    let explained = match args.mode() {
        None => {
            let mut context = Context::offline();
            if let Some((all, from)) = given {
                context = context.with_subscriptions(all, &config, &from);
            }
            let input = args
                .given_events(false)?
                .unwrap_or_else(|| Box::new(std::io::empty()));
            crate::explain::explain_each(input, &config, &context, &mut |e| out.event(e))
                .map_err(said)
        }
        Some(mode) => {
            let input = args.given_events(true)?;
            let executor = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| io_failure(format!("cannot start the async runtime: {e}")))?;
            executor.block_on(against_cluster(mode, &config, given, input, &mut out))
        }
    };
    let finished = explained.and_then(|summary| out.finish(&summary).map_err(said));
    match finished {
        Err(_) if out.reader_gone() => Ok(()),
        other => other,
    }
}

/// An explanation that could not be finished: refused input (2).
fn said(e: ExplainError) -> CommandError {
    refused(e.to_string())
}

/// Reads the cluster `mode` names, then explains `input` (or, when `None`, the cluster's
/// stored events) against it.
async fn against_cluster<W: std::io::Write>(
    mode: ClusterMode,
    config: &Config,
    given: Option<(Vec<Subscription>, String)>,
    input: Option<Box<dyn Read>>,
    out: &mut Output<W>,
) -> Result<Summary, CommandError> {
    let target = crate::cluster::plan(&mode, FIND_CLUSTER)
        .await
        .map_err(|e| {
            let said = error_chain(&e);
            if e.unreadable() {
                io_failure(said)
            } else {
                refused(said)
            }
        })?
        .ok_or_else(|| refused("no cluster configuration found (KUBECONFIG, ~/.kube/config)"))?;
    eprintln!(
        "explain: reading {} ({}{})",
        target.server,
        target.source,
        target
            .context
            .as_deref()
            .map(|c| format!(", context {c}"))
            .unwrap_or_default()
    );
    // The cluster failing to answer, or refusing a list, is the system failing (1), not the
    // input.
    let context = Context::live(&target.client, &target.server, config, given)
        .await
        .map_err(|e| io_failure(e.to_string()))?;
    if let Some(input) = input {
        return crate::explain::explain_each(input, config, &context, &mut |e| out.event(e))
            .map_err(said);
    }
    let mut explainer = Explainer::new(config, &context);
    crate::explain::stored_events(&target.client, &mut |ns, object| {
        out.event(&explainer.explain(&ns, &object))
    })
    .await
    .map_err(|e| io_failure(e.to_string()))?;
    Ok(explainer.summary())
}

/// The Subscriptions in `path` (`-`: standard input), and how to name where they came from.
fn read_subscriptions(path: &Path) -> Result<(Vec<Subscription>, String), CommandError> {
    let (text, name) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .lock()
            .take(crate::config::MAX_CONFIG_BYTES * 16)
            .read_to_string(&mut text)
            .map_err(|e| {
                io_failure(format!(
                    "--subscriptions -: cannot read standard input: {e}"
                ))
            })?;
        (text, "standard input".to_owned())
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| {
            io_failure(format!(
                "--subscriptions {}: cannot read: {e}",
                path.display()
            ))
        })?;
        (text, path.display().to_string())
    };
    let all = crate::explain::read_subscriptions(&text, &name).map_err(said)?;
    Ok((all, name))
}
