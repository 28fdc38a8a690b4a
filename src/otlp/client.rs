//! Sending export requests to the collector: gRPC (`LogsService/Export`, tonic) or protobuf
//! over HTTP (`POST <endpoint>/v1/logs`, hyper), over one TLS set-up (rustls: the system's
//! roots or `otlp.tls.caFile`, a client certificate when given), gzip, the configured headers
//! and timeout; and the collector's answer put in the delivery engine's terms, as the OTLP
//! specification says which answers a later try can pass.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message;

use crate::config::{Otlp, OtlpProtocol, OtlpTls};
use crate::delivery::SinkError;

/// Why an exporter could not be made from the settings (a TLS file, a header).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

/// What the collector said of an export it took: records it rejected, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taken {
    pub rejected: u64,
    pub message: String,
}

/// Sends export requests as the settings it was made from say.
pub struct Exporter {
    /// What it was made from: a reloaded configuration with other settings makes a new one.
    pub settings: Otlp,
    transport: Transport,
}

enum Transport {
    Grpc(LogsServiceClient<tonic::transport::Channel>),
    Http {
        client: Box<Client<HttpsConnector<HttpConnector>, Full<Bytes>>>,
        url: http::Uri,
    },
}

impl Exporter {
    /// An exporter for `settings` (reads the TLS files now; connects on first use).
    pub fn new(settings: &Otlp) -> Result<Self, SetupError> {
        let files = TlsFiles::read(&settings.tls)?;
        let transport = match settings.protocol {
            OtlpProtocol::Grpc => Transport::Grpc(grpc_client(settings, &files)?),
            OtlpProtocol::HttpProtobuf => {
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(files.rustls()?)
                    .https_or_http()
                    .enable_all_versions()
                    .build();
                let client = Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build(connector);
                Transport::Http {
                    client: Box::new(client),
                    url: logs_url(&settings.endpoint)?,
                }
            }
        };
        Ok(Exporter {
            settings: settings.clone(),
            transport,
        })
    }

    /// Sends one request: what the collector took, or why not in the engine's terms.
    pub async fn export(&self, request: ExportLogsServiceRequest) -> Result<Taken, SinkError> {
        let timeout = self.settings.timeout;
        let sent = match &self.transport {
            Transport::Grpc(client) => {
                tokio::time::timeout(timeout, self.grpc(client.clone(), request)).await
            }
            Transport::Http { client, url } => {
                tokio::time::timeout(timeout, self.http(client, url, request)).await
            }
        };
        sent.unwrap_or_else(|_| {
            Err(SinkError::Collector {
                said: crate::delivery::error::NO_ANSWER.to_owned(),
                message: format!(
                    "nothing within otlp.timeout ({})",
                    humantime::format_duration(timeout)
                )
                .into(),
                retryable: true,
            })
        })
    }

    async fn grpc(
        &self,
        mut client: LogsServiceClient<tonic::transport::Channel>,
        request: ExportLogsServiceRequest,
    ) -> Result<Taken, SinkError> {
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.settings.timeout);
        for h in &self.settings.headers {
            let name = tonic::metadata::MetadataKey::from_bytes(h.name.as_bytes());
            let value = tonic::metadata::MetadataValue::try_from(h.value.as_str());
            if let (Ok(name), Ok(value)) = (name, value) {
                request.metadata_mut().insert(name, value);
            }
        }
        match client.export(request).await {
            Ok(answer) => Ok(taken(answer.into_inner())),
            Err(status) => Err(grpc_error(&status, &self.settings)),
        }
    }

    async fn http(
        &self,
        client: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
        url: &http::Uri,
        request: ExportLogsServiceRequest,
    ) -> Result<Taken, SinkError> {
        let mut body = request.encode_to_vec();
        let mut builder = http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf");
        if self.settings.gzip {
            body = gzip(&body);
            builder = builder.header(http::header::CONTENT_ENCODING, "gzip");
        }
        for h in &self.settings.headers {
            builder = builder.header(h.name.as_str(), h.value.as_str());
        }
        let request = builder.body(Full::new(Bytes::from(body))).map_err(|e| {
            SinkError::Invalid(format!("the export request cannot be built: {e}").into())
        })?;
        let answer = client
            .request(request)
            .await
            .map_err(|e| SinkError::Collector {
                said: crate::delivery::error::NO_ANSWER.to_owned(),
                message: unreachable_words(&crate::errors::error_chain(&e), &self.settings).into(),
                retryable: true,
            })?;
        let (parts, body) = answer.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = if parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| v == "gzip")
        {
            gunzip(&body)
        } else {
            body.to_vec()
        };
        if parts.status.is_success() {
            let answer = ExportLogsServiceResponse::decode(body.as_slice()).unwrap_or_default();
            return Ok(taken(answer));
        }
        Err(http_error(parts.status, &parts.headers, &body))
    }
}

