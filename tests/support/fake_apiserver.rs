//! An in-process fake Kubernetes API server for core/v1 Events, on 127.0.0.1.
//!
//! Serves list, get, create, update (PUT) and patch (strategic merge and JSON merge, applied
//! as a JSON merge patch, which is what they mean for Event fields) with resourceVersions,
//! enforces the Event validation rules of the facts page (`legacyValidateEvent`, names,
//! namespaces), answers AlreadyExists, 404 for a missing namespace or event, and injects
//! faults on demand: forced error statuses, slow answers, or a server that is down.
//!
//! Beside Events: Leases, the cluster resources delivery rules read (list and watch across
//! namespaces, in pages), discovery, and clusterscope's Subscription custom resource once its
//! CRD is installed ([`FakeApiServer::install_subscription_crd`]; 404 before): list and watch
//! in every namespace, and its status subresource by server-side apply. Assumed of the real
//! API server there, not measured: a write of the object keeps its status and moves
//! `metadata.generation` only when the spec changes; an apply of the status needs a
//! `fieldManager` and changes nothing else.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

#[derive(Default)]
pub struct Store {
    pub namespaces: BTreeSet<String>,
    /// (namespace, name) → event
    pub events: BTreeMap<(String, String), Value>,
    pub resource_version: u64,
    /// Answers to give before any real work, oldest first: (only for this verb, status code,
    /// reason).
    pub faults: VecDeque<(Option<String>, u16, String)>,
    pub delay: Option<Duration>,
    /// Every request fails with 503 until then (an API server outage).
    pub down_until: Option<std::time::Instant>,
    /// Every request: (method, path).
    pub requests: Vec<(String, String)>,
    /// Every change, for watches: (resourceVersion, type, namespace, object).
    pub history: Vec<(u64, String, String, Value)>,
    /// Resuming a watch from before this resourceVersion answers 410 Gone.
    pub compacted_before: u64,
    pub watchers: Option<tokio::sync::broadcast::Sender<WatchMsg>>,
    /// coordination.k8s.io Leases: (namespace, name) → lease.
    pub leases: BTreeMap<(String, String), Value>,
    /// When each event was created: (namespace, name) → instant (for lag measurements).
    pub created_at: BTreeMap<(String, String), std::time::Instant>,
    /// Every resource call, as RBAC would check it.
    pub calls: Vec<Call>,
    /// Served by discovery: (group, version, plural, kind, namespaced).
    pub discovery: Vec<(String, String, String, String, bool)>,
    /// Discovery answers only after this (a slow aggregated API, a busy API server).
    pub discovery_delay: Option<Duration>,
    /// Lease calls made with this bearer token hang (one replica's path to the API server
    /// stalls while the others' works).
    pub stalled_token: Option<String>,
    /// What delivery rules watch: (resource, namespace or "", name) → object, for
    /// `persistentvolumes`, `volumeattachments`, `namespaces` and `pods`.
    pub objects: BTreeMap<(String, String, String), Value>,
    /// Namespaces being deleted: creating in them is refused as the API server does.
    pub terminating: BTreeSet<String>,
    /// Each page of a LIST of this resource answers after this long (a busy API server
    /// listing 150,000 Pods).
    pub list_delay: Option<(String, Duration)>,
    /// At most this many event creates and updates a second are accepted; more are answered
    /// as API Priority and Fairness answers (429, Retry-After: 1) and counted in `throttled`.
    pub write_limit: Option<u32>,
    /// The current second of `write_limit` and the writes accepted in it.
    pub write_window: Option<(std::time::Instant, u32)>,
    pub throttled: usize,
    /// The field selector of every LIST and WATCH, as sent (empty for none): (resource,
    /// namespace or "" for all, selector).
    pub field_selectors: Vec<(String, String, String)>,
}

#[derive(Clone, Debug)]
pub enum WatchMsg {
    Change(u64, String, String, Value),
    /// Ends every open watch (as an API server restart or a load balancer does).
    Close,
}

/// Records a change for watches.
fn record(s: &mut Store, kind: &str, ns: &str, obj: &Value) {
    let rv = s.resource_version;
    s.history
        .push((rv, kind.to_owned(), ns.to_owned(), obj.clone()));
    if let Some(tx) = &s.watchers {
        let _ = tx.send(WatchMsg::Change(
            rv,
            kind.to_owned(),
            ns.to_owned(),
            obj.clone(),
        ));
    }
}

#[derive(Clone)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    pub store: Arc<Mutex<Store>>,
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

/// The NamespaceLifecycle admission plugin's answer to a create in a namespace being deleted,
/// as a real API server sent it (the facts page).
fn terminating(ns: &str, name: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("events \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated"),
        "reason": "Forbidden",
        "details": {"name": name, "kind": "events", "causes": [{
            "reason": "NamespaceTerminating",
            "message": format!("namespace {ns} is being terminated"),
            "field": "metadata.namespace",
        }]},
        "code": 403,
    });
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// The reason of an injected fault that answers as API Priority and Fairness does.
const APF: &str = "APF rejection, retry after ";

/// A write past [`Store::write_limit`]: its 429, counted.
fn over_write_limit(s: &mut Store) -> Option<Response> {
    let limit = s.write_limit?;
    let now = std::time::Instant::now();
    let (start, count) = s
        .write_window
        .filter(|(start, _)| now.duration_since(*start) < Duration::from_secs(1))
        .unwrap_or((now, 0));
    if count >= limit {
        s.write_window = Some((start, count));
        s.throttled += 1;
        return Some(too_many_requests(1));
    }
    s.write_window = Some((start, count + 1));
    None
}

/// API Priority and Fairness's answer to a request it rejects: 429, `Retry-After`, and the
/// seconds in the Status's details too.
fn too_many_requests(secs: u32) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Too many requests, please try again later.",
        "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": secs},
        "code": 429,
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from(secs));
    response
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

/// `legacyValidateEvent` and the name rules, for an event created in `namespace`.
pub fn validate(namespace: &str, ev: &Value) -> Result<(), String> {
    let name = str_at(ev, &["metadata", "name"]);
    if !is_dns_subdomain(name) {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain"
        ));
    }
    let ev_ns = str_at(ev, &["metadata", "namespace"]);
    if !ev_ns.is_empty() && ev_ns != namespace {
        return Err(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        );
    }
    let involved_ns = str_at(ev, &["involvedObject", "namespace"]);
    let new_style = !ev["eventTime"].is_null();
    if new_style {
        if involved_ns.is_empty() && namespace != "default" && namespace != "kube-system" {
            return Err(format!(
                "involvedObject.namespace: Invalid value: {involved_ns:?}: does not match event.namespace"
            ));
        }
    } else if involved_ns.is_empty() {
        if namespace != "default" && !namespace.is_empty() {
            return Err(format!(
                "involvedObject.namespace: Invalid value: {involved_ns:?}: does not match event.namespace"
            ));
        }
    } else if involved_ns != namespace {
        return Err(format!(
            "involvedObject.namespace: Invalid value: {involved_ns:?}: does not match event.namespace"
        ));
    }
    if new_style {
        validate_new_style(ev)?;
    }
    validate_metadata_maps(ev)?;
    for (field, max) in [
        ("reason", 128),
        ("action", 128),
        ("reportingComponent", 128),
        ("reportingInstance", 128),
    ] {
        if str_at(ev, &[field]).len() > max {
            return Err(format!(
                "{field}: Too long: may not be more than {max} bytes"
            ));
        }
    }
    Ok(())
}

