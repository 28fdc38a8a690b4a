//! The Kubernetes manifests, rendered with `kubectl kustomize`: the webhook configuration's
//! safety settings, the Deployment's hardening, the shipped configuration, and RBAC that covers
//! every API call the code makes (recorded by the fake API server while the real server runs
//! its cluster side) and grants nothing it does not use.

mod support;

use support::{fake_apiserver, fixtures};

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use clusterscope::config::Config;
use serde_json::Value;

fn render(entry: &str) -> Option<Vec<Value>> {
    if !fixtures::kubectl_available() {
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

const ENTRY_POINTS: [&str; 9] = [
    "base",
    "overlays/cert-manager",
    "overlays/manual-certs",
    "overlays/mirror-nodes",
    "overlays/monitoring",
    "overlays/owner-delivery",
    "overlays/history",
    "overlays/subscriptions",
    "overlays/otlp",
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

/// The otlp overlay exports every channel, hands serve the header's variable from the
/// Secret (required: no pod exports without its credentials) and mounts the CA where the
/// configuration reads it; without the variable, the configuration is refused, naming it.
#[test]
fn the_otlp_overlay_hands_serve_the_secret_and_the_ca_its_configuration_names() {
    let Some(objs) = render("overlays/otlp") else {
        return;
    };
    let config = shipped_config(&objs);
    assert!(config.channels.iter().all(|c| c.otlp));
    let otlp = config.otlp.as_ref().unwrap();
    assert_eq!(otlp.headers[0].from_env, OTLP_SECRET.0);
    assert_eq!(otlp.resource["k8s.cluster.name"], "my-cluster");
    let deployment = find(&objs, "Deployment", "clusterscope");
    let pod = &deployment["spec"]["template"]["spec"];
    let var = pod["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == OTLP_SECRET.0)
        .expect("the header's variable");
    assert_eq!(
        var["valueFrom"]["secretKeyRef"]["name"],
        "clusterscope-otlp"
    );
    assert_eq!(var["valueFrom"]["secretKeyRef"]["key"], "authorization");
    assert!(var["valueFrom"]["secretKeyRef"]["optional"].is_null());
    let ca = otlp.tls.ca_file.as_ref().unwrap();
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| ca.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the CA file is mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], "clusterscope-otlp-ca");
    let file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/overlays/otlp/config.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_clusterscope"))
        .arg("check-config")
        .arg(&file)
        .env_remove(OTLP_SECRET.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(
            "otlp.headers.authorization: the environment variable OTLP_AUTHORIZATION is not set"
        ),
        "{said}"
    );
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
/// The variable the otlp overlay's configuration reads its header from, set as its
/// Deployment sets it from the Secret (a configuration naming a variable that is not set is
/// refused).
const OTLP_SECRET: (&str, &str) = ("OTLP_AUTHORIZATION", "Bearer test-token");

fn with_otlp_secret() {
    static SET: std::sync::Once = std::sync::Once::new();
    // SAFETY: set once, before any configuration of this process reads it.
    SET.call_once(|| unsafe { std::env::set_var(OTLP_SECRET.0, OTLP_SECRET.1) });
}

fn shipped_config(objs: &[Value]) -> Config {
    with_otlp_secret();
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
    let options = clusterscope::runtime::ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        config: Some(cfg),
        certificates: clusterscope::server::Certificates {
            pair: Some((dir.path().join("tls.crt"), dir.path().join("tls.key"))),
            dir: dir.path().to_path_buf(),
            reload_interval: Duration::from_secs(60),
            client_ca: None,
        },
        limits: clusterscope::server::Limits {
            drain_timeout: Duration::from_secs(2),
            header_read_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            max_connections: 64,
            max_in_flight: 64,
            max_connections_per_peer: 64,
            ..Default::default()
        },
        history: None,
        cluster: clusterscope::cluster::ClusterOptions {
            mode: clusterscope::cluster::ClusterMode::Client(api.client()),
            identity: "replica-0".into(),
            lease: Some(fake_apiserver::short_lease("replica-0")),
            ..Default::default()
        },
    };
    let server = clusterscope::runtime::Runtime::bind(
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

/// Whether the shipped FlowSchema puts `call` (verb, group, resource, namespace), made by the
/// Deployment's service account, in clusterscope's own priority level.
fn flow_schema_matches(
    objs: &[Value],
    (verb, group, resource, ns): &(String, String, String, String),
) -> bool {
    let schema = find(objs, "FlowSchema", "clusterscope-copies");
    let deployment = find(objs, "Deployment", "clusterscope");
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"].clone();
    let account_ns = deployment["metadata"]["namespace"].clone();
    let has = |list: &Value, v: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|x| x == v || x == "*"))
    };
    schema["spec"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|rule| {
            let ours = rule["subjects"].as_array().unwrap().iter().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["serviceAccount"]["name"] == account
                    && s["serviceAccount"]["namespace"] == account_ns
            });
            ours && rule["resourceRules"].as_array().is_some_and(|rules| {
                rules.iter().any(|r| {
                    has(&r["verbs"], verb)
                        && has(&r["apiGroups"], group)
                        && has(&r["resources"], resource)
                        && has(&r["namespaces"], if ns.is_empty() { "" } else { ns })
                })
            })
        })
}

