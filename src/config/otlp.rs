//! `otlp:`, where the channels with `otlp: true` export their events as OpenTelemetry log
//! records: the collector's endpoint and protocol, headers (values from environment variables,
//! so that an API key comes from a Secret, never from the file), TLS, compression, the timeout
//! of one export, and the resource attributes every record carries (`k8s.cluster.name`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Checker, ConfigError};

/// The two protocols every OpenTelemetry Collector's OTLP receiver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC (`LogsService/Export`), the receiver's port 4317.
    Grpc,
    /// Protobuf over HTTP (`POST /v1/logs`), the receiver's port 4318.
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// A header sent with every export: its name, and its value as read from the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    /// The environment variable it was read from (said in logs instead of the value).
    pub from_env: String,
    pub value: String,
}

/// The value is a secret: never printed.
impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (from ${})", self.name, self.from_env)
    }
}

/// TLS towards the collector: the system's roots unless a CA file is given, and a client
/// certificate when the collector asks for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key (both or neither).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The validated `otlp:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otlp {
    /// `http://` or `https://`, host and port; for `http/protobuf`, `/v1/logs` is added to
    /// its path as the OTLP specification says.
    pub endpoint: url::Url,
    pub protocol: Protocol,
    pub headers: Vec<Header>,
    pub tls: Tls,
    pub gzip: bool,
    /// One export at most.
    pub timeout: Duration,
    /// Resource attributes on every record, sorted by name (`k8s.cluster.name` among them).
    pub resource: BTreeMap<String, String>,
    /// Where `otlp:` is written, for messages.
    pub line: u64,
}

/// An export waits this long at most unless `timeout` says otherwise (the Collector
/// exporter's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawOtlp {
    endpoint: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<RawHeader>>,
    tls: Option<RawTls>,
    compression: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    resource: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHeader {
    from_env: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<Spanned<PathBuf>>,
    key_file: Option<Spanned<PathBuf>>,
}

