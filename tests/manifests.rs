//! The Kubernetes manifests, rendered with `kubectl kustomize`: the webhook configuration's
//! safety settings, the Deployment's hardening, the shipped configuration, and RBAC that covers
//! every API call the code makes (recorded by the fake API server while the real server runs
//! its cluster side) and grants nothing it does not use.

mod common;
#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use clusterscope::config::Config;
use serde_json::Value;

fn render(entry: &str) -> Option<Vec<Value>> {
    if !common::kubectl_available() {
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("manifests")
        .join(entry);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {entry}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(serde_saphyr::from_multiple::<Value>(&text).unwrap())
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

const ENTRY_POINTS: [&str; 7] = [
    "base",
    "overlays/cert-manager",
    "overlays/manual-certs",
    "overlays/mirror-nodes",
    "overlays/monitoring",
    "overlays/owner-delivery",
    "overlays/history",
];

/// The history overlay records every channel, and hands serve the database URL and
/// password from the Secret under the names serve reads.
#[test]
fn the_history_overlay_records_every_channel_with_the_secret_serve_reads() {
    let Some(objs) = render("overlays/history") else {
        return;
    };
    let config = shipped_config(&objs);
    assert!(config.channels.iter().all(|c| c.history));
    assert_eq!(
        config.history.retention,
        std::time::Duration::from_secs(30 * 24 * 3600)
    );
    let deployment = find(&objs, "Deployment", "clusterscope");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_clusterscope"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for (name, key) in [
        ("CLUSTERSCOPE_POSTGRES_URL", "url"),
        ("CLUSTERSCOPE_POSTGRES_PASSWORD", "password"),
    ] {
        let var = env
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(
            var["valueFrom"]["secretKeyRef"]["name"],
            "clusterscope-postgres"
        );
        assert_eq!(var["valueFrom"]["secretKeyRef"]["key"], key);
        assert!(help.contains(&format!("env: {name}")), "serve reads {name}");
    }
    // The base's variables are kept (a strategic merge by name, not a replacement).
    assert!(env.iter().any(|e| e["name"] == "POD_NAME"));
}

#[test]
fn every_entry_point_renders() {
    for entry in ENTRY_POINTS {
        if let Some(objs) = render(entry) {
            assert!(objs.len() >= 13, "{entry}: {} objects", objs.len());
        }
    }
}

#[test]
fn webhook_configuration_is_safe() {
    let Some(objs) = render("base") else { return };
    let mwc = find(&objs, "MutatingWebhookConfiguration", "clusterscope");
    let hooks = mwc["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    let w = &hooks[0];
    assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["timeoutSeconds"], 2);
    assert_eq!(w["matchPolicy"], "Equivalent");
    assert_eq!(w["clientConfig"]["service"]["path"], "/mutate");
    assert_eq!(w["clientConfig"]["service"]["port"], 443);
    let rule = &w["rules"][0];
    assert_eq!(rule["apiGroups"], serde_json::json!([""]));
    assert_eq!(rule["resources"], serde_json::json!(["events"]));
    assert_eq!(rule["operations"], serde_json::json!(["CREATE", "UPDATE"]));
    let ns = &w["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(ns["key"], "kubernetes.io/metadata.name");
    assert_eq!(ns["operator"], "In");
    assert_eq!(ns["values"], serde_json::json!(["default", "kube-system"]));
    // No objectSelector: a label in default/kube-system must not let an event opt out (the
    // mirror label counts only where copies live, which the namespaceSelector excludes).
    assert!(w.get("objectSelector").is_none(), "{w}");
    let cel = w["matchConditions"][0]["expression"].as_str().unwrap();
    // Plain JSON field names: CRD-rule escaping (`__namespace__`) never matches here.
    // tests/match_conditions.rs evaluates the expression itself.
    assert!(cel.contains("object.involvedObject.namespace"), "{cel}");
    assert!(!cel.contains("__"), "{cel}");

    // cert-manager injects the CA; the manual overlay has a caBundle to fill.
    let Some(cm) = render("overlays/cert-manager") else {
        return;
    };
    let mwc = find(&cm, "MutatingWebhookConfiguration", "clusterscope");
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "clusterscope-system/clusterscope-serving"
    );
    let cert = find(&cm, "Certificate", "clusterscope-serving");
    assert_eq!(cert["spec"]["secretName"], "clusterscope-tls");
    assert!(
        cert["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "clusterscope.clusterscope-system.svc")
    );
    let Some(manual) = render("overlays/manual-certs") else {
        return;
    };
    let mwc = find(&manual, "MutatingWebhookConfiguration", "clusterscope");
    assert!(mwc["webhooks"][0]["clientConfig"].get("caBundle").is_some());
    assert_eq!(
        mwc["webhooks"][0]["failurePolicy"], "Ignore",
        "the patch kept the rest"
    );
}

#[test]
fn deployment_is_hardened() {
    let Some(objs) = render("base") else { return };
    let d = find(&objs, "Deployment", "clusterscope");
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(d["spec"]["replicas"], 2);
    assert!(
        spec["terminationGracePeriodSeconds"].as_i64().unwrap() > 10,
        "must exceed the 10 s drain"
    );
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(spec["affinity"]["podAntiAffinity"].is_object());
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["resources"]["limits"]["memory"].is_string());
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"));
    find(&objs, "PodDisruptionBudget", "clusterscope");
    let svc = find(&objs, "Service", "clusterscope");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    // Pod Security admission enforces `restricted` on the namespace; the pod above meets it.
    let ns = find(&objs, "Namespace", "clusterscope-system");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

#[test]
fn lease_grants_name_the_mirror_lease() {
    let Some(objs) = render("base") else { return };
    let role = find(&objs, "Role", "clusterscope-self");
    let lease_name = clusterscope::leader::LeaseOptions::new("clusterscope-system", "x").name;
    for rule in role["rules"].as_array().unwrap() {
        if rule["resources"] != serde_json::json!(["leases"]) {
            continue;
        }
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if verbs == ["create"] {
            // Create cannot be limited by name.
            assert!(rule.get("resourceNames").is_none(), "{rule}");
        } else {
            assert_eq!(
                rule["resourceNames"],
                serde_json::json!([lease_name]),
                "{rule}"
            );
        }
    }
}

#[test]
fn overlays_do_not_own_team_namespaces_and_metrics_are_fenced() {
    let Some(objs) = render("overlays/mirror-nodes") else {
        return;
    };
    let namespaces: Vec<&str> = objs
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        namespaces,
        ["clusterscope-system"],
        "`kubectl delete -k` would delete a team's namespace"
    );
    let Some(objs) = render("overlays/monitoring") else {
        return;
    };
    let np = find(&objs, "NetworkPolicy", "clusterscope");
    let rules = np["spec"]["ingress"].as_array().unwrap();
    let port_rule = |port: i64| {
        rules
            .iter()
            .find(|r| r["ports"][0]["port"] == port)
            .unwrap_or_else(|| panic!("no rule for {port}"))
    };
    // The API server's address is not selectable: the webhook port is open to all.
    assert!(port_rule(8443).get("from").is_none());
    // Metrics only from the monitoring namespace.
    assert!(port_rule(8080)["from"][0]["namespaceSelector"].is_object());
}

/// The configuration an entry point ships: valid, and without a route that can never match.
fn shipped_config(objs: &[Value]) -> Config {
    let cm = find(objs, "ConfigMap", "clusterscope-config");
    let config =
        Config::from_yaml(cm["data"]["config.yaml"].as_str().unwrap(), "configmap").unwrap();
    let warnings = config.warnings(&clusterscope::classify::builtin_kind_names());
    assert!(warnings.is_empty(), "{warnings:?}");
    config
}

#[test]
fn every_shipped_configuration_is_free_of_warnings() {
    for entry in ENTRY_POINTS {
        if let Some(objs) = render(entry) {
            shipped_config(&objs);
        }
    }
    let default = Config::embedded_default();
    assert!(
        default
            .warnings(&clusterscope::classify::builtin_kind_names())
            .is_empty()
    );
}

#[test]
fn shipped_configuration_is_the_embedded_default() {
    let Some(objs) = render("base") else { return };
    let shipped = shipped_config(&objs);
    let default = Config::embedded_default();
    let names = |c: &Config| {
        c.channels
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
    };
    let routes = |c: &Config| {
        c.routes
            .iter()
            .map(|r| (r.channel, r.matcher.describe()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&shipped), names(&default));
    assert_eq!(routes(&shipped), routes(&default));
    assert_eq!(shipped.label_prefix, default.label_prefix);
}

/// (verb, group, resource, namespace) granted to clusterscope's ServiceAccount; a
/// cluster-wide grant has namespace `*`. Cluster-wide grants only where `cluster_wide`.
fn grants(objs: &[Value], cluster_wide: bool) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    let bound_to_us = |b: &Value| {
        b["subjects"].as_array().unwrap().iter().any(|s| {
            s["kind"] == "ServiceAccount"
                && s["name"] == "clusterscope"
                && s["namespace"] == "clusterscope-system"
        })
    };
    let mut add = |role: &Value, ns: &str| {
        for rule in role["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        assert_ne!(v, "*", "no wildcards");
                        assert_ne!(r, "*", "no wildcards");
                        out.insert((
                            v.as_str().unwrap().into(),
                            g.as_str().unwrap().into(),
                            r.as_str().unwrap().into(),
                            ns.into(),
                        ));
                    }
                }
            }
        }
    };
    for rb in objs.iter().filter(|o| o["kind"] == "RoleBinding") {
        if !bound_to_us(rb) {
            continue;
        }
        let ns = rb["metadata"]["namespace"].as_str().unwrap();
        let role = objs
            .iter()
            .find(|o| {
                o["kind"] == "Role"
                    && o["metadata"]["name"] == rb["roleRef"]["name"]
                    && o["metadata"]["namespace"] == ns
            })
            .unwrap_or_else(|| panic!("RoleBinding {ns}/{} has no Role", rb["metadata"]["name"]));
        add(role, ns);
    }
    for crb in objs.iter().filter(|o| o["kind"] == "ClusterRoleBinding") {
        assert!(cluster_wide, "no cluster-wide grants here");
        if !bound_to_us(crb) {
            continue;
        }
        let role = find(
            objs,
            "ClusterRole",
            crb["roleRef"]["name"].as_str().unwrap(),
        );
        add(role, "*");
    }
    if !cluster_wide {
        assert!(
            !objs.iter().any(|o| o["kind"] == "ClusterRole"),
            "no cluster-wide grants"
        );
    }
    out
}

