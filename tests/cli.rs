//! The `clusterscope` binary: `review` and `check-config` as an operator runs them.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clusterscope"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn fixture(name: &str) -> String {
    common::fixtures_dir()
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
    let mut child = bin()
        .args(["review", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let out = child.wait_with_output().unwrap();
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
fn check_config_prints_channels_and_routes() {
    let out = run(&["check-config"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("<embedded default>: valid"), "{text}");
    assert!(text.contains("kind in [Node] -> nodes"), "{text}");
    assert!(text.contains("every event -> cluster"), "{text}");
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
