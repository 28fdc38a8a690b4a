//! The programs tests use as oracles or real servers (kubectl, PostgreSQL, Prometheus): finding
//! them, and what a test does without one: fail where CI requires it, else skip with a notice.

use std::path::PathBuf;

/// `program` on the PATH.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|p| p.join(program))
        .find(|p| p.is_file())
}

/// `what` is missing: fails the test when the variable `required` is set (as `.ci/run` sets
/// it), else says that `skipped` is skipped. The notice is written to stderr itself, not
/// through eprintln!, which the test harness captures: a plain `cargo test` shows it.
pub fn missing(required: &str, what: &str, skipped: &str) {
    assert!(
        std::env::var_os(required).is_none(),
        "{what} ({required} is set)"
    );
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("NOTICE: {what}; {skipped} skipped\n").as_bytes(),
    );
}

/// `curl`, when it can speak HTTP/2 (the checks that use it send HTTP/2 uploads); else
/// [`missing`] under `CLUSTERSCOPE_REQUIRE_CURL`, and None.
pub fn curl_with_http2(skipped: &str) -> Option<PathBuf> {
    let found = on_path("curl").filter(|curl| {
        std::process::Command::new(curl)
            .arg("-V")
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains("HTTP2")
            })
    });
    if found.is_none() {
        missing(
            "CLUSTERSCOPE_REQUIRE_CURL",
            "curl with HTTP/2 is not installed: apt-get install curl",
            skipped,
        );
    }
    found
}

/// `openssl`; else [`missing`] under `CLUSTERSCOPE_REQUIRE_OPENSSL`, and None.
pub fn openssl(skipped: &str) -> Option<PathBuf> {
    let found = on_path("openssl");
    if found.is_none() {
        missing(
            "CLUSTERSCOPE_REQUIRE_OPENSSL",
            "openssl is not installed: apt-get install openssl",
            skipped,
        );
    }
    found
}