/// What `legacyValidateEvent` asks of an event with `eventTime` (every events.k8s.io/v1 event):
/// `reportingController` (a qualified name), `reportingInstance`, `action` and `reason`, each
/// at most 128 characters, and a message (the note) of at most 1024.
/// Events are stored and written as core/v1 here, where the controller is `reportingComponent`
/// (the API server's messages name the internal field, `reportingController`).
fn validate_new_style(ev: &Value) -> Result<(), String> {
    for (json, field) in [
        ("reportingComponent", "reportingController"),
        ("reportingInstance", "reportingInstance"),
        ("action", "action"),
        ("reason", "reason"),
    ] {
        let value = str_at(ev, &[json]);
        if value.is_empty() {
            return Err(format!("{field}: Required value"));
        }
        if value.len() > 128 {
            return Err(format!("{field}: Too long: may not be more than 128 bytes"));
        }
    }
    let controller = str_at(ev, &["reportingComponent"]);
    if !is_qualified_name(controller) {
        return Err(format!(
            "reportingController: Invalid value: {controller:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"
        ));
    }
    if str_at(ev, &["message"]).len() > 1024 {
        return Err("message: Too long: may not be more than 1024 bytes".into());
    }
    Ok(())
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters (a label value may also
/// be empty).
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// apimachinery's `IsQualifiedName`: an optional DNS-subdomain prefix and `/`, then a name.
fn is_qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty() && is_dns_subdomain(prefix) && is_qualified_name_part(name)
        }
        None => is_qualified_name_part(key),
    }
}

/// Label keys and values, annotation keys, and the 256 KiB total of annotations
/// (`ValidateLabels`, `ValidateAnnotations` in apimachinery).
fn validate_metadata_maps(ev: &Value) -> Result<(), String> {
    if let Some(labels) = ev["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                return Err(format!(
                    "metadata.labels: Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"
                ));
            }
            let v = v.as_str().unwrap_or("");
            if !v.is_empty() && !is_qualified_name_part(v) {
                return Err(format!(
                    "metadata.labels: Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63)"
                ));
            }
        }
    }
    if let Some(annotations) = ev["metadata"]["annotations"].as_object() {
        let mut total = 0usize;
        for (k, v) in annotations {
            if !is_qualified_name(&k.to_ascii_lowercase()) {
                return Err(format!(
                    "metadata.annotations: Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            return Err(format!(
                "metadata.annotations: Too long: may not be more than 262144 bytes (got {total})"
            ));
        }
    }
    Ok(())
}

fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

