//! The command line's Unix manners, against the real binary (issue 16, part 3): one exit-status
//! convention for every client, sizes and durations with units and errors said in words,
//! `--addr HOST` with the default port and `$MONOREACTOR_ADDR`, `-V` and `-v` everywhere, the
//! same `--timeout` everywhere, completions and a man page generated from the flags, and the
//! repository's own hygiene (licenses, no generated files, descriptions, release profile).

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::exec::TEST_TOKEN;
use support::{Finished, Server, run_cli, run_cli_with};

/// Long enough for any of these commands on a loaded machine; each is bounded.
const LIMIT: Duration = Duration::from_secs(20);

/// The repository's top directory (this package's manifest is at its root).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[track_caller]
fn status(done: &Finished) -> Option<i32> {
    done.status.code()
}

/// The one `monoreactor: ...` line a failed client prints, after checking the status.
#[track_caller]
fn one_line_failure(done: &Finished, expected: i32) -> String {
    assert_eq!(status(done), Some(expected), "{done:?}");
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

/// The subcommands `monoreactor --help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let help = run_cli(&["--help"], LIMIT);
    assert_eq!(status(&help), Some(0), "{help:?}");
    let section = help
        .stdout
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("a Commands: section");
    let names: Vec<String> = section
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    names
}

// === Exit statuses ===

#[test]
fn a_connection_that_fails_is_255_a_refusal_is_1_a_usage_error_is_2() {
    // No server: the connection failed.
    let addr = closed_port();
    let done = run_cli(&["echo", "--addr", &addr, "hi"], LIMIT);
    assert!(one_line_failure(&done, 255).contains(&addr));
    let done = run_cli(&["echo", "--addr", "127.0.0.1:1", "hi"], LIMIT);
    one_line_failure(&done, 255);

    // A peer that does not speak the protocol (the raw echo port): also the connection's.
    let server = Server::start_exec(&[]);
    let raw = server.echo_tcp().to_string();
    let done = run_cli(&["echo", "--addr", &raw, "hi"], LIMIT);
    assert!(one_line_failure(&done, 255).contains("our own HELLO"));

    // The server refused: a wrong token gets AUTH_FAILED.
    let framed = server.framed_str();
    let done = run_cli_with(&["echo", "--addr", &framed, "hi"], LIMIT, |command| {
        command.env("MONOREACTOR_TOKEN", "not-the-token-0123456789abcdef01");
    });
    assert!(
        one_line_failure(&done, 1).contains("AUTH_FAILED"),
        "{done:?}"
    );
    // With the right one it works.
    let token = String::from_utf8(TEST_TOKEN.to_vec()).expect("an ASCII token");
    let done = run_cli_with(&["echo", "--addr", &framed, "hi"], LIMIT, |command| {
        command.env("MONOREACTOR_TOKEN", &token);
    });
    assert_eq!(status(&done), Some(0), "{done:?}");
    assert_eq!(done.stdout, "hi\n");

    // A wrong value: a usage error.
    let done = run_cli(
        &["echo", "--addr", &framed, "--timeout", "soon", "hi"],
        LIMIT,
    );
    assert_eq!(status(&done), Some(2), "{done:?}");
}