/// Whether `granted` allows `call` (a cluster-wide grant allows it in every namespace).
fn allows(
    granted: &BTreeSet<(String, String, String, String)>,
    (verb, group, resource, ns): &(String, String, String, String),
) -> bool {
    granted.contains(&(verb.clone(), group.clone(), resource.clone(), ns.clone()))
        || granted.contains(&(verb.clone(), group.clone(), resource.clone(), "*".into()))
}

async fn wait(cond: impl Fn() -> bool) {
    assert!(
        fake_apiserver::eventually(5, cond).await,
        "condition not reached"
    );
}

/// Runs the real server's cluster side, with the configuration `objs` ship, against the fake
/// API server until `done`; returns every API call it made, as RBAC sees them.
async fn calls_of_a_run(
    objs: &[Value],
    api: &fake_apiserver::FakeApiServer,
    exercise: impl AsyncFnOnce(&fake_apiserver::FakeApiServer),
) -> BTreeSet<(String, String, String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        find(objs, "ConfigMap", "clusterscope-config")["data"]["config.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let bundle = clusterscope::certs::generate(&["localhost".into()]).unwrap();
    clusterscope::certs::write(dir.path(), &bundle).unwrap();
    let options = clusterscope::server::ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        config: Some(cfg),
        tls: Some((dir.path().join("tls.crt"), dir.path().join("tls.key"))),
        cert_dir: dir.path().to_path_buf(),
        cert_reload_interval: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(2),
        header_read_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        max_connections: 64,
        max_in_flight: 64,
        body_memory: clusterscope::server::DEFAULT_BODY_MEMORY,
        max_connections_per_peer: 64,
        client_ca: None,
        history: None,
        cluster: clusterscope::cluster::ClusterOptions {
            mode: clusterscope::cluster::ClusterMode::Client(api.client()),
            identity: "replica-0".into(),
            lease: Some(fake_apiserver::short_lease("replica-0")),
            ..Default::default()
        },
    };
    let server = clusterscope::server::Server::bind(
        options,
        Arc::new(clusterscope::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    exercise(api).await;
    wait(|| !api.events_in("clusterscope-system").is_empty()).await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    api.store.lock().unwrap().calls.iter().cloned().collect()
}

/// Every call allowed; every grant used, or justified by the code path that uses it.
fn check_grants(
    granted: &BTreeSet<(String, String, String, String)>,
    calls: &BTreeSet<(String, String, String, String)>,
    justified: &[(&str, &str, &str, &str)],
) {
    for call in calls {
        assert!(
            allows(granted, call),
            "RBAC does not allow {call:?}; granted: {granted:?}"
        );
    }
    let justified: BTreeSet<(String, String, String, String)> = justified
        .iter()
        .map(|(v, g, r, n)| (v.to_string(), g.to_string(), r.to_string(), n.to_string()))
        .collect();
    for grant in granted {
        let (v, g, r, n) = grant;
        let used = calls
            .iter()
            .any(|(cv, cg, cr, cn)| cv == v && cg == g && cr == r && (n == "*" || cn == n));
        assert!(
            used || justified.contains(grant),
            "RBAC grants {grant:?}, which the code never used"
        );
    }
}

fn node_event(ns: &str, name: &str, count: i64, type_: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"kind": "Node", "name": "node1", "uid": "node1"},
        "reason": "NodeNotReady", "message": "not ready", "count": count, "type": type_,
        "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
    })
}