impl FakeApiServer {
    pub async fn start(namespaces: &[&str]) -> FakeApiServer {
        let (tx, _) = tokio::sync::broadcast::channel(65536);
        let discovery = [
            ("", "v1", "nodes", "Node", false),
            ("", "v1", "namespaces", "Namespace", false),
            ("", "v1", "pods", "Pod", true),
            ("", "v1", "events", "Event", true),
            ("coordination.k8s.io", "v1", "leases", "Lease", true),
        ]
        .iter()
        .map(|(g, v, p, k, n)| {
            (
                g.to_string(),
                v.to_string(),
                p.to_string(),
                k.to_string(),
                *n,
            )
        })
        .collect();
        let store = Arc::new(Mutex::new(Store {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            watchers: Some(tx),
            discovery,
            ..Store::default()
        }));
        {
            let mut s = store.lock().unwrap();
            for ns in namespaces {
                let mut obj = json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "uid": format!("ns-{ns}")}, "status": {"phase": "Active"}});
                bump(&mut s, &mut obj);
                s.objects
                    .insert(("namespaces".into(), String::new(), ns.to_string()), obj);
            }
        }
        let app = Router::new()
            .route("/api/v1/namespaces/{ns}/events", get(list).post(create))
            .route(
                "/api/v1/namespaces/{ns}/events/{name}",
                get(get_one).put(update).patch(patch).delete(delete),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                axum::routing::post(lease_create),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                get(lease_get).put(lease_put),
            )
            .route(
                "/version",
                get(|| async {
                    axum::Json(
                        json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0-fake",
                    "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"}),
                    )
                }),
            )
            .route(
                "/api/v1/{plural}",
                get(|st: St, q: Query, Path(plural): Path<String>| async move {
                    // The cluster-wide core resources delivery rules read; others are not served.
                    if !["persistentvolumes", "namespaces", "pods"].contains(&plural.as_str()) {
                        return status(404, "NotFound", &format!("the server could not find the requested resource ({plural})"));
                    }
                    list_objects(st, q, "", &plural).await
                }),
            )
            .route(
                "/apis/{group}/{version}/{plural}",
                get(
                    |st: St, q: Query, Path((group, version, plural)): Path<(String, String, String)>| async move {
                        if let Some(r) = not_served(&st.0, &group, &version, &plural) {
                            return r;
                        }
                        list_objects(st, q, &group, &plural).await
                    },
                ),
            )
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/status",
                axum::routing::patch(apply_status),
            )
            .route("/api", get(api_versions))
            .route("/api/v1", get(core_resources))
            .route("/apis", get(api_groups))
            .route("/apis/{group}/{version}", get(group_resources))
            .with_state(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { addr, store }
    }

    /// A mirror syncer on this server with the routing configuration `yaml`.
    pub fn syncer(&self, yaml: &str) -> clusterscope::mirror::sync::Syncer {
        clusterscope::mirror::sync::Syncer::new(
            self.client(),
            clusterscope::config::shared(
                clusterscope::config::Config::from_yaml(yaml, "test").unwrap(),
            ),
            Arc::new(clusterscope::classify::ScopeResolver::new()),
        )
    }

    /// Runs the mirror controller against this server with the routing configuration `yaml`
    /// (4 workers, retries from `retry_base`) until [`RunningController::stop`].
    pub fn run_controller(&self, yaml: &str, retry_base: Duration) -> RunningController {
        self.run_controller_with(
            yaml,
            clusterscope::mirror::controller::ControllerOptions {
                workers: 4,
                retry_base,
                ..Default::default()
            },
        )
    }

    /// As [`Self::run_controller`], with all the controller's options given.
    pub fn run_controller_with(
        &self,
        yaml: &str,
        options: clusterscope::mirror::controller::ControllerOptions,
    ) -> RunningController {
        self.run_syncer(self.syncer(yaml), options)
    }

    /// Runs the mirror controller with `syncer` (its sinks, its configuration) on this server.
    pub fn run_syncer(
        &self,
        syncer: clusterscope::mirror::sync::Syncer,
        options: clusterscope::mirror::controller::ControllerOptions,
    ) -> RunningController {
        self.run_syncer_with(
            syncer,
            options,
            Arc::new(clusterscope::metrics::Metrics::new()),
        )
    }

    /// As [`Self::run_syncer`], counting into `metrics` (which a sink may share).
    pub fn run_syncer_with(
        &self,
        syncer: clusterscope::mirror::sync::Syncer,
        options: clusterscope::mirror::controller::ControllerOptions,
        metrics: Arc<clusterscope::metrics::Metrics>,
    ) -> RunningController {
        use clusterscope::recorder::{KubeSink, Recorder, SystemClock};
        // As `serve` does: every channel's series exist from the start, at zero.
        let config = syncer.config.load_full();
        metrics.channels(config.channels.iter().map(|c| c.name.as_str()));
        let stop = tokio_util::sync::CancellationToken::new();
        // clusterscope's own events (given-up deliveries) are written to this server too.
        let recorder = Arc::new(Recorder::new(
            vec![Arc::new(KubeSink::new(self.client()))],
            &Default::default(),
            ("clusterscope", "test"),
            Arc::new(SystemClock),
            metrics.recorder.clone(),
        ));
        let mut recorder_writers = tokio::task::JoinSet::new();
        recorder.start(&mut recorder_writers);
        let own_events = Arc::new(clusterscope::recorder::OwnEvents::new());
        own_events.connect(
            recorder,
            clusterscope::recorder::pod_reference(
                "clusterscope-system",
                "clusterscope-0",
                Some("pod-uid-0"),
            ),
        );
        let status = Arc::new(clusterscope::status::StatusLine::default());
        let task = tokio::spawn(clusterscope::mirror::controller::run(
            syncer.with_own_events(own_events),
            metrics.clone(),
            options,
            status.clone(),
            stop.clone(),
        ));
        RunningController {
            stop,
            task,
            recorder_writers,
            metrics,
            status,
        }
    }

    /// A kube client talking to this server over plain HTTP.
    pub fn client(&self) -> kube::Client {
        let url: axum::http::Uri = format!("http://{}", self.addr).parse().unwrap();
        let mut config = kube::Config::new(url);
        config.read_timeout = Some(Duration::from_secs(5));
        kube::Client::try_from(config).unwrap()
    }

    /// A client that authenticates with `token` (see [`Store::stalled_token`]).
    pub fn client_with_token(&self, token: &str) -> kube::Client {
        let url: axum::http::Uri = format!("http://{}", self.addr).parse().unwrap();
        let mut config = kube::Config::new(url);
        config.read_timeout = Some(Duration::from_secs(60));
        config.auth_info.token = Some(token.to_owned().into());
        kube::Client::try_from(config).unwrap()
    }

    pub fn inject(&self, code: u16, reason: &str, times: usize) {
        let mut s = self.store.lock().unwrap();
        for _ in 0..times {
            s.faults.push_back((None, code, reason.to_owned()));
        }
    }

    /// As [`Self::inject`], for calls of one RBAC verb only (`create`, `list`, ...).
    pub fn inject_for(&self, verb: &str, code: u16, reason: &str, times: usize) {
        let mut s = self.store.lock().unwrap();
        for _ in 0..times {
            s.faults
                .push_back((Some(verb.to_owned()), code, reason.to_owned()));
        }
    }

    /// As [`Self::inject_for`], for calls of one verb on one resource (`list`, `pods`).
    pub fn inject_on(&self, verb: &str, resource: &str, code: u16, reason: &str, times: usize) {
        self.inject_for(&format!("{verb} {resource}"), code, reason, times);
    }

    /// How many `verb` calls were made on `resource` (RBAC's words: `list`, `pods`).
    pub fn calls_of(&self, verb: &str, resource: &str) -> usize {
        let s = self.store.lock().unwrap();
        s.calls
            .iter()
            .filter(|c| c.0 == verb && c.2 == resource)
            .count()
    }

    /// The next `times` calls of `verb` are rejected as API Priority and Fairness rejects a
    /// request its priority level has no room for: 429 with `Retry-After: secs` and
    /// `details.retryAfterSeconds` (apimachinery's `NewTooManyRequests`).
    pub fn throttle(&self, verb: &str, secs: u32, times: usize) {
        self.inject_for(verb, 429, &format!("{APF}{secs}"), times);
    }

    /// Waits until the API server has been asked nothing for 300 ms (discovery included),
    /// Leases aside (a replica renews its lease all the time): what a controller does after an event is done,
    /// so a check that something did NOT happen reads a settled state. Fails the test when the
    /// asking never stops (bounded at 30 s).
    pub async fn quiet(&self) {
        let asked = || {
            let s = self.store.lock().unwrap();
            s.requests
                .iter()
                .filter(|(_, path)| !path.starts_with("lease "))
                .count()
        };
        let mut seen = usize::MAX;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = asked();
            if now == seen {
                return;
            }
            seen = now;
        }
        panic!("the API server was never left alone for 300 ms");
    }

    pub fn event(&self, ns: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .unwrap()
            .events
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn events_in(&self, ns: &str) -> Vec<Value> {
        self.store
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Stores an event directly, as if another client had written it (no validation).
    pub fn put(&self, ns: &str, mut ev: Value) {
        let mut s = self.store.lock().unwrap();
        let name = str_at(&ev, &["metadata", "name"]).to_owned();
        ev["metadata"]["namespace"] = json!(ns);
        if ev["metadata"]["uid"].is_null() {
            ev["metadata"]["uid"] = json!(format!("uid-{}", s.resource_version + 1));
        }
        bump(&mut s, &mut ev);
        let kind = if s.events.contains_key(&(ns.to_owned(), name.clone())) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        record(&mut s, kind, ns, &ev);
        s.events.insert((ns.to_owned(), name), ev);
    }

    /// Stores a PersistentVolume, VolumeAttachment, Namespace or Pod (by its `resource`:
    /// `persistentvolumes`, ...), as its controller would; watchers see ADDED or MODIFIED. A
    /// Namespace also becomes a place events can be created in (or, with a
    /// `deletionTimestamp`, one that refuses them).
    pub fn put_object(&self, resource: &str, mut obj: Value) {
        let mut s = self.store.lock().unwrap();
        let ns = str_at(&obj, &["metadata", "namespace"]).to_owned();
        let name = str_at(&obj, &["metadata", "name"]).to_owned();
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", s.resource_version + 1));
        }
        if resource == "namespaces" {
            s.namespaces.insert(name.clone());
            if obj["metadata"]["deletionTimestamp"].is_string() {
                s.terminating.insert(name.clone());
            } else {
                s.terminating.remove(&name);
            }
        }
        let key = (resource.to_owned(), ns, name);
        if resource == "subscriptions" {
            // A custom resource with a status subresource: a write of the object keeps the
            // stored status, and a change of its spec moves the generation.
            let old = s.objects.get(&key);
            let generation = match old {
                Some(o) if o["spec"] == obj["spec"] => o["metadata"]["generation"].as_i64(),
                Some(o) => o["metadata"]["generation"].as_i64().map(|g| g + 1),
                None => Some(1),
            };
            obj["metadata"]["generation"] = json!(generation.unwrap_or(1));
            obj["status"] = old.map_or(Value::Null, |o| o["status"].clone());
            if let Some(o) = old {
                obj["metadata"]["creationTimestamp"] = o["metadata"]["creationTimestamp"].clone();
                obj["metadata"]["uid"] = o["metadata"]["uid"].clone();
            }
            if obj["status"].is_null() {
                obj.as_object_mut().map(|o| o.remove("status"));
            }
        }
        bump(&mut s, &mut obj);
        let kind = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        record(&mut s, kind, &format!("@{resource}"), &obj);
        s.objects.insert(key, obj);
    }

    /// Installs the Subscription CRD: discovery lists it, and it is served from then on.
    pub fn install_subscription_crd(&self) {
        self.store.lock().unwrap().discovery.push((
            "clusterscope.dev".into(),
            "v1alpha1".into(),
            "subscriptions".into(),
            "Subscription".into(),
            true,
        ));
    }

    /// Stores (creates or updates) a Subscription as a team's `kubectl apply` would, created
    /// `age_order` seconds after a fixed instant (the controller honours the oldest first).
    pub fn put_subscription(&self, ns: &str, name: &str, spec: Value, age_order: u32) {
        self.put_object(
            "subscriptions",
            json!({"apiVersion": "clusterscope.dev/v1alpha1", "kind": "Subscription",
                "metadata": {"name": name, "namespace": ns,
                    "creationTimestamp": format!("2026-12-01T10:{:02}:{:02}Z", age_order / 60, age_order % 60)},
                "spec": spec}),
        );
    }

    /// The mirror copies of the source event `source` stored in `ns`.
    pub fn copies_of(&self, ns: &str, source: &str) -> Vec<Value> {
        self.events_in(ns)
            .into_iter()
            .filter(|e| e["metadata"]["annotations"]["clusterscope.dev/source-name"] == source)
            .collect()
    }

    /// A stored object (`subscriptions`, `pods`, ...).
    pub fn object(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let s = self.store.lock().unwrap();
        s.objects
            .get(&(resource.to_owned(), ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Deletes a PersistentVolume, VolumeAttachment, Namespace or Pod; watchers see DELETED.
    pub fn delete_object(&self, resource: &str, ns: &str, name: &str) {
        let mut s = self.store.lock().unwrap();
        let key = (resource.to_owned(), ns.to_owned(), name.to_owned());
        if let Some(mut obj) = s.objects.remove(&key) {
            if resource == "namespaces" {
                s.namespaces.remove(name);
                s.terminating.remove(name);
            }
            bump(&mut s, &mut obj);
            record(&mut s, "DELETED", &format!("@{resource}"), &obj);
        }
    }

    /// Ends every open watch.
    pub fn drop_watches(&self) {
        if let Some(tx) = &self.store.lock().unwrap().watchers {
            let _ = tx.send(WatchMsg::Close);
        }
    }

    /// Forgets the change history: resuming any watch from before now answers 410 Gone.
    pub fn compact(&self) {
        let mut s = self.store.lock().unwrap();
        s.compacted_before = s.resource_version + 1;
        s.history.clear();
    }

    /// Deletes an event, as the event TTL does (watchers see DELETED).
    pub fn expire(&self, ns: &str, name: &str) {
        let mut s = self.store.lock().unwrap();
        if let Some(mut ev) = s.events.remove(&(ns.to_owned(), name.to_owned())) {
            bump(&mut s, &mut ev);
            record(&mut s, "DELETED", ns, &ev);
        }
    }
}

type St = State<Arc<Mutex<Store>>>;

/// A mirror controller started by [`FakeApiServer::run_controller`].
pub struct RunningController {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
    recorder_writers: tokio::task::JoinSet<()>,
    pub metrics: Arc<clusterscope::metrics::Metrics>,
    /// The `/readyz` line the controller holds while it cannot deliver yet.
    pub status: Arc<clusterscope::status::StatusLine>,
}

impl RunningController {
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        drop(self.recorder_writers);
    }

    /// The value of the series of the controller's metrics starting with `prefix`; see
    /// [`series`].
    pub fn metric(&self, prefix: &str) -> f64 {
        metric(&self.metrics, prefix)
    }

    /// For polling: the value of that series, or NaN while it is not there (no comparison
    /// holds for NaN, so a wait on a misspelt series never ends as if it had come true).
    pub fn seen(&self, prefix: &str) -> f64 {
        seen(&self.metrics, prefix)
    }
}

/// The value of the series of `metrics` whose line starts with `prefix`; see [`series`].
pub fn metric(metrics: &clusterscope::metrics::Metrics, prefix: &str) -> f64 {
    series(&metrics.encode(), prefix)
}

/// [`RunningController::seen`] for any metrics.
pub fn seen(metrics: &clusterscope::metrics::Metrics, prefix: &str) -> f64 {
    find_series(&metrics.encode(), prefix).unwrap_or(f64::NAN)
}

fn find_series(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| !l.starts_with('#') && l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The value of the first series in the exposition `text` whose line starts with `prefix`
/// (a name and its labels, as written there). A series that is not there fails the test,
/// naming the series of that name that are: a misspelt name or label must not read as 0.
pub fn series(text: &str, prefix: &str) -> f64 {
    find_series(text, prefix).unwrap_or_else(|| {
        let name = prefix.split('{').next().unwrap_or(prefix);
        let present: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(name))
            .collect();
        panic!("no series {prefix} in the metrics; of {name} there are: {present:#?}")
    })
}

/// The cluster side as `serve` runs it (`cluster::spawn`: discovery, the lease, the mirror and
/// subscription controllers) against `api`, with the configuration `config` (a test may store
/// another in it, as a reload does), as replica `replica-0` with a short lease; `options`
/// gives the rest. Stops when the token is cancelled.
pub fn spawn_cluster(
    api: &FakeApiServer,
    config: clusterscope::config::SharedConfig,
    resolver: Arc<clusterscope::classify::ScopeResolver>,
    metrics: Arc<clusterscope::metrics::Metrics>,
    options: clusterscope::cluster::ClusterOptions,
) -> (
    tokio_util::sync::CancellationToken,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let shared = clusterscope::cluster::Shared {
        config,
        resolver,
        metrics,
        state: Arc::new(clusterscope::status::StatusLine::default()),
        own_events: Arc::default(),
        outputs: Vec::new(),
    };
    let options = clusterscope::cluster::ClusterOptions {
        identity: "replica-0".into(),
        lease: Some(short_lease("replica-0")),
        ..options
    };
    // Discovery is refreshed on its own timer only: no pokes.
    let (_pokes, pokes) = tokio::sync::mpsc::channel(1);
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = clusterscope::cluster::spawn(
        clusterscope::cluster::ApiServer::client(api.client()),
        shared,
        options,
        pokes,
        stop.clone(),
    );
    (stop, tasks.into_iter().map(|(_, task)| task).collect())
}

/// A Pod in `ns` bound to `node`, in `phase` (`Running`, `Succeeded`, ...), as its
/// controller and the kubelet leave it.
pub fn pod(ns: &str, name: &str, node: &str, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": phase}})
}

/// The namespaces of [`three_teams`]: the three clusterscope needs and three teams'.
pub const THREE_TEAMS: [&str; 6] = [
    "default",
    "kube-system",
    "clusterscope-system",
    "team-a",
    "team-b",
    "team-c",
];

/// The cluster of the delivery tests: namespaces team-a, team-b and team-c (and the three
/// clusterscope needs); node1 runs pods of team-a and team-b, node2 of team-c; the volume pv-7
/// is bound to a claim of team-a.
pub async fn three_teams() -> FakeApiServer {
    let api = FakeApiServer::start(&THREE_TEAMS).await;
    api.put_object("pods", pod("team-a", "web", "node1", "Running"));
    api.put_object("pods", pod("team-b", "api", "node1", "Running"));
    api.put_object("pods", pod("team-c", "db", "node2", "Running"));
    api.put_object("persistentvolumes", volume("pv-7", "team-a"));
    api
}

/// A PersistentVolume bound to claim `data` of `claim_ns`.
pub fn volume(name: &str, claim_ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"claimRef": {"namespace": claim_ns, "name": "data"}}})
}

