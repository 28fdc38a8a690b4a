//! An OTLP logs receiver built in the tests from the official protocol definitions, on
//! loopback: a tonic `LogsService` server (plain or TLS) or an HTTP endpoint decoding
//! `ExportLogsServiceRequest` at `/v1/logs` (gzip or not), as an OpenTelemetry Collector's OTLP
//! receiver is. It keeps every record it took, flattened, with the headers each request came
//! with, and answers as the test scripts it (partial success, a gRPC status with or without
//! `RetryInfo`, an HTTP status with or without `Retry-After`).

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::Value;

/// One record as received, its resource beside it.
#[derive(Debug, Clone)]
pub struct Record {
    pub resource: BTreeMap<String, Value>,
    pub attributes: BTreeMap<String, Value>,
    pub severity_number: i32,
    pub severity_text: String,
    pub body: String,
    pub time_unix_nano: u64,
    pub received: Instant,
}

impl Record {
    /// A string attribute of the record, or of its resource.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes
            .get(key)
            .or_else(|| self.resource.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub headers: http::HeaderMap,
    pub records: usize,
    pub at: Instant,
}

/// What the receiver answers the next request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Takes it, rejecting this many records with this message.
    Partial(i64, String),
    /// A gRPC status, with `RetryInfo` when a delay is given.
    Grpc(tonic::Code, Option<Duration>),
    /// An HTTP status, with `Retry-After` (seconds) when given.
    Http(u16, Option<u64>),
}

#[derive(Default)]
pub struct State {
    pub records: Vec<Record>,
    pub requests: Vec<Request>,
    /// Answered in turn; once empty, every request is taken whole.
    pub answers: VecDeque<Answer>,
}

/// A running receiver; stopped when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn flat(attributes: &[KeyValue]) -> BTreeMap<String, Value> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect()
}

fn value(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Value::from(s.clone()),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::BoolValue(b)) => Value::from(*b),
        Some(other) => Value::from(format!("{other:?}")),
        None => Value::Null,
    }
}

/// Keeps what `request` carries; the answer scripted for it, if any.
fn take(
    state: &Mutex<State>,
    request: ExportLogsServiceRequest,
    headers: http::HeaderMap,
) -> Option<Answer> {
    let now = Instant::now();
    let mut s = state.lock().unwrap();
    let answer = s.answers.pop_front();
    let mut records = Vec::new();
    for rl in &request.resource_logs {
        let resource = flat(rl.resource.as_ref().map_or(&[][..], |r| &r.attributes));
        for sl in &rl.scope_logs {
            for r in &sl.log_records {
                records.push(Record {
                    resource: resource.clone(),
                    attributes: flat(&r.attributes),
                    severity_number: r.severity_number,
                    severity_text: r.severity_text.clone(),
                    body: value(r.body.as_ref()).as_str().unwrap_or("").to_owned(),
                    time_unix_nano: r.time_unix_nano,
                    received: now,
                });
            }
        }
    }
    s.requests.push(Request {
        headers,
        records: records.len(),
        at: now,
    });
    // A refused request's records are not kept: the collector did not take them.
    if matches!(answer, None | Some(Answer::Partial(..))) {
        s.records.extend(records);
    }
    answer
}

struct Grpc(Arc<Mutex<State>>);

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        match take(&self.0, request.into_inner(), headers) {
            None => Ok(tonic::Response::new(ExportLogsServiceResponse::default())),
            Some(Answer::Partial(rejected, message)) => {
                Ok(tonic::Response::new(partial(rejected, message)))
            }
            Some(Answer::Grpc(code, retry)) => {
                use tonic_types::{ErrorDetails, StatusExt};
                Err(match retry {
                    Some(delay) => tonic::Status::with_error_details(
                        code,
                        "scripted",
                        ErrorDetails::with_retry_info(Some(delay)),
                    ),
                    None => tonic::Status::new(code, "scripted"),
                })
            }
            Some(Answer::Http(..)) => {
                Err(tonic::Status::internal("an HTTP answer scripted for gRPC"))
            }
        }
    }
}

