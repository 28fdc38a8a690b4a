//! Certificate generation: a private CA and a serving certificate it signs, for a Kubernetes
//! Service or for local use, plus writing the caBundle into a webhook configuration. The CA's
//! key is kept beside it (`ca.key`), so a new serving pair can be issued by the same CA
//! ([`renew`]): the cluster's `caBundle` stays right through a rotation.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SigningKey,
};
use time::{Duration, OffsetDateTime};

/// Validity of the generated CA.
pub const CA_DAYS: i64 = 3650;
/// Validity of the generated serving certificate.
pub const SERVING_DAYS: i64 = 365;

/// A generated CA and serving certificate, PEM encoded.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub ca_pem: String,
    /// The CA's private key (PKCS#8), to issue the next serving pair with ([`renew`]).
    pub ca_key_pem: String,
    pub cert_pem: String,
    /// PKCS#8, ECDSA P-256.
    pub key_pem: String,
}

impl Bundle {
    /// The CA certificate in base64, as `caBundle` wants it.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes())
    }
}

/// The DNS names the API server uses for a Service.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Why certificates could not be made or written: its own words, the cause as its source.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("cannot generate the {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{} is not a usable CA ({what})", path.display())]
    Ca {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name:?} is not a valid DNS name")]
    Name {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{} is a file, not a directory: give a directory for the certificates (it is created if missing)", .0.display())]
    NotADirectory(PathBuf),
    #[error("cannot create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertsError {
    move |source| CertsError::Generate { what, source }
}

/// Generates a CA and a serving certificate for `names` (DNS names or IP addresses).
pub fn generate(names: &[String]) -> Result<Bundle, CertsError> {
    let now = OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::default();
    let mut ca_dn = DistinguishedName::new();
    ca_dn.push(DnType::CommonName, "clusterscope CA");
    ca_params.distinguished_name = ca_dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - Duration::hours(1);
    ca_params.not_after = now + Duration::days(CA_DAYS);
    let ca_key = KeyPair::generate().map_err(err("CA key"))?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(err("CA"))?;
    let (cert_pem, key_pem) = serving_pair(names, &ca)?;
    Ok(Bundle {
        ca_pem: ca.pem(),
        ca_key_pem,
        cert_pem,
        key_pem,
    })
}

/// A new serving certificate for `names`, issued by the CA already in `dir` (`ca.crt`,
/// `ca.key`): the CA, and so the cluster's `caBundle`, stays as it is.
pub fn renew(names: &[String], dir: &Path) -> Result<Bundle, CertsError> {
    let files = paths(dir);
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|source| CertsError::Read {
            path: path.clone(),
            source,
        })
    };
    let (ca_pem, ca_key_pem) = (read(&files.ca)?, read(&files.ca_key)?);
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|source| CertsError::Ca {
        path: files.ca_key.clone(),
        what: "not a PEM private key",
        source,
    })?;
    let ca = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|source| CertsError::Ca {
        path: files.ca.clone(),
        what: "not a PEM CA certificate, or not the one ca.key belongs to",
        source,
    })?;
    let (cert_pem, key_pem) = serving_pair(names, &ca)?;
    Ok(Bundle {
        ca_pem,
        ca_key_pem,
        cert_pem,
        key_pem,
    })
}

/// A serving certificate for `names` signed by `ca`, and its key: (certificate, key) in PEM.
fn serving_pair(
    names: &[String],
    ca: &Issuer<'_, impl SigningKey>,
) -> Result<(String, String), CertsError> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map_or("clusterscope", String::as_str),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|source| CertsError::Name {
                    name: n.clone(),
                    source,
                }),
        })
        .collect::<Result<_, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(SERVING_DAYS);
    let key = KeyPair::generate().map_err(err("serving key"))?;
    let cert = params
        .signed_by(&key, ca)
        .map_err(err("serving certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Where the files of a pair and its CA are.
#[derive(Debug, Clone)]
pub struct Files {
    pub ca: PathBuf,
    /// The CA's key, mode 0600: kept by whoever rotates, never put into the cluster.
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files in `dir`.
pub fn paths(dir: &Path) -> Files {
    Files {
        ca: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    }
}

/// Writes `ca.crt`, `ca.key`, `tls.crt` and `tls.key` (the keys with mode 0600) into `dir`,
/// creating it; each file is replaced whole (written beside it, then renamed over it), the
/// serving pair last.
pub fn write(dir: &Path, bundle: &Bundle) -> Result<(), CertsError> {
    if dir.exists() && !dir.is_dir() {
        return Err(CertsError::NotADirectory(dir.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(|source| CertsError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let files = paths(dir);
    replace_file(&files.ca, bundle.ca_pem.as_bytes(), false)?;
    replace_file(&files.ca_key, bundle.ca_key_pem.as_bytes(), true)?;
    replace_file(&files.cert, bundle.cert_pem.as_bytes(), false)?;
    replace_file(&files.key, bundle.key_pem.as_bytes(), true)
}

/// Replaces `path` with `bytes` at once: a reader sees the old file or the new one, never
/// half of one. `private`: mode 0600.
pub fn replace_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertsError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    opts.open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            CertsError::Write {
                path: path.to_owned(),
                source,
            }
        })
}

/// Sets every `caBundle:` value in a webhook configuration YAML to `ca_bundle`, keeping the
/// rest of the text (comments, order) as it is. Returns how many were set.
pub fn set_ca_bundle(yaml: &str, ca_bundle: &str) -> (String, usize) {
    let mut count = 0;
    let mut out = String::with_capacity(yaml.len() + ca_bundle.len());
    for line in yaml.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("caBundle:") {
            let indent = &line[..line.len() - trimmed.len()];
            let newline = if rest.ends_with('\n') { "\n" } else { "" };
            out.push_str(&format!("{indent}caBundle: {ca_bundle}{newline}"));
            count += 1;
        } else {
            out.push_str(line);
        }
    }
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads_and_names_the_service() {
        let names = service_names("clusterscope", "clusterscope-system");
        let b = generate(&names).unwrap();
        let loaded =
            crate::tls::parse_pair(b.cert_pem.as_bytes(), b.key_pem.as_bytes(), "c", "k").unwrap();
        let (_, cert) =
            x509_parser::parse_x509_certificate(loaded.key.end_entity_cert().unwrap()).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap().value;
        let dns: Vec<String> = sans.general_names.iter().map(|n| format!("{n}")).collect();
        assert!(
            dns.iter()
                .any(|n| n.contains("clusterscope.clusterscope-system.svc.cluster.local")),
            "{dns:?}"
        );
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(loaded.not_after > now + 360 * 86400 && loaded.not_after < now + 370 * 86400);
    }

    #[test]
    fn ca_bundle_is_set_in_place() {
        let yaml = "webhooks:\n  - name: a\n    clientConfig:\n      caBundle: \"\" # set me\n  - name: b\n    clientConfig:\n      caBundle: old\n";
        let (out, n) = set_ca_bundle(yaml, "Zm9v");
        assert_eq!(n, 2);
        assert_eq!(
            out,
            "webhooks:\n  - name: a\n    clientConfig:\n      caBundle: Zm9v\n  - name: b\n    clientConfig:\n      caBundle: Zm9v\n"
        );
    }
}