/// A kubeconfig in `dir` whose current context points at `http://<address>` with a token (the
/// way a person's kubeconfig names a cluster).
pub fn write_kubeconfig(dir: &std::path::Path, address: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{address}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
        ),
    )
    .expect("kubeconfig");
    path
}

/// Cluster-side options quick enough for tests: two mirror workers, 20 ms retries, the owner
/// state and Subscription statuses re-read every 200 ms.
pub fn quick_cluster_options() -> clusterscope::cluster::ClusterOptions {
    clusterscope::cluster::ClusterOptions {
        controller: clusterscope::mirror::controller::ControllerOptions {
            workers: 2,
            retry_base: Duration::from_millis(20),
            subscriptions_wait: Duration::from_secs(5),
            owners_every: Duration::from_millis(200),
            ..Default::default()
        },
        subscriptions: clusterscope::subscription::controller::Options {
            status_every: Duration::from_millis(200),
            settle: Duration::from_millis(20),
        },
        ..Default::default()
    }
}

/// `yaml` as a shared configuration (what `serve` reloads in place).
pub fn config(yaml: &str) -> clusterscope::config::SharedConfig {
    clusterscope::config::shared(clusterscope::config::Config::from_yaml(yaml, "test").unwrap())
}

/// Lease timings short enough for tests: 1 s lease, 700 ms renew deadline, 100 ms retries.
pub fn short_lease(identity: &str) -> clusterscope::leader::LeaseOptions {
    clusterscope::leader::LeaseOptions {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(700),
        retry_period: Duration::from_millis(100),
        ..clusterscope::leader::LeaseOptions::new("clusterscope-system", identity)
    }
}

