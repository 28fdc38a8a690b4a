//! Helpers shared by the integration tests: the fixture directory and the kubectl oracle.

pub use super::tools;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// True when kubectl can be used as an oracle. Without it, the kubectl checks are skipped
/// with a notice, unless `CLUSTERSCOPE_REQUIRE_KUBECTL` is set (as `.ci/run` does): then
/// the test fails.
pub fn kubectl_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let ok = Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            tools::missing(
                "CLUSTERSCOPE_REQUIRE_KUBECTL",
                "kubectl not found (`kubectl version --client` failed)",
                "the kubectl patch oracle checks are",
            );
        }
        ok
    })
}

/// Applies a JSON patch to `object` with `kubectl patch --local`, the API server's own
/// patch code, and returns the object kubectl prints.
pub fn kubectl_patch(object: &Value, patch: &Value) -> Result<Value, String> {
    let mut file = tempfile::Builder::new()
        .suffix(".json")
        .tempfile()
        .map_err(|e| e.to_string())?;
    file.write_all(object.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let out = Command::new("kubectl")
        .args(["patch", "--local", "--type=json", "-o", "json", "-f"])
        .arg(file.path())
        .arg("-p")
        .arg(patch.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "kubectl patch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("kubectl printed no JSON: {e}"))
}
