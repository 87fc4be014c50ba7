//! The PROXY protocol on a connection: who may send the header ([`ProxyPolicy`]), and taking
//! it off the socket before anything else reads it ([`ProxyPrelude`]).
//!
//! # Where the header is read
//! The header comes first on the wire, before the first frame, before the raw echo's first
//! byte, and before a TLS ClientHello (HAProxy's `send-proxy-v2` with `ssl` sends the header,
//! then TLS). So it is taken off the socket itself, beneath the TLS session and the
//! connection, by a prelude the reactor runs before it drives the connection the first time;
//! once the header is gone, the connection (or its TLS session) starts on the bytes after it,
//! with the client's address in its [`Peer`](super::Peer).
//!
//! # Peeking, as HAProxy does
//! The prelude looks at the socket's first bytes with `recv(MSG_PEEK)` ([`Peek`]), parses
//! them ([`crate::proto::proxy::parse`]), and only then reads exactly the header's bytes
//! (HAProxy's `conn_recv_proxy` does the same). So nothing after the header is ever read by
//! the prelude: no bytes to hand over to the connection or the TLS session, and nothing held
//! by an idle connection whose header is incomplete — its bytes wait in the kernel, and the
//! next segment to arrive is a new edge (the socket is edge-triggered on arrivals, not on
//! emptiness). A peek window of [`MAX_LEN`](crate::proto::proxy::MAX_LEN) bytes always holds
//! a whole header or shows there is none.
//!
//! One thing a peek cannot see is the end of the stream behind bytes already there: a client
//! that sends half a header and its FIN would be peeked at forever. The reactor tells the
//! prelude when the poll reported the read side closed ([`ProxyPrelude::on_read_closed`]),
//! and a header still incomplete then is an error.

use std::fmt;
use std::io::{self, ErrorKind};
use std::net::IpAddr;
use std::str::FromStr;

use super::Transport;
use crate::proto::proxy::{self, MAX_LEN, ProxyError, ProxyHeader, Start};

/// `serve --proxy-protocol`: whether connections may, or must, start with a PROXY header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// No header is expected; the first bytes are the protocol's (the default).
    #[default]
    Off,
    /// A connection from a `--proxy-from` peer may start with a header, or not.
    Allow,
    /// A connection from a `--proxy-from` peer must start with a header.
    Require,
}

impl FromStr for ProxyMode {
    type Err = String;

    fn from_str(text: &str) -> Result<ProxyMode, String> {
        match text {
            "off" => Ok(ProxyMode::Off),
            "allow" => Ok(ProxyMode::Allow),
            "require" => Ok(ProxyMode::Require),
            other => Err(format!("`{other}`: expected off, allow or require")),
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyMode::Off => "off",
            ProxyMode::Allow => "allow",
            ProxyMode::Require => "require",
        })
    }
}

