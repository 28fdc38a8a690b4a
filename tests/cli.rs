//! The `clusterscope` binary: `review` and `check-config` as an operator runs them.

mod support;

use support::fake_apiserver::write_kubeconfig;
use support::fixtures;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clusterscope"))
}

/// `clusterscope serve` on ephemeral loopback ports, with no log filter and no in-cluster
/// environment inherited: the start of every `serve` these tests run.
fn serve() -> Command {
    let mut cmd = bin();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .env_remove("RUST_LOG")
    .env_remove("KUBERNETES_SERVICE_HOST");
    cmd
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

/// Runs the binary with `args`, `input` on its standard input.
fn run_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written beside the reading: a command that answers as it reads (explain) fills its
    // output pipe before it has read all of a long input.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn fixture(name: &str) -> String {
    fixtures::fixtures_dir()
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn stderr_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "stderr should be one line: {err:?}"
    );
    err
}

/// `clusterscope serve` as its own process, JSON logs, ephemeral ports: the process, its log
/// lines as they come, and the lines up to "serving admission reviews".
struct Serving {
    /// `None` once stopped; dropped unstopped, the process is killed and waited for.
    child: Option<std::process::Child>,
    logs: std::sync::mpsc::Receiver<String>,
    /// Log lines up to and including the "serving" line.
    started: Vec<String>,
    listen: String,
    admin: String,
}

/// Starts `serve` in `dir`; `extra` adds arguments and environment.
fn start_serve(dir: &std::path::Path, extra: impl FnOnce(&mut Command)) -> Serving {
    use std::io::BufRead;
    let mut cmd = serve();
    cmd.args(["--log-format", "json"])
        .current_dir(dir)
        .stderr(Stdio::piped());
    extra(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, logs) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut serving = Serving {
        child: Some(child),
        logs,
        started: Vec::new(),
        listen: String::new(),
        admin: String::new(),
    };
    loop {
        let line = serving
            .logs
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("serve did not start; log so far: {:?}", serving.started));
        let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        serving.started.push(line);
        if entry["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("serving admission reviews")
        {
            let field = |k: &str| entry[k].as_str().unwrap_or("").to_owned();
            serving.listen = field("listen");
            serving.admin = field("admin");
            return serving;
        }
    }
}

/// A child process killed and waited for when dropped.
struct Reaped(Option<std::process::Child>);

impl Reaped {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("waited twice");
        child.wait().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Serving {
    /// `GET path` on the admin port: the whole HTTP answer.
    fn admin_get(&self, path: &str) -> String {
        let mut tcp = std::net::TcpStream::connect(&self.admin).unwrap();
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut tcp, &mut answer).unwrap();
        answer
    }

    /// SIGTERM, then the exit status (within 30 s).
    fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let Some(mut child) = self.child.take() else {
            panic!("stopped twice");
        };
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not stop on SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        // Every line it wrote: the reader ends (and the channel with it) at the pipe's end.
        (status, self.logs.iter().collect())
    }
}

#[test]
fn review_prints_the_response_review() {
    let out = run(&["review", &fixture("kubelet-node-not-ready.json")]);
    assert!(out.status.success(), "{out:?}");
    let resp: Value = serde_json::from_slice(&out.stdout).unwrap();
    let input: Value =
        serde_json::from_slice(&std::fs::read(fixture("kubelet-node-not-ready.json")).unwrap())
            .unwrap();
    assert_eq!(resp["response"]["uid"], input["request"]["uid"]);
    assert_eq!(resp["response"]["patchType"], "JSONPatch");
}

#[test]
fn review_reads_standard_input() {
    let body = std::fs::read(fixture("namespaced-pod-event.json")).unwrap();
    let out = run_with_input(&["review", "-"], &body);
    assert!(out.status.success());
    let resp: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resp["response"]["allowed"], true);
    assert!(resp["response"].get("patch").is_none());
}

