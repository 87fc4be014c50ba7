//! A new user's review of the command line's manners (issue 16, part 3): what still broke the
//! rules after the work on them. Each test is one finding, against the real binary; every
//! child is bounded by [`run_cli_with`].

mod support;

use std::net::TcpListener;
use std::time::Duration;

use support::{Finished, TempDir, run_cli, run_cli_with};

/// Long enough for any of these commands on a loaded machine; each is bounded.
const LIMIT: Duration = Duration::from_secs(20);

/// The one `monoreactor: ...` line a failed client prints, after checking the status.
#[track_caller]
fn one_line_failure(done: &Finished, expected: i32) -> String {
    assert_eq!(done.status.code(), Some(expected), "{done:?}");
    assert_eq!(done.stdout, "", "{done:?}");
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {done:?}");
    assert!(lines[0].starts_with("monoreactor: "), "{done:?}");
    lines[0].to_string()
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// Words a user should never have to read: the resolver's and the OS's own.
#[track_caller]
fn no_jargon(done: &Finished) {
    for jargon in [
        "lookup address information",
        "os error",
        "invalid port value",
    ] {
        assert!(!done.stderr.contains(jargon), "{jargon}: {done:?}");
    }
}

#[test]
fn stats_says_a_name_that_does_not_resolve_as_the_other_clients_do() {
    let done = run_cli(&["stats", "--addr", "nowhere.invalid:9100"], LIMIT);
    let line = one_line_failure(&done, 255);
    assert_eq!(
        line, "monoreactor: cannot resolve nowhere.invalid",
        "{done:?}"
    );
    // The server is not a client: a name it cannot listen on is "cannot start", 1.
    let done = run_cli(
        &[
            "serve",
            "--listen",
            "nowhere.invalid:7878",
            "--check-config",
        ],
        LIMIT,
    );
    let line = one_line_failure(&done, 1);
    assert_eq!(
        line, "monoreactor: cannot resolve nowhere.invalid",
        "{done:?}"
    );
}

#[test]
fn an_ipv6_address_without_a_port_is_told_how_to_write_one() {
    for argv in [
        &["stats", "--addr", "::1"][..],
        &["stats", "--addr", "[::1]"],
        &["serve", "--metrics", "[::1]", "--check-config"],
    ] {
        let done = run_cli(argv, LIMIT);
        assert_eq!(done.status.code(), Some(2), "{argv:?}: {done:?}");
        no_jargon(&done);
        assert!(
            done.stderr.contains("has no port") && done.stderr.contains("[::1]:"),
            "{argv:?}: {done:?}"
        );
    }
}

#[test]
fn stats_says_a_refused_connection_in_words() {
    let done = run_cli(
        &["stats", "--addr", &closed_port(), "--timeout", "2"],
        LIMIT,
    );
    let line = one_line_failure(&done, 255);
    no_jargon(&done);
    assert!(line.contains("connection refused"), "{done:?}");
}

#[test]
fn an_empty_monoreactor_addr_is_as_if_unset() {
    // As an empty RUST_LOG is: `MONOREACTOR_ADDR= monoreactor ls` is the default server, not
    // a usage error about an `--addr` that was never typed.
    let done = run_cli_with(&["echo", "--timeout", "1", "hi"], LIMIT, |command| {
        command.env("MONOREACTOR_ADDR", "");
    });
    assert_ne!(done.status.code(), Some(2), "{done:?}");
    assert!(!done.stderr.contains("not an address"), "{done:?}");
}

#[test]
fn a_wrong_monoreactor_addr_is_named_as_the_variable_not_as_a_flag() {
    let done = run_cli_with(&["echo", "hi"], LIMIT, |command| {
        command.env("MONOREACTOR_ADDR", "somehost:port");
    });
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(done.stderr.contains("MONOREACTOR_ADDR"), "{done:?}");
    // The flag given wins over the variable, even a wrong one.
    let port = closed_port();
    let done = run_cli_with(&["echo", "--addr", &port, "hi"], LIMIT, |command| {
        command.env("MONOREACTOR_ADDR", "somehost:port");
    });
    assert_eq!(done.status.code(), Some(255), "{done:?}");
}

#[test]
fn serve_max_conns_out_of_range_is_a_usage_error() {
    // As `--workers 0` is: a value the flag cannot take is 2, not "cannot start".
    for value in ["0", "2000000"] {
        let done = run_cli(&["serve", "--max-conns", value, "--check-config"], LIMIT);
        assert_eq!(done.status.code(), Some(2), "--max-conns {value}: {done:?}");
        assert!(done.stderr.contains("--max-conns"), "{done:?}");
    }
    // And in a configuration file, named by its line.
    let dir = TempDir::new("review-max-conns");
    let file = dir.path().join("serve.toml");
    std::fs::write(&file, "max-conns = 0\n").expect("write");
    let file = file.to_str().expect("UTF-8 temp path");
    let done = run_cli(&["serve", "--config", file, "--check-config"], LIMIT);
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(done.stderr.contains(&format!("{file}:1:")), "{done:?}");
}

#[test]
fn man_shows_a_nested_subcommand_page() {
    let done = run_cli(&["man", "bench", "echo"], LIMIT);
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    assert!(
        done.stdout.contains(".TH monoreactor-bench-echo"),
        "{done:?}"
    );
    let done = run_cli(&["man", "bench", "nothing"], LIMIT);
    let line = one_line_failure(&done, 2);
    assert!(line.contains("`nothing` is not a subcommand"), "{done:?}");
}

#[test]
fn a_config_integer_too_large_is_said_in_words() {
    let dir = TempDir::new("review-config-int");
    let file = dir.path().join("serve.toml");
    std::fs::write(&file, "max-put = 18446744073709551616\n").expect("write");
    let file = file.to_str().expect("UTF-8 temp path");
    let done = run_cli(&["serve", "--config", file, "--check-config"], LIMIT);
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(!done.stderr.contains("i128"), "{done:?}");
    assert!(done.stderr.contains("max-put"), "{done:?}");
}

#[test]
fn config_sizes_and_durations_take_units_and_plain_integers() {
    let dir = TempDir::new("review-config-units");
    let file = dir.path().join("serve.toml");
    std::fs::write(
        &file,
        "max-put = \"16G\"\nmax-client-memory = 67108864\nidle-timeout = \"1m\"\nexec-timeout = 30\nmax-frame = \"1M\"\n",
    )
    .expect("write");
    let file = file.to_str().expect("UTF-8 temp path");
    let done = run_cli(&["serve", "--config", file, "--check-config"], LIMIT);
    assert_eq!(done.status.code(), Some(0), "{done:?}");
}

#[test]
fn bench_pid_of_no_process_is_a_usage_error_before_the_run() {
    // Before: accepted, and the report silently left the server's CPU out (or, for `idle`,
    // a /proc error in the system's words after connecting).
    for argv in [
        &["bench", "echo", "--pid", "4294967295", "-d", "0.1"][..],
        &["bench", "echo", "--pid", "0", "-d", "0.1"],
        &["bench", "idle", "--pid", "4294967295", "-c", "1"],
    ] {
        let done = run_cli(argv, LIMIT);
        assert_eq!(done.status.code(), Some(2), "{argv:?}: {done:?}");
        assert!(done.stderr.contains("--pid"), "{argv:?}: {done:?}");
        no_jargon(&done);
    }
}

#[test]
fn every_duration_flag_is_shown_as_a_duration() {
    // `--timeout <DURATION>` in the clients, so not `<SECS>` (a bare number) in serve and
    // bench, where 500ms and 1m work as well.
    for argv in [
        &["serve", "--help"][..],
        &["bench", "echo", "--help"],
        &["bench", "probe", "--help"],
    ] {
        let done = run_cli(argv, LIMIT);
        assert_eq!(done.status.code(), Some(0), "{done:?}");
        assert!(!done.stdout.contains("<SECS>"), "{argv:?}: {}", done.stdout);
        assert!(done.stdout.contains("<DURATION>"), "{argv:?}");
    }
}

#[test]
fn every_size_flag_is_shown_as_a_size_with_all_its_units() {
    // `serve --max-put <SIZE>`, `access add --quota <SIZE>`; bench said `<BYTES>` and "K, M,
    // G suffixes", though T, KB, MB... work as well.
    for workload in ["echo", "udp", "connect", "get", "put", "stream"] {
        let done = run_cli(&["bench", workload, "--help"], LIMIT);
        assert_eq!(done.status.code(), Some(0), "{done:?}");
        assert!(
            !done.stdout.contains("<BYTES>"),
            "{workload}: {}",
            done.stdout
        );
        assert!(done.stdout.contains("-s, --size <SIZE>"), "{workload}");
        assert!(!done.stdout.contains("K, M, G suffixes"), "{workload}");
    }
}

#[test]
fn no_line_shows_the_os_error_number() {
    // Rust's `(os error 2)` after the system's words: cat says `No such file or directory`.
    let dir = TempDir::new("review-os-error");
    let missing = dir.path().join("missing");
    let missing = missing.to_str().expect("UTF-8 temp path");
    for argv in [
        &["serve", "--config", missing][..],
        &["serve", "--access", missing, "--check-config"],
        &["echo", "--token-file", missing, "hi"],
        &[
            "access",
            "add",
            "--file",
            &format!("{missing}/x"),
            "--name",
            "a",
        ],
    ] {
        let done = run_cli(argv, LIMIT);
        assert_ne!(done.status.code(), Some(0), "{argv:?}: {done:?}");
        assert!(
            done.stderr.contains("No such file or directory"),
            "{argv:?}: {done:?}"
        );
        no_jargon(&done);
    }
}

#[test]
fn a_duration_may_be_a_sum_as_systemd_writes_it() {
    // `1h30m` was "invalid duration"; `1h30` stays refused (30 what?).
    let dir = TempDir::new("review-duration-sum");
    let file = dir.path().join("serve.toml");
    std::fs::write(
        &file,
        "shutdown-grace = \"1h30m\"\nidle-timeout = \"1m 30s\"\n",
    )
    .expect("write");
    let file = file.to_str().expect("UTF-8 temp path");
    let done = run_cli(&["serve", "--config", file, "--check-config"], LIMIT);
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    let port = closed_port();
    let done = run_cli(
        &["echo", "--addr", &port, "--timeout", "1m30s", "hi"],
        LIMIT,
    );
    assert_eq!(done.status.code(), Some(255), "{done:?}");
    let done = run_cli(&["echo", "--addr", &port, "--timeout", "1h30", "hi"], LIMIT);
    assert_eq!(done.status.code(), Some(2), "{done:?}");
}

#[test]
fn access_add_says_a_wrong_flag_as_the_flag_not_as_a_line_of_a_file_yet_to_be() {
    // Before: `FILE:2: credential name ""...`, of a file that did not exist.
    let dir = TempDir::new("review-access-add");
    let file = dir.path().join("access.toml");
    let path = file.to_str().expect("UTF-8 temp path");
    let done = run_cli(&["access", "add", "--file", path, "--name", ""], LIMIT);
    let line = one_line_failure(&done, 2);
    assert!(
        line.starts_with("monoreactor: access add: credential name"),
        "{done:?}"
    );
    assert!(!line.contains(path), "{done:?}");
    assert!(!file.exists(), "{done:?}");
}

#[test]
fn the_manual_page_names_the_variable_that_sets_the_server() {
    // `echo --help` says `[env: MONOREACTOR_ADDR=]`; its page said nothing of it.
    for page in ["echo", "ls", "get"] {
        let done = run_cli(&["man", page], LIMIT);
        assert_eq!(done.status.code(), Some(0), "{done:?}");
        assert!(done.stdout.contains("MONOREACTOR_ADDR"), "man {page}");
    }
}

#[test]
fn bench_udp_help_offers_no_tls() {
    // UDP is plaintext (given, --tls is refused), yet its help offered tls://HOST:PORT and the
    // five TLS flags.
    let done = run_cli(&["bench", "udp", "--help"], LIMIT);
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    assert!(!done.stdout.contains("tls://"), "{}", done.stdout);
    assert!(!done.stdout.contains("--tls"), "{}", done.stdout);
    assert!(done.stdout.contains("127.0.0.1:7007"), "{}", done.stdout);
    let done = run_cli(&["bench", "udp", "--tls", "-d", "0.1"], LIMIT);
    assert_eq!(done.status.code(), Some(2), "{done:?}");
}

#[test]
fn serve_counts_and_the_frame_limit_are_usage_errors_in_words() {
    // Before: `--max-transfers 1e3` was "invalid digit found in string"; `--max-frame 0` was
    // "max frame length 0 is outside 64..=67108864" and exit 1, as were the zero counts.
    for (flag, value, said) in [
        ("--max-transfers", "1e3", "`1e3` is not a whole number"),
        ("--max-transfers", "0", "must be at least 1"),
        ("--max-commands", "0", "must be at least 1"),
        ("--max-commands-per-conn", "33", "at most 32"),
        ("--max-frame", "0", "at least 64 bytes"),
        ("--max-frame", "1G", "at most 64M"),
    ] {
        let done = run_cli(&["serve", flag, value, "--check-config"], LIMIT);
        assert_eq!(done.status.code(), Some(2), "{flag} {value}: {done:?}");
        assert!(
            done.stderr.contains(flag) && done.stderr.contains(said),
            "{flag} {value}: {done:?}"
        );
        assert!(!done.stderr.contains("..="), "{done:?}");
    }
    let done = run_cli(
        &[
            "access",
            "add",
            "--file",
            "unused",
            "--name",
            "a",
            "--max-commands",
            "1e3",
        ],
        LIMIT,
    );
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(!done.stderr.contains("invalid digit"), "{done:?}");
}

#[test]
fn completions_offer_nothing_internal() {
    // `__disk-helper` ("never by hand") and serve's hidden --worker-of and --disk-helper were
    // offered by every shell's script; the flags a user types still are.
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let done = run_cli(&["completions", shell], LIMIT);
        assert_eq!(done.status.code(), Some(0), "{shell}: {}", done.stderr);
        for internal in ["__disk-helper", "worker-of", "disk-helper"] {
            assert!(!done.stdout.contains(internal), "{shell}: {internal}");
        }
        for flag in [
            "max-put",
            "time-limit",
            "tls-ca",
            "recursive",
            "max-streams-per-conn",
        ] {
            assert!(done.stdout.contains(flag), "{shell}: {flag}");
        }
    }
}

