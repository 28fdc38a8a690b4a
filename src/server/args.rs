//! The server's flags (`serve`'s addresses, certificates and limits) and the options they make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::flags::positive_duration;

use super::{DEFAULT_BODY_MEMORY, DEFAULT_MAX_CONNECTIONS_PER_PEER, MAX_BODY_BYTES};

/// How the webhook gets its serving certificate, and whom it lets in.
#[derive(Debug, Clone)]
pub struct Certificates {
    /// Serving certificate and key; both or neither.
    pub pair: Option<(PathBuf, PathBuf)>,
    /// Where a self-signed pair is created when `pair` is `None`.
    pub dir: PathBuf,
    /// How often the certificate files are re-read.
    pub reload_interval: Duration,
    /// When set, webhook clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// What the webhook grants its clients at most, and how long it waits for them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open webhook connections at most; more are closed at once.
    pub max_connections: usize,
    /// Requests in flight at most; more are answered 503.
    pub max_in_flight: usize,
    /// Memory for request bodies, all requests together; past it, 503.
    pub body_memory: usize,
    /// Open webhook connections from one address at most; more are closed at once.
    pub max_connections_per_peer: usize,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Longest wait for requests in flight at shutdown.
    pub drain_timeout: Duration,
}

/// The flags' defaults.
impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 2048,
            max_in_flight: 1024,
            body_memory: DEFAULT_BODY_MEMORY,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            header_read_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// `serve`'s server flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "server_flags")]
pub struct Args {
    /// HTTPS address for AdmissionReviews (`POST /mutate`).
    #[arg(long, env = "CLUSTERSCOPE_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP address for /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "CLUSTERSCOPE_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,
    /// Routing configuration (YAML); the embedded default when omitted.
    #[arg(long, env = "CLUSTERSCOPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub certificates: CertificateArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The certificate flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "certificate_flags")]
pub struct CertificateArgs {
    /// Serving certificate (PEM); watched and reloaded when it changes.
    #[arg(long, env = "CLUSTERSCOPE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of the serving certificate (PEM: PKCS#1, PKCS#8 or SEC1).
    #[arg(long, env = "CLUSTERSCOPE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require webhook clients to present a certificate signed by this CA (PEM): for an API
    /// server whose admission configuration gives it a client certificate for webhooks.
    #[arg(long, env = "CLUSTERSCOPE_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Without --tls-cert/--tls-key: where a self-signed CA and certificate are created.
    #[arg(
        long,
        env = "CLUSTERSCOPE_CERT_DIR",
        default_value = "certs",
        value_name = "DIR"
    )]
    pub cert_dir: PathBuf,
    /// How often the certificate files and the configuration file are re-read (a change of
    /// either is also picked up at once from file events).
    #[arg(long, env = "CLUSTERSCOPE_CERT_RELOAD_INTERVAL", default_value = "10s", value_name = "DURATION", value_parser = positive_duration)]
    pub cert_reload_interval: Duration,
}

/// The limit flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "limit_flags")]
pub struct LimitArgs {
    /// Longest wait for requests in flight at shutdown.
    #[arg(long, env = "CLUSTERSCOPE_DRAIN_TIMEOUT", default_value = "10s", value_name = "DURATION", value_parser = positive_duration)]
    pub drain_timeout: Duration,
    /// A client that has not sent its request headers by then is disconnected.
    #[arg(long, env = "CLUSTERSCOPE_HEADER_READ_TIMEOUT", default_value = "5s", value_name = "DURATION", value_parser = positive_duration)]
    pub header_read_timeout: Duration,
    /// Open webhook connections at most (1-1000000); more are closed at once.
    #[arg(long, env = "CLUSTERSCOPE_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
    /// Requests in flight at most (1-100000); more are answered 503 (Retry-After: 1).
    #[arg(long, env = "CLUSTERSCOPE_MAX_IN_FLIGHT", default_value_t = Limits::default().max_in_flight,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub max_in_flight: usize,
    /// Memory for request bodies, all requests together (e.g. 16MiB); past it, requests
    /// are answered 503 and the API server fails open.
    #[arg(long, env = "CLUSTERSCOPE_MAX_BODY_MEMORY", default_value = "16MiB", value_parser = body_memory)]
    pub max_body_memory: usize,
    /// Open webhook connections from one address at most; more are closed at once.
    #[arg(long, env = "CLUSTERSCOPE_MAX_CONNECTIONS_PER_PEER", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_PEER,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections_per_peer: usize,
}

impl CertificateArgs {
    /// A certificate and its key come together (said here rather than by clap, whose usage
    /// line would make the other flags given look required).
    pub fn check(&self) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Err("--tls-cert needs --tls-key (the certificate's private key): give both, or neither for a self-signed pair in --cert-dir".to_owned()),
            (None, Some(_)) => Err("--tls-key needs --tls-cert (the certificate it belongs to): give both, or neither for a self-signed pair in --cert-dir".to_owned()),
            _ => Ok(()),
        }
    }
}

/// `--max-body-memory`: a size from one largest body (7 MiB) to 4 GiB (`16MiB`, `64Mi`).
fn body_memory(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text
        .parse()
        .map_err(|e| format!("{e} (examples: 16MiB, 64Mi)"))?;
    let bytes = usize::try_from(size.as_u64()).map_err(|_| "too large".to_owned())?;
    if !(MAX_BODY_BYTES..=4 << 30).contains(&bytes) {
        return Err(format!(
            "must be between 7MiB (one largest body) and 4GiB, got {}",
            size.display().iec()
        ));
    }
    Ok(bytes)
}
