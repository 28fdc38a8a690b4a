//! The command line: `serve`, `review`, `explain`, `certs`, `check-config` and `completion`.
//!
//! Exit codes: 0 done (also when standard output is closed early); 1 the system failed (a file
//! that cannot be read or written, a port in use); 2 input that was refused (not an
//! AdmissionReview, an invalid configuration or certificate, bad flags, a kubeconfig naming
//! no usable cluster).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::admission::Reviewer;
use crate::classify::ScopeResolver;
use crate::config::Config;
use crate::errors::error_chain;

mod explain;

/// Largest AdmissionReview `review` reads (the API server's own request limit is 3 MiB for
/// objects; webhooks conventionally accept 7 MiB).
pub const MAX_REVIEW_BYTES: u64 = 7 * 1024 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "clusterscope",
    version,
    about = "Labels and routes Kubernetes events about cluster-scoped objects (a mutating admission webhook)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the mutating webhook over HTTPS, with /healthz, /readyz and /metrics on the admin port.
    Serve(Box<ServeArgs>),
    /// Generate a CA and a serving certificate for the webhook's Service.
    Certs(CertsArgs),
    /// Answer one AdmissionReview offline: prints the response AdmissionReview as JSON. A bare
    /// Event (`kubectl get event NAME -o json`) is reviewed as the AdmissionReview of its CREATE.
    Review {
        /// Routing configuration (YAML); the embedded default when omitted.
        #[arg(long, env = "CLUSTERSCOPE_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the reviewed object with the patch applied instead of the response.
        #[arg(long)]
        patched_object: bool,
        /// The AdmissionReview (or bare Event) to read; `-` or nothing for standard input.
        #[arg(value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Explain what clusterscope would do with events: cluster-scoped or not and why, the
    /// channel and route, the labels, where they would be delivered, or why they are skipped;
    /// then a summary. Reads an AdmissionReview, an Event, or `kubectl get events -A -o json`
    /// (or `-o yaml`) output of any size, one event at a time; with `--cluster on`, the
    /// cluster's stored events and the namespaces each would reach there.
    Explain(explain::ExplainArgs),
    /// Validate a routing configuration and print its channels and routes.
    CheckConfig {
        /// The file to check (a configuration, its ConfigMap, or `kubectl kustomize` output),
        /// `-` for standard input. When omitted: `CLUSTERSCOPE_CONFIG` (as `serve` reads it),
        /// else standard input when a pipe or file is on it, else the embedded default.
        #[arg(value_name = "FILE", env = "CLUSTERSCOPE_CONFIG")]
        file: Option<PathBuf>,
    },
    /// Print a shell completion script: `source <(clusterscope completion bash)`, or write it
    /// where your shell loads completions from.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `serve`'s flags: each component's own, flattened.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: crate::server::Args,
    #[command(flatten)]
    pub cluster: crate::cluster::Args,
    #[command(flatten)]
    pub history: crate::history::Args,
    #[command(flatten)]
    pub log: crate::telemetry::Args,
}

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Name of the webhook's Service.
    #[arg(long, default_value = "clusterscope")]
    pub service: String,
    /// Namespace of the Service.
    #[arg(long, default_value = "clusterscope-system")]
    pub namespace: String,
    /// Where to write ca.crt, ca.key, tls.crt and tls.key (apart from `certs/`, where `serve`
    /// keeps its self-signed localhost pair).
    #[arg(long, default_value = "certs/webhook", value_name = "DIR")]
    pub out: PathBuf,
    /// Also set every `caBundle:` in this MutatingWebhookConfiguration YAML file.
    #[arg(long, value_name = "FILE")]
    pub webhook_config: Option<PathBuf>,
    /// Replace a pair already in --out with a new CA and pair (the webhook configuration's
    /// caBundle must then be applied again too).
    #[arg(long, conflicts_with = "renew")]
    pub force: bool,
    /// Rotate: a new serving pair issued by the CA already in --out (ca.crt, ca.key); the
    /// caBundle stays, so only the Secret changes.
    #[arg(long)]
    pub renew: bool,
}