/// API Priority and Fairness: every event write a run makes is served at clusterscope's own
/// priority level, and nothing else it asks (reads, its Lease) is; that level is below the
/// system and workload ones and never borrows their seats; the schema wins over the suggested
/// `service-accounts` one (9000) and over no system one (up to 1000).
fn check_flow_schema(objs: &[Value], calls: &BTreeSet<(String, String, String, String)>) {
    for call in calls {
        let write = ["create", "update", "patch", "delete"].contains(&call.0.as_str())
            && call.1.is_empty()
            && call.2 == "events";
        assert_eq!(
            flow_schema_matches(objs, call),
            write,
            "{call:?} is {}in clusterscope's priority level",
            if write { "not " } else { "" }
        );
    }
    let schema = find(objs, "FlowSchema", "clusterscope-copies");
    let precedence = schema["spec"]["matchingPrecedence"].as_u64().unwrap();
    assert!((1001..9000).contains(&precedence), "{precedence}");
    let level = find(objs, "PriorityLevelConfiguration", "clusterscope-copies");
    assert_eq!(
        schema["spec"]["priorityLevelConfiguration"]["name"],
        "clusterscope-copies"
    );
    let limited = &level["spec"]["limited"];
    assert_eq!(level["spec"]["type"], "Limited");
    // workload-low has 100 shares, global-default 20, leader-election 10.
    assert!(limited["nominalConcurrencyShares"].as_u64().unwrap() <= 10);
    assert_eq!(
        limited["borrowingLimitPercent"], 0,
        "it must not grow into others' seats"
    );
    assert_eq!(limited["limitResponse"]["type"], "Queue");
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
        new_style["reportingComponent"] = "kubelet".into();
        new_style["reportingInstance"] = "node1".into();
        new_style["action"] = "StatusChange".into();
        api.put("kube-system", new_style);
        wait(|| api.events_in("team-infra").len() == 2).await;
        // A count bump: the copy is updated.
        api.put("default", node_event("default", "node1.a", 2, "Normal"));
        wait(|| api.events_in("team-infra").iter().any(|c| c["count"] == 2)).await;
    })
    .await;
    check_flow_schema(&objs, &calls);
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

/// A fake API server with two teams: pv-7 claimed from team-a, a pod of team-b on node1.
async fn two_teams() -> fake_apiserver::FakeApiServer {
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
    api
}

/// A Warning about pv-7 in `default`.
fn pv_event() -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "pv-7.a", "namespace": "default"},
        "involvedObject": {"kind": "PersistentVolume", "name": "pv-7"},
        "reason": "VolumeFailedDelete", "message": "failed", "count": 1, "type": "Warning",
        "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z"
    })
}

