//! Serving keys come as PKCS#8 (our own `certs`), SEC1 (cert-manager's ECDSA keys) or PKCS#1
//! (classic RSA): all three load; a key that does not fit the certificate is refused.
//! The SEC1 and PKCS#1 files are made with the `openssl` command; without it these checks
//! are skipped with a notice, and fail where `CLUSTERSCOPE_REQUIRE_OPENSSL` is set (CI).

mod support;

use std::path::Path;
use std::process::Command;

use clusterscope::tls::{load_pair, parse_pair};

fn openssl(args: &[&str], dir: &Path) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn pkcs8_sec1_and_pkcs1_keys_load() {
    let b = clusterscope::certs::generate(&["localhost".to_owned()]).unwrap();
    assert!(b.key_pem.contains("BEGIN PRIVATE KEY"));
    parse_pair(
        b.cert_pem.as_bytes(),
        b.key_pem.as_bytes(),
        "tls.crt",
        "tls.key",
    )
    .unwrap();
    if support::tools::openssl("the SEC1 and PKCS#1 key checks are").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("tls.crt"), &b.cert_pem).unwrap();
    std::fs::write(d.join("pkcs8.key"), &b.key_pem).unwrap();
    assert!(openssl(&["ec", "-in", "pkcs8.key", "-out", "sec1.key"], d));
    let sec1 = std::fs::read_to_string(d.join("sec1.key")).unwrap();
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    load_pair(&d.join("tls.crt"), &d.join("sec1.key")).unwrap();

    assert!(openssl(
        &["genrsa", "-traditional", "-out", "rsa.key", "2048"],
        d
    ));
    assert!(openssl(
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            "rsa.key",
            "-subj",
            "/CN=localhost",
            "-days",
            "2",
            "-out",
            "rsa.crt"
        ],
        d
    ));
    let rsa = std::fs::read_to_string(d.join("rsa.key")).unwrap();
    assert!(rsa.contains("BEGIN RSA PRIVATE KEY"), "{rsa}");
    load_pair(&d.join("rsa.crt"), &d.join("rsa.key")).unwrap();

    // The RSA key with the ECDSA certificate: refused, naming both files.
    let err = load_pair(&d.join("tls.crt"), &d.join("rsa.key")).unwrap_err();
    assert!(
        err.to_string().contains("rsa.key") && err.to_string().contains("tls.crt"),
        "{err}"
    );
}

#[test]
fn garbage_and_half_written_files_are_refused_with_the_file_named() {
    let b = clusterscope::certs::generate(&["localhost".to_owned()]).unwrap();
    let err = parse_pair(b"", b.key_pem.as_bytes(), "tls.crt", "tls.key").unwrap_err();
    assert!(err.to_string().starts_with("tls.crt"), "{err}");
    let half = &b.cert_pem[..b.cert_pem.len() / 2];
    assert!(parse_pair(half.as_bytes(), b.key_pem.as_bytes(), "tls.crt", "tls.key").is_err());
    let err = parse_pair(b.cert_pem.as_bytes(), b"junk", "tls.crt", "tls.key").unwrap_err();
    assert!(err.to_string().starts_with("tls.key"), "{err}");
}