/// A failure the command reports on stderr, with its exit code.
struct CommandError {
    code: u8,
    message: String,
}

fn refused(message: impl Into<String>) -> CommandError {
    CommandError {
        code: 2,
        message: message.into(),
    }
}

fn io_failure(message: impl Into<String>) -> CommandError {
    CommandError {
        code: 1,
        message: message.into(),
    }
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("clusterscope: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(command: Command) -> Result<(), CommandError> {
    match command {
        Command::Serve(args) => serve(*args),
        Command::Certs(args) => certs(&args),
        Command::Review {
            config,
            patched_object,
            input,
        } => review(config.as_deref(), patched_object, input.as_deref()),
        Command::CheckConfig { file } => check_config(file.as_deref()),
        Command::Explain(args) => explain::explain(args),
        Command::Completion { shell } => completion(shell),
    }
}

/// Loads the configuration from `path` (the file, the ConfigMap holding it, or kustomize's
/// output), or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, crate::config::ConfigError> {
    let Some(path) = path else {
        return Ok(Config::embedded_default());
    };
    Config::read(path).map(|(config, _)| config)
}

fn read_input(input: Option<&Path>) -> Result<Vec<u8>, CommandError> {
    let mut buf = Vec::new();
    let (name, result) = match input {
        None => (
            "standard input".to_owned(),
            read_limited(std::io::stdin().lock(), &mut buf),
        ),
        Some(p) if p == Path::new("-") => (
            "standard input".to_owned(),
            read_limited(std::io::stdin().lock(), &mut buf),
        ),
        Some(p) => {
            let name = p.display().to_string();
            match std::fs::File::open(p) {
                Ok(f) => (name, read_limited(f, &mut buf)),
                Err(e) => return Err(io_failure(format!("cannot read {name}: {e}"))),
            }
        }
    };
    match result {
        Ok(true) => Ok(buf),
        Ok(false) => Err(refused(format!(
            "{name} is larger than {MAX_REVIEW_BYTES} bytes; an AdmissionReview never is"
        ))),
        Err(e) => Err(io_failure(format!("cannot read {name}: {e}"))),
    }
}

/// Reads at most [`MAX_REVIEW_BYTES`]; `Ok(false)` when there was more.
fn read_limited(r: impl Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    r.take(MAX_REVIEW_BYTES + 1).read_to_end(buf)?;
    Ok(buf.len() as u64 <= MAX_REVIEW_BYTES)
}

/// The completion script for `shell`, from the commands and flags as clap knows them.
fn completion(shell: clap_complete::Shell) -> Result<(), CommandError> {
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "clusterscope",
        &mut script,
    );
    write_stdout(script.trim_ascii_end())
}

fn write_stdout(bytes: &[u8]) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    match out
        .write_all(bytes)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        // The reader went away (`| head -1`): it has what it wanted, nothing failed.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| io_failure(format!("cannot write to standard output: {e}"))),
    }
}

fn review(
    config: Option<&Path>,
    patched_object: bool,
    input: Option<&Path>,
) -> Result<(), CommandError> {
    let config = load_config(config).map_err(|e| refused(e.to_string()))?;
    let body = as_review(read_input(input)?)?;
    let reviewer = Reviewer::new(Arc::new(config), Arc::new(ScopeResolver::new()));
    let reviewed = reviewer.review(&body).map_err(|e| refused(e.to_string()))?;
    let text = if patched_object {
        let patched = patched_object_of(&body, &reviewed.decision.changes.json_patch())?;
        serde_json::to_vec_pretty(&patched)
            .map_err(|e| io_failure(format!("cannot encode the patched object: {e}")))?
    } else {
        reviewed.response
    };
    // What was decided, in words, beside the exact answer (which stays alone on stdout).
    eprintln!("review: {}", in_words(&reviewed.decision, &body));
    write_stdout(&text)
}