/// The owner-delivery overlay: cluster-wide reads of what ties objects to namespaces, and
/// copies written wherever a rule names; every grant used.
#[tokio::test]
async fn owner_delivery_rbac_covers_its_calls_and_grants_nothing_unused() {
    let Some(objs) = render("overlays/owner-delivery") else {
        return;
    };
    let granted = grants(&objs, true);
    let api = two_teams().await;
    api.put("default", pv_event());
    api.put("default", node_event("default", "node1.a", 1, "Warning"));
    let mut new_style = node_event("kube-system", "node1.b", 1, "Warning");
    new_style["eventTime"] = "2026-11-20T10:00:00.000000Z".into();
    new_style["reportingComponent"] = "kubelet".into();
    new_style["reportingInstance"] = "node1".into();
    new_style["action"] = "StatusChange".into();
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

/// The subscriptions overlay: clusterscope follows Subscriptions, writes only their status,
/// and copies what accepted ones ask for; every grant used. Teams get Subscriptions through
/// the built-in roles (aggregation), never their status.
#[tokio::test]
async fn subscriptions_rbac_covers_its_calls_and_teams_manage_their_own() {
    let Some(objs) = render("overlays/subscriptions") else {
        return;
    };
    let config = shipped_config(&objs);
    assert!(
        config.subscriptions.is_some(),
        "the overlay allows subscriptions"
    );
    let edit = find(&objs, "ClusterRole", "clusterscope-subscriptions-edit");
    for role in ["admin", "edit"] {
        assert_eq!(
            edit["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{role}")],
            "true"
        );
    }
    let resources: Vec<&Value> = edit["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap())
        .collect();
    assert_eq!(
        resources,
        [&serde_json::json!("subscriptions")],
        "never their status"
    );
    let view = find(&objs, "ClusterRole", "clusterscope-subscriptions-view");
    assert_eq!(
        view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    let granted = grants(&objs, true);
    let api = two_teams().await;
    api.install_subscription_crd();
    api.put_subscription(
        "team-a",
        "volumes",
        serde_json::json!({"relation": "owned"}),
        1,
    );
    api.put_subscription(
        "team-b",
        "nodes",
        serde_json::json!({"relation": "nodes"}),
        2,
    );
    api.put("default", pv_event());
    api.put("default", node_event("default", "node1.a", 1, "Warning"));
    let calls = calls_of_a_run(&objs, &api, async |api| {
        wait(|| api.events_in("team-a").len() == 1 && api.events_in("team-b").len() == 1).await;
        api.put("default", node_event("default", "node1.a", 2, "Warning"));
        wait(|| api.events_in("team-b").iter().any(|c| c["count"] == 2)).await;
        let accepted = |ns: &str, name: &str| {
            api.object("subscriptions", ns, name)
                .is_some_and(|s| s["status"]["conditions"][0]["status"] == "True")
        };
        wait(|| accepted("team-a", "volumes") && accepted("team-b", "nodes")).await;
    })
    .await;
    check_grants(
        &granted,
        &calls,
        &[
            ("patch", "", "events", "clusterscope-system"),
            // Sources labelled in kube-system: rbac_covers_every_api_call_... exercises it.
            ("patch", "", "events", "kube-system"),
            // Read back only when a write finds the copy changed or already there (409).
            ("get", "", "events", "*"),
        ],
    );
}

/// The Dockerfile's dependency layer stubs every bench Cargo.toml declares (or the manifest
/// does not load there), and it builds the binary with the profile CI builds.
#[test]
fn the_dockerfile_stubs_every_bench_and_builds_as_ci_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let benches: Vec<&str> = cargo
        .split("[[bench]]")
        .skip(1)
        .filter_map(|b| b.lines().find(|l| l.starts_with("name = ")))
        .map(|l| l.trim_start_matches("name = ").trim_matches('"'))
        .collect();
    assert!(benches.len() >= 5, "{benches:?}");
    let stubbed = dockerfile
        .lines()
        .find(|l| l.contains("for b in "))
        .expect("the bench stub loop");
    for bench in &benches {
        assert!(
            stubbed.contains(&format!(" {bench}")),
            "{bench} is not stubbed in the Dockerfile"
        );
    }
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let build = "cargo build --profile dist --locked --bin clusterscope";
    assert!(ci.contains(build));
    assert_eq!(
        dockerfile.matches(build).count(),
        2,
        "stub layer and real build"
    );
    assert!(dockerfile.contains("/src/target/dist/clusterscope"));
}

/// `promtool`, when Debian's prometheus package is installed; CI requires it.
fn promtool() -> Option<std::path::PathBuf> {
    let found = fixtures::tools::on_path("promtool");
    if found.is_none() {
        fixtures::tools::missing(
            "CLUSTERSCOPE_REQUIRE_PROMETHEUS",
            "promtool is not installed: apt-get install prometheus",
            "the alert rule tests are",
        );
    }
    found
}

fn alert_rules() -> Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(root.join("manifests/components/alerts/prometheusrule.yaml"))
            .unwrap();
    let rule: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    rule["spec"].clone()
}