/// An address range: an address and how many of its leading bits a peer must share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The IPv4 and IPv6 loopback ranges: who may send a header when `--proxy-from` is not
    /// given (a balancer on the same machine, and nothing that crossed a network).
    pub const LOOPBACK: [Cidr; 2] = [
        Cidr {
            addr: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
        },
        Cidr {
            addr: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ];

    /// Parses `ADDR/BITS`, or a bare address (all of its bits).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}`: not an IP address or ADDR/BITS range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(bits) => bits
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&bits| bits <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        // An IPv4 range written mapped into IPv6 (`::ffff:10.0.0.0/104`, as `ss` shows a
        // dual-stack listener's peers) is the IPv4 range it names: peers are matched as IPv4
        // addresses ([`Cidr::contains`]), so kept as IPv6 it would match no one.
        if let IpAddr::V6(v6) = addr {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                return Ok(Cidr {
                    addr: IpAddr::V4(v4),
                    prefix: prefix - 96,
                });
            }
        }
        Ok(Cidr { addr, prefix })
    }

    /// Parses a comma-separated list of ranges.
    pub fn parse_list(text: &str) -> Result<Vec<Cidr>, String> {
        text.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(Cidr::parse)
            .collect()
    }

    /// Whether `ip` is in the range. An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, what
    /// a dual-stack listener sees) is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(range), IpAddr::V4(ip)) => {
                prefix_matches(&range.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(range), IpAddr::V6(ip)) => {
                prefix_matches(&range.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_matches(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let whole = bits / 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

/// Who may (or must) start a connection with a PROXY header: `--proxy-protocol` and
/// `--proxy-from`, for the framed and the raw echo listeners alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyPolicy {
    /// Off, allow or require.
    pub mode: ProxyMode,
    /// The peers (the balancers) that may send a header; from anyone else a header is a
    /// protocol error. Empty means [`Cidr::LOOPBACK`].
    pub from: Vec<Cidr>,
}

impl ProxyPolicy {
    /// What a connection from `peer` must start with; `None` when the protocol is off (its
    /// bytes are not looked at).
    pub(crate) fn expect_for(&self, peer: IpAddr) -> Option<Expect> {
        let trusted = if self.from.is_empty() {
            Cidr::LOOPBACK.iter().any(|range| range.contains(peer))
        } else {
            self.from.iter().any(|range| range.contains(peer))
        };
        match (self.mode, trusted) {
            (ProxyMode::Off, _) => None,
            (_, false) => Some(Expect::Forbidden),
            (ProxyMode::Allow, true) => Some(Expect::Optional),
            (ProxyMode::Require, true) => Some(Expect::Required),
        }
    }

    /// Whether a header is looked for at all.
    pub fn is_on(&self) -> bool {
        self.mode != ProxyMode::Off
    }
}

/// Whether a connection's first bytes must, may or must not be a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// From a trusted peer under `require`.
    Required,
    /// From a trusted peer under `allow`.
    Optional,
    /// From any other peer: the bytes go to the protocol, unless they are a header.
    Forbidden,
}

/// A byte stream whose next bytes can be looked at without taking them (`recv(MSG_PEEK)`).
pub(crate) trait Peek: Transport {
    /// Copies up to `buf.len()` of the bytes waiting into `buf` and leaves them waiting:
    /// `Ok(0)` at the end of the stream, `WouldBlock` when none are there.
    fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

impl Peek for mio::net::TcpStream {
    fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        mio::net::TcpStream::peek(self, buf)
    }
}

/// Why a connection's header was refused.
#[derive(Debug)]
pub(crate) enum PreludeError {
    /// `require`, and the first bytes are not a header.
    Missing,
    /// A header from a peer not in `--proxy-from`.
    Untrusted,
    /// The bytes have a header's signature and are not a valid header.
    Invalid(ProxyError),
    /// The peer closed the connection in the middle of the header.
    Truncated,
    /// Reading the socket failed.
    Io(io::Error),
}

impl fmt::Display for PreludeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreludeError::Missing => {
                f.write_str("no PROXY protocol header, and --proxy-protocol require wants one")
            }
            PreludeError::Untrusted => {
                f.write_str("a PROXY protocol header from a peer not in --proxy-from")
            }
            PreludeError::Invalid(error) => error.fmt(f),
            PreludeError::Truncated => f.write_str("closed in the middle of its PROXY header"),
            PreludeError::Io(error) => write!(f, "reading the PROXY header: {error}"),
        }
    }
}

/// What [`ProxyPrelude::advance`] found.
#[derive(Debug)]
pub(crate) enum Prelude {
    /// The header is incomplete (or the first bytes are too few to tell): wait for more.
    NeedMore,
    /// The prelude is over: the header, taken off the socket, or none (the first bytes are
    /// the protocol's, and were left where they were).
    Done(Option<ProxyHeader>),
    /// The peer closed before sending anything.
    Closed,
    /// The connection must be refused.
    Failed(PreludeError),
}

/// The part of a connection's life before its first protocol byte, while a header is looked
/// for: two bytes, kept in the connection's slot until the header is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProxyPrelude {
    expect: Expect,
    /// The poll reported the read side closed: an incomplete header will stay incomplete.
    read_closed: bool,
}

impl ProxyPrelude {
    /// A prelude for a connection whose first bytes must, may or must not be a header.
    pub(crate) fn new(expect: Expect) -> ProxyPrelude {
        ProxyPrelude {
            expect,
            read_closed: false,
        }
    }

    /// The poll reported the peer's FIN (or an error): what is there is all there will be.
    pub(crate) fn on_read_closed(&mut self) {
        self.read_closed = true;
    }

