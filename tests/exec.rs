//! Remote exec over loopback against the real binary: what a command is given (argv as sent,
//! a clean environment, a working directory confined to the root) and what comes back (exit
//! codes and signals, stdout and stderr apart, every byte value).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::time::Duration;

use monoreactor::proto::exec::{EndReason, ExecRequest, Signal, Termination};
use monoreactor::proto::{ErrorCode, Flags, FrameType};
use support::exec::*;
use support::*;

/// How long to look for a marker file that a refused command would have created.
const MARKER_GRACE: Duration = Duration::from_millis(300);

#[test]
fn exit_codes_pass_through() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let codes = [0u8, 1, 3, 255];
    let scripts: Vec<String> = codes.iter().map(|code| format!("exit {code}")).collect();
    // All four at once, each on its own stream.
    let streams: Vec<u32> = scripts
        .iter()
        .map(|script| conn.exec(&shell(script)))
        .collect();
    for (&stream, &code) in streams.iter().zip(&codes) {
        let done = conn.wait_end(stream, RUN_TIMEOUT);
        let exit = done.exit();
        assert_eq!(
            exit.termination,
            Termination::Exited(code),
            "{}",
            done.summary()
        );
        assert_eq!(exit.reason, EndReason::None, "the server did not signal it");
        assert_eq!(exit.shell_code(), code);
    }
}

#[test]
fn death_by_signal_is_reported_as_that_signal() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    for (name, number) in [("TERM", 15u8), ("INT", 2), ("KILL", 9), ("HUP", 1)] {
        let done = conn.run(&shell(&format!("kill -{name} $$")));
        let exit = done.exit();
        assert_eq!(
            exit.termination,
            Termination::Signaled {
                signal: number,
                core_dumped: false
            },
            "kill -{name}: {}",
            done.summary()
        );
        assert_eq!(
            exit.reason,
            EndReason::None,
            "kill -{name}: not the server's doing"
        );
        assert_eq!(exit.shell_code(), 128 + number);
    }
}

#[test]
fn stdout_and_stderr_are_separated() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let done = conn.run(&shell(
        "printf out1; printf err1 >&2; printf out2; printf err2 >&2",
    ));
    assert_eq!(done.stdout.text(), "out1out2");
    assert_eq!(done.stderr.text(), "err1err2");
    assert_eq!(done.code(), 0);

    // Many alternating writes: each pipe keeps its own lines, complete and in order.
    let done = conn.run(&shell(
        "i=0; while [ $i -lt 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done",
    ));
    let expected =
        |prefix: &str| -> String { (0..300).map(|i| format!("{prefix}{i}\n")).collect() };
    assert_eq!(done.stdout.text(), expected("out"));
    assert_eq!(done.stderr.text(), expected("err"));
    assert_eq!(done.code(), 0);
}

/// Every byte value, several times over, in a pattern that also changes from one 256-byte block
/// to the next.
fn all_byte_values() -> Vec<u8> {
    (0..64u32)
        .flat_map(|block| (0..=255u8).map(move |byte| byte.rotate_left(block % 8) ^ block as u8))
        .collect()
}

#[test]
fn all_256_byte_values_survive_stdin_to_stdout_and_stderr() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let data = all_byte_values();
    for byte in 0..=255u8 {
        assert!(data.contains(&byte), "the pattern lacks {byte}");
    }
    for (argv, to_stderr) in [(&["cat"][..], false), (&["sh", "-c", "cat >&2"][..], true)] {
        let stream = conn.exec(&request_with_stdin(argv));
        conn.started(stream);
        // Several frames, split at odd places.
        for piece in data.chunks(1000) {
            conn.stdin(stream, piece);
        }
        conn.stdin_eof(stream);
        let done = conn.wait_end(stream, RUN_TIMEOUT);
        let (wanted, other) = if to_stderr {
            (&done.stderr, &done.stdout)
        } else {
            (&done.stdout, &done.stderr)
        };
        assert!(
            wanted.bytes == data,
            "{argv:?}: {} bytes came back, {} sent, first difference at {:?}",
            wanted.len,
            data.len(),
            wanted.bytes.iter().zip(&data).position(|(a, b)| a != b)
        );
        assert!(other.bytes.is_empty(), "{argv:?}: output on the other pipe");
        assert_eq!(done.code(), 0);
    }
}