/// The alerting rules pass `promtool check rules` and their unit tests
/// (`alerts_test.yaml`), and every alert has a test that expects it to fire.
#[test]
fn the_alerts_pass_promtool_and_their_unit_tests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = alert_rules();
    let tests =
        std::fs::read_to_string(root.join("manifests/components/alerts/alerts_test.yaml")).unwrap();
    for group in spec["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert!(
                tests.contains(&format!(
                    "alertname: {name}\n        exp_alerts:\n          - exp_labels"
                )),
                "no test expects {name} to fire"
            );
        }
    }
    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A rule file is the PrometheusRule's spec; JSON is YAML.
    std::fs::write(dir.path().join("rules.yaml"), spec.to_string()).unwrap();
    std::fs::write(dir.path().join("alerts_test.yaml"), &tests).unwrap();
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "alerts_test.yaml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every metric an alert names has a series from the start (at zero), so that no alert waits
/// for a first increment to see it; every metric the dashboard names is exported (those whose
/// labels come from events, such as the reason, have their first series with the first event).
#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_exported() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let re = regex::Regex::new(r"clusterscope_[a-z_]+").unwrap();
    let names = |exprs: &[String]| -> std::collections::BTreeSet<String> {
        exprs
            .iter()
            .flat_map(|e| re.find_iter(e).map(|m| m.as_str().to_owned()))
            .collect()
    };
    let mut alerts: Vec<String> = Vec::new();
    for group in alert_rules()["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            alerts.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("manifests/grafana/clusterscope-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let mut panels: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            panels.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    // As serve starts: the families, and the series of the configuration's channels.
    let metrics = clusterscope::metrics::Metrics::new();
    metrics.channels(["nodes"]);
    let exported = metrics.encode();
    let has_series = |name: &str| {
        exported
            .lines()
            .any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
    };
    let alert_names = names(&alerts);
    assert!(alert_names.len() >= 12, "{alert_names:?}");
    for name in &alert_names {
        assert!(
            has_series(name),
            "{name}: no series before its first change"
        );
    }
    let panel_names = names(&panels);
    assert!(panel_names.len() >= 20, "{panel_names:?}");
    for name in &panel_names {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .fold(name.as_str(), |n, suffix| {
                n.strip_suffix(suffix).unwrap_or(n)
            });
        // Labelled by what events say (kind, channel, reason): no series until the first.
        let from_events = [
            "clusterscope_events_classified",
            "clusterscope_events_by_reason",
        ];
        assert!(
            exported.contains(&format!("# TYPE {family} ")) || from_events.contains(&family),
            "the dashboard names {name}, which is not exported"
        );
    }
}

/// The ConfigMaps `manifests/` ships, as their files.
fn shipped_configmaps() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut files = vec![root.join("base/configmap.yaml")];
    for overlay in std::fs::read_dir(root.join("overlays")).unwrap() {
        let file = overlay.unwrap().path().join("config.yaml");
        if file.exists() {
            files.push(file);
        }
    }
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// `clusterscope ARGS` with the environment the Deployment gives it (the otlp overlay's
/// Secret).
fn clusterscope(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clusterscope"))
        .args(args)
        .env(OTLP_SECRET.0, OTLP_SECRET.1)
        .output()
        .unwrap()
}