impl Checker<'_> {
    /// `otlp:` at `at`: every field checked, headers read from the environment now.
    pub(super) fn check_otlp(&self, at: &Spanned<RawOtlp>) -> Result<Otlp, ConfigError> {
        let raw = &at.value;
        let endpoint = self.check_endpoint(at, raw.endpoint.as_ref())?;
        let protocol = match &raw.protocol {
            None => Protocol::Grpc,
            Some(p) => match p.value.as_str() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                other => {
                    return Err(self.err(
                        p,
                        format!("otlp.protocol {other:?} is not one of grpc, http/protobuf (what an OpenTelemetry Collector's OTLP receiver accepts)"),
                    ));
                }
            },
        };
        let gzip = match &raw.compression {
            None => true,
            Some(c) => match c.value.as_str() {
                "gzip" => true,
                "none" => false,
                other => {
                    return Err(self.err(
                        c,
                        format!("otlp.compression {other:?} is not one of gzip, none"),
                    ));
                }
            },
        };
        Ok(Otlp {
            endpoint,
            protocol,
            headers: self.check_headers(&raw.headers)?,
            tls: self.check_tls(raw.tls.as_ref())?,
            gzip,
            timeout: self.check_timeout(raw.timeout.as_ref())?,
            resource: self.check_resource(&raw.resource)?,
            line: at.referenced.line(),
        })
    }

    /// An absolute `http`/`https` URL with a host and nothing after its path.
    fn check_endpoint(
        &self,
        at: &Spanned<RawOtlp>,
        raw: Option<&Spanned<String>>,
    ) -> Result<url::Url, ConfigError> {
        let Some(e) = raw else {
            return Err(self.err(
                at,
                "otlp.endpoint is missing: where the collector listens, such as https://otel-collector.observability:4317",
            ));
        };
        let said = e.value.trim();
        if !said.contains("://") {
            return Err(self.err(
                e,
                format!(
                    "otlp.endpoint {said:?} has no scheme: write http://{said} or https://{said}"
                ),
            ));
        }
        let url = url::Url::parse(said)
            .map_err(|err| self.err(e, format!("otlp.endpoint {said:?} is not a URL: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.err(
                e,
                format!("otlp.endpoint {said:?} is not an http:// or https:// URL with a host"),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(self.err(
                e,
                format!("otlp.endpoint {said:?}: no credentials, query or fragment (headers carry credentials)"),
            ));
        }
        Ok(url)
    }

    /// Each header's name valid for HTTP/2 (lower case: gRPC metadata is), its value read from
    /// the environment variable it names, which must be set.
    fn check_headers(
        &self,
        raw: &BTreeMap<String, Spanned<RawHeader>>,
    ) -> Result<Vec<Header>, ConfigError> {
        let mut headers = Vec::new();
        for (name, h) in raw {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !valid || name.starts_with("grpc-") || matches!(name.as_str(), "content-type" | "te")
            {
                return Err(self.err(
                    h,
                    format!("otlp.headers: {name:?} is not a header name clusterscope may send (lower-case letters, digits, '-', '_', '.'; not content-type, te or grpc-*)"),
                ));
            }
            let var = &h.value.from_env;
            let value = std::env::var(var).map_err(|e| {
                let why = match e {
                    std::env::VarError::NotPresent => "is not set".to_owned(),
                    std::env::VarError::NotUnicode(_) => "is not UTF-8".to_owned(),
                };
                self.err(
                    h,
                    format!("otlp.headers.{name}: the environment variable {var} {why} (the pod sets it from a Secret, see manifests/overlays/otlp; to check the file elsewhere, set it to any value: {var}=x clusterscope check-config FILE)"),
                )
            })?;
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(self.err(
                    h,
                    format!("otlp.headers.{name}: the value of {var} has control characters (a trailing newline in the Secret?)"),
                ));
            }
            headers.push(Header {
                name: name.clone(),
                from_env: var.clone(),
                value,
            });
        }
        Ok(headers)
    }

    /// A CA file, and a client certificate with its key, both or neither.
    fn check_tls(&self, raw: Option<&RawTls>) -> Result<Tls, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Tls::default());
        };
        let client = match (&raw.cert_file, &raw.key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((c.value.clone(), k.value.clone())),
            (Some(c), None) => {
                return Err(self.err(c, "otlp.tls.certFile is given without otlp.tls.keyFile"));
            }
            (None, Some(k)) => {
                return Err(self.err(k, "otlp.tls.keyFile is given without otlp.tls.certFile"));
            }
        };
        Ok(Tls {
            ca_file: raw.ca_file.clone(),
            client,
        })
    }

    fn check_timeout(&self, raw: Option<&Spanned<String>>) -> Result<Duration, ConfigError> {
        let Some(t) = raw else {
            return Ok(DEFAULT_TIMEOUT);
        };
        let timeout = humantime::parse_duration(t.value.trim()).map_err(|e| {
            self.err(
                t,
                format!(
                    "otlp.timeout {:?} is not a duration such as 10s: {e}",
                    t.value
                ),
            )
        })?;
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&timeout) {
            return Err(self.err(
                t,
                format!("otlp.timeout {:?} is not between 100ms and 5m", t.value),
            ));
        }
        Ok(timeout)
    }

    /// Attribute names as OpenTelemetry writes them, values not empty.
    fn check_resource(
        &self,
        raw: &BTreeMap<String, Spanned<String>>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, value) in raw {
            if name.is_empty() || name.len() > 255 || name.chars().any(char::is_whitespace) {
                return Err(self.err(
                    value,
                    format!("otlp.resource: {name:?} is not an attribute name (such as k8s.cluster.name)"),
                ));
            }
            if value.value.is_empty() {
                return Err(self.err(value, format!("otlp.resource.{name} is empty")));
            }
            out.insert(name.clone(), value.value.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, OtlpProtocol};

    fn with(otlp: &str) -> Result<Config, String> {
        let yaml = format!("channels:\n  - name: c\n    otlp: true\notlp:\n{otlp}");
        Config::from_yaml(&yaml, "f.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_section_is_read_with_its_defaults() {
        // SAFETY: this test alone reads or writes this variable.
        unsafe { std::env::set_var("CLUSTERSCOPE_UNIT_OTLP_KEY", "s3cr3t-value") };
        let c = with("  endpoint: https://collector.example:4318/base\n  protocol: http/protobuf\n  headers:\n    x-api-key: {fromEnv: CLUSTERSCOPE_UNIT_OTLP_KEY}\n  tls: {caFile: /ca.crt, certFile: /c.crt, keyFile: /c.key}\n  compression: none\n  timeout: 3s\n  resource: {k8s.cluster.name: prod}\n").unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(o.endpoint.as_str(), "https://collector.example:4318/base");
        assert_eq!(
            (o.headers[0].name.as_str(), o.headers[0].value.as_str()),
            ("x-api-key", "s3cr3t-value")
        );
        // The value is a secret: never printed, its variable named instead.
        assert_eq!(
            format!("{:?}", o.headers),
            "[x-api-key (from $CLUSTERSCOPE_UNIT_OTLP_KEY)]"
        );
        assert!(!o.gzip);
        assert_eq!(o.timeout, std::time::Duration::from_secs(3));
        assert_eq!(o.resource["k8s.cluster.name"], "prod");
        assert!(c.channels[0].otlp && c.channels[0].copies);
        let d = with("  endpoint: http://127.0.0.1:4317\n")
            .unwrap()
            .otlp
            .unwrap();
        assert_eq!(
            (d.protocol, d.gzip, d.timeout),
            (OtlpProtocol::Grpc, true, super::DEFAULT_TIMEOUT)
        );
    }

    #[test]
    fn bad_settings_are_refused_with_their_line_and_what_to_write() {
        for (otlp, says) in [
            (
                "  endpoint: collector:4317\n",
                "f.yaml:5:13: otlp.endpoint \"collector:4317\" has no scheme: write http://collector:4317 or https://collector:4317",
            ),
            (
                "  endpoint: ftp://collector:21\n",
                "f.yaml:5:13: otlp.endpoint \"ftp://collector:21\" is not an http:// or https:// URL",
            ),
            (
                "  endpoint: http://c:4317\n  protocol: http/json\n",
                "f.yaml:6:13: otlp.protocol \"http/json\" is not one of grpc, http/protobuf",
            ),
            (
                "  endpoint: http://c:4317\n  headers:\n    authorization: {fromEnv: CLUSTERSCOPE_SURELY_UNSET_VARIABLE}\n",
                "f.yaml:7:20: otlp.headers.authorization: the environment variable CLUSTERSCOPE_SURELY_UNSET_VARIABLE is not set",
            ),
            (
                "  endpoint: http://c:4317\n  headers:\n    Authorization: {fromEnv: X}\n",
                "f.yaml:7:20: otlp.headers: \"Authorization\" is not a header name",
            ),
            (
                "  endpoint: http://c:4317\n  compression: zstd\n",
                "f.yaml:6:16: otlp.compression \"zstd\" is not one of gzip, none",
            ),
            (
                "  endpoint: http://c:4317\n  timeout: 10 minutes\n",
                "f.yaml:6:12: otlp.timeout \"10 minutes\" is not between 100ms and 5m",
            ),
            (
                "  endpoint: http://c:4317\n  tls: {certFile: /c.crt}\n",
                "otlp.tls.certFile is given without otlp.tls.keyFile",
            ),
            ("  protocol: grpc\n", "f.yaml:5:3: otlp.endpoint is missing"),
            (
                "  endpoint: http://c:4317\n  endpiont: x\n",
                "unknown field `endpiont`",
            ),
        ] {
            let e = with(otlp).unwrap_err();
            assert!(e.contains(says), "{otlp}: {e}");
        }
        let e = Config::from_yaml("channels:\n  - name: c\n    otlp: true\n", "f.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "f.yaml:2:11: channel \"c\" has otlp: true, but there is no top-level otlp: section"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_section_no_channel_uses_is_warned_about() {
        let c = Config::from_yaml(
            "channels: [{name: c}]\notlp:\n  endpoint: http://c:4317\n",
            "f.yaml",
        )
        .unwrap();
        let warnings: Vec<String> = c.warnings(&[]).iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            ["f.yaml:3: otlp: no channel has otlp: true, so nothing is exported"]
        );
    }
}