/// `exec` keeps 1 to 254 for the remote command's own statuses: a server that refuses to run
/// it at all — exec off, a program outside the credential's allowlist, a wrong token — makes
/// it exit 255, as ssh does, with one line saying why; the other clients' refusals stay 1.
#[test]
fn exec_refused_by_the_server_is_255_while_other_refusals_stay_1() {
    // EXEC_DISABLED: a server started without --exec.
    let server = Server::start(&[]);
    let framed = server.framed_str();
    let done = run_cli(&["exec", "--addr", &framed, "--", "true"], LIMIT);
    assert!(
        one_line_failure(&done, 255).contains("EXEC_DISABLED"),
        "{done:?}"
    );
    let done = run_cli(&["get", "--addr", &framed, "nothere", "-"], LIMIT);
    assert!(one_line_failure(&done, 1).contains("NOT_FOUND"), "{done:?}");

    // AUTH_FAILED: the same answer is 255 for exec, 1 for echo and get.
    let server = Server::start_exec(&[]);
    let framed = server.framed_str();
    let wrong = |command: &mut Command| {
        command.env("MONOREACTOR_TOKEN", "not-the-token-0123456789abcdef01");
    };
    let done = run_cli_with(&["exec", "--addr", &framed, "--", "true"], LIMIT, wrong);
    assert!(
        one_line_failure(&done, 255).contains("AUTH_FAILED"),
        "{done:?}"
    );
    for args in [
        &["echo", "--addr", &framed, "hi"][..],
        &["get", "--addr", &framed, "x", "-"],
    ] {
        let done = run_cli_with(args, LIMIT, wrong);
        assert!(
            one_line_failure(&done, 1).contains("AUTH_FAILED"),
            "{done:?}"
        );
    }

    // FORBIDDEN: a program outside the credential's allowlist; an allowed one runs.
    let dir = support::TempDir::new("manners-allowlist");
    let access = dir.path().join("access.toml");
    let access = access.to_str().unwrap();
    let added = run_cli(
        &[
            "access", "add", "--file", access, "--name", "runner", "--allow", "echo",
        ],
        LIMIT,
    );
    assert_eq!(status(&added), Some(0), "{added:?}");
    let token = added.stdout.trim().to_string();
    let server = Server::start(&["--access", access]);
    let framed = server.framed_str();
    let runner = |command: &mut Command| {
        command.env("MONOREACTOR_TOKEN", &token);
    };
    let done = run_cli_with(&["exec", "--addr", &framed, "--", "true"], LIMIT, runner);
    assert!(
        one_line_failure(&done, 255).contains("FORBIDDEN"),
        "{done:?}"
    );
    let done = run_cli_with(
        &["exec", "--addr", &framed, "--", "echo", "hi"],
        LIMIT,
        runner,
    );
    assert_eq!(status(&done), Some(0), "{done:?}");
    assert_eq!(done.stdout, "hi\n");
    // And exec --help says so.
    let help = run_cli(&["exec", "--help"], LIMIT);
    assert!(
        help.stdout
            .contains("255 if this client failed or the server refused"),
        "{help:?}"
    );
}

#[test]
fn a_name_that_does_not_resolve_is_the_networks_failure_not_a_usage_error() {
    // `.invalid` never resolves (RFC 6761).
    for addr in ["no-such-host.invalid", "no-such-host.invalid:7878"] {
        let done = run_cli(&["echo", "--addr", addr, "hi"], LIMIT);
        let line = one_line_failure(&done, 255);
        assert_eq!(line, "monoreactor: cannot resolve no-such-host.invalid");
    }
    // What is not an address at all stays a usage error.
    for addr in ["a:b:c", "host:port", "host:99999", ":7878"] {
        let done = run_cli(&["echo", "--addr", addr, "hi"], LIMIT);
        assert_eq!(status(&done), Some(2), "{addr}: {done:?}");
        assert!(
            done.stderr.contains("is not an address"),
            "{addr}: {done:?}"
        );
    }
}

#[test]
fn serve_that_cannot_start_exits_1_and_says_so_in_its_help() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let done = run_cli(
        &[
            "serve",
            "--listen",
            &addr,
            "--echo-tcp",
            "off",
            "--echo-udp",
            "off",
        ],
        LIMIT,
    );
    assert_eq!(status(&done), Some(1), "{done:?}");
    let help = run_cli(&["serve", "--help"], LIMIT);
    assert!(help.stdout.contains("1 when it cannot start"), "{help:?}");
}

// === Sizes and durations ===

/// Each `--flag <VALUE>` of `monoreactor ARGS --help` whose value is a size or a duration.
fn unit_flags(args: &[&str]) -> Vec<(String, String)> {
    let mut help_args = args.to_vec();
    help_args.push("--help");
    let help = run_cli(&help_args, LIMIT);
    assert_eq!(status(&help), Some(0), "{help:?}");
    help.stdout
        .lines()
        .filter_map(|line| {
            let at = line.find("--")?;
            let mut words = line[at..].split_whitespace();
            let flag = words.next()?.trim_end_matches(',').to_string();
            let value = words.next()?;
            let value = value.strip_prefix('<')?.strip_suffix('>')?.to_string();
            ["SIZE", "BYTES", "DURATION", "SECS"]
                .contains(&value.as_str())
                .then_some((flag, value))
        })
        .collect()
}