    /// Looks at the first bytes and, once they show a whole header, takes exactly its bytes
    /// off the socket. Call when the socket may have bytes; until it says `Done`, nothing
    /// else may read the socket.
    pub(crate) fn advance<S: Peek>(&mut self, io: &mut S) -> Prelude {
        let mut window = [0u8; MAX_LEN];
        let seen = loop {
            match io.peek(&mut window) {
                Ok(0) => return Prelude::Closed,
                Ok(n) => break n,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => return self.need_more(),
                Err(error) => return Prelude::Failed(PreludeError::Io(error)),
            }
        };
        let first = &window[..seen];
        let start = proxy::classify(first);
        match (self.expect, start) {
            (_, Start::Undecided) => return self.need_more(),
            (Expect::Forbidden, Start::Header) => return Prelude::Failed(PreludeError::Untrusted),
            (Expect::Forbidden | Expect::Optional, Start::NotHeader) => return Prelude::Done(None),
            (Expect::Required, Start::NotHeader) => return Prelude::Failed(PreludeError::Missing),
            (Expect::Required | Expect::Optional, Start::Header) => {}
        }
        match proxy::parse(first) {
            Ok(None) => self.need_more(),
            Ok(Some((header, used))) => match consume(io, &mut window[..used]) {
                Ok(()) => Prelude::Done(Some(header)),
                Err(error) => Prelude::Failed(PreludeError::Io(error)),
            },
            Err(error) => Prelude::Failed(PreludeError::Invalid(error)),
        }
    }

    fn need_more(&self) -> Prelude {
        if self.read_closed {
            Prelude::Failed(PreludeError::Truncated)
        } else {
            Prelude::NeedMore
        }
    }
}