/// Polls `cond` every 20 ms for up to `secs` seconds; whether it came true.
pub async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// One API call as RBAC sees it: (verb, API group, resource, namespace).
pub type Call = (String, String, String, String);

/// Answers the request with the fault or outage it meets, if any ([`gate`]), and returns;
/// `admit!(discovery path)` for discovery documents, which RBAC does not name.
macro_rules! admit {
    (discovery $store:expr, $path:expr) => {
        if let Some(r) = discovery_gate($store, $path).await {
            return r;
        }
    };
    ($store:expr, $method:expr, $path:expr, $rbac:expr $(,)?) => {
        if let Some(r) = gate($store, $method, $path, $rbac).await {
            return r;
        }
    };
}

/// The request's body as JSON, or the 400 the API server answers.
macro_rules! json_body {
    ($body:expr, $what:expr) => {
        match serde_json::from_slice::<Value>(&$body) {
            Ok(v) => v,
            Err(_) => return status(400, "BadRequest", &format!("{} is not JSON", $what)),
        }
    };
}

async fn gate(
    store: &Arc<Mutex<Store>>,
    method: &str,
    path: String,
    rbac: Option<(&str, &str, &str, &str)>,
) -> Option<Response> {
    let (fault, delay) = {
        let mut s = store.lock().unwrap();
        s.requests.push((method.to_owned(), path));
        if let Some((verb, group, resource, ns)) = rbac {
            s.calls.push((
                verb.to_owned(),
                group.to_owned(),
                resource.to_owned(),
                ns.to_owned(),
            ));
        }
        let down = s.down_until.is_some_and(|t| std::time::Instant::now() < t);
        let verb = rbac.map(|r| r.0);
        let verb_on = rbac.map(|(verb, _, resource, _)| format!("{verb} {resource}"));
        let fault = if down {
            Some((503, "ServiceUnavailable".to_owned()))
        } else {
            let at = s.faults.iter().position(|(only, _, _)| {
                only.is_none() || only.as_deref() == verb || *only == verb_on
            });
            at.and_then(|i| s.faults.remove(i))
                .map(|(_, code, reason)| (code, reason))
        };
        (fault, s.delay)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    fault.map(|(code, reason)| match reason.strip_prefix(APF) {
        Some(secs) => too_many_requests(secs.parse().unwrap_or(1)),
        None => status(code, &reason, "injected fault"),
    })
}

fn bump(s: &mut Store, ev: &mut Value) {
    s.resource_version += 1;
    ev["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
}

async fn list(
    State(store): St,
    Path(ns): Path<String>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
) -> Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(store, ns, q).await;
    }
    admit!(
        &store,
        "LIST",
        ns.clone(),
        Some(("list", "", "events", &ns)),
    );
    let fields = match field_selector(&store, ("events", &ns), &q) {
        Ok(f) => f,
        Err(e) => return status(400, "BadRequest", &e),
    };
    let s = store.lock().unwrap();
    if let Some(Err(e)) = q
        .get("labelSelector")
        .map(|l| label_selects(l, &Value::Null))
    {
        return status(400, "BadRequest", &e);
    }
    // Pages in name order: `limit` items, then a `continue` token naming the last one.
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let after = q.get("continue").cloned().unwrap_or_default();
    let mut items: Vec<Value> = s
        .events
        .iter()
        .filter(|((n, name), v)| {
            *n == ns
                && (after.is_empty() || *name > after)
                && fields.selects(v)
                && q.get("labelSelector")
                    .is_none_or(|l| label_selects(l, v) == Ok(true))
        })
        .take(limit.saturating_add(1))
        .map(|(_, v)| v.clone())
        .collect();
    let more = items.len() > limit;
    items.truncate(limit);
    let mut metadata = json!({"resourceVersion": s.resource_version.to_string()});
    if more && let Some(last) = items.last() {
        metadata["continue"] = json!(str_at(last, &["metadata", "name"]));
    }
    axum::Json(json!({
        "kind": "EventList", "apiVersion": "v1",
        "metadata": metadata,
        "items": items,
    }))
    .into_response()
}