fn partial(rejected: i64, message: String) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess {
            rejected_log_records: rejected,
            error_message: message,
        }),
    }
}

impl Receiver {
    /// A gRPC receiver on a free loopback port.
    pub async fn grpc() -> Receiver {
        Self::grpc_at("127.0.0.1:0".parse().unwrap(), None, Arc::default()).await
    }

    /// A gRPC receiver on `addr` (a port used before: a restart), TLS with `tls` (certificate
    /// and key PEM) when given, keeping into `state`.
    pub async fn grpc_at(
        addr: SocketAddr,
        tls: Option<(String, String)>,
        state: Arc<Mutex<State>>,
    ) -> Receiver {
        let listener = bind(addr).await;
        let addr = listener.local_addr().unwrap();
        let mut server = tonic::transport::Server::builder();
        if let Some((cert, key)) = tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            server = server
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap();
        }
        let service = LogsServiceServer::new(Grpc(state.clone()))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let _ = server
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// An OTLP/HTTP receiver (`POST /v1/logs`, protobuf, gzip or not) on a free loopback port.
    pub async fn http() -> Receiver {
        Self::http_at("127.0.0.1:0".parse().unwrap(), Arc::default()).await
    }

    /// An OTLP/HTTP receiver on `addr`, keeping into `state`.
    pub async fn http_at(addr: SocketAddr, state: Arc<Mutex<State>>) -> Receiver {
        use axum::response::IntoResponse;
        let listener = bind(addr).await;
        let addr = listener.local_addr().unwrap();
        let kept = state.clone();
        let app = axum::Router::new().route(
            "/v1/logs",
            axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let state = kept.clone();
                async move {
                    let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
                    let body = if gzip {
                        let mut out = Vec::new();
                        flate2::read::GzDecoder::new(&body[..])
                            .read_to_end(&mut out)
                            .unwrap();
                        out
                    } else {
                        body.to_vec()
                    };
                    let Ok(request) = ExportLogsServiceRequest::decode(body.as_slice()) else {
                        return (
                            http::StatusCode::BAD_REQUEST,
                            "not an ExportLogsServiceRequest",
                        )
                            .into_response();
                    };
                    let protobuf = [(http::header::CONTENT_TYPE, "application/x-protobuf")];
                    match take(&state, request, headers) {
                        None => (
                            protobuf,
                            ExportLogsServiceResponse::default().encode_to_vec(),
                        )
                            .into_response(),
                        Some(Answer::Partial(n, m)) => {
                            (protobuf, partial(n, m).encode_to_vec()).into_response()
                        }
                        Some(Answer::Http(code, retry_after)) => {
                            let mut response =
                                (http::StatusCode::from_u16(code).unwrap(), "scripted")
                                    .into_response();
                            if let Some(secs) = retry_after {
                                response
                                    .headers_mut()
                                    .insert(http::header::RETRY_AFTER, secs.into());
                            }
                            response
                        }
                        Some(Answer::Grpc(..)) => (
                            http::StatusCode::INTERNAL_SERVER_ERROR,
                            "a gRPC answer scripted for HTTP",
                        )
                            .into_response(),
                    }
                }
            }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Every record taken so far.
    pub fn records(&self) -> Vec<Record> {
        self.state.lock().unwrap().records.clone()
    }

    /// Every request received so far (taken or not).
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Scripts the answers of the next requests.
    pub fn answer(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.lock().unwrap().answers.extend(answers);
    }

    /// The records of the event named `name` (`k8s.event.name`), by the namespace each is
    /// attributed to.
    pub fn namespaces_of(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .records()
            .iter()
            .filter(|r| r.attr("k8s.event.name") == name)
            .map(|r| r.attr("k8s.namespace.name").to_owned())
            .collect();
        out.sort();
        out
    }
}

/// Binds `addr`, retrying a little while a port just freed is still taken.
async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    for _ in 0..50 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::net::TcpListener::bind(addr).await.unwrap()
}