/// Every size and duration flag of each command in `commands` takes units and says in words
/// what is wrong with a value it cannot take (exit 2).
fn check_unit_flags(commands: &[&[&str]]) {
    let mut checked = 0;
    for command in commands {
        for (flag, value) in unit_flags(command) {
            let (wrong, said) = match value.as_str() {
                "SIZE" | "BYTES" => (
                    "16X",
                    "invalid size \"16X\": expected a number with an optional unit K, M, G, T",
                ),
                _ => (
                    "5x",
                    "invalid duration \"5x\": expected a number with an optional unit ms, s, m, h",
                ),
            };
            let mut args = command.to_vec();
            args.extend([flag.as_str(), wrong]);
            let done = run_cli(&args, LIMIT);
            assert_eq!(status(&done), Some(2), "{args:?}: {done:?}");
            assert!(done.stderr.contains(said), "{args:?}: {done:?}");
            assert!(!done.stderr.contains("invalid digit"), "{args:?}: {done:?}");
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no size or duration flag found in {commands:?}"
    );
}

#[test]
fn the_clients_size_and_duration_flags_take_units_and_say_what_is_wrong() {
    check_unit_flags(&[
        &["echo"],
        &["exec"],
        &["stats"],
        &["access", "add"],
        &["get"],
        &["put"],
        &["ls"],
        &["stat"],
        &["rm"],
        &["mkdir"],
    ]);
}

#[test]
fn serve_and_bench_size_and_duration_flags_take_units_and_say_what_is_wrong() {
    // A wrong range is a wrong value like any other: 2, not 1 (it was checked after parsing).
    let done = run_cli(
        &[
            "serve",
            "--proxy-protocol",
            "allow",
            "--proxy-from",
            "bogus",
            "--insecure",
        ],
        LIMIT,
    );
    assert_eq!(status(&done), Some(2), "{done:?}");
    assert!(done.stderr.contains("not an IP address"), "{done:?}");
    // `--addr HOST` takes the workload's default port: raw echo's, not the framed one's.
    let done = run_cli(
        &["bench", "echo", "--raw", "--addr", "127.0.0.1", "-d", "0.2"],
        LIMIT,
    );
    assert!(done.stderr.contains("127.0.0.1:7007"), "{done:?}");
    let done = run_cli(&["serve", "--max-put", "16X"], LIMIT);
    assert_eq!(status(&done), Some(2), "{done:?}");
    assert!(
        done.stderr
            .contains("invalid size \"16X\": expected a number with an optional unit K, M, G, T"),
        "{done:?}"
    );
    check_unit_flags(&[
        &["serve"],
        &["bench", "echo"],
        &["bench", "udp"],
        &["bench", "connect"],
        &["bench", "exec"],
        &["bench", "get"],
        &["bench", "put"],
        &["bench", "idle"],
        &["bench", "stream"],
    ]);
}

#[test]
fn sizes_and_durations_with_units_are_taken() {
    let server = Server::start(&[]);
    let framed = server.framed_str();
    for timeout in ["1500ms", "2s", "0.5m", "1h", "3"] {
        let done = run_cli(
            &["echo", "--addr", &framed, "--timeout", timeout, "hi"],
            LIMIT,
        );
        assert_eq!(status(&done), Some(0), "{timeout}: {done:?}");
    }
    // serve's duration flags too, checked without binding anything.
    let done = run_cli(
        &[
            "serve",
            "--check-config",
            "--idle-timeout",
            "90s",
            "--hello-timeout",
            "500ms",
            "--exec-timeout",
            "1h",
            "--root",
            std::env::temp_dir().to_str().expect("UTF-8 temp dir"),
        ],
        LIMIT,
    );
    assert_eq!(status(&done), Some(0), "{done:?}");
    let help = run_cli(&["--help"], LIMIT);
    assert!(
        help.stdout.contains("powers of 1024") && help.stdout.contains("a bare number is"),
        "{help:?}"
    );
}

// === Addresses ===

/// `monoreactor -v echo --addr ADDR hi` (with `env` in its environment): how it ended, and
/// its stderr.
fn verbose_echo(addr: Option<&str>, env: Option<&str>) -> Finished {
    let mut args = vec!["-v", "echo", "--timeout", "2"];
    if let Some(addr) = addr {
        args.extend(["--addr", addr]);
    }
    args.push("hi");
    run_cli_with(&args, LIMIT, |command| {
        if let Some(value) = env {
            command.env("MONOREACTOR_ADDR", value);
        }
    })
}

#[test]
fn an_address_without_a_port_gets_the_default_port() {
    // 127.0.0.2 and ::1's port 7878: whatever answers there (nothing, usually), -v says
    // where the client connected.
    for (addr, shown) in [
        ("127.0.0.2", "connecting to 127.0.0.2:7878 (127.0.0.2:7878)"),
        ("localhost", "connecting to localhost:7878 ("),
        ("::1", "connecting to [::1]:7878 ([::1]:7878)"),
        ("[::1]", "connecting to [::1]:7878 ([::1]:7878)"),
        ("[::1]:7001", "connecting to [::1]:7001 ([::1]:7001)"),
        (
            "tls://127.0.0.2",
            "connecting to 127.0.0.2:7878 (127.0.0.2:7878) over TLS",
        ),
    ] {
        let done = verbose_echo(Some(addr), None);
        assert!(done.stderr.contains(shown), "{addr}: {done:?}");
    }
}

#[test]
fn monoreactor_addr_sets_the_server_and_the_flag_wins() {
    let server = Server::start(&[]);
    let framed = server.framed_str();
    let done = verbose_echo(None, Some(&framed));
    assert_eq!(status(&done), Some(0), "{done:?}");
    assert_eq!(done.stdout, "hi\n");

    let dead = closed_port();
    let done = verbose_echo(Some(&framed), Some(&dead));
    assert_eq!(status(&done), Some(0), "the flag wins: {done:?}");
    let done = verbose_echo(None, Some(&dead));
    assert_eq!(status(&done), Some(255), "{done:?}");
    assert!(done.stderr.contains(&dead), "{done:?}");

    // Every client command that speaks the framed protocol takes it, and says so.
    for command in ["echo", "exec", "get", "put", "ls", "stat", "rm", "mkdir"] {
        let help = run_cli(&[command, "--help"], LIMIT);
        assert!(
            help.stdout.contains("MONOREACTOR_ADDR"),
            "{command}: {help:?}"
        );
    }
}

// === The same flags everywhere ===

#[test]
fn every_subcommand_has_a_version() {
    for name in subcommands() {
        for flag in ["-V", "--version"] {
            let done = run_cli(&[&name, flag], LIMIT);
            assert_eq!(status(&done), Some(0), "{name} {flag}: {done:?}");
            assert!(
                done.stdout.starts_with(&format!("monoreactor-{name} ")),
                "{name} {flag}: {done:?}"
            );
        }
    }
}

#[test]
fn verbose_says_where_the_client_connects_and_how() {
    // A server with a token, and a client without: not authenticated (echo still works).
    let server = Server::start_exec(&[]);
    let framed = server.framed_str();
    let done = verbose_echo(Some(&framed), None);
    assert_eq!(status(&done), Some(0), "{done:?}");
    for said in [
        format!("connecting to {framed}"),
        "without TLS".to_string(),
        "not authenticated".to_string(),
    ] {
        assert!(done.stderr.contains(&said), "{said}: {done:?}");
    }
    // Without -v, nothing of it.
    let done = run_cli(&["echo", "--addr", &framed, "hi"], LIMIT);
    assert_eq!(done.stderr, "", "{done:?}");
}

#[test]
fn timeout_is_how_long_a_client_waits_and_time_limit_is_the_commands() {
    for command in subcommands() {
        let help = run_cli(&[&command, "--help"], LIMIT);
        let Some(line) = help.stdout.lines().find(|line| line.contains("--timeout")) else {
            continue;
        };
        assert!(line.contains("--timeout <DURATION>"), "{command}: {line}");
        let text = help
            .stdout
            .split("--timeout <DURATION>")
            .nth(1)
            .unwrap_or("");
        assert!(
            text.trim_start()
                .starts_with("How long to wait for the server"),
            "{command}: {}",
            help.stdout
        );
    }
    let help = run_cli(&["exec", "--help"], LIMIT);
    assert!(help.stdout.contains("--time-limit <DURATION>"), "{help:?}");
}

// === Completions and the manual page ===

#[test]
fn completions_name_every_subcommand() {
    let done = run_cli(&["completions", "bash"], LIMIT);
    assert_eq!(status(&done), Some(0), "{done:?}");
    assert!(done.stdout.contains("_monoreactor()"), "a function");
    assert!(
        done.stdout.contains("complete -F _monoreactor"),
        "registered"
    );
    for name in subcommands() {
        assert!(done.stdout.contains(&name), "bash completes {name}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let done = run_cli(&["completions", shell], LIMIT);
        assert_eq!(status(&done), Some(0), "{shell}: {done:?}");
        assert!(done.stdout.contains("serve"), "{shell}");
    }
    let done = run_cli(&["completions", "tcsh"], LIMIT);
    assert_eq!(status(&done), Some(2), "{done:?}");
}

/// Renders `roff` with `program` (groff, or man), if it is installed: its stderr, or None.
fn render(program: &str, args: &[&str], roff: &str) -> Option<(bool, String)> {
    let mut child = Command::new(program)
        .args(args)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "80")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    stdin.write_all(roff.as_bytes()).ok()?;
    drop(stdin);
    let output = child.wait_with_output().ok()?;
    Some((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[test]
fn the_man_page_is_roff_that_renders_without_warnings() {
    for args in [vec!["man"], vec!["man", "serve"], vec!["man", "echo"]] {
        let done = run_cli(&args, LIMIT);
        assert_eq!(status(&done), Some(0), "{done:?}");
        // clap_mangen defines the apostrophe string (`.ie`/`.el`) before the title.
        let first_request = done
            .stdout
            .lines()
            .find(|line| !line.starts_with(".ie") && !line.starts_with(".el"))
            .unwrap_or("");
        assert!(
            first_request.starts_with(".TH "),
            "{args:?}: {first_request}"
        );
        assert!(done.stdout.contains(".SH NAME"), "{args:?}");
        if let Some((ok, stderr)) = render("groff", &["-man", "-Tutf8", "-ww", "-z"], &done.stdout)
        {
            assert!(ok && stderr.is_empty(), "groff on {args:?}: {stderr}");
        }
        if let Some((ok, stderr)) = render("man", &["-l", "-"], &done.stdout) {
            assert!(ok && stderr.is_empty(), "man -l on {args:?}: {stderr}");
        }
    }
    let done = run_cli(&["man", "no-such-command"], LIMIT);
    assert_eq!(status(&done), Some(2), "{done:?}");
}

// === What the help and the crates say ===

/// What the help and the crates' descriptions must name: every service.
const SERVICES: [&str; 7] = [
    "framed echo",
    "raw TCP and UDP echo",
    "remote exec",
    "terminal",
    "get, put, ls",
    "trees",
    "load generator",
];

#[test]
fn the_help_and_every_crate_description_name_every_service() {
    let help = run_cli(&["--help"], LIMIT);
    let about = help.stdout.replace('\n', " ");
    for service in SERVICES {
        assert!(about.contains(service), "--help names {service}: {about}");
    }
    for manifest in ["Cargo.toml", "lib/Cargo.toml", "bench/Cargo.toml"] {
        let text = fs::read_to_string(repo().join(manifest)).expect("the manifest");
        let description = text
            .lines()
            .find(|line| line.starts_with("description"))
            .unwrap_or_else(|| panic!("{manifest} has a description"));
        for service in ["echo", "UDP", "exec", "get", "put", "load generator"] {
            assert!(description.contains(service), "{manifest}: {service}");
        }
    }
}

// === The repository ===

/// The value of each `license = "..."` line of `manifest`.
fn licenses_in(manifest: &Path) -> Vec<String> {
    let text = fs::read_to_string(manifest).expect("the manifest");
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == "license").then(|| value.trim().trim_matches('"').to_string())
        })
        .collect()
}

#[test]
fn every_license_a_manifest_names_has_its_file() {
    let mut manifests = vec![repo().join("Cargo.toml")];
    for dir in ["lib", "bench", "fuzz"] {
        let path = repo().join(dir).join("Cargo.toml");
        if path.exists() {
            manifests.push(path);
        }
    }
    let mut named = BTreeSet::new();
    for manifest in &manifests {
        for expression in licenses_in(manifest) {
            for id in expression
                .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == '/')
                .filter(|word| !word.is_empty() && !["OR", "AND", "WITH"].contains(word))
            {
                named.insert(id.to_string());
            }
        }
    }
    assert!(
        named.contains("MIT") && named.contains("Apache-2.0"),
        "{named:?}"
    );
    for id in &named {
        let (file, says) = match id.as_str() {
            "MIT" => ("LICENSE-MIT", "Permission is hereby granted"),
            "Apache-2.0" => ("LICENSE-APACHE", "Version 2.0, January 2004"),
            other => panic!("{other}: add its LICENSE file and a line here"),
        };
        let text = fs::read_to_string(repo().join(file)).unwrap_or_else(|_| panic!("{file}"));
        assert!(text.contains(says), "{file} is the {id} text");
    }
    let mit = fs::read_to_string(repo().join("LICENSE-MIT")).expect("LICENSE-MIT");
    assert!(mit.contains("Copyright (c) the monoreactor developers"));
}

