//! The serving certificate: loading a PEM pair, serving it to new TLS handshakes, and
//! reloading it when the files change without a restart.
//!
//! Kubernetes rotates a mounted Secret by swapping a `..data` symlink; the reloader reads the
//! files by path on every check, so the swap is seen whatever inode the path resolves to. A
//! pair that does not load (half written, key not matching the certificate, garbage) is refused:
//! the old certificate keeps serving, and a log line and a metric say so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::TlsMetrics;

/// A certificate, key or CA file that was refused: which file, why, and the cause.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `flag` names the command-line flag that gave the path, when one did.
    #[error("cannot read {flag}{}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a PEM certificate")]
    Pem {
        file: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The file holds no usable certificate or key, or they do not belong together.
    #[error("{file}: {reason}")]
    Content { file: String, reason: String },
    #[error("TLS configuration refused")]
    Config(#[source] rustls::Error),
}

/// A loaded pair: what rustls serves, and when the leaf certificate expires.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// notAfter of the leaf certificate, Unix seconds.
    pub not_after: i64,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate chain and a PEM private key (PKCS#1, PKCS#8 or SEC1).
pub fn parse_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<LoadedCert, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Pem {
            file: cert_name.to_owned(),
            source,
        })?;
    let content = |file: &str, reason: String| TlsError::Content {
        file: file.to_owned(),
        reason,
    };
    let Some(leaf) = chain.first() else {
        return Err(content(
            cert_name,
            "contains no CERTIFICATE block".to_owned(),
        ));
    };
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| content(cert_name, format!("certificate cannot be parsed: {e}")))?
        .1
        .validity()
        .not_after
        .timestamp();
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        content(
            key_name,
            format!("no PKCS#1, PKCS#8 or SEC1 private key found: {e}"),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        content(
            key_name,
            format!("does not fit {cert_name} (or is not a supported key): {e}"),
        )
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        not_after,
    })
}

/// A loaded pair and the bytes of both files, certificate then key (to tell later changes
/// apart).
pub type LoadedPair = (LoadedCert, Vec<Vec<u8>>);

/// Reads and parses the pair at these paths.
pub fn load_pair(cert: &Path, key: &Path) -> Result<LoadedPair, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            flag: "",
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let loaded = parse_pair(
        &cert_pem,
        &key_pem,
        &cert.display().to_string(),
        &key.display().to_string(),
    )?;
    Ok((loaded, vec![cert_pem, key_pem]))
}

/// Serves whatever certificate is current to each new handshake.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(initial: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: ArcSwap::new(initial),
        }
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
pub fn server_config(
    resolver: Arc<CertResolver>,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(path)?),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Requires every client to present a certificate signed by a CA in `path` (PEM): the API
/// server does when its admission configuration gives it a client certificate for webhooks.
fn client_verifier(
    path: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let file = format!("--client-ca {}", path.display());
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        flag: "--client-ca ",
        path: path.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|source| TlsError::Pem {
            file: file.clone(),
            source,
        })?;
        roots.add(cert).map_err(|e| TlsError::Content {
            file: file.clone(),
            reason: format!("unusable CA certificate: {e}"),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::Content {
            file,
            reason: "no certificate in the file".to_owned(),
        });
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Content {
            file,
            reason: e.to_string(),
        })
}

/// Watches a certificate pair on disk and swaps it into the resolver when it changes.
#[derive(Debug)]
pub struct CertReloader {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub resolver: Arc<CertResolver>,
    pub metrics: TlsMetrics,
    /// The pair's files and what was last seen in them (loaded or refused).
    files: crate::watch::Files,
}

impl CertReloader {
    pub fn new(
        cert: PathBuf,
        key: PathBuf,
        resolver: Arc<CertResolver>,
        metrics: TlsMetrics,
        loaded: Vec<Vec<u8>>,
    ) -> Self {
        CertReloader {
            files: crate::watch::Files::new(vec![cert.clone(), key.clone()], loaded),
            cert,
            key,
            resolver,
            metrics,
        }
    }

    fn count(&self, result: &str) {
        self.metrics.reloads.count(result);
    }

    /// Checks the files once; returns `Some(Ok)` when a new pair was loaded, `Some(Err)` when
    /// a changed pair was refused, `None` when nothing changed.
    pub fn check(&mut self) -> Option<Result<(), TlsError>> {
        let files = self.files.changed()?;
        let [cert, key] = files.as_slice() else {
            return None;
        };
        match parse_pair(
            cert,
            key,
            &self.cert.display().to_string(),
            &self.key.display().to_string(),
        ) {
            Ok(loaded) => {
                self.resolver.set(loaded.key);
                self.metrics.expiry.set(loaded.not_after);
                self.count("success");
                tracing::info!(
                    cert = %self.cert.display(),
                    not_after = loaded.not_after,
                    "serving certificate reloaded"
                );
                Some(Ok(()))
            }
            Err(e) => {
                self.count("error");
                tracing::warn!(
                    error = %crate::errors::Chain(&e),
                    "new serving certificate refused; the previous one keeps serving"
                );
                Some(Err(e))
            }
        }
    }

    /// Starts watching the pair (see [`crate::watch`]) until `stop`; the watch is in place when
    /// this returns.
    pub fn spawn(
        mut self,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let paths = self.files.paths().to_vec();
        crate::watch::spawn(paths, interval, stop, move || {
            self.check();
        })
    }
}