type Query = axum::extract::Query<BTreeMap<String, String>>;

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A custom resource of clusterscope's own group that discovery does not list is not served
/// (its CRD is not installed): 404, as the API server answers.
fn not_served(store: &Mutex<Store>, group: &str, version: &str, plural: &str) -> Option<Response> {
    let s = store.lock().unwrap();
    let served = s
        .discovery
        .iter()
        .any(|(g, v, p, ..)| g == group && v == version && p == plural);
    (group == "clusterscope.dev" && !served).then(|| {
        status(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({plural}.{group})"),
        )
    })
}

/// A server-side apply of a custom resource's status subresource, as the API server takes it:
/// `application/apply-patch+yaml` with a `fieldManager`, the body naming the object's
/// apiVersion, kind and name; only `.status` changes (spec, labels and generation stay), the
/// resourceVersion moves and watchers see MODIFIED. One field manager owns the whole status
/// here, so its applied status replaces the stored one.
async fn apply_status(
    State(store): St,
    Path((group, version, ns, plural, name)): Path<(String, String, String, String, String)>,
    axum::extract::Query(q): Query,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = not_served(&store, &group, &version, &plural) {
        return r;
    }
    let subresource = format!("{plural}/status");
    admit!(
        &store,
        "PATCH",
        format!("{ns}/{name}/status"),
        Some(("patch", &group, &subresource, &ns)),
    );
    let ct = content_type(&headers);
    if ct != "application/apply-patch+yaml" {
        return status(
            415,
            "UnsupportedMediaType",
            &format!("the fake applies status only: {ct:?}"),
        );
    }
    if q.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return status(
            400,
            "BadRequest",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        );
    }
    let Ok(applied) = serde_json::from_slice::<Value>(&body) else {
        return status(
            400,
            "BadRequest",
            "the applied configuration is not JSON (YAML)",
        );
    };
    let gv = format!("{group}/{version}");
    if applied["apiVersion"] != json!(gv) || applied["kind"].as_str().is_none_or(str::is_empty) {
        return status(
            400,
            "BadRequest",
            "the applied configuration must name apiVersion and kind",
        );
    }
    if applied["metadata"]["name"] != json!(name) {
        return status(
            400,
            "BadRequest",
            "the name of the object does not match the name on the URL",
        );
    }
    let mut s = store.lock().unwrap();
    let key = (plural.clone(), ns.clone(), name.clone());
    let Some(mut obj) = s.objects.get(&key).cloned() else {
        return status(
            404,
            "NotFound",
            &format!("{plural}.{group} \"{name}\" not found"),
        );
    };
    obj["status"] = applied["status"].clone();
    bump(&mut s, &mut obj);
    record(&mut s, "MODIFIED", &format!("@{plural}"), &obj);
    s.objects.insert(key, obj.clone());
    axum::Json(obj).into_response()
}

/// LIST or WATCH of one of the cluster resources delivery rules read (all namespaces).
async fn list_objects(
    State(store): St,
    axum::extract::Query(q): Query,
    group: &str,
    resource: &str,
) -> Response {
    let stream_key = format!("@{resource}");
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch_as(store, stream_key, q, (group, resource)).await;
    }
    admit!(
        &store,
        "LIST",
        resource.to_owned(),
        Some(("list", group, resource, "")),
    );
    let fields = match field_selector(&store, (resource, ""), &q) {
        Ok(f) => f,
        Err(e) => return status(400, "BadRequest", &e),
    };
    let slow = store.lock().unwrap().list_delay.clone();
    if let Some((_, delay)) = slow.filter(|(r, _)| r == resource) {
        tokio::time::sleep(delay).await;
    }
    let s = store.lock().unwrap();
    // Pages as the API server serves them: `limit` items in key order, then a `continue`
    // token naming the last one (kube-runtime's watcher lists in pages of 500).
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let token = q.get("continue").cloned().unwrap_or_default();
    // The token is `namespace/name` (namespaces hold no `/`); compared as the key is ordered.
    let after = token.split_once('/');
    let mut items: Vec<(String, Value)> = s
        .objects
        .iter()
        .filter(|((r, ns, name), _)| {
            r == resource
                && after.is_none_or(|(a_ns, a_name)| (ns.as_str(), name.as_str()) > (a_ns, a_name))
        })
        .filter(|(_, v)| fields.selects(v))
        .take(limit.saturating_add(1))
        .map(|((_, ns, name), v)| (format!("{ns}/{name}"), v.clone()))
        .collect();
    let more = items.len() > limit;
    items.truncate(limit);
    let mut metadata = json!({"resourceVersion": s.resource_version.to_string()});
    if more && let Some((last, _)) = items.last() {
        metadata["continue"] = json!(last);
    }
    axum::Json(json!({
        "kind": "List", "apiVersion": "v1",
        "metadata": metadata,
        "items": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// A label selector of comma-separated `key`, `!key`, `key=value`, `key==value` and
/// `key!=value` terms, as the API server reads them; an error for anything else.
fn label_selects(selector: &str, obj: &Value) -> Result<bool, String> {
    let labels = &obj["metadata"]["labels"];
    let mut all = true;
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let ok = if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k.trim()).is_none()
        } else if term.contains([' ', '(', ')']) {
            return Err(format!("unable to parse requirement: {term:?}"));
        } else {
            labels.get(term).is_some()
        };
        all &= ok;
    }
    Ok(all)
}

async fn get_one(State(store): St, Path((ns, name)): Path<(String, String)>) -> Response {
    admit!(
        &store,
        "GET",
        format!("{ns}/{name}"),
        Some(("get", "", "events", &ns)),
    );
    let s = store.lock().unwrap();
    match s.events.get(&(ns, name.clone())) {
        Some(v) => axum::Json(v.clone()).into_response(),
        None => status(404, "NotFound", &format!("events \"{name}\" not found")),
    }
}