/// An AdmissionReview as it is; a bare Event (`kubectl get event NAME -o json`) wrapped in the
/// AdmissionReview its CREATE would send. A list is refused with a pointer to `explain`.
fn as_review(body: Vec<u8>) -> Result<Vec<u8>, CommandError> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b == b'{' || *b == b'[') {
            // JSON that breaks somewhere: the reviewer says where.
            return Ok(body);
        }
        return Err(refused(
            "input is not JSON: give an AdmissionReview, or a bare Event as `kubectl get event NAME -o json` prints it",
        ));
    };
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    match kind {
        "Event"
            if matches!(
                api_version,
                "v1" | "events.k8s.io/v1" | "events.k8s.io/v1beta1"
            ) =>
        {
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let namespace = value["metadata"]["namespace"].as_str().unwrap_or("default");
            eprintln!(
                "review: an Event, reviewed as the AdmissionReview of its CREATE in namespace {namespace}"
            );
            let review = serde_json::json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "clusterscope-review",
                    "kind": {"group": group, "version": version, "kind": "Event"},
                    "resource": {"group": group, "version": version, "resource": "events"},
                    "namespace": namespace,
                    "operation": "CREATE",
                    "object": value,
                }
            });
            serde_json::to_vec(&review)
                .map_err(|e| io_failure(format!("cannot encode the AdmissionReview: {e}")))
        }
        "EventList" | "List" => Err(refused(format!(
            "a {kind}: review answers one AdmissionReview or Event; `clusterscope explain` takes a whole list"
        ))),
        _ => Ok(body),
    }
}

/// The decision in one line: what the webhook does and why.
fn in_words(decision: &crate::decide::Decision, body: &[u8]) -> String {
    use crate::decide::Outcome;
    let about = decision
        .classified
        .as_ref()
        .map(|c| {
            let channel = c
                .channel
                .as_deref()
                .map_or("no route matched, so no channel".to_owned(), |ch| {
                    format!("channel {ch}")
                });
            format!("{} {} is cluster-scoped; {channel}", c.kind, c.name)
        })
        .unwrap_or_default();
    match decision.outcome {
        Outcome::Patched => format!("patched: {about}"),
        Outcome::Unchanged => format!("unchanged (it carries its labels already): {about}"),
        Outcome::Unlabelled => "unlabelled: not about a cluster-scoped object, yet it carried clusterscope's labels; the patch removes them".to_owned(),
        Outcome::Skipped => {
            let object = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .map(|r| r["request"]["object"].clone())
                .unwrap_or_default();
            let reference = if object["involvedObject"].is_object() {
                &object["involvedObject"]
            } else {
                &object["regarding"]
            };
            let namespace = reference["namespace"].as_str().unwrap_or("");
            let why = decision
                .skip
                .map_or_else(|| "not ours".to_owned(), |s| s.words(namespace));
            format!("not patched: {why}")
        }
    }
}

/// The review's `request.object` with `patch` applied, as the API server would store it.
fn patched_object_of(
    body: &[u8],
    patch: &[json_patch::PatchOperation],
) -> Result<serde_json::Value, CommandError> {
    let review: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| refused(format!("invalid AdmissionReview: {e}")))?;
    let request = review.get("request");
    let Some(mut object) = request
        .and_then(|r| r.get("object"))
        .filter(|o| o.is_object())
        .cloned()
    else {
        let operation = request
            .and_then(|r| r.get("operation"))
            .and_then(|o| o.as_str())
            .unwrap_or("this");
        return Err(refused(format!(
            "request.object: absent, so there is no patched object to print (a {operation} request carries none; DELETE sends oldObject); drop --patched-object to see the response"
        )));
    };
    json_patch::patch(&mut object, patch)
        .map_err(|e| io_failure(format!("the patch does not apply to the object: {e}")))?;
    Ok(object)
}

fn check_config(file: Option<&Path>) -> Result<(), CommandError> {
    let (bytes, source) = match file {
        Some(path) if path != Path::new("-") => {
            // A file that cannot be read is not a refused configuration (exit 1, as documented).
            let bytes = std::fs::read(path)
                .map_err(|e| io_failure(format!("{}: cannot read: {e}", path.display())))?;
            (bytes, path.display().to_string())
        }
        // `-`, or a pipe or file on standard input: what was handed over is what is checked,
        // never the embedded default in its place.
        Some(_) => (read_config_stdin()?, STDIN.to_owned()),
        None if stdin_carries_input() => (read_config_stdin()?, STDIN.to_owned()),
        None => {
            let config = Config::embedded_default();
            return say_valid(&config);
        }
    };
    let config = Config::from_bytes(&bytes, &source).map_err(|e| refused(e.to_string()))?;
    say_valid(&config)
}