#[test]
fn patched_object_shows_the_labels() {
    let out = run(&[
        "review",
        "--patched-object",
        &fixture("csi-pv-long-source-component.json"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let obj: Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels = &obj["metadata"]["labels"];
    assert_eq!(labels["clusterscope.dev/channel"], "storage");
    assert_eq!(labels["clusterscope.dev/kind"], "PersistentVolume");
    assert_eq!(obj["reason"], "VolumeFailedDelete");
}

/// A DELETE carries no `request.object`: there is nothing to print, which is said (exit 2),
/// not printed as `null`; the response itself is still available without the flag.
#[test]
fn patched_object_of_a_delete_is_refused_with_the_reason() {
    let out = run(&["review", "--patched-object", &fixture("delete-event.json")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr_line(&out);
    assert!(
        err.contains("request.object") && err.contains("DELETE"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert!(
        run(&["review", &fixture("delete-event.json")])
            .status
            .success()
    );
}

#[test]
fn review_with_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.yaml");
    std::fs::write(
        &cfg,
        "labelPrefix: example.com\nchannels:\n  - name: infra\n    labels: {team: infra}\nroutes:\n  - channel: infra\n",
    )
    .unwrap();
    let out = run(&[
        "review",
        "--patched-object",
        "--config",
        cfg.to_str().unwrap(),
        &fixture("kubelet-node-not-ready.json"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let obj: Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels = &obj["metadata"]["labels"];
    assert_eq!(labels["example.com/channel"], "infra");
    assert_eq!(labels["team"], "infra");
    assert!(labels.get("clusterscope.dev/channel").is_none());
}

#[test]
fn invalid_review_exits_2_with_one_line() {
    for (name, needle) in [
        ("bad-truncated-json.json", "EOF while parsing"),
        ("bad-missing-uid.json", "missing field `uid`"),
        (
            "bad-label-value-type.json",
            "request.object.metadata.labels.a",
        ),
        ("bad-invalid-utf8.json", "not valid UTF-8"),
    ] {
        let out = run(&["review", &fixture(name)]);
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let err = stderr_line(&out);
        assert!(err.contains(needle), "{name}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn missing_input_file_exits_1() {
    let out = run(&["review", "/nonexistent/review.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_line(&out).contains("/nonexistent/review.json"));
}

#[test]
fn check_config_reads_the_file_serve_would_and_an_unreadable_one_is_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.yaml");
    std::fs::write(&cfg, "channels:\n  - name: only\n").unwrap();
    let out = bin()
        .arg("check-config")
        .env("CLUSTERSCOPE_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("{}: valid", cfg.display())),
        "{text}"
    );
    let out = run(&["check-config", "/nonexistent/config.yaml"]);
    assert_eq!(out.status.code(), Some(1), "a file that cannot be read");
    assert!(stderr_line(&out).contains("/nonexistent/config.yaml: cannot read"));
}

/// `check-config` with `input` on standard input (no `CLUSTERSCOPE_CONFIG`).
fn check_config_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut child = bin()
        .arg("check-config")
        .args(args)
        .env_remove("CLUSTERSCOPE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written beside the reading: a command that answers as it reads (explain) fills its
    // output pipe before it has read all of a long input.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// What is handed to `check-config` on standard input is what it checks: `-`, or a pipe with
/// no file named. A typo piped in is refused where it is, never passed over for the embedded
/// default; an empty pipe (the command before it failed) is refused; a ConfigMap is read as
/// `serve` reads it. With nothing on standard input (a script, CI) the embedded default is
/// checked, and said to be.
#[test]
fn check_config_checks_what_is_piped_in_and_never_the_default_instead() {
    let typo = b"channels:\n  - name: x\n    namespce: y\n";
    for args in [&[][..], &["-"][..]] {
        let out = check_config_with_input(args, typo);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr_line(&out);
        assert!(
            err.contains("<standard input>:3:") && err.contains("namespce"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: said something on stdout");
    }
    let out = check_config_with_input(&[], b"channels:\n  - name: only\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("<standard input>: valid"), "{text}");
    assert!(text.contains("only"), "{text}");
    for args in [&[][..], &["-"][..]] {
        let out = check_config_with_input(args, b"\n");
        assert_eq!(out.status.code(), Some(2), "{args:?}: an empty pipe passed");
        assert!(stderr_line(&out).contains("empty"), "{args:?}");
    }
    let configmap = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("manifests/overlays/history/config.yaml"),
    )
    .unwrap();
    let out = check_config_with_input(&["-"], &configmap);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin()
        .arg("check-config")
        .env_remove("CLUSTERSCOPE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("<embedded default>: valid"));
}

/// `kubectl kustomize manifests/overlays/mirror-nodes | clusterscope check-config`: the
/// rendered documents are read and the shipped ConfigMap in them is checked.
#[test]
fn kustomize_output_piped_into_check_config_is_what_is_checked() {
    if !fixtures::kubectl_available() {
        return;
    }
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/overlays/mirror-nodes");
    let rendered = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(rendered.status.success());
    let out = check_config_with_input(&[], &rendered.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(
            "<standard input> (ConfigMap clusterscope-config, key config.yaml): valid"
        ),
        "{said}"
    );
    assert!(said.contains("team-infra"), "{said}");
    // The same documents with the typo in the ConfigMap's key: refused, not "valid".
    let broken = String::from_utf8(rendered.stdout).unwrap().replacen(
        "  - name: nodes\n",
        "  - name: nodes\n    namespce: y\n",
        1,
    );
    let out = check_config_with_input(&[], broken.as_bytes());
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `serve --config` takes what `check-config` takes: the ConfigMap that ships a configuration
/// (one loader for every command).
#[test]
fn serve_takes_the_configmap_check_config_takes() {
    let dir = tempfile::tempdir().unwrap();
    let configmap = dir.path().join("configmap.yaml");
    std::fs::write(
        &configmap,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: clusterscope-config\ndata:\n  config.yaml: |\n    channels:\n      - name: only\n",
    )
    .unwrap();
    let checked = run(&["check-config", configmap.to_str().unwrap()]);
    assert!(checked.status.success());
    let serving = start_serve(dir.path(), |cmd| {
        cmd.args(["--cluster", "off", "--config"]).arg(&configmap);
    });
    let (status, _) = serving.stop();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// `check-config | head -1`: the reader closes early; that is not an error.
#[test]
fn a_closed_standard_output_is_not_an_error() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = bin()
        .arg("check-config")
        .env_remove("CLUSTERSCOPE_CONFIG")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_prints_channels_and_routes() {
    let out = bin()
        .arg("check-config")
        .env_remove("CLUSTERSCOPE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("<embedded default>: valid"), "{text}");
    assert!(text.contains("kind in [Node] -> nodes"), "{text}");
    assert!(text.contains("every event -> cluster"), "{text}");
}

#[test]
fn check_config_shows_history_channels_and_refuses_a_bad_retention_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("history.yaml");
    std::fs::write(
        &cfg,
        "history:\n  retention: 14d\nchannels:\n  - name: nodes\n    history: true\n",
    )
    .unwrap();
    let out = run(&["check-config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("nodes [recorded in the history database]")
            && text.contains("history: rows kept 14 days after their event was last seen"),
        "{text}"
    );
    for (retention, needle) in [
        ("fortnight", "is not a duration such as 30d or 12h"),
        ("30m", "shorter than 1h"),
    ] {
        std::fs::write(
            &cfg,
            format!("history:\n  retention: {retention}\nchannels:\n  - name: nodes\n"),
        )
        .unwrap();
        let out = run(&["check-config", cfg.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr_line(&out);
        assert!(
            err.contains(&format!("{}:2:", cfg.display())) && err.contains(needle),
            "{err}"
        );
    }
}

#[test]
fn check_config_refuses_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "channels:\n  - name: a\n  - name: a\n").unwrap();
    let out = run(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_line(&out);
    assert!(
        err.contains(&format!("{}:3:", cfg.display())) && err.contains("duplicate channel"),
        "{err}"
    );
    // The same file refused by `review` too.
    let out = run(&[
        "review",
        "--config",
        cfg.to_str().unwrap(),
        &fixture("kubelet-node-not-ready.json"),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// `serve` with no flags but ports: creates its certificates, serves, and exits 0 on SIGTERM.
#[test]
fn serve_runs_out_of_the_box_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // A kubeconfig in reach that points at a listening "API server": serve must not use it
    // unasked (on a laptop it may well be production).
    let bait = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &bait.local_addr().unwrap().to_string());
    let serving = start_serve(dir.path(), |cmd| {
        cmd.env("KUBECONFIG", &kubeconfig);
    });
    let lines = &serving.started;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("created a self-signed CA") && l.contains("certs/ca.crt")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("mirroring and discovery are off")
                && l.contains("not running in a pod")),
        "{lines:?}"
    );
    assert!(
        bait.accept().is_err(),
        "serve connected to the kubeconfig's API server unasked"
    );
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(dir.path().join("certs").join(f).exists(), "{f} not created");
    }
    let answer = serving.admin_get("/readyz");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("mirroring: off"), "{answer}");
    let (status, rest) = serving.stop();
    assert!(status.success(), "{status:?}");
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM received")),
        "{rest:?}"
    );
}

#[test]
fn certs_writes_the_pair_and_the_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = dir.path().join("cabundle.yaml");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("manifests/overlays/manual-certs/cabundle.yaml"),
        &webhook,
    )
    .unwrap();
    let out_dir = dir.path().join("certs");
    let out = run(&[
        "certs",
        "--service",
        "clusterscope",
        "--namespace",
        "clusterscope-system",
        "--out",
        out_dir.to_str().unwrap(),
        "--webhook-config",
        webhook.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let bundle = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let ca = std::fs::read(out_dir.join("ca.crt")).unwrap();
    assert_eq!(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &bundle).unwrap(),
        ca
    );
    let yaml = std::fs::read_to_string(&webhook).unwrap();
    assert!(yaml.contains(&format!("caBundle: {bundle}")), "{yaml}");
    // Editing the overlay's tracked patch is said loudly, with the way back.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("now holds this cluster's CA") && err.contains("git checkout --"),
        "{err}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out_dir.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A bad service name is refused with a reason.
    let out = run(&[
        "certs",
        "--service",
        "Bad_Name",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("--service"));
}

/// Zero or nonsense durations and counts are refused before anything starts, in one line that
/// names the flag.
#[test]
fn serve_refuses_zero_and_nonsense_flags() {
    for (flag, value, needle) in [
        ("--cert-reload-interval", "0s", "more than zero"),
        ("--drain-timeout", "0s", "more than zero"),
        ("--header-read-timeout", "0ms", "more than zero"),
        ("--header-read-timeout", "ten seconds", "such as 500ms"),
        ("--cert-reload-interval", "400d", "at most 24h"),
        ("--max-connections", "0", "not in 1..=1000000"),
        ("--max-in-flight", "0", "not in 1..=100000"),
        ("--mirror-workers", "0", "not in 1..=256"),
        ("--mirror-workers", "-3", ""),
    ] {
        let out = run(&["serve", "--cluster", "off", &format!("{flag}={value}")]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag) && err.contains(needle),
            "{flag} {value}: {err}"
        );
    }
}

/// A kubeconfig given on the command line must work: one that cannot be read stops the start
/// (exit 1, naming the file), one that names no usable cluster too (exit 2).
#[test]
fn serve_with_an_unusable_kubeconfig_exits_1_or_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let empty = dir.path().join("empty.yaml");
    std::fs::write(
        &empty,
        "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n",
    )
    .unwrap();
    for (file, code) in [(missing, 1), (empty, 2)] {
        let out = serve()
            .arg("--kubeconfig")
            .arg(&file)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{file:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot use the cluster") && err.contains(&*file.to_string_lossy()),
            "{err}"
        );
    }
}

/// A port in use is the system's problem, not refused input: exit 1, naming the address and
/// its flag, said before any certificate is made.
#[test]
fn serve_on_a_port_in_use_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = bin()
        .args([
            "serve",
            "--cluster",
            "off",
            "--listen",
            &addr,
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("(--listen)"), "{err}");
    assert!(
        !dir.path().join("certs").exists(),
        "no certificate is made for a server that cannot start"
    );
}

/// A --client-ca that cannot be used stops the start with a line naming the flag and file:
/// exit 1 when it cannot be read, 2 when it is not a certificate.
#[test]
fn serve_with_an_unusable_client_ca_exits_1_or_2() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    for (file, code) in [(dir.path().join("missing.pem"), 1), (not_pem, 2)] {
        let out = serve()
            .args(["--cluster", "off"])
            .arg("--client-ca")
            .arg(&file)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{file:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--client-ca") && err.contains(&*file.to_string_lossy()),
            "{err}"
        );
    }
}

/// The webhook serves without waiting for the API server: with a kubeconfig whose server
/// refuses connections, `serve` is ready at once and `/readyz` says mirroring waits for it.
#[test]
fn serve_does_not_wait_for_an_absent_api_server() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 (tcpmux): nothing listens there, so connections are refused at once. (A port
    // freed by this test could be taken by a parallel test's server.)
    let port = 1;
    let kubeconfig = write_kubeconfig(dir.path(), &format!("127.0.0.1:{port}"));
    let serving = start_serve(dir.path(), |cmd| {
        cmd.arg("--kubeconfig").arg(&kubeconfig);
    });
    let mut answer = String::new();
    for _ in 0..50 {
        answer = serving.admin_get("/readyz");
        if answer.contains("waiting for the API server") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut lines = serving.started.clone();
    let (status, after) = serving.stop();
    lines.extend(after);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!(
            "waiting for the API server at http://127.0.0.1:{port}"
        )),
        "{answer}"
    );
    assert!(status.success(), "{status:?}");
    // One line per failure, clusterscope's own WARN: not kube's ERROR beside it for each try.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("the API server does not answer")),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("kube_client") || l.contains("\"level\":\"ERROR\"")),
        "{lines:?}"
    );
}

/// A log line that cannot be written (stderr closed by whoever started `serve`) is dropped;
/// it used to panic the task that logged (tracing's fallback `eprintln!`), so SIGTERM ended
/// in exit 101.
#[test]
fn serve_survives_a_closed_stderr() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve()
        .args(["--cluster", "off"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Killed and waited for if an assertion below fails first.
    let mut child = Reaped(Some(child));
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        // Text logs to a pipe carry no terminal colour codes.
        assert!(
            !line.contains('\u{1b}'),
            "colour codes in a piped log: {line:?}"
        );
        if line.contains("serving admission reviews") {
            break;
        }
    }
    // The reader is gone: every later log line hits a closed pipe.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// Log lines about a request carry its connection's peer and, once decoded, its uid,
/// operation, kind and outcome (tracing spans, shown by the JSON log format).
#[test]
fn log_lines_carry_the_peer_and_the_request_uid() {
    let Some(curl) = support::tools::curl_with_http2("the span check is") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let serving = start_serve(dir.path(), |cmd| {
        cmd.args(["--cluster", "off", "--log-level", "clusterscope=debug"]);
    });
    let listen = serving.listen.clone();
    let port = listen.rsplit(':').next().unwrap();
    let out = std::process::Command::new(curl)
        .args(["-s", "-o", "/dev/null", "--cacert"])
        .arg(dir.path().join("certs/ca.crt"))
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", fixture("kubelet-node-not-ready.json")))
        .arg(format!("https://localhost:{port}/mutate"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let reviewed = loop {
        let line = serving
            .logs
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("no `reviewed` line");
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["message"] == "reviewed" {
            break v;
        }
    };
    let _ = serving.stop();
    let spans = reviewed["spans"].as_array().expect("no spans on the line");
    let connection = spans
        .iter()
        .find(|s| s["name"] == "connection")
        .unwrap_or_else(|| panic!("{reviewed}"));
    assert!(
        connection["peer"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:"),
        "{reviewed}"
    );
    let request = spans.iter().find(|s| s["name"] == "request").unwrap();
    assert_eq!(
        request["uid"], "6513270e-269e-4d37-b2a7-4de452e6b438",
        "{reviewed}"
    );
    assert_eq!(request["operation"], "CREATE");
    assert_eq!(request["kind"], "Node");
    assert_eq!(request["outcome"], "patched");
}

/// `explain` reads what `kubectl get events -A -o json` prints and says, per event, what
/// would happen and why; a review works too; other shapes are refused (exit 2).
#[test]
fn explain_reads_an_event_list_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let object = |name: &str| -> Value {
        let review: Value = serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap();
        review["request"]["object"].clone()
    };
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        object("kubelet-node-not-ready.json"), object("namespaced-pod-event.json")
    ]});
    let file = dir.path().join("events.json");
    std::fs::write(&file, list.to_string()).unwrap();
    let out = bin()
        .args(["explain", "-o", "json"])
        .arg(&file)
        .env_remove("CLUSTERSCOPE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let explained = doc["events"].as_array().unwrap();
    assert_eq!(explained.len(), 2);
    assert_eq!(explained[0]["outcome"], "patched");
    assert_eq!(explained[0]["channel"], "nodes");
    assert_eq!(explained[1]["skip"], "namespaced");
    assert_eq!(doc["summary"]["events"], 2);
    assert_eq!(doc["summary"]["outcomes"]["skipped"], 1);
    let out = bin()
        .arg("explain")
        .arg(&file)
        .env_remove("CLUSTERSCOPE_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("channel: nodes (route 1"), "{text}");
    assert!(text.contains("skipped (namespaced)"), "{text}");
    assert!(text.contains("\nsummary: 2 events\n"), "{text}");
    assert!(
        text.contains("\n  judged against: the built-in kind table, no cluster\n"),
        "{text}"
    );
    let out = run(&["explain", &fixture("kubelet-node-not-ready.json")]);
    assert!(out.status.success());
    let pod = dir.path().join("pod.json");
    std::fs::write(&pod, r#"{"kind": "Pod", "metadata": {"name": "x"}}"#).unwrap();
    let out = run(&["explain", pod.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("give an AdmissionReview, an Event"));
}

/// `review` says on stderr what it decided and why; stdout stays the exact response.
#[test]
fn review_says_why_an_event_was_or_was_not_patched() {
    for (name, said) in [
        (
            "kubelet-node-not-ready.json",
            "review: patched: Node node1 is cluster-scoped; channel nodes",
        ),
        (
            "already-labelled.json",
            "review: unchanged (it carries its labels already)",
        ),
        (
            "namespaced-pod-event.json",
            "review: not patched: its involved object has a namespace",
        ),
        (
            "delete-event.json",
            "review: not patched: DELETE and CONNECT are not labelled",
        ),
        (
            "mirror-copy.json",
            "review: not patched: it is a copy clusterscope made",
        ),
        (
            "heal-namespaced-kind-mislabelled.json",
            "review: unlabelled:",
        ),
    ] {
        let out = run(&["review", &fixture(name)]);
        assert!(out.status.success(), "{name}: {out:?}");
        let err = stderr_line(&out);
        assert!(err.starts_with(said), "{name}: {err}");
        let response: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(response["kind"], "AdmissionReview", "{name}");
    }
}

/// A bare Event (what `kubectl get event -o json` prints) is reviewed as its CREATE; a list
/// is refused with a pointer to `explain`.
#[test]
fn review_takes_a_bare_event_and_points_a_list_to_explain() {
    let event = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "node1.17", "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": "node1"},
        "reason": "NodeNotReady", "type": "Warning"
    });
    let mut child = bin()
        .args(["review", "--patched-object", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), event.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let patched: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        patched["metadata"]["labels"]["clusterscope.dev/kind"],
        "Node"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "an Event, reviewed as the AdmissionReview of its CREATE in namespace default"
        ) && err.contains("review: patched: Node node1"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.json");
    std::fs::write(
        &list,
        serde_json::json!({"apiVersion": "v1", "kind": "EventList", "items": [event]}).to_string(),
    )
    .unwrap();
    let out = run(&["review", list.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("`clusterscope explain` takes a whole list"));
}

/// `certs --renew` rotates the serving pair and keeps the CA: the caBundle it prints (and the
/// one the cluster holds) stays, the new certificate is issued by that CA (openssl verifies
/// it), and the CA's key stays beside it; without ca.key it refuses, naming the file, and
/// writes nothing.
#[test]
fn certs_renew_issues_a_new_pair_from_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str| std::fs::read(dir.path().join("certs/webhook").join(name)).unwrap();
    let first = bin().arg("certs").current_dir(dir.path()).output().unwrap();
    assert!(first.status.success(), "{first:?}");
    let (ca, ca_key, cert) = (read("ca.crt"), read("ca.key"), read("tls.crt"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("certs/webhook/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the CA's key is private");
    }
    let renewed = bin()
        .args(["certs", "--renew"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(renewed.status.success(), "{renewed:?}");
    assert_eq!(renewed.stdout, first.stdout, "the caBundle stays");
    assert_eq!(
        (read("ca.crt"), read("ca.key")),
        (ca, ca_key),
        "the CA stays"
    );
    assert_ne!(read("tls.crt"), cert, "a new serving certificate");
    assert!(
        stderr_line(&renewed).contains("the caBundle is unchanged"),
        "{renewed:?}"
    );
    if let Some(openssl) = support::tools::openssl("the check that the CA issued it is") {
        let verified = Command::new(openssl)
            .args(["verify", "-CAfile", "ca.crt", "tls.crt"])
            .current_dir(dir.path().join("certs/webhook"))
            .output()
            .unwrap();
        assert!(
            verified.status.success() && String::from_utf8_lossy(&verified.stdout).contains("OK"),
            "{verified:?}"
        );
    }
    // A pair without the CA's key (an older clusterscope wrote none): refused, nothing written.
    std::fs::remove_file(dir.path().join("certs/webhook/ca.key")).unwrap();
    let before = read("tls.crt");
    let out = bin()
        .args(["certs", "--renew"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr_line(&out).contains("ca.key is not there") && out.stdout.is_empty(),
        "{out:?}"
    );
    assert_eq!(read("tls.crt"), before);
    // --renew and --force ask for opposite things.
    let out = bin()
        .args(["certs", "--renew", "--force"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `certs` keeps apart from serve's quick-start pair, never replaces a pair unasked, and
/// writes nothing when it refuses.
#[test]
fn certs_never_replaces_a_pair_unasked_and_writes_nothing_when_it_refuses() {
    let dir = tempfile::tempdir().unwrap();
    // The default --out is not serve's certs/ (whose localhost pair the quick start uses).
    let out = bin().arg("certs").current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path().join("certs/webhook/tls.crt").exists());
    assert!(!dir.path().join("certs/tls.crt").exists());
    let first = std::fs::read(dir.path().join("certs/webhook/ca.crt")).unwrap();
    // Again: refused, the pair kept.
    let out = bin().arg("certs").current_dir(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_line(&out).contains("already holds a pair") && out.stdout.is_empty(),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("certs/webhook/ca.crt")).unwrap(),
        first
    );
    // --force rotates it: a new CA.
    let out = bin()
        .args(["certs", "--force"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_ne!(
        std::fs::read(dir.path().join("certs/webhook/ca.crt")).unwrap(),
        first
    );
    // A webhook configuration without a caBundle line: refused before any file is written.
    let webhook = dir.path().join("webhook.yaml");
    std::fs::write(
        &webhook,
        "kind: MutatingWebhookConfiguration\nwebhooks: []\n",
    )
    .unwrap();
    let fresh = dir.path().join("fresh");
    let out = run(&[
        "certs",
        "--out",
        fresh.to_str().unwrap(),
        "--webhook-config",
        webhook.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("nothing was written"));
    assert!(!fresh.exists(), "files were written before the refusal");
}

/// A pair in --cert-dir without ca.crt is used without naming a CA file that is not there; a
/// pair that does not load is moved aside with a warning that says why.
#[test]
fn serve_says_what_it_does_with_the_pair_in_its_cert_dir() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = run(&["certs", "--out", certs.to_str().unwrap()]);
    assert!(out.status.success());
    std::fs::remove_file(certs.join("ca.crt")).unwrap();
    let serving = start_serve(dir.path(), |cmd| {
        cmd.args(["--cluster", "off"]);
    });
    let line = serving
        .started
        .iter()
        .find(|l| l.contains("using the certificate in"))
        .cloned()
        .unwrap_or_default();
    assert!(
        line.contains("no ca.crt beside it") && !line.contains("ca.crt\""),
        "{:?}",
        serving.started
    );
    drop(serving);

    std::fs::write(certs.join("tls.crt"), "garbage").unwrap();
    let serving = start_serve(dir.path(), |cmd| {
        cmd.args(["--cluster", "off"]);
    });
    let warn = serving
        .started
        .iter()
        .find(|l| l.contains("does not load"))
        .cloned()
        .unwrap_or_default();
    assert!(
        warn.contains("\"level\":\"WARN\"") && warn.contains("tls.crt.invalid"),
        "{:?}",
        serving.started
    );
    assert_eq!(
        std::fs::read_to_string(certs.join("tls.crt.invalid")).unwrap(),
        "garbage"
    );
    assert!(certs.join("ca.crt").exists(), "a new pair with its CA");
    drop(serving);
}

/// Routes that are valid but can never match are pointed out (stderr, by line), and the
/// configuration still passes.
#[test]
fn check_config_warns_of_routes_that_can_never_match() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.yaml");
    std::fs::write(
        &cfg,
        "channels:\n  - name: a\n  - name: b\nroutes:\n  - channel: a\n    match:\n      kinds: [node, Nodes]\n      types: [warning]\n      groups: [v1]\n  - channel: a\n  - channel: b\n    match: {kinds: [Node]}\n",
    )
    .unwrap();
    let out = run(&["check-config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let file = cfg.display().to_string();
    for needle in [
        format!("warning: {file}:5: kinds: \"node\" never matches"),
        "did you mean \"Node\"?".to_owned(),
        format!("warning: {file}:5: kinds: \"Nodes\" never matches"),
        format!("warning: {file}:5: types: \"warning\" never matches"),
        format!("warning: {file}:5: groups: \"v1\" never matches"),
        format!(
            "warning: {file}:11: this route can never match: the route at line 10 takes every event before it"
        ),
    ] {
        assert!(err.contains(&needle), "{needle} in {err}");
    }
    assert_eq!(err.lines().count(), 5, "{err}");
    // A field of the wrong type is named in the message.
    std::fs::write(
        &cfg,
        "channels:\n  - name: a\n    deliver:\n      nodePods:\n        maxNamespaces: lots\n",
    )
    .unwrap();
    let out = run(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_line(&out).contains(":5:24: channels[0].deliver.nodePods.maxNamespaces: "),
        "{out:?}"
    );
}

/// Messages a new user meets, each saying what was wrong and what to do (issue 22, finding 5).
#[test]
fn review_on_something_not_json_says_so_and_what_it_takes() {
    let out = run_with_input(&["review", "-"], b"garbage\n");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_line(&out);
    assert!(err.contains("input is not JSON"), "{err}");
    assert!(err.contains("a bare Event"), "{err}");
}

/// A cluster's events as `kubectl get events -A -o yaml` prints them (`items` before `kind`,
/// block style) are read as the JSON list is, and summed up.
#[test]
fn explain_reads_kubectl_yaml_output() {
    let yaml = "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Event\n  metadata:\n    name: node1.17a\n    namespace: default\n    resourceVersion: \"123\"\n  involvedObject:\n    kind: Node\n    name: node1\n  reason: NodeNotReady\n  type: Warning\n  count: 3\n  message: 'Node node1 status is now: NodeNotReady'\n- apiVersion: v1\n  kind: Event\n  metadata:\n    name: web.17b\n    namespace: team-a\n  involvedObject:\n    kind: Pod\n    namespace: team-a\n    name: web\n  reason: Started\n  type: Normal\nkind: List\nmetadata:\n  resourceVersion: \"\"\n";
    let out = run_with_input(&["explain", "-o", "json", "-"], yaml.as_bytes());
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["events"][0]["event"], "default/node1.17a");
    assert_eq!(doc["events"][0]["outcome"], "patched");
    assert_eq!(doc["events"][1]["skip"], "namespaced");
    assert_eq!(doc["summary"]["events"], 2);
    // Not YAML either: refused, saying so.
    let out = run_with_input(&["explain", "-"], b"items: [unclosed\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_line(&out).contains("neither JSON nor YAML"),
        "{out:?}"
    );
}

/// A long list goes through a pipe and comes out whole, counted; a reader that stops early
/// (`| head`) ends it quietly.
#[test]
fn explain_streams_a_long_list_through_a_pipe() {
    let n = 20_000;
    let mut list = String::from("{\"apiVersion\":\"v1\",\"items\":[");
    for i in 0..n {
        if i > 0 {
            list.push(',');
        }
        list.push_str(&format!(
            "{{\"kind\":\"Event\",\"metadata\":{{\"name\":\"n{i}.1\",\"namespace\":\"default\"}},\"involvedObject\":{{\"kind\":\"Node\",\"name\":\"n{i}\"}},\"reason\":\"NodeNotReady\",\"type\":\"Warning\"}}"
        ));
    }
    list.push_str("],\"kind\":\"List\"}");
    let out = run_with_input(&["explain", "-o", "json", "-"], list.as_bytes());
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["events"].as_array().unwrap().len(), n);
    assert_eq!(doc["summary"]["events"], n);
    assert_eq!(doc["summary"]["channels"]["nodes"], n);
    let mut child = bin()
        .args(["explain", "-"])
        .env_remove("CLUSTERSCOPE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(list.as_bytes());
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let status = child.wait().unwrap();
    let _ = writer.join();
    assert!(status.success(), "a reader that went away is not a failure");
}

#[test]
fn explain_on_an_empty_list_says_there_is_nothing() {
    let out = run_with_input(
        &["explain", "-"],
        br#"{"apiVersion":"v1","kind":"List","items":[]}"#,
    );
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr_line(&out).contains("holds no events"));
}

#[test]
fn a_certificate_without_its_key_says_so_without_a_misleading_usage() {
    let out = run(&["serve", "--cluster", "off", "--tls-cert", "/tmp/x.crt"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_line(&out);
    assert!(err.contains("--tls-cert needs --tls-key"), "{err}");
    let out = run(&["serve", "--cluster", "off", "--tls-key", "/tmp/x.key"]);
    assert!(stderr_line(&out).contains("--tls-key needs --tls-cert"));
}

#[test]
fn a_cert_dir_that_is_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("certs");
    std::fs::write(&file, "not a directory").unwrap();
    let out = serve()
        .args(["--cluster", "off", "--cert-dir", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cert-dir: ") && err.contains("is a file, not a directory"),
        "{err}"
    );
}

/// `curl http://` on the HTTPS port: a readable 400 saying to use https://.
#[test]
fn plain_http_on_the_https_port_gets_a_readable_answer() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let serving = start_serve(dir.path(), |c| {
        c.args(["--cluster", "off"]);
    });
    let mut tcp = std::net::TcpStream::connect(&serving.listen).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    tcp.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("call it with https://"), "{answer:?}");
    let (status, _) = serving.stop();
    assert!(status.success());
}

/// `serve --help`'s flags in order: (flag, env var, default).
fn help_flags() -> Vec<(String, Option<String>, Option<String>)> {
    let out = run(&["serve", "--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    let flag = regex::Regex::new(r"^\s+(?:-\w, )?--([a-z0-9-]+)").unwrap();
    let mut flags: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        match flag.captures(line) {
            Some(c) => flags.push((c[1].to_owned(), line.to_owned())),
            None => {
                if let Some(last) = flags.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            }
        }
    }
    let field = |text: &str, name: &str, end: char| {
        let start = text.find(&format!("[{name}: "))? + name.len() + 3;
        Some(
            text[start..]
                .split(end)
                .next()?
                .trim_end_matches(']')
                .to_owned(),
        )
    };
    flags
        .into_iter()
        .filter(|(f, _)| f != "help")
        .map(|(f, text)| (f, field(&text, "env", '='), field(&text, "default", ']')))
        .collect()
}

/// The flag tables of the operations documentation (`docs/operations.md`, and the history's
/// in `docs/history.md`) agree with `serve --help`: every flag has one row, every row's
/// flags exist, each with the same environment variable and default, in the help's order.
#[test]
fn the_documented_flag_tables_agree_with_help() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = ["docs/history.md", "docs/operations.md"]
        .map(|f| std::fs::read_to_string(root.join(f)).unwrap())
        .join("\n\n");
    let help = help_flags();
    let position = |f: &str| help.iter().position(|(h, _, _)| h == f);
    let mut rows: Vec<(usize, Vec<String>, String, String)> = Vec::new();
    for (n, line) in readme.lines().enumerate() {
        if !line.starts_with("| `--") {
            continue;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        let flags: Vec<String> = cells[0]
            .split('`')
            .filter(|t| t.starts_with("--"))
            .map(|t| t.trim_start_matches("--").to_owned())
            .collect();
        rows.push((n, flags, cells[1].to_owned(), cells[2].replace('`', "")));
    }
    for (flag, env, default) in &help {
        let found: Vec<_> = rows.iter().filter(|r| r.1.contains(flag)).collect();
        assert_eq!(found.len(), 1, "--{flag}: README rows {found:?}");
        let (_, _, env_cell, default_cell) = found[0];
        if let Some(env) = env {
            assert!(
                env_cell.contains(env.as_str()),
                "--{flag}: env {env} not in {env_cell:?}"
            );
        }
        if let Some(default) = default {
            assert!(
                default_cell.contains(default.as_str()),
                "--{flag}: default {default} not in {default_cell:?}"
            );
        }
    }
    let mut previous: Option<(usize, usize)> = None;
    for (line, flags, _, _) in &rows {
        for f in flags {
            let at = position(f)
                .unwrap_or_else(|| panic!("README line {}: --{f} is not a serve flag", line + 1));
            if let Some((prev_line, prev_at)) = previous
                && prev_line + 1 == *line
            {
                assert!(
                    at > prev_at,
                    "README line {}: --{f} is out of the help's order",
                    line + 1
                );
            }
            previous = Some((*line, at));
        }
    }
}

/// `completion` prints a script each shell loads: bash's defines the completion function, and
/// every shell's knows the commands and `serve`'s flags; an unknown shell is refused.
#[test]
fn completion_scripts_know_the_commands_and_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in [
            "check-config",
            "explain",
            "max-writes-per-second",
            "kubeconfig",
        ] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("clusterscope.bash");
    std::fs::write(&script, run(&["completion", "bash"]).stdout).unwrap();
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p clusterscope",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{loaded:?}");
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("_clusterscope"),
        "{loaded:?}"
    );
    let refused = run(&["completion", "tcsh"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("possible values"));
}

/// A bad `otlp:` section is refused by `check-config` with the line and what to write, read
/// from a pipe, `-` or a file; a header's variable is read from the environment check-config
/// runs in, as serve reads it from its own.
#[test]
fn check_config_refuses_a_bad_otlp_section_from_a_pipe_or_a_file_with_its_line() {
    let section = |otlp: &str| {
        format!("channels:\n  - name: c\n    otlp: true\nroutes:\n  - channel: c\notlp:\n{otlp}")
    };
    let dir = tempfile::tempdir().unwrap();
    for (otlp, says) in [
        (
            "  endpoint: otel:4317\n",
            "<standard input>:7:13: otlp.endpoint \"otel:4317\" has no scheme",
        ),
        (
            "  endpoint: http://otel:4317\n  protocol: http/json\n",
            "<standard input>:8:13: otlp.protocol \"http/json\" is not one of grpc, http/protobuf",
        ),
        (
            "  endpoint: http://otel:4317\n  headers:\n    authorization: {fromEnv: CLUSTERSCOPE_CLI_TEST_OTLP}\n",
            "<standard input>:9:20: otlp.headers.authorization: the environment variable CLUSTERSCOPE_CLI_TEST_OTLP is not set",
        ),
    ] {
        let yaml = section(otlp);
        for args in [&["check-config"][..], &["check-config", "-"][..]] {
            let out = run_with_input(args, yaml.as_bytes());
            assert_eq!(out.status.code(), Some(2), "{args:?} {otlp}");
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(said.contains(says), "{args:?}: {said}");
        }
        let file = dir.path().join("otlp.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let out = run(&["check-config", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        let said = String::from_utf8_lossy(&out.stderr);
        let in_file = says.replace("<standard input>", &file.display().to_string());
        assert!(said.contains(&in_file), "{said}");
    }
    // With the variable set, as the pod has it: valid, and the value never printed.
    let yaml = section(
        "  endpoint: http://otel:4317\n  headers:\n    authorization: {fromEnv: CLUSTERSCOPE_CLI_TEST_OTLP}\n",
    );
    let out = {
        let mut child = bin()
            .arg("check-config")
            .env("CLUSTERSCOPE_CLI_TEST_OTLP", "Bearer s3cr3t")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("otlp: grpc to http://otel:4317/ (gzip, timeout 10s; headers authorization (from $CLUSTERSCOPE_CLI_TEST_OTLP))"), "{said}");
    assert!(!said.contains("s3cr3t"), "{said}");
}