async fn create(State(store): St, Path(ns): Path<String>, body: Bytes) -> Response {
    admit!(
        &store,
        "POST",
        ns.clone(),
        Some(("create", "", "events", &ns)),
    );
    let mut ev = json_body!(body, "body");
    let mut s = store.lock().unwrap();
    if let Some(r) = over_write_limit(&mut s) {
        return r;
    }
    if !s.namespaces.contains(&ns) {
        return status(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
    }
    if s.terminating.contains(&ns) {
        return terminating(&ns, str_at(&ev, &["metadata", "name"]));
    }
    if let Err(e) = validate(&ns, &ev) {
        return status(422, "Invalid", &format!("Event is invalid: {e}"));
    }
    let name = str_at(&ev, &["metadata", "name"]).to_owned();
    if s.events.contains_key(&(ns.clone(), name.clone())) {
        return status(
            409,
            "AlreadyExists",
            &format!("events \"{name}\" already exists"),
        );
    }
    ev["metadata"]["namespace"] = json!(ns);
    ev["metadata"]["uid"] = json!(format!("uid-{}", s.resource_version + 1));
    bump(&mut s, &mut ev);
    record(&mut s, "ADDED", &ns, &ev);
    s.created_at
        .insert((ns.clone(), name.clone()), std::time::Instant::now());
    s.events.insert((ns, name), ev.clone());
    (StatusCode::CREATED, axum::Json(ev)).into_response()
}

async fn update(
    State(store): St,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    admit!(
        &store,
        "PUT",
        format!("{ns}/{name}"),
        Some(("update", "", "events", &ns)),
    );
    let mut ev = json_body!(body, "body");
    let mut s = store.lock().unwrap();
    if let Some(r) = over_write_limit(&mut s) {
        return r;
    }
    let key = (ns.clone(), name.clone());
    let Some(current) = s.events.get(&key) else {
        return status(404, "NotFound", &format!("events \"{name}\" not found"));
    };
    let sent_rv = str_at(&ev, &["metadata", "resourceVersion"]);
    if !sent_rv.is_empty() && sent_rv != str_at(current, &["metadata", "resourceVersion"]) {
        return status(409, "Conflict", "the object has been modified");
    }
    if let Err(e) = validate(&ns, &ev) {
        return status(422, "Invalid", &format!("Event is invalid: {e}"));
    }
    ev["metadata"]["uid"] = current["metadata"]["uid"].clone();
    ev["metadata"]["namespace"] = json!(ns);
    bump(&mut s, &mut ev);
    record(&mut s, "MODIFIED", &ns, &ev);
    s.events.insert(key, ev.clone());
    axum::Json(ev).into_response()
}

async fn patch(
    State(store): St,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admit!(
        &store,
        "PATCH",
        format!("{ns}/{name}"),
        Some(("patch", "", "events", &ns)),
    );
    let ct = content_type(&headers);
    if !ct.starts_with("application/strategic-merge-patch+json")
        && !ct.starts_with("application/merge-patch+json")
    {
        return status(
            415,
            "UnsupportedMediaType",
            &format!("patch type {ct:?} not supported by the fake"),
        );
    }
    let p = json_body!(body, "patch");
    let mut s = store.lock().unwrap();
    let key = (ns.clone(), name.clone());
    let Some(mut ev) = s.events.get(&key).cloned() else {
        return status(404, "NotFound", &format!("events \"{name}\" not found"));
    };
    merge(&mut ev, &p);
    if let Err(e) = validate(&ns, &ev) {
        return status(422, "Invalid", &format!("Event is invalid: {e}"));
    }
    bump(&mut s, &mut ev);
    record(&mut s, "MODIFIED", &ns, &ev);
    s.events.insert(key, ev.clone());
    axum::Json(ev).into_response()
}

async fn delete(State(store): St, Path((ns, name)): Path<(String, String)>) -> Response {
    admit!(
        &store,
        "DELETE",
        format!("{ns}/{name}"),
        Some(("delete", "", "events", &ns)),
    );
    let mut s = store.lock().unwrap();
    match s.events.remove(&(ns.clone(), name.clone())) {
        Some(mut ev) => {
            s.resource_version += 1;
            ev["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
            record(&mut s, "DELETED", &ns, &ev);
            status(200, "", "deleted")
        }
        None => status(404, "NotFound", &format!("events \"{name}\" not found")),
    }
}

/// A parsed field selector: `field=value`, `field==value` and `field!=value` terms joined by
/// commas, each field one the API server can select `resource` by (apimachinery's
/// `fields.ParseSelector` and the resource's field label conversion).
#[derive(Clone, Debug, Default)]
pub struct FieldSelector(Vec<(Vec<&'static str>, bool, String)>);

/// The fields every resource can be selected by.
const META_FIELDS: [(&str, &[&str]); 2] = [
    ("metadata.name", &["metadata", "name"]),
    ("metadata.namespace", &["metadata", "namespace"]),
];

/// Events' selectable fields (`pkg/registry/core/event/strategy.go`, `ToSelectableFields`;
/// the facts page): `source` is `source.component` (or `reportingController` when that is
/// empty), `reportingComponent` is `reportingController`.
const EVENT_FIELDS: [(&str, &[&str]); 11] = [
    ("involvedObject.kind", &["involvedObject", "kind"]),
    ("involvedObject.namespace", &["involvedObject", "namespace"]),
    ("involvedObject.name", &["involvedObject", "name"]),
    ("involvedObject.uid", &["involvedObject", "uid"]),
    (
        "involvedObject.apiVersion",
        &["involvedObject", "apiVersion"],
    ),
    (
        "involvedObject.resourceVersion",
        &["involvedObject", "resourceVersion"],
    ),
    ("involvedObject.fieldPath", &["involvedObject", "fieldPath"]),
    ("reason", &["reason"]),
    ("reportingComponent", &["reportingController"]),
    ("source", &["source", "component"]),
    ("type", &["type"]),
];

/// Pods' (`pkg/registry/core/pod/strategy.go`, `ToSelectableFields`, the string ones) and
/// Namespaces' (`status.phase`) own selectable fields.
const POD_FIELDS: [(&str, &[&str]); 7] = [
    ("spec.nodeName", &["spec", "nodeName"]),
    ("spec.restartPolicy", &["spec", "restartPolicy"]),
    ("spec.schedulerName", &["spec", "schedulerName"]),
    ("spec.serviceAccountName", &["spec", "serviceAccountName"]),
    ("status.phase", &["status", "phase"]),
    ("status.podIP", &["status", "podIP"]),
    ("status.nominatedNodeName", &["status", "nominatedNodeName"]),
];

impl FieldSelector {
    /// `selector` for `resource`; the API server's 400 message for a field it cannot select
    /// by or a term it cannot read.
    pub fn parse(resource: &str, selector: &str) -> Result<FieldSelector, String> {
        let own: &[(&str, &[&str])] = match resource {
            "events" => &EVENT_FIELDS,
            "pods" => &POD_FIELDS,
            "namespaces" => &POD_FIELDS[4..5],
            _ => &[],
        };
        let mut terms = Vec::new();
        for term in selector.split(',').filter(|t| !t.is_empty()) {
            let (field, negate, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, false, v)
            } else {
                return Err(format!(
                    "invalid selector: '{selector}'; can't understand '{term}'"
                ));
            };
            let Some((_, path)) = META_FIELDS
                .iter()
                .chain(own)
                .find(|(name, _)| *name == field)
            else {
                return Err(format!("field label not supported: {field}"));
            };
            terms.push((path.to_vec(), negate, value.to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether `obj` has every selected field as asked (a missing field is "").
    pub fn selects(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, negate, want)| {
            let mut have = str_at(obj, path);
            if have.is_empty() && path.as_slice() == ["source", "component"] {
                have = str_at(obj, &["reportingController"]);
            }
            (have == want) != *negate
        })
    }
}

/// The field selector of a LIST or WATCH of `resource`, recorded in the store; the message of
/// the 400 the API server answers for one it cannot read.
fn field_selector(
    store: &Mutex<Store>,
    (resource, ns): (&str, &str),
    q: &BTreeMap<String, String>,
) -> Result<FieldSelector, String> {
    let selector = q.get("fieldSelector").map_or("", String::as_str);
    store.lock().unwrap().field_selectors.push((
        resource.to_owned(),
        ns.to_owned(),
        selector.to_owned(),
    ));
    FieldSelector::parse(resource, selector)
}

fn line(kind: &str, obj: &Value) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

async fn watch(store: Arc<Mutex<Store>>, ns: String, q: BTreeMap<String, String>) -> Response {
    watch_as(store, ns, q, ("", "events")).await
}

/// A watch of the changes recorded under `ns` (a namespace's events, or `@<resource>`).
async fn watch_as(
    store: Arc<Mutex<Store>>,
    ns: String,
    q: BTreeMap<String, String>,
    (group, resource): (&str, &str),
) -> Response {
    let rbac_ns = if ns.starts_with('@') { "" } else { ns.as_str() };
    admit!(
        &store,
        "WATCH",
        ns.clone(),
        Some(("watch", group, resource, rbac_ns)),
    );
    let fields = match field_selector(&store, (resource, rbac_ns), &q) {
        Ok(f) => f,
        Err(e) => return status(400, "BadRequest", &e),
    };
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let (backlog, mut rx, from) = {
        let s = store.lock().unwrap();
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(s.resource_version);
        if from < s.compacted_before {
            let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410});
            let body = line("ERROR", &gone);
            return Response::new(axum::body::Body::from(body));
        }
        let rx = s.watchers.as_ref().map(|t| t.subscribe());
        let backlog: Vec<(u64, String, Value)> = s
            .history
            .iter()
            .filter(|(rv, _, n, o)| *rv > from && *n == ns && fields.selects(o))
            .map(|(rv, k, _, o)| (*rv, k.clone(), o.clone()))
            .collect();
        (backlog, rx, from)
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    tokio::spawn(async move {
        let mut last = from;
        for (rv, kind, obj) in backlog {
            last = rv;
            if out_tx.send(line(&kind, &obj)).await.is_err() {
                return;
            }
        }
        let Some(rx) = rx.as_mut() else { return };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                msg = rx.recv() => match msg {
                    Ok(WatchMsg::Change(rv, kind, n, obj)) if n == ns && rv > last && fields.selects(&obj) => {
                        last = rv;
                        if out_tx.send(line(&kind, &obj)).await.is_err() {
                            return;
                        }
                    }
                    Ok(WatchMsg::Change(..)) => {}
                    Ok(WatchMsg::Close) | Err(_) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(out_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::new(axum::body::Body::from_stream(stream))
}

/// Hangs a lease call made with the stalled token.
async fn lease_stall(store: &Arc<Mutex<Store>>, headers: &HeaderMap) {
    let stalled = store.lock().unwrap().stalled_token.clone();
    let sent = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if stalled.is_some() && sent == stalled.as_deref() {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn lease_get(
    State(store): St,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    lease_stall(&store, &headers).await;
    admit!(
        &store,
        "GET",
        format!("lease {ns}/{name}"),
        Some(("get", "coordination.k8s.io", "leases", &ns)),
    );
    match store.lock().unwrap().leases.get(&(ns, name.clone())) {
        Some(l) => axum::Json(l.clone()).into_response(),
        None => status(
            404,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{name}\" not found"),
        ),
    }
}

async fn lease_create(
    State(store): St,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    lease_stall(&store, &headers).await;
    admit!(
        &store,
        "POST",
        format!("lease {ns}"),
        Some(("create", "coordination.k8s.io", "leases", &ns)),
    );
    let lease = json_body!(body, "body");
    let name = str_at(&lease, &["metadata", "name"]).to_owned();
    let mut s = store.lock().unwrap();
    let Store {
        leases,
        resource_version,
        ..
    } = &mut *s;
    store_new(leases, resource_version, (ns, name), lease, "leases")
}

async fn lease_put(
    State(store): St,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    lease_stall(&store, &headers).await;
    admit!(
        &store,
        "PUT",
        format!("lease {ns}/{name}"),
        Some(("update", "coordination.k8s.io", "leases", &ns)),
    );
    let lease = json_body!(body, "body");
    let mut s = store.lock().unwrap();
    let Store {
        leases,
        resource_version,
        ..
    } = &mut *s;
    store_over(leases, resource_version, (ns, name), lease, "leases")
}

/// Objects of one resource by (namespace, name).
type Keyed = BTreeMap<(String, String), Value>;

/// Stores `obj` as a new object of `resource` under `key`, with the next resourceVersion, and
/// answers 201 with it: 409 AlreadyExists when one is there.
fn store_new(
    map: &mut Keyed,
    version: &mut u64,
    key: (String, String),
    mut obj: Value,
    resource: &str,
) -> Response {
    if map.contains_key(&key) {
        return status(
            409,
            "AlreadyExists",
            &format!("{resource} \"{}\" already exists", key.1),
        );
    }
    *version += 1;
    obj["metadata"]["resourceVersion"] = json!(version.to_string());
    map.insert(key, obj.clone());
    (StatusCode::CREATED, axum::Json(obj)).into_response()
}

/// Replaces the object of `resource` under `key` with `obj` (an update: PUT), with the next
/// resourceVersion, and answers 200 with it: 404 when there is none, 409 Conflict when `obj`
/// was read at another resourceVersion than the stored one.
fn store_over(
    map: &mut Keyed,
    version: &mut u64,
    key: (String, String),
    mut obj: Value,
    resource: &str,
) -> Response {
    let Some(current) = map.get(&key) else {
        return status(
            404,
            "NotFound",
            &format!("{resource} \"{}\" not found", key.1),
        );
    };
    if str_at(&obj, &["metadata", "resourceVersion"])
        != str_at(current, &["metadata", "resourceVersion"])
    {
        return status(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version",
        );
    }
    *version += 1;
    obj["metadata"]["resourceVersion"] = json!(version.to_string());
    map.insert(key, obj.clone());
    axum::Json(obj).into_response()
}

fn resource_list(s: &Store, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = s
        .discovery
        .iter()
        .filter(|(g, v, ..)| g == group && v == version)
        .map(|(_, _, plural, kind, namespaced)| {
            json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind,
                   "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
        })
        .collect();
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// Waits out the configured discovery delay.
async fn discovery_gate(store: &Arc<Mutex<Store>>, path: String) -> Option<Response> {
    let delay = store.lock().unwrap().discovery_delay;
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    gate(store, "GET", path, None).await
}

async fn api_versions(State(store): St) -> Response {
    admit!(discovery & store, "/api".into());
    axum::Json(json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}))
    .into_response()
}

async fn core_resources(State(store): St) -> Response {
    admit!(discovery & store, "/api/v1".into());
    axum::Json(resource_list(&store.lock().unwrap(), "", "v1")).into_response()
}

async fn api_groups(State(store): St) -> Response {
    admit!(discovery & store, "/apis".into());
    let s = store.lock().unwrap();
    let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (g, v, ..) in s.discovery.iter().filter(|d| !d.0.is_empty()) {
        groups.entry(g.clone()).or_default().insert(v.clone());
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            let preferred = vs.last().cloned().unwrap_or(Value::Null);
            json!({"name": g, "versions": vs, "preferredVersion": preferred})
        })
        .collect();
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        .into_response()
}

async fn group_resources(
    State(store): St,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    admit!(discovery & store, format!("/apis/{group}/{version}"));
    axum::Json(resource_list(&store.lock().unwrap(), &group, &version)).into_response()
}