/// `<endpoint>/v1/logs`, as the OTLP/HTTP specification builds the URL from the base endpoint.
fn logs_url(endpoint: &url::Url) -> Result<http::Uri, SetupError> {
    let base = endpoint.as_str().trim_end_matches('/');
    format!("{base}/v1/logs")
        .parse()
        .map_err(|e| SetupError(format!("otlp.endpoint {endpoint}: {e}")))
}

fn taken(answer: ExportLogsServiceResponse) -> Taken {
    answer
        .partial_success
        .map_or_else(Taken::default, |p| Taken {
            rejected: u64::try_from(p.rejected_log_records).unwrap_or(0),
            message: p.error_message,
        })
}

/// A gRPC status in the engine's terms: the OTLP specification's retryable codes are tried
/// again, `RESOURCE_EXHAUSTED` only when the collector says when (`RetryInfo`), which is then
/// waited for.
fn grpc_error(status: &tonic::Status, settings: &Otlp) -> SinkError {
    use tonic::Code;
    use tonic_types::StatusExt;
    let said = format!("gRPC {}", code_name(status.code()));
    let retry_after = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .filter(|d| !d.is_zero());
    // A failure here (no connection, a TLS handshake refused) carries its cause: the
    // collector said nothing.
    if let Some(cause) = std::error::Error::source(status) {
        return SinkError::Collector {
            said: crate::delivery::error::NO_ANSWER.to_owned(),
            message: unreachable_words(&crate::errors::error_chain(cause), settings).into(),
            retryable: true,
        };
    }
    let message = status.message().to_owned();
    let retryable = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => retry_after.is_some(),
        _ => false,
    };
    answered(said, message, retryable, retry_after)
}

/// A collector's answer: paced when it is retryable and says when to come back.
fn answered(
    said: String,
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
) -> SinkError {
    match retry_after {
        Some(retry_after) if retryable => SinkError::CollectorPaced {
            retry_after,
            said,
            message: message.into(),
        },
        _ => SinkError::Collector {
            said,
            message: message.into(),
            retryable,
        },
    }
}

/// How the code is written in the gRPC specification (`UNAVAILABLE`).
fn code_name(code: tonic::Code) -> String {
    let words = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in words.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// An HTTP answer in the engine's terms: 429, 502, 503 and 504 are tried again (after
/// `Retry-After` when given), every other status is final.
fn http_error(status: http::StatusCode, headers: &http::HeaderMap, body: &[u8]) -> SinkError {
    let said = format!("HTTP {}", status.as_u16());
    let message = tonic_types::Status::decode(body)
        .ok()
        .map(|s| s.message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            crate::telemetry::clip(text.trim(), 256).into_owned()
        });
    let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
    let retry_after = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .filter(|d| !d.is_zero());
    answered(said, message, retryable, retry_after)
}

/// Why the collector could not be reached, with every cause once, and the setting to look at
/// when it is the certificate.
fn unreachable_words(said: &str, settings: &Otlp) -> String {
    let endpoint = &settings.endpoint;
    if said.contains("certificate") || said.contains("UnknownIssuer") {
        let trusted = match &settings.tls.ca_file {
            Some(ca) => format!("otlp.tls.caFile {}", ca.display()),
            None => "the system's roots (set otlp.tls.caFile to trust a private CA)".to_owned(),
        };
        return format!(
            "cannot reach {endpoint}: the TLS handshake failed: {said} (the collector's certificate must be issued by what otlp.tls trusts: {trusted})"
        );
    }
    format!("cannot reach {endpoint}: {said}")
}

/// A gRPC client of the collector (tonic's own TLS for `https://`, from the same files).
fn grpc_client(
    settings: &Otlp,
    files: &TlsFiles,
) -> Result<LogsServiceClient<tonic::transport::Channel>, SetupError> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(
        settings.endpoint.as_str().trim_end_matches('/').to_owned(),
    )
    .map_err(|e| SetupError(format!("otlp.endpoint {}: {e}", settings.endpoint)))?
    .connect_timeout(settings.timeout)
    .timeout(settings.timeout);
    if settings.endpoint.scheme() == "https" {
        endpoint = endpoint
            .tls_config(files.tonic())
            .map_err(|e| SetupError(format!("otlp.tls: {}", crate::errors::error_chain(&e))))?;
    }
    let mut client =
        LogsServiceClient::new(endpoint.connect_lazy()).max_decoding_message_size(4 << 20);
    if settings.gzip {
        client = client
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    Ok(client)
}

