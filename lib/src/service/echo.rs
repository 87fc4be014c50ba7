//! The echo service in its three forms, sans-IO.
//!
//! - Framed: [`reply`] answers an ECHO_REQUEST with an ECHO_REPLY carrying the same payload on
//!   the same stream.
//! - Raw TCP (RFC 862): a connection in [`State::Echoing`](crate::conn::State::Echoing); the
//!   byte pump is the connection's own (`RawEcho`, in `conn/raw_echo.rs`) because it is
//!   nothing but the connection's read and write paths.
//! - UDP: [`check_datagram`] says which datagrams are answered; the socket, its batches
//!   (`recvmmsg`, `sendmmsg`) and its queue of replies are the reactor's (`reactor/udp.rs`),
//!   since a datagram echo is nothing but its socket.

use std::net::SocketAddr;

use crate::outbox::Replies;
use crate::proto::{Flags, Frame, FrameType, Header};

/// Answers an ECHO_REQUEST: the payload comes back unchanged, on the request's stream.
pub(crate) fn reply(request: Frame<'_>, replies: &mut Replies<'_>) {
    let Frame { header, payload } = request;
    replies.frame_with(reply_header(&header), |out| out.copy_from_slice(payload));
}

/// The header of the ECHO_REPLY to a request with header `request` (the connection may send
/// it in front of the request's own payload bytes, without copying them).
pub(crate) fn reply_header(request: &Header) -> Header {
    Header {
        frame_type: FrameType::EchoReply,
        flags: Flags::END_STREAM,
        stream: request.stream,
        len: request.len,
    }
}

/// Largest UDP payload over IPv4 (65,535 − 8 UDP − 20 IP header bytes).
pub const MAX_DATAGRAM: usize = 65_507;

/// Source ports never answered: 0 is not a real sender, and replying to echo (7) or chargen (19)
/// lets a spoofed datagram start an endless loop between two servers (CERT CA-1996-01).
pub const REFUSED_SOURCE_PORTS: [u16; 3] = [0, 7, 19];

/// Why a datagram gets no echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unanswered {
    /// Its source port is one of [`REFUSED_SOURCE_PORTS`].
    SourcePort,
    /// It is longer than [`MAX_DATAGRAM`] (an IPv6 jumbo, say): echoed cut short it would
    /// be a lie, so it is not echoed at all.
    TooLarge,
}

/// Whether a datagram of `len` bytes from `source` is echoed back to its sender.
pub(crate) fn check_datagram(source: SocketAddr, len: usize) -> Result<(), Unanswered> {
    if REFUSED_SOURCE_PORTS.contains(&source.port()) {
        Err(Unanswered::SourcePort)
    } else if len > MAX_DATAGRAM {
        Err(Unanswered::TooLarge)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_port(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn datagrams_from_loop_prone_ports_or_too_long_are_not_answered() {
        for port in REFUSED_SOURCE_PORTS {
            assert_eq!(
                check_datagram(from_port(port), 1),
                Err(Unanswered::SourcePort)
            );
        }
        assert_eq!(check_datagram(from_port(5000), MAX_DATAGRAM), Ok(()));
        assert_eq!(
            check_datagram(from_port(5000), MAX_DATAGRAM + 1),
            Err(Unanswered::TooLarge)
        );
        assert_eq!(check_datagram(from_port(5000), 0), Ok(()));
    }
}
