//! `monoreactor serve` as a Unix tool: `--root` created as `mkdir` would (the last component
//! only), a root that is a file named as such, a worker count too large refused with its
//! limit and reason, and a warning at start for files served without a credential to hosts
//! other than this one. Every child is bounded: [`run_cli`] kills what does not exit.

mod support;

use std::time::{Duration, Instant};

use support::{Finished, Server, TempDir, run_cli};

/// Longest a `serve` that must refuse to start may take.
const LIMIT: Duration = Duration::from_secs(10);

/// `serve` on loopback port 0, echo off, with `extra`.
fn serve(extra: &[&str]) -> Finished {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--echo-tcp",
        "off",
        "--echo-udp",
        "off",
    ];
    args.extend_from_slice(extra);
    run_cli(&args, LIMIT)
}

/// The lines in the CLI's own voice (log lines may come first).
fn own_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.starts_with("monoreactor: "))
        .collect()
}

#[test]
fn the_root_is_created_as_mkdir_would_and_a_missing_parent_is_named() {
    let dir = TempDir::new("serve-root-chain");
    let root = dir.path().join("a").join("b");
    let run = serve(&["--root", root.to_str().expect("UTF-8 temp path")]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let lines = own_lines(&run.stderr);
    assert_eq!(lines.len(), 1, "{run:?}");
    assert!(
        lines[0].contains(&format!(
            "parent directory {} does not exist",
            dir.path().join("a").display()
        )),
        "{run:?}"
    );
    assert!(
        !dir.path().join("a").exists(),
        "serve created {}",
        dir.path().join("a").display()
    );

    // The last component alone is created.
    let root = dir.path().join("files");
    let server = Server::start(&["--root", root.to_str().expect("UTF-8 temp path")]);
    assert!(root.is_dir(), "{}", server.stderr_text());
}

#[test]
fn a_root_that_is_a_file_is_not_a_directory() {
    let dir = TempDir::new("serve-root-file");
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").expect("a file");
    let file = file.to_str().expect("UTF-8 temp path");
    let run = serve(&["--root", file]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let lines = own_lines(&run.stderr);
    assert_eq!(
        lines,
        [format!("monoreactor: {file} is not a directory (--root)")],
        "{run:?}"
    );
}

#[test]
fn too_many_workers_are_refused_with_the_limit_and_why() {
    let dir = TempDir::new("serve-workers");
    let root = dir.path().join("files");
    let started = Instant::now();
    let run = serve(&[
        "--workers",
        "100000",
        "--root",
        root.to_str().expect("UTF-8 temp path"),
    ]);
    // A value the flag cannot take: a usage error (2), as `--workers 0` is.
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.starts_with("error: "))
        .collect();
    assert_eq!(lines.len(), 1, "{run:?}");
    assert!(
        lines[0].contains("'100000' for '--workers <N>': at most 1024")
            && lines[0].contains("process")
            && !lines[0].contains("port"),
        "{run:?}"
    );
    assert!(!root.exists(), "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{run:?}");
}

/// The warn lines a server logged within its first moments.
fn warnings_of(server: &Server) -> Vec<String> {
    // The warnings come before the `listening` lines the start waited for; the stderr reader
    // may lag a little behind.
    std::thread::sleep(Duration::from_millis(300));
    server
        .stderr_text()
        .lines()
        .filter(|line| line.contains("WARN"))
        .map(String::from)
        .collect()
}

#[test]
fn files_served_without_a_token_to_other_hosts_are_warned_of_once_at_start() {
    // Loopback only: nothing to warn of.
    let server = Server::start(&[]);
    assert!(warnings_of(&server).is_empty(), "{}", server.stderr_text());
    drop(server);

    // Behind a balancer (the PROXY protocol) with no token: the balancer's clients reach the
    // files. One line, also with workers (the supervisor says it, not each worker).
    for workers in ["1", "2"] {
        let server = Server::start(&[
            "--proxy-protocol",
            "allow",
            "--insecure",
            "--workers",
            workers,
        ]);
        let warnings = warnings_of(&server);
        let files: Vec<&String> = warnings
            .iter()
            .filter(|line| line.contains("without authentication"))
            .collect();
        assert_eq!(files.len(), 1, "--workers {workers}: {warnings:?}");
        assert!(files[0].contains("balancer"), "{warnings:?}");
    }
}