#[test]
fn every_non_nul_byte_value_passes_through_argv() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let arg: Vec<u8> = (1..=255u8).collect();
    let request = ExecRequest::new(vec![b"sh", b"-c", b"printf %s \"$1\"", b"sh", &arg]);
    let done = conn.run(&request);
    assert_eq!(done.stdout.bytes, arg, "{}", done.summary());
    assert_eq!(done.code(), 0);
}

#[test]
fn argv_is_passed_literally_without_a_shell() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let done = conn.run_argv(&["echo", "$(id);x"]);
    assert_eq!(done.stdout.text(), "$(id);x\n");

    let done = conn.run_argv(&["echo", "a  b", "*", "~", "\"q\"", "`id`", "$HOME", "x|y>z"]);
    assert_eq!(done.stdout.text(), "a  b * ~ \"q\" `id` $HOME x|y>z\n");
    assert!(
        !server.root().join("z").exists(),
        "a redirection ran: a shell was involved"
    );

    let done = conn.run_argv(&["printf", "[%s]", "", "two words", ""]);
    assert_eq!(
        done.stdout.text(),
        "[][two words][]",
        "empty arguments are kept"
    );
}

#[test]
fn the_environment_is_clean_and_home_is_the_root() {
    // The server's own environment must not reach commands either.
    let server = Server::start_exec_with(&[], |command| {
        command.env("MONOREACTOR_TEST_LEAK", "leaked");
    });
    let mut conn = ExecConn::connect(&server);
    let done = conn.run_argv(&["env"]);
    assert_eq!(done.code(), 0);
    let vars: BTreeMap<String, String> = done
        .stdout
        .text()
        .lines()
        .map(|line| {
            let (name, value) = line.split_once('=').expect("NAME=value");
            (name.to_string(), value.to_string())
        })
        .collect();
    assert_eq!(
        vars.keys().map(String::as_str).collect::<Vec<_>>(),
        ["HOME", "LANG", "PATH"],
        "environment: {vars:?}"
    );
    assert_eq!(vars["HOME"], server.root().to_str().unwrap());
    assert!(!vars["PATH"].is_empty() && !vars["LANG"].is_empty());

    let done = conn.run_argv(&["pwd"]);
    assert_eq!(
        done.stdout.text(),
        format!("{}\n", server.root().display()),
        "the default working directory is the root"
    );
}

#[test]
fn a_working_directory_relative_to_the_root_is_used() {
    let server = Server::start_exec(&[]);
    fs::create_dir_all(server.root().join("sub/dir with space")).unwrap();
    let mut conn = ExecConn::connect(&server);
    for cwd in ["", "sub", "sub/dir with space"] {
        let done = conn.run(&ExecRequest {
            cwd,
            ..request(&["pwd"])
        });
        let expected = if cwd.is_empty() {
            server.root().to_path_buf()
        } else {
            server.root().join(cwd)
        };
        assert_eq!(
            done.stdout.text(),
            format!("{}\n", expected.display()),
            "cwd {cwd:?}: {}",
            done.summary()
        );
    }
}