/// `check-config` and `explain --config` take every ConfigMap `manifests/` ships (its
/// comment, the README and an alert tell users to run them on it), as the user has it.
#[test]
fn check_config_and_explain_take_every_shipped_configmap() {
    let events = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/events.json");
    for file in shipped_configmaps() {
        let out = clusterscope(&["check-config".as_ref(), file.as_os_str()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.starts_with(&format!(
                "{} (ConfigMap clusterscope-config, key config.yaml): valid",
                file.display()
            )),
            "{stdout}"
        );
        let out = clusterscope(&[
            "explain".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
            events.as_os_str(),
        ]);
        assert!(
            out.status.success(),
            "explain --config {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("about: Node worker-2"));
    }
}

/// `kubectl kustomize ... > all.yaml; clusterscope check-config all.yaml` finds the
/// configuration among the rendered objects, for every entry point; an error in it points at
/// the line of the rendered file.
#[test]
fn check_config_takes_a_kustomize_render() {
    if !fixtures::kubectl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for entry in ENTRY_POINTS {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("manifests")
                    .join(entry),
            )
            .output()
            .unwrap();
        let rendered = dir.path().join(format!("{}.yaml", entry.replace('/', "-")));
        std::fs::write(&rendered, &out.stdout).unwrap();
        let checked = clusterscope(&["check-config".as_ref(), rendered.as_os_str()]);
        assert!(
            checked.status.success(),
            "{entry}: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    // A typo in the rendered file: refused (exit 2), at its line in that file.
    let base = std::fs::read_to_string(dir.path().join("base.yaml")).unwrap();
    let broken = base.replacen("- channel: nodes", "- channel: nodez", 1);
    let line = broken.lines().position(|l| l.contains("nodez")).unwrap() + 1;
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, &broken).unwrap();
    let out = clusterscope(&["check-config".as_ref(), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:{line}:", file.display())),
        "expected line {line}: {stderr}"
    );
    assert!(stderr.contains("nodez"), "{stderr}");
}

/// `explain` with the owner-delivery configuration says, per event, what each delivery rule
/// does with this kind and type, as the controller decides it: a Normal Node event and a
/// StorageClass event are not delivered, and say why; the route lines point into the file.
#[test]
fn explain_says_what_the_owner_delivery_rules_really_do() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("manifests/overlays/owner-delivery/config.yaml");
    let out = clusterscope(&[
        "explain".as_ref(),
        "-o".as_ref(),
        "json".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        root.join("examples/events.json").as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let explained = doc["events"].as_array().unwrap();
    let deliveries = |name_start: &str| -> Vec<String> {
        let e = explained
            .iter()
            .find(|e| e["event"].as_str().unwrap().contains(name_start))
            .unwrap_or_else(|| panic!("no {name_start}"));
        e["deliveries"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|v| v["says"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let expect = [
        // (event, the one delivery said)
        (
            "worker-2.18812f0c",
            "nodePods: not delivered: the rule takes Warning events, this one is Normal",
        ),
        (
            "worker-2.18812f23",
            "nodePods: copies in the namespaces of the pods on Node worker-2 (at most 50)",
        ),
        (
            "pvc-3f2a9c1e",
            "owners: a copy in the namespace of the claim that holds it (spec.claimRef)",
        ),
        (
            "csi-5f0e4d3c",
            "owners: a copy in the claim namespace of the volume it attaches",
        ),
        (
            "team-payments.188",
            "owners: a copy in namespace team-payments itself",
        ),
        (
            "fast-ssd",
            "owners: not delivered: no owner rule ties StorageClass to a namespace",
        ),
        (
            "general-purpose-x7k2p",
            "owners: not delivered: no owner rule ties NodeClaim to a namespace",
        ),
    ];
    for (event, said) in expect {
        let got = deliveries(event);
        assert_eq!(got.len(), 1, "{event}: {got:?}");
        assert!(got[0].starts_with(said), "{event}: {got:?}");
    }
    // Route 1 of the ConfigMap's configuration is at this line of the file.
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text
        .lines()
        .position(|l| l.trim() == "- channel: nodes")
        .unwrap()
        + 1;
    let node = explained.iter().find(|e| e["kind"] == "Node").unwrap();
    assert_eq!(node["route"]["line"], line);
}