/// How standard input is named in what `check-config` says.
const STDIN: &str = "<standard input>";

/// Standard input, as a configuration: refused when it is empty (a command before the pipe
/// that failed hands over nothing, and nothing is not a valid configuration).
fn read_config_stdin() -> Result<Vec<u8>, CommandError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(crate::config::MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_failure(format!("{STDIN}: cannot read: {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(refused(format!(
            "{STDIN}: empty: nothing to check (give a file, or pipe a configuration in)"
        )));
    }
    Ok(bytes)
}

/// Whether standard input carries something to read: a pipe, a file or a socket; not a
/// terminal, nor /dev/null (a script or CI job with no input).
fn stdin_carries_input() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd).metadata().is_ok_and(|m| {
        let t = m.file_type();
        t.is_fifo() || t.is_file() || t.is_socket()
    })
}

/// Prints the summary of a configuration that passed, with its warnings on stderr.
fn say_valid(config: &Config) -> Result<(), CommandError> {
    // Valid, but surely not meant: said on stderr, the exit status stays 0.
    for warning in config.warnings(&crate::classify::builtin_kind_names()) {
        eprintln!("warning: {warning}");
    }
    write_stdout(config.summary().trim_end().as_bytes())
}

fn serve(args: ServeArgs) -> Result<(), CommandError> {
    args.server.certificates.check().map_err(refused)?;
    crate::telemetry::init(args.log.log_format, &args.log.log_level)
        .map_err(|e| refused(error_chain(&e)))?;
    let history = args.history.options();
    let options = crate::runtime::ServeOptions::from_flags(
        args.server,
        args.cluster.options(hostname),
        history,
    );
    let executor = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| io_failure(format!("cannot start the async runtime: {e}")))?;
    executor.block_on(async {
        // Installed first: a SIGTERM during start-up ends the server cleanly once it runs.
        let stop = crate::telemetry::shutdown_signal();
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let runtime = crate::runtime::Runtime::bind(options, metrics)
            .await
            .map_err(|e| {
                let said = crate::errors::error_chain(&e);
                if e.is_io() {
                    io_failure(said)
                } else {
                    refused(said)
                }
            })?;
        runtime
            .run(stop)
            .await
            .map_err(|e| io_failure(crate::errors::error_chain(&e)))
    })
}

fn certs(args: &CertsArgs) -> Result<(), CommandError> {
    crate::labels::check_dns1123_label(&args.service)
        .map_err(|e| refused(format!("--service {e}")))?;
    crate::labels::check_dns1123_label(&args.namespace)
        .map_err(|e| refused(format!("--namespace {e}")))?;
    // Everything is checked before anything is written: a refusal leaves no half-done files.
    let files = crate::certs::paths(&args.out);
    certs_may_write(args, &files)?;
    let names = crate::certs::service_names(&args.service, &args.namespace);
    let made = if args.renew {
        crate::certs::renew(&names, &args.out)
    } else {
        crate::certs::generate(&names)
    };
    let bundle = made.map_err(|e| io_failure(error_chain(&e)))?;
    let ca_bundle = bundle.ca_bundle();
    let webhook_config = match &args.webhook_config {
        Some(path) => Some(with_ca_bundle(path, &ca_bundle)?),
        None => None,
    };
    crate::certs::write(&args.out, &bundle).map_err(|e| io_failure(error_chain(&e)))?;
    if let Some((path, updated, count)) = webhook_config {
        crate::certs::replace_file(path, updated.as_bytes(), false)
            .map_err(|e| io_failure(error_chain(&e)))?;
        eprintln!("set caBundle in {} ({count} webhook(s))", path.display());
        // The shipped overlay's patch is a tracked file: say so before it is committed.
        eprintln!(
            "NOTE: {} now holds this cluster's CA. If git tracks it (manifests/overlays/manual-certs/cabundle.yaml is), `git status` shows it changed: commit it only in your own deployment repository; `git checkout -- {}` restores the empty one.",
            path.display(),
            path.display()
        );
    }
    if args.renew {
        eprintln!(
            "issued a new serving certificate from the CA in {} for {}: the caBundle is unchanged; put {} and {} into the Secret",
            files.ca.display(),
            names.join(", "),
            files.cert.display(),
            files.key.display()
        );
    } else {
        eprintln!(
            "wrote {}, {} (keep it: `certs --renew` issues the next pair from it), {}, {} for {}",
            files.ca.display(),
            files.ca_key.display(),
            files.cert.display(),
            files.key.display(),
            names.join(", ")
        );
    }
    write_stdout(ca_bundle.as_bytes())
}