#[test]
fn working_directories_outside_the_root_are_refused_and_nothing_is_spawned() {
    let server = Server::start_exec(&[]);
    let outside = server.scratch().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(server.root().join("sub")).unwrap();
    symlink(&outside, server.root().join("link-out")).unwrap();
    let outside_abs = outside.to_str().unwrap().to_string();
    let root_abs = server.root().to_str().unwrap().to_string();
    let refused = [
        "..",
        "../",
        "../outside",
        "sub/../..",
        "sub/..",
        "/",
        "/tmp",
        outside_abs.as_str(),
        root_abs.as_str(),
        "link-out",
        "link-out/",
    ];
    let mut conn = ExecConn::connect(&server);
    for (index, cwd) in refused.iter().enumerate() {
        // If it ran, it would leave a marker beside the root.
        let marker = server.scratch().join(format!("ran-{index}"));
        let marker_arg = marker.to_str().unwrap();
        let stream = conn.exec(&ExecRequest {
            cwd,
            ..request(&["touch", marker_arg])
        });
        let (code, text) = conn.refused(stream);
        assert_eq!(code, ErrorCode::PermissionDenied, "cwd {cwd:?}: {text}");
        server.assert_no_children(&format!("after cwd {cwd:?} was refused"));
    }
    // The connection is fine, and none of the refused commands ran late.
    conn.echo(b"still here");
    std::thread::sleep(MARKER_GRACE);
    for (index, cwd) in refused.iter().enumerate() {
        assert!(
            !server.scratch().join(format!("ran-{index}")).exists(),
            "the command with cwd {cwd:?} ran"
        );
    }
    let untouched: Vec<_> = fs::read_dir(&outside).unwrap().collect();
    assert!(untouched.is_empty(), "something ran in {outside_abs}");
}

#[test]
fn missing_programs_and_directories_are_not_found_and_unexecutable_files_not_permitted() {
    let server = Server::start_exec(&[]);
    fs::write(server.root().join("script"), "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(
        server.root().join("script"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut conn = ExecConn::connect(&server);

    let stream = conn.exec(&request(&["no-such-program-monoreactor"]));
    assert_eq!(conn.refused(stream).0, ErrorCode::NotFound);

    let stream = conn.exec(&ExecRequest {
        cwd: "no/such/dir",
        ..request(&["true"])
    });
    assert_eq!(conn.refused(stream).0, ErrorCode::NotFound);

    let stream = conn.exec(&request(&["./script"]));
    assert_eq!(conn.refused(stream).0, ErrorCode::PermissionDenied);
    server.assert_no_children("after three refusals");

    // A malformed EXEC (an unknown flag) is a per-stream BAD_REQUEST too.
    let stream = conn.new_stream();
    let mut wire = exec_frame(stream, &request(&["true"]));
    wire[12 + 1] = 0x80; // the flags field, low byte
    conn.exec_on_raw(stream, &wire);
    assert_eq!(conn.refused(stream).0, ErrorCode::BadRequest);
    conn.echo(b"the connection goes on");
}

#[test]
fn stdin_and_signal_that_cross_the_exit_are_ignored() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec(&request_with_stdin(&["true"]));
    let window = conn.started(stream).stdin_window;
    assert!(window >= 2);
    assert_eq!(conn.wait_end(stream, RUN_TIMEOUT).code(), 0);
    // Sent as if the EXIT had not arrived yet: within the credit STARTED gave.
    conn.send(&stdin_frame(stream, b"late"));
    conn.send(&stdin_eof_frame(stream));
    conn.send(&signal_frame(stream, Signal::Term));
    conn.echo(b"the connection goes on");
    assert_eq!(conn.run_argv(&["echo", "next"]).stdout.text(), "next\n");
}

#[test]
fn a_request_on_the_stream_of_a_running_command_ends_the_connection() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec(&request(&["sleep", "30"]));
    let pgid = conn.started(stream).pid;
    conn.send(&exec_frame(stream, &request(&["true"])));
    conn.expect_conn_error(ErrorCode::UnexpectedFrame);
    assert!(
        wait_group_gone(pgid, std::time::Duration::from_secs(5)),
        "the command outlived its connection"
    );
}

#[test]
fn a_signal_the_protocol_does_not_offer_ends_the_connection() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec(&request(&["sleep", "30"]));
    let pgid = conn.started(stream).pid;
    // SIGSTOP (19) is not one of HUP, INT, KILL, TERM.
    conn.send(
        &monoreactor::proto::Frame::new(FrameType::Signal, Flags::NONE, stream, &[19]).to_vec(),
    );
    conn.expect_conn_error(ErrorCode::BadRequest);
    assert!(
        wait_group_gone(pgid, std::time::Duration::from_secs(5)),
        "the command outlived its connection"
    );
}
