//! What the load benches share: `clusterscope serve` as its own process against the fake API
//! server, its memory figures, and percentiles.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::fake_apiserver::FakeApiServer;

/// A field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), as written there.
pub fn vm(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_owned())
        .unwrap_or_default()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Starts `clusterscope serve` with the routing configuration `config`, its cluster the fake
/// API server (by a kubeconfig in `dir`), as replica `bench-0` (unless `extra` names another
/// `--pod-name`), logging warnings only, on
/// ephemeral ports. `extra` flags are added.
pub fn serve_with(api: &FakeApiServer, dir: &Path, config: &str, extra: &[String]) -> Child {
    let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    serve_at(api, dir, config, (any, any), extra)
}

/// As [`serve_with`], listening on `listen` (the webhook, then the admin port); its
/// self-signed pair is in `dir/certs`.
pub fn serve_at(
    api: &FakeApiServer,
    dir: &Path,
    config: &str,
    listen: (std::net::SocketAddr, std::net::SocketAddr),
    extra: &[String],
) -> Child {
    serve_command(api, dir, config, listen, extra)
        .spawn()
        .expect("start clusterscope serve")
}

/// The command [`serve_at`] runs, for a caller to add environment or redirect output.
pub fn serve_command(
    api: &FakeApiServer,
    dir: &Path,
    config: &str,
    listen: (std::net::SocketAddr, std::net::SocketAddr),
    extra: &[String],
) -> Command {
    let kubeconfig = super::fake_apiserver::write_kubeconfig(dir, &api.addr.to_string());
    let routes = dir.join("routes.yaml");
    std::fs::write(&routes, config).expect("config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_clusterscope"));
    command.arg("serve");
    if !extra.iter().any(|a| a.starts_with("--pod-name")) {
        command.args(["--pod-name", "bench-0"]);
    }
    command
        .arg(format!("--listen={}", listen.0))
        .arg(format!("--admin-listen={}", listen.1))
        .args(["--log-level", "warn"])
        .arg("--config")
        .arg(&routes)
        .arg("--cert-dir")
        .arg(dir.join("certs"))
        .args(["--pod-namespace", "clusterscope-system"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(extra)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("CLUSTERSCOPE_POSTGRES_PASSWORD")
        .stdout(Stdio::null());
    command
}

/// Stops a `serve` started by [`serve`] (SIGTERM) and waits for it.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