#[test]
fn an_ipv6_address_may_name_its_zone() {
    // `fe80::1%eth0`, as ssh and ping take it: before, "an IPv6 address with a port is
    // written [ADDR]:PORT", even for `[::1%lo]:PORT`, which is written just so.
    let port = closed_port();
    let port = port.rsplit_once(':').expect("HOST:PORT").1;
    let done = run_cli(
        &[
            "echo",
            "--timeout",
            "2",
            "--addr",
            &format!("[::1%lo]:{port}"),
            "hi",
        ],
        LIMIT,
    );
    let line = one_line_failure(&done, 255);
    assert!(line.contains("cannot connect to [::1%"), "{done:?}");
    let done = run_cli(&["echo", "--addr", "fe80::1%nosuchif0", "hi"], LIMIT);
    let line = usage_line(&done);
    assert!(
        line.contains("no network interface `nosuchif0`"),
        "{done:?}"
    );
}

/// clap's usage error's first line, after checking the status (2).
#[track_caller]
fn usage_line(done: &Finished) -> String {
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    done.stderr.lines().next().unwrap_or_default().to_string()
}

#[test]
fn access_hash_refuses_a_token_no_client_would_send() {
    // Before: `echo -n short | monoreactor access hash` printed a hash, for a credential no
    // client can use (they refuse tokens under 16 bytes).
    let dir = TempDir::new("review-access-hash");
    let input = dir.path().join("token");
    std::fs::write(&input, b"short\n").expect("write");
    let done = run_cli_with(&["access", "hash"], LIMIT, |command| {
        command.stdin(std::fs::File::open(&input).expect("open the token"));
    });
    let line = one_line_failure(&done, 2);
    assert!(line.contains("at least 16"), "{done:?}");
}

#[test]
fn serve_listens_on_host_alone_as_the_clients_connect_to_it() {
    // `echo --addr ::1` connects to [::1]:7878; `serve --listen ::1` said "has no port" (2).
    for argv in [
        &[
            "serve",
            "--listen",
            "::1",
            "--echo-tcp",
            "off",
            "--echo-udp",
            "off",
        ][..],
        &[
            "serve",
            "--listen",
            "[::1]",
            "--echo-tcp",
            "[::1]",
            "--echo-udp",
            "127.0.0.1",
        ],
        &[
            "serve",
            "--listen",
            "localhost",
            "--echo-tcp",
            "off",
            "--echo-udp",
            "off",
        ],
    ] {
        let mut argv = argv.to_vec();
        argv.push("--check-config");
        let done = run_cli(&argv, LIMIT);
        assert_eq!(done.status.code(), Some(0), "{argv:?}: {done:?}");
    }
}