#[tokio::test]
async fn rbac_covers_every_api_call_and_grants_nothing_unused() {
    let Some(objs) = render("overlays/mirror-nodes") else {
        return;
    };
    let granted = grants(&objs, false);
    let config = shipped_config(&objs);
    let channel_ns = config
        .channels
        .iter()
        .filter_map(|c| c.namespace.clone())
        .collect::<Vec<_>>();
    assert_eq!(channel_ns, ["team-infra"]);
    let api = fake_apiserver::FakeApiServer::start(&[
        "default",
        "kube-system",
        "team-infra",
        "clusterscope-system",
    ])
    .await;
    api.put("default", node_event("default", "node1.a", 1, "Normal"));
    let calls = calls_of_a_run(&objs, &api, async |api| {
        wait(|| api.events_in("team-infra").len() == 1).await;
        // In kube-system only new-style events (eventTime set) can be about a cluster-scoped
        // object.
        let mut new_style = node_event("kube-system", "node1.b", 1, "Normal");
        new_style["eventTime"] = "2026-11-20T10:00:00.000000Z".into();
        api.put("kube-system", new_style);
        wait(|| api.events_in("team-infra").len() == 2).await;
        // A count bump: the copy is updated.
        api.put("default", node_event("default", "node1.a", 2, "Normal"));
        wait(|| api.events_in("team-infra").iter().any(|c| c["count"] == 2)).await;
    })
    .await;
    check_grants(
        &granted,
        &calls,
        &[
            // The recorder patches the count of a repeated event about clusterscope itself.
            ("patch", "", "events", "clusterscope-system"),
            // The mirror reads a copy back only when a write finds it changed or already
            // there (409): tests/mirror_resync.rs exercises it.
            ("get", "", "events", "team-infra"),
        ],
    );
}

