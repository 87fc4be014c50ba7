//! Review of the PROXY protocol, the drain and the answers at shutdown (issue 15): each test
//! here failed before the fix committed with it.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

use monoreactor::proto::{ErrorCode, ErrorMessage, FrameType};
use support::{Server, tcp};
use tls_support::recv_frame;

#[track_caller]
fn expect_closed(stream: &mut impl Read) {
    let mut byte = [0; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
            ) => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
}

/// With `--proxy-protocol allow`, a connection that has sent nothing yet is still looking for
/// its header when SIGTERM comes. Without the PROXY protocol such a client is told
/// SHUTTING_DOWN at once and the server exits; with it, the client was left alone until the
/// grace period ran out (closed without a word) and held the whole shutdown for it.
#[test]
fn a_silent_connection_still_awaiting_its_proxy_header_is_told_shutting_down_at_once() {
    let mut server = Server::start(&[
        "--proxy-protocol",
        "allow",
        "--drain-delay",
        "0",
        "--shutdown-grace",
        "8",
        "--hello-timeout",
        "30",
    ]);
    let mut framed = tcp(server.framed());
    let mut raw = tcp(server.echo_tcp());
    // Both accepted and waiting (a round trip through a third connection proves the loop
    // has handled the accepts).
    let mut probe = tcp(server.framed());
    std::io::Write::write_all(&mut probe, &support::hello_bytes()).unwrap();
    let (header, _) = recv_frame(&mut probe);
    assert_eq!(header.frame_type, FrameType::HelloOk);
    drop(probe);

    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let (header, payload) = recv_frame(&mut framed);
    assert_eq!(header.frame_type, FrameType::Error);
    assert_eq!(
        ErrorMessage::parse(&payload).expect("ERROR parses").code,
        ErrorCode::ShuttingDown
    );
    expect_closed(&mut framed);
    expect_closed(&mut raw);
    assert!(
        server.wait_exit(Duration::from_secs(15)).is_some(),
        "the server exits"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "at once, not after the 8 s grace period: {:?}",
        started.elapsed()
    );
}
