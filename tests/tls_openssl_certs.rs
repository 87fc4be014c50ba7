//! The certificates people make with `openssl`, on a real server: the README's recipe works,
//! and `openssl req -x509`'s default (a CA certificate, basicConstraints CA:TRUE, used as the
//! server's own) is refused by the client with a line that says how to make a good one.
//! Skipped, with a line saying so, where `openssl` is missing.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{Server, TempDir, run_cli};

const TIMEOUT: Duration = Duration::from_secs(10);

/// `openssl req -x509` for localhost and 127.0.0.1 into `dir`, with `extra` arguments; `None`
/// where openssl is missing.
fn self_signed(dir: &Path, extra: &[&str]) -> Option<(String, String)> {
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        &key,
        "-out",
        &cert,
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ];
    args.extend_from_slice(extra);
    match Command::new("openssl").args(&args).output() {
        Ok(done) if done.status.success() => Some((cert, key)),
        Ok(done) => panic!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&done.stderr)
        ),
        Err(error) => {
            eprintln!("skipped: cannot run openssl ({error})");
            None
        }
    }
}

fn echo_over_tls(server: &Server, ca: &str) -> support::Finished {
    let addr = format!("tls://{}", server.framed());
    run_cli(&["echo", "--addr", &addr, "--tls-ca", ca, "hello"], TIMEOUT)
}

#[test]
fn the_readme_certificate_works() {
    let dir = TempDir::new("openssl-readme-cert");
    let Some((cert, key)) = self_signed(
        dir.path(),
        &["-addext", "basicConstraints=critical,CA:FALSE"],
    ) else {
        return;
    };
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let done = echo_over_tls(&server, &cert);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout.trim(), "hello");
}

#[test]
fn a_ca_certificate_as_the_servers_own_is_named() {
    let dir = TempDir::new("openssl-ca-cert");
    let Some((cert, key)) = self_signed(dir.path(), &[]) else {
        return;
    };
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let done = echo_over_tls(&server, &cert);
    assert!(!done.status.success());
    assert_eq!(done.stderr.lines().count(), 1, "one line: {}", done.stderr);
    assert!(
        done.stderr.contains("is a CA certificate") && done.stderr.contains("CA:FALSE"),
        "says what is wrong and how to make a good one: {}",
        done.stderr
    );
}