/// The owner-delivery overlay: cluster-wide reads of what ties objects to namespaces, and
/// copies written wherever a rule names; every grant used.
#[tokio::test]
async fn owner_delivery_rbac_covers_its_calls_and_grants_nothing_unused() {
    let Some(objs) = render("overlays/owner-delivery") else {
        return;
    };
    let granted = grants(&objs, true);
    let api = fake_apiserver::FakeApiServer::start(&[
        "default",
        "kube-system",
        "team-a",
        "team-b",
        "clusterscope-system",
    ])
    .await;
    api.put_object(
        "persistentvolumes",
        serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-7"},
            "spec": {"claimRef": {"namespace": "team-a", "name": "data"}}}),
    );
    api.put_object(
        "pods",
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "team-b"},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running"}}),
    );
    let pv_event = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "pv-7.a", "namespace": "default"},
        "involvedObject": {"kind": "PersistentVolume", "name": "pv-7"},
        "reason": "VolumeFailedDelete", "message": "failed", "count": 1, "type": "Warning",
        "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
    });
    api.put("default", pv_event);
    api.put("default", node_event("default", "node1.a", 1, "Warning"));
    let mut new_style = node_event("kube-system", "node1.b", 1, "Warning");
    new_style["eventTime"] = "2026-11-20T10:00:00.000000Z".into();
    api.put("kube-system", new_style);
    let calls = calls_of_a_run(&objs, &api, async |api| {
        wait(|| api.events_in("team-a").len() == 1 && api.events_in("team-b").len() == 2).await;
        api.put("default", node_event("default", "node1.a", 2, "Warning"));
        wait(|| api.events_in("team-b").iter().any(|c| c["count"] == 2)).await;
    })
    .await;
    check_grants(
        &granted,
        &calls,
        &[
            ("patch", "", "events", "clusterscope-system"),
            // Read back only when a write finds the copy changed or already there (409).
            ("get", "", "events", "*"),
        ],
    );
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("manifests/grafana/clusterscope-dashboard.json");
    let dash: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    // Every family the server exports, once each has a sample.
    let m = clusterscope::metrics::Metrics::new();
    m.request("CREATE", "patched");
    m.cert_reloads
        .get_or_create(&clusterscope::metrics::ResultLabels {
            result: "success".into(),
        })
        .inc();
    m.discovery_refreshes
        .get_or_create(&clusterscope::metrics::ResultLabels {
            result: "success".into(),
        })
        .inc();
    m.mirror_writes
        .get_or_create(&clusterscope::metrics::MirrorLabels {
            channel: "n".into(),
            operation: "create".into(),
            result: "success".into(),
        })
        .inc();
    m.classified
        .get_or_create(&clusterscope::metrics::ClassifiedLabels {
            scope: "cluster".into(),
            kind: "Node".into(),
            channel: "n".into(),
        })
        .inc();
    m.by_reason
        .get_or_create(&clusterscope::metrics::ReasonLabels { reason: "R".into() })
        .inc();
    let exported = m.encode();
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("clusterscope_") {
                    assert!(
                        exported.contains(word),
                        "panel {:?} queries {word}, which is not exported",
                        panel["title"]
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 15, "{checked}");
}