/// What `otlp.tls` names, read: the CA's certificates (none: the system's roots) and the
/// client certificate with its key.
struct TlsFiles {
    ca: Option<(String, Vec<rustls_pki_types::CertificateDer<'static>>)>,
    client: Option<(String, String)>,
}

impl TlsFiles {
    fn read(tls: &OtlpTls) -> Result<Self, SetupError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let read = |setting: &str, path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map_err(|e| SetupError(format!("{setting} {}: cannot read: {e}", path.display())))
        };
        let ca = match &tls.ca_file {
            None => None,
            Some(path) => {
                let pem = read("otlp.tls.caFile", path)?;
                let certs: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(pem.as_bytes())
                        .collect::<Result<_, _>>()
                        .map_err(|e| {
                            SetupError(format!("otlp.tls.caFile {}: {e}", path.display()))
                        })?;
                if certs.is_empty() {
                    return Err(SetupError(format!(
                        "otlp.tls.caFile {}: no PEM certificate in it",
                        path.display()
                    )));
                }
                Some((pem, certs))
            }
        };
        let client = match &tls.client {
            None => None,
            Some((cert, key)) => Some((
                read("otlp.tls.certFile", cert)?,
                read("otlp.tls.keyFile", key)?,
            )),
        };
        Ok(TlsFiles { ca, client })
    }

    /// tonic's TLS (gRPC): the CA, else the system's roots; the client certificate.
    fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new();
        config = match &self.ca {
            Some((pem, _)) => config.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.client {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }

    /// rustls (HTTP): the same roots and client certificate.
    fn rustls(&self) -> Result<rustls::ClientConfig, SetupError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some((_, certs)) => {
                for cert in certs {
                    roots
                        .add(cert.clone())
                        .map_err(|e| SetupError(format!("otlp.tls.caFile: {e}")))?;
                }
            }
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SetupError(format!("otlp.tls: {e}")))?
            .with_root_certificates(roots);
        let Some((cert, key)) = &self.client else {
            return Ok(builder.with_no_client_auth());
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| SetupError(format!("otlp.tls.certFile: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| SetupError(format!("otlp.tls.keyFile: {e}")))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| SetupError(format!("otlp.tls.certFile and keyFile: {e}")))
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into memory cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

/// A gzip answer, at most 4 MiB of it.
fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = flate2::read::GzDecoder::new(data)
        .take(4 << 20)
        .read_to_end(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_are_retried_as_the_otlp_specification_says() {
        let settings = crate::config::Config::from_yaml(
            "channels: [{name: c, otlp: true}]\notlp: {endpoint: http://127.0.0.1:4317}\n",
            "t",
        )
        .unwrap()
        .otlp
        .unwrap();
        let retried = |code| {
            grpc_error(&tonic::Status::new(code, "m"), &settings)
                .action(crate::delivery::Writer::Collector)
                == crate::delivery::Action::Retry
        };
        assert!(retried(tonic::Code::Unavailable));
        assert!(retried(tonic::Code::DeadlineExceeded));
        assert!(!retried(tonic::Code::InvalidArgument));
        assert!(!retried(tonic::Code::PermissionDenied));
        // RESOURCE_EXHAUSTED without RetryInfo: the collector cannot take it, ever.
        assert!(!retried(tonic::Code::ResourceExhausted));
        let e = grpc_error(
            &tonic::Status::new(tonic::Code::InvalidArgument, "bad"),
            &settings,
        );
        assert_eq!(
            e.to_string(),
            "the OTLP collector answered gRPC INVALID_ARGUMENT: bad"
        );
    }

    #[test]
    fn http_statuses_are_retried_as_the_otlp_specification_says_and_retry_after_waited() {
        let mut headers = http::HeaderMap::new();
        let action = |code: u16, headers: &http::HeaderMap| {
            http_error(http::StatusCode::from_u16(code).unwrap(), headers, b"no")
                .action(crate::delivery::Writer::Collector)
        };
        use crate::delivery::Action;
        for code in [429, 502, 503, 504] {
            assert_eq!(action(code, &headers), Action::Retry, "{code}");
        }
        for code in [400, 401, 403, 404, 413, 500] {
            assert_eq!(action(code, &headers), Action::GiveUp, "{code}");
        }
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("7"),
        );
        assert_eq!(
            action(429, &headers),
            Action::WaitFor(Duration::from_secs(7))
        );
        assert_eq!(action(400, &headers), Action::GiveUp);
    }
}