/// Reads exactly `buf.len()` bytes, which a peek has just shown are waiting.
fn consume<S: Peek>(io: &mut S, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match io.read(&mut buf[done..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;

    /// A socket's receive side in memory: bytes that have arrived, and whether the FIN has.
    #[derive(Default)]
    struct Arrivals {
        waiting: VecDeque<u8>,
        fin: bool,
        reads: usize,
    }

    impl Read for Arrivals {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.waiting.is_empty() {
                return if self.fin {
                    Ok(0)
                } else {
                    Err(ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.waiting.len());
            for (slot, byte) in buf.iter_mut().zip(self.waiting.drain(..n)) {
                *slot = byte;
            }
            Ok(n)
        }
    }

    impl Write for Arrivals {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Transport for Arrivals {
        fn shutdown_write(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Peek for Arrivals {
        fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.waiting.is_empty() {
                return if self.fin {
                    Ok(0)
                } else {
                    Err(ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.waiting.len());
            for (slot, byte) in buf.iter_mut().zip(self.waiting.iter()) {
                *slot = *byte;
            }
            Ok(n)
        }
    }

    const HELLO_LIKE: &[u8] = b"\x00\x00\x00\x10 the first frame";

    fn client() -> ProxyHeader {
        ProxyHeader::Proxied {
            client: SocketAddr::from((Ipv4Addr::new(203, 0, 113, 7), 56324)),
            server: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 7878)),
        }
    }

    fn v1() -> Vec<u8> {
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 7878\r\n".to_vec()
    }

    fn v2() -> Vec<u8> {
        let addresses = ppp::v2::Addresses::IPv4(ppp::v2::IPv4::new(
            [203, 0, 113, 7],
            [192, 0, 2, 1],
            56324,
            7878,
        ));
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            addresses,
        )
        .write_tlv(ppp::v2::Type::Authority, b"example.com")
        .and_then(ppp::v2::Builder::build)
        .expect("build")
    }

    /// Delivers `wire` in two parts split at `split` and advances after each arrival, as the
    /// reactor does after each edge; returns the outcome and what is left on the socket.
    fn split_delivery(expect: Expect, wire: &[u8], split: usize) -> (Prelude, Vec<u8>) {
        let mut io = Arrivals::default();
        let mut prelude = ProxyPrelude::new(expect);
        io.waiting.extend(&wire[..split]);
        let mut outcome = if split == 0 {
            Prelude::NeedMore
        } else {
            prelude.advance(&mut io)
        };
        io.waiting.extend(&wire[split..]);
        if matches!(outcome, Prelude::NeedMore) {
            outcome = prelude.advance(&mut io);
        }
        (outcome, io.waiting.into_iter().collect())
    }

    #[test]
    fn advance_takes_the_header_at_every_split_and_leaves_the_rest_on_the_socket() {
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .expect("build");
        let tcp6 = ProxyHeader::Proxied {
            client: "[2001:db8::7]:56324".parse().expect("address"),
            server: "[2001:db8::1]:7878".parse().expect("address"),
        };
        let headers = [
            (v1(), client()),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 7878\r\n".to_vec(),
                tcp6,
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), ProxyHeader::Unknown),
            (v2(), client()),
            (local, ProxyHeader::Local),
        ];
        for (header, expected) in headers {
            let mut wire = header.clone();
            wire.extend_from_slice(HELLO_LIKE);
            for expect in [Expect::Required, Expect::Optional] {
                for split in 0..=wire.len() {
                    let (outcome, left) = split_delivery(expect, &wire, split);
                    match outcome {
                        Prelude::Done(Some(found)) => assert_eq!(found, expected),
                        other => panic!("{expect:?}, split at {split}: {other:?}"),
                    }
                    assert_eq!(left, HELLO_LIKE, "{expect:?}, split at {split}");
                }
            }
        }
    }

    #[test]
    fn advance_one_byte_at_a_time_reads_only_the_header() {
        let mut wire = v1();
        wire.extend_from_slice(HELLO_LIKE);
        let mut io = Arrivals::default();
        let mut prelude = ProxyPrelude::new(Expect::Required);
        let mut done_at = None;
        for (at, byte) in wire.iter().enumerate() {
            io.waiting.push_back(*byte);
            match prelude.advance(&mut io) {
                Prelude::NeedMore => {}
                Prelude::Done(Some(_)) => {
                    done_at = Some(at);
                    break;
                }
                other => panic!("byte {at}: {other:?}"),
            }
        }
        assert_eq!(
            done_at,
            Some(v1().len() - 1),
            "done at the header's last byte"
        );
        assert_eq!(io.reads, 1, "one read, of exactly the header");
        assert!(io.waiting.is_empty());
    }

    #[test]
    fn advance_without_a_header_leaves_every_byte_where_optional_or_forbidden() {
        for expect in [Expect::Optional, Expect::Forbidden] {
            for split in 0..=HELLO_LIKE.len() {
                let (outcome, left) = split_delivery(expect, HELLO_LIKE, split);
                assert!(matches!(outcome, Prelude::Done(None)), "{expect:?} {split}");
                assert_eq!(left, HELLO_LIKE);
            }
        }
    }

    #[test]
    fn advance_decides_optional_only_once_the_signature_is_ruled_out() {
        let mut io = Arrivals::default();
        let mut prelude = ProxyPrelude::new(Expect::Optional);
        io.waiting.extend(b"PRO");
        assert!(matches!(prelude.advance(&mut io), Prelude::NeedMore));
        io.waiting.extend(b"Z");
        assert!(matches!(prelude.advance(&mut io), Prelude::Done(None)));
        assert_eq!(io.waiting.len(), 4, "nothing taken");
    }

    #[test]
    fn advance_refuses_a_missing_header_under_require() {
        let (outcome, _) = split_delivery(Expect::Required, HELLO_LIKE, 1);
        assert!(matches!(outcome, Prelude::Failed(PreludeError::Missing)));
        let (outcome, _) = split_delivery(Expect::Required, b"\x16\x03\x01\x00\x05", 5);
        assert!(
            matches!(outcome, Prelude::Failed(PreludeError::Missing)),
            "a TLS ClientHello without the header"
        );
    }

    #[test]
    fn advance_refuses_a_header_from_an_untrusted_peer() {
        for header in [v1(), v2()] {
            for split in 0..=header.len() {
                let (outcome, _) = split_delivery(Expect::Forbidden, &header, split);
                assert!(
                    matches!(outcome, Prelude::Failed(PreludeError::Untrusted)),
                    "split at {split}: {outcome:?}"
                );
            }
        }
    }

    #[test]
    fn advance_refuses_malformed_headers() {
        let (outcome, _) = split_delivery(
            Expect::Required,
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\nrest",
            7,
        );
        assert!(matches!(
            outcome,
            Prelude::Failed(PreludeError::Invalid(ProxyError::Malformed {
                version: 1,
                ..
            }))
        ));
        let mut huge = v2();
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        let (outcome, _) = split_delivery(Expect::Optional, &huge[..16], 16);
        assert!(matches!(
            outcome,
            Prelude::Failed(PreludeError::Invalid(ProxyError::V2TooLong { .. }))
        ));
    }

    #[test]
    fn advance_sees_the_end_of_the_stream() {
        let mut io = Arrivals {
            fin: true,
            ..Arrivals::default()
        };
        let mut prelude = ProxyPrelude::new(Expect::Required);
        assert!(matches!(prelude.advance(&mut io), Prelude::Closed));

        let mut io = Arrivals::default();
        io.waiting.extend(&v1()[..10]);
        let mut prelude = ProxyPrelude::new(Expect::Required);
        assert!(matches!(prelude.advance(&mut io), Prelude::NeedMore));
        io.fin = true;
        prelude.on_read_closed();
        assert!(matches!(
            prelude.advance(&mut io),
            Prelude::Failed(PreludeError::Truncated)
        ));
    }

    #[test]
    fn policy_trusts_only_proxy_from_and_loopback_by_default() {
        let remote: IpAddr = "198.51.100.9".parse().expect("ip");
        let balancer: IpAddr = "10.1.2.3".parse().expect("ip");
        let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        let off = ProxyPolicy::default();
        assert_eq!(off.expect_for(loopback), None);
        let default_from = ProxyPolicy {
            mode: ProxyMode::Require,
            from: Vec::new(),
        };
        assert_eq!(default_from.expect_for(loopback), Some(Expect::Required));
        assert_eq!(
            default_from.expect_for("::1".parse().expect("ip")),
            Some(Expect::Required)
        );
        assert_eq!(default_from.expect_for(balancer), Some(Expect::Forbidden));
        let from = ProxyPolicy {
            mode: ProxyMode::Allow,
            from: Cidr::parse_list("10.0.0.0/8, 2001:db8::/32").expect("parse"),
        };
        assert_eq!(from.expect_for(balancer), Some(Expect::Optional));
        assert_eq!(from.expect_for(mapped), Some(Expect::Optional));
        assert_eq!(from.expect_for(remote), Some(Expect::Forbidden));
        assert_eq!(from.expect_for(loopback), Some(Expect::Forbidden));
        assert_eq!(
            from.expect_for("2001:db8:1::5".parse().expect("ip")),
            Some(Expect::Optional)
        );
    }

    #[test]
    fn cidr_written_as_an_ipv4_mapped_range_matches_its_ipv4_peers() {
        // A dual-stack listener's IPv4 peers, as `ss` shows them and as the socket reports
        // them: a range written the same way must match both forms of the address.
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").expect("parse");
        assert!(mapped.contains("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(mapped.contains("10.1.2.3".parse().expect("ip")));
        assert!(!mapped.contains("11.0.0.1".parse().expect("ip")));
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        let single = Cidr::parse("::ffff:192.0.2.9").expect("parse");
        assert!(single.contains("192.0.2.9".parse().expect("ip")));
        assert!(!single.contains("192.0.2.10".parse().expect("ip")));
        let policy = ProxyPolicy {
            mode: ProxyMode::Require,
            from: Cidr::parse_list("::ffff:10.0.0.0/104").expect("parse"),
        };
        assert_eq!(
            policy.expect_for("::ffff:10.9.9.9".parse().expect("ip")),
            Some(Expect::Required)
        );
        // A native IPv6 range is left alone.
        let v6 = Cidr::parse("2001:db8::/32").expect("parse");
        assert!(!v6.contains("10.1.2.3".parse().expect("ip")));
    }

    #[test]
    fn cidr_parses_ranges_and_bare_addresses() {
        let range = Cidr::parse("192.168.4.0/22").expect("parse");
        assert!(range.contains("192.168.7.255".parse().expect("ip")));
        assert!(!range.contains("192.168.8.0".parse().expect("ip")));
        let single = Cidr::parse("10.0.0.1").expect("parse");
        assert!(single.contains("10.0.0.1".parse().expect("ip")));
        assert!(!single.contains("10.0.0.2".parse().expect("ip")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("parse")
                .contains("8.8.8.8".parse().expect("ip"))
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0/").is_err());
        assert!(Cidr::parse("/8").is_err());
        assert!(Cidr::parse(" 10.0.0.0 / 8 ").is_ok());
        assert!(Cidr::parse("host.example/8").is_err());
        assert_eq!(ProxyMode::from_str("require"), Ok(ProxyMode::Require));
        assert!(ProxyMode::from_str("on").is_err());
    }
}