#[test]
fn no_generated_file_is_in_the_repository() {
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .ok()
        .filter(|output| output.status.success());
    let Some(listed) = listed else {
        eprintln!("not a git checkout: nothing to check");
        return;
    };
    let generated = |path: &str| {
        let name = path.rsplit('/').next().unwrap_or(path);
        path.split('/')
            .any(|part| part == "__pycache__" || part == "target")
            || [".pyc", ".pyo", ".profraw", ".swp", "~", ".orig", ".rej"]
                .iter()
                .any(|end| name.ends_with(end))
            || name.starts_with("callgrind.out")
            || name.starts_with("perf.data")
    };
    let found: Vec<String> = listed
        .stdout
        .split(|byte| *byte == 0)
        .map(|path| String::from_utf8_lossy(path).into_owned())
        .filter(|path| generated(path))
        .collect();
    assert!(found.is_empty(), "generated files in git: {found:?}");
    let ignore = fs::read_to_string(repo().join(".gitignore")).expect(".gitignore");
    for entry in ["/target", "__pycache__/", "*.py[cod]"] {
        assert!(
            ignore.lines().any(|line| line == entry),
            ".gitignore: {entry}"
        );
    }
}

/// The lines of `[section]` in `manifest`'s text.
fn section<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("[{name}]");
    text.lines()
        .skip_while(|line| line.trim() != header)
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .collect()
}

#[test]
fn the_release_build_has_no_debug_information_and_profiling_has_it() {
    let text = fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let release = section(&text, "profile.release");
    assert!(!release.is_empty(), "a release profile");
    let debug_on = |line: &&str| {
        let compact = line.replace(' ', "");
        compact.starts_with("debug=")
            && !["debug=false", "debug=0", "debug=\"none\""].contains(&compact.as_str())
    };
    assert!(!release.iter().any(debug_on), "release: {release:?}");
    let profiling = section(&text, "profile.profiling");
    assert!(
        profiling
            .iter()
            .any(|line| line.replace(' ', "") == "inherits=\"release\""),
        "{profiling:?}"
    );
    assert!(profiling.iter().any(debug_on), "profiling: {profiling:?}");
    let doc = fs::read_to_string(repo().join("docs/PERFORMANCE.md")).expect("PERFORMANCE.md");
    assert!(
        doc.contains("--profile profiling"),
        "PERFORMANCE.md says how to profile"
    );
}