/// Whether `certs` may write into --out: a new directory, `--force` (a new CA) or `--renew`
/// (the CA there, which needs its key).
fn certs_may_write(args: &CertsArgs, files: &crate::certs::Files) -> Result<(), CommandError> {
    if args.renew {
        return match [&files.ca, &files.ca_key].into_iter().find(|p| !p.exists()) {
            Some(missing) => Err(refused(format!(
                "--renew issues the next pair from the CA in {}, but {} is not there (a pair written by an older clusterscope has no ca.key); --force makes a new CA instead (then apply the webhook configuration's new caBundle too)",
                args.out.display(),
                missing.display()
            ))),
            None => Ok(()),
        };
    }
    let existing: Vec<String> = [&files.ca, &files.ca_key, &files.cert, &files.key]
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if existing.is_empty() || args.force {
        return Ok(());
    }
    Err(refused(format!(
        "{} already holds a pair ({}); pass --renew for a new serving pair from the same CA (the caBundle stays), --force for a new CA (apply the webhook configuration's new caBundle too), or choose another --out",
        args.out.display(),
        existing.join(", ")
    )))
}

/// The webhook configuration at `path` with every `caBundle:` set: (path, text, how many).
fn with_ca_bundle<'a>(
    path: &'a Path,
    ca_bundle: &str,
) -> Result<(&'a Path, String, usize), CommandError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| io_failure(format!("cannot read {}: {e}", path.display())))?;
    let (updated, count) = crate::certs::set_ca_bundle(&text, ca_bundle);
    if count == 0 {
        return Err(refused(format!(
            "{}: no `caBundle:` line to set; add `caBundle: \"\"` under each webhook's clientConfig (nothing was written)",
            path.display()
        )));
    }
    Ok((path, updated, count))
}

/// The host name, for a lease identity outside Kubernetes.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "clusterscope".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap's own consistency checks over every command (ids, groups, `requires`,
    /// `conflicts_with` across the components' flattened flags).
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_reach_each_component() {
        let cli = Cli::try_parse_from([
            "clusterscope",
            "serve",
            "--kubeconfig",
            "/k",
            "--context",
            "c",
            "--max-in-flight",
            "7",
            "--cert-reload-interval",
            "3s",
            "--postgres-url",
            "postgres://h/db",
            "--history-batch-rows",
            "9",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.log.log_format, crate::telemetry::LogFormat::Json);
        let history = args.history.options().expect("a database is named");
        assert_eq!(history.sink.batch_rows, 9);
        let options = crate::runtime::ServeOptions::from_flags(
            args.server,
            args.cluster.options(|| "host".into()),
            Some(history),
        );
        assert_eq!(options.limits.max_in_flight, 7);
        assert_eq!(options.limits.max_connections, 2048);
        assert_eq!(
            options.certificates.reload_interval,
            std::time::Duration::from_secs(3)
        );
        assert_eq!(options.cluster.identity, "host");
        assert!(matches!(
            options.cluster.mode,
            crate::cluster::ClusterMode::Kubeconfig { ref context, .. } if context.as_deref() == Some("c")
        ));
        // --kubeconfig and --cluster exclude each other across the two components.
        assert!(
            Cli::try_parse_from([
                "clusterscope",
                "serve",
                "--kubeconfig",
                "/k",
                "--cluster",
                "on"
            ])
            .is_err()
        );
    }
}
