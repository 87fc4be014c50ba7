//! `monoreactor serve` as an operator meets it: what it says when its ports are taken, and what
//! the first Ctrl-C says.

mod support;

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use support::{Server, framed_client, retry, run_cli};

#[test]
fn every_taken_port_is_named_by_its_flag_with_what_to_try_instead() {
    let taken_tcp = TcpListener::bind("127.0.0.1:0").expect("bind TCP");
    let taken_udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let tcp = taken_tcp.local_addr().unwrap().to_string();
    let udp = taken_udp.local_addr().unwrap().to_string();
    let finished = run_cli(
        &[
            "serve",
            "--listen",
            &tcp,
            "--echo-tcp",
            "127.0.0.1:0",
            "--echo-udp",
            &udp,
        ],
        Duration::from_secs(10),
    );
    assert!(!finished.status.success());
    // Log lines (the descriptor limit being raised, say) may come first; the errors are the
    // lines in the CLI's own voice.
    let lines: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|line| line.starts_with("monoreactor: "))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "one line per clash, both at once: {lines:?}"
    );
    assert!(
        lines[0].starts_with(&format!("monoreactor: --listen {tcp}: "))
            && lines[0].ends_with("try --listen 127.0.0.1:0 for any free port"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("monoreactor: --echo-udp {udp}: "))
            && lines[1]
                .ends_with("try --echo-udp 127.0.0.1:0 for any free port, or --echo-udp off"),
        "{}",
        lines[1]
    );
}

#[test]
fn the_first_sigint_says_how_many_clients_it_waits_for_and_that_a_second_stops_at_once() {
    // `-v` after the helper's `-q`: the default level, where this message is shown.
    let mut server = Server::start(&["-v"]);
    let _first = framed_client(&server);
    let _second = framed_client(&server);
    server.signal(libc::SIGINT);
    let said = retry(Duration::from_secs(5), || {
        let stderr = server.stderr_text();
        stderr
            .lines()
            .find(|line| line.contains("SIGINT: shutting down"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no shutdown line; stderr:\n{}", server.stderr_text()));
    assert!(
        said.contains("waiting up to 5s for 2 clients")
            && said.contains("send it again to stop at once"),
        "{said}"
    );
    server.signal(libc::SIGINT);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("the second SIGINT stops it at once");
    assert!(status.success());
}

/// A server that cannot start creates nothing: the root directory is made only once every
/// socket is bound (issue 16: `./monoreactor-files` was left behind when the port was taken),
/// alone and with `--workers`.
#[test]
fn a_server_whose_port_is_taken_leaves_no_root_directory_behind() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind TCP");
    let addr = taken.local_addr().unwrap().to_string();
    let dir = support::TempDir::new("serve-no-root");
    let root = dir.join("files");
    for workers in ["1", "2"] {
        let finished = run_cli(
            &[
                "serve",
                "--listen",
                &addr,
                "--echo-tcp",
                "off",
                "--echo-udp",
                "off",
                "--workers",
                workers,
                "--root",
                root.to_str().unwrap(),
            ],
            Duration::from_secs(10),
        );
        assert!(!finished.status.success(), "{}", finished.stderr);
        assert!(
            !root.exists(),
            "--workers {workers}: {} was created by a server that did not start",
            root.display()
        );
    }
}
