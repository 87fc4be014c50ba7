//! The PROXY protocol header (HAProxy's `doc/proxy-protocol.txt`, versions 1 and 2): what a
//! load balancer sends first on each connection it relays, to say who the client is.
//!
//! Parsing is the [`ppp`] crate's; this module adds what a server reading from a socket needs
//! around it, in the style of the frame decoder:
//! - `Ok(None)` means "need more bytes" (incomplete input is never an error), so the header may
//!   arrive one byte at a time;
//! - a header that would be too long is refused from what announces its length alone: a v1
//!   line with no CRLF in its first [`V1_MAX_LEN`] bytes, a v2 header whose length field says
//!   more than [`V2_MAX_LEN`] in all, before a byte of its body is waited for;
//! - the bytes after the header are not the header's: [`parse`] says how many it used.
//!
//! Nothing here reads a socket; `transport/proxy.rs` takes the header off a connection.
//!
//! ```text
//!  v1:  "PROXY TCP4 203.0.113.7 192.0.2.1 56324 7878\r\n"        (at most 107 bytes)
//!  v2:  \r\n\r\n\0\r\nQUIT\n | ver<<4|cmd | family<<4|proto | len (u16 BE) | addresses | TLVs
//! ```

use std::fmt;
use std::net::SocketAddr;

use ppp::v2;

/// The longest v1 header, CRLF included (the specification's bound).
pub const V1_MAX_LEN: usize = 107;

/// The fixed part of a v2 header: signature (12), version and command, family and protocol,
/// length (2).
pub const V2_FIXED_LEN: usize = 16;

/// The longest v2 header accepted, fixed part included. The addresses take at most 216 bytes
/// (AF_UNIX); the rest is TLVs, which HAProxy keeps well under 1 KiB (ALPN, authority, unique
/// id, SSL details), as do the cloud balancers. The specification leaves the bound to the
/// receiver.
pub const V2_MAX_LEN: usize = 2048;

/// The most bytes [`parse`] can need to see to decide: a window of this size always holds a
/// whole header, or shows that there is none.
pub const MAX_LEN: usize = V2_MAX_LEN;

/// How a v1 header starts.
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// How a v2 header starts.
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;

/// What a header says about the connection it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A relayed connection: the client's address as the proxy saw it, and the address the
    /// client connected to (the proxy's own listener).
    Proxied {
        /// The client: the source of the relayed connection.
        client: SocketAddr,
        /// Where the client connected to.
        server: SocketAddr,
    },
    /// v2 `LOCAL`: the proxy speaks for itself, as its health checks do. The connection keeps
    /// the proxy's own address.
    Local,
    /// v1 `UNKNOWN`: the proxy does not know the client's address (its health checks, in v1).
    /// The connection keeps the proxy's own address.
    Unknown,
    /// v2 `PROXY` with an address family that is not IP (unspecified, or a Unix socket): to be
    /// accepted with the connection's own address, says the specification.
    Unspecified,
}

impl ProxyHeader {
    /// Whether the proxy sent it on its own behalf rather than for a client: v2 `LOCAL` and
    /// v1 `UNKNOWN`, which is what HAProxy's health checks send.
    pub fn is_health_check(self) -> bool {
        matches!(self, ProxyHeader::Local | ProxyHeader::Unknown)
    }
}

impl fmt::Display for ProxyHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyHeader::Proxied { client, server } => write!(f, "client {client} to {server}"),
            ProxyHeader::Local => f.write_str("LOCAL (the proxy itself)"),
            ProxyHeader::Unknown => f.write_str("UNKNOWN (no client address)"),
            ProxyHeader::Unspecified => f.write_str("PROXY with no IP address"),
        }
    }
}

/// Whether bytes can be the start of a header, judged from its signature only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// They begin with a header's signature (v1's `PROXY ` or v2's 12 bytes).
    Header,
    /// They cannot be a header's first bytes.
    NotHeader,
    /// Too few to tell: they are a prefix of a signature.
    Undecided,
}

/// Why bytes are not an acceptable header. Each is final: more bytes cannot fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes begin with neither signature.
    NoSignature,
    /// A v1 line without CRLF in its first [`V1_MAX_LEN`] bytes.
    V1TooLong,
    /// A v2 header whose length field makes it longer than [`V2_MAX_LEN`] in all.
    V2TooLong {
        /// The header's length as announced, fixed part included.
        len: usize,
    },
    /// A header with the right signature and something wrong after it; the text is `ppp`'s.
    Malformed {
        /// The protocol version it claimed (1 or 2).
        version: u8,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NoSignature => f.write_str("no PROXY protocol header"),
            ProxyError::V1TooLong => write!(
                f,
                "PROXY v1 header longer than {V1_MAX_LEN} bytes (no CRLF)"
            ),
            ProxyError::V2TooLong { len } => write!(
                f,
                "PROXY v2 header of {len} bytes, over the {V2_MAX_LEN}-byte limit"
            ),
            ProxyError::Malformed { version, reason } => {
                write!(f, "malformed PROXY v{version} header: {reason}")
            }
        }
    }
}

impl std::error::Error for ProxyError {}

/// Whether `input` starts like a header (see [`Start`]).
pub fn classify(input: &[u8]) -> Start {
    for signature in [V1_SIGNATURE, V2_SIGNATURE] {
        let n = input.len().min(signature.len());
        if input[..n] == signature[..n] {
            return if n == signature.len() {
                Start::Header
            } else {
                Start::Undecided
            };
        }
    }
    Start::NotHeader
}

/// Parses the header at the start of `input`: `Ok(None)` while more bytes are needed,
/// `Ok(Some((header, used)))` once it is whole (`used` bytes are the header's; what follows
/// belongs to the connection), `Err` when no more bytes can make it a header.
pub fn parse(input: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    match classify(input) {
        Start::Undecided => return Ok(None),
        Start::NotHeader => return Err(ProxyError::NoSignature),
        Start::Header => {}
    }
    if input.starts_with(V2_SIGNATURE) {
        parse_v2(input)
    } else {
        parse_v1(input)
    }
}

fn parse_v1(input: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    // A v1 line is judged whole, at its CRLF: `ppp` takes some cut lines for finished ones (a
    // line cut after a field's separator ends in an empty, hence invalid, port), and the line
    // is short anyway. Without a CR in the first 107 bytes it can only be too long.
    let window = &input[..input.len().min(V1_MAX_LEN)];
    match window.iter().position(|&byte| byte == b'\r') {
        None if window.len() == V1_MAX_LEN => return Err(ProxyError::V1TooLong),
        None => return Ok(None),
        Some(cr) if cr + 1 == input.len() => return Ok(None),
        Some(_) => {}
    }
    match ppp::v1::Header::try_from(input) {
        Ok(header) => {
            let used = header.header.len();
            let parsed = match header.addresses {
                ppp::v1::Addresses::Tcp4(ip) => ProxyHeader::Proxied {
                    client: SocketAddr::from((ip.source_address, ip.source_port)),
                    server: SocketAddr::from((ip.destination_address, ip.destination_port)),
                },
                ppp::v1::Addresses::Tcp6(ip) => ProxyHeader::Proxied {
                    client: SocketAddr::from((ip.source_address, ip.source_port)),
                    server: SocketAddr::from((ip.destination_address, ip.destination_port)),
                },
                ppp::v1::Addresses::Unknown => ProxyHeader::Unknown,
            };
            Ok(Some((parsed, used)))
        }
        Err(error) if ppp::PartialResult::is_incomplete(&error) => Ok(None),
        Err(ppp::v1::BinaryParseError::Parse(ppp::v1::ParseError::HeaderTooLong)) => {
            Err(ProxyError::V1TooLong)
        }
        Err(error) => Err(ProxyError::Malformed {
            version: 1,
            reason: error.to_string(),
        }),
    }
}

fn parse_v2(input: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    // The length field (bytes 14..16) decides the size before any of the body is waited for.
    if input.len() < V2_FIXED_LEN {
        return Ok(None);
    }
    let len = V2_FIXED_LEN + usize::from(u16::from_be_bytes([input[14], input[15]]));
    if len > V2_MAX_LEN {
        return Err(ProxyError::V2TooLong { len });
    }
    match v2::Header::try_from(input) {
        Ok(header) => {
            let parsed = match (header.command, header.addresses) {
                (v2::Command::Local, _) => ProxyHeader::Local,
                (v2::Command::Proxy, v2::Addresses::IPv4(ip)) => ProxyHeader::Proxied {
                    client: SocketAddr::from((ip.source_address, ip.source_port)),
                    server: SocketAddr::from((ip.destination_address, ip.destination_port)),
                },
                (v2::Command::Proxy, v2::Addresses::IPv6(ip)) => ProxyHeader::Proxied {
                    client: SocketAddr::from((ip.source_address, ip.source_port)),
                    server: SocketAddr::from((ip.destination_address, ip.destination_port)),
                },
                (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => {
                    ProxyHeader::Unspecified
                }
            };
            Ok(Some((parsed, header.len())))
        }
        Err(error) if ppp::PartialResult::is_incomplete(&error) => Ok(None),
        Err(error) => Err(ProxyError::Malformed {
            version: 2,
            reason: error.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ppp::v2::{Builder, Command, Protocol, Type};

    use super::*;

    const V1_TCP4: &[u8] = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 7878\r\n";
    const V1_TCP6: &[u8] = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 7878\r\n";
    const V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";
    const V1_UNKNOWN_WITH_ADDRESSES: &[u8] = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";

    fn v2_ipv4_with_tlvs() -> Vec<u8> {
        let addresses =
            v2::Addresses::IPv4(v2::IPv4::new([203, 0, 113, 7], [192, 0, 2, 1], 56324, 7878));
        Builder::with_addresses(
            v2::Version::Two | Command::Proxy,
            Protocol::Stream,
            addresses,
        )
        .write_tlv(Type::ALPN, b"monoreactor")
        .and_then(|builder| builder.write_tlv(Type::Authority, b"example.com"))
        .and_then(|builder| builder.write_tlv(Type::UniqueId, &[7; 32]))
        .and_then(Builder::build)
        .expect("build a v2 header")
    }

    fn v2_ipv6() -> Vec<u8> {
        let addresses = v2::Addresses::IPv6(v2::IPv6::new(
            "2001:db8::7".parse::<Ipv6Addr>().expect("address"),
            "2001:db8::1".parse::<Ipv6Addr>().expect("address"),
            56324,
            7878,
        ));
        Builder::with_addresses(
            v2::Version::Two | Command::Proxy,
            Protocol::Stream,
            addresses,
        )
        .write_tlv(Type::NoOp, &[0; 5])
        .and_then(Builder::build)
        .expect("build a v2 header")
    }

    fn v2_local() -> Vec<u8> {
        Builder::with_addresses(
            v2::Version::Two | Command::Local,
            Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .expect("build a v2 header")
    }

    fn proxied_v4() -> ProxyHeader {
        ProxyHeader::Proxied {
            client: SocketAddr::from((Ipv4Addr::new(203, 0, 113, 7), 56324)),
            server: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 7878)),
        }
    }

    fn proxied_v6() -> ProxyHeader {
        ProxyHeader::Proxied {
            client: "[2001:db8::7]:56324".parse().expect("address"),
            server: "[2001:db8::1]:7878".parse().expect("address"),
        }
    }

    /// Every valid header, with what it should parse to.
    fn valid_headers() -> Vec<(&'static str, Vec<u8>, ProxyHeader)> {
        vec![
            ("v1 TCP4", V1_TCP4.to_vec(), proxied_v4()),
            ("v1 TCP6", V1_TCP6.to_vec(), proxied_v6()),
            ("v1 UNKNOWN", V1_UNKNOWN.to_vec(), ProxyHeader::Unknown),
            (
                "v1 UNKNOWN with addresses",
                V1_UNKNOWN_WITH_ADDRESSES.to_vec(),
                ProxyHeader::Unknown,
            ),
            ("v2 PROXY IPv4 with TLVs", v2_ipv4_with_tlvs(), proxied_v4()),
            ("v2 PROXY IPv6 with a TLV", v2_ipv6(), proxied_v6()),
            ("v2 LOCAL", v2_local(), ProxyHeader::Local),
        ]
    }

    #[test]
    fn parse_whole_headers() {
        for (name, header, expected) in valid_headers() {
            assert_eq!(parse(&header), Ok(Some((expected, header.len()))), "{name}");
        }
    }

    #[test]
    fn parse_every_prefix_needs_more_and_never_fails() {
        for (name, header, _) in valid_headers() {
            for end in 0..header.len() {
                assert_eq!(parse(&header[..end]), Ok(None), "{name}, first {end} bytes");
            }
        }
    }

    #[test]
    fn parse_leaves_the_bytes_after_the_header_to_the_connection() {
        for (name, header, expected) in valid_headers() {
            let mut input = header.clone();
            input.extend_from_slice(b"\x00\x01HELLO after the header");
            assert_eq!(parse(&input), Ok(Some((expected, header.len()))), "{name}");
        }
    }

    #[test]
    fn parse_v2_local_and_v1_unknown_are_health_checks() {
        assert!(ProxyHeader::Local.is_health_check());
        assert!(ProxyHeader::Unknown.is_health_check());
        assert!(!proxied_v4().is_health_check());
        assert!(!ProxyHeader::Unspecified.is_health_check());
    }

    #[test]
    fn parse_v2_proxy_without_an_ip_family_keeps_the_connections_address() {
        let header = Builder::with_addresses(
            v2::Version::Two | Command::Proxy,
            Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .expect("build");
        assert_eq!(
            parse(&header),
            Ok(Some((ProxyHeader::Unspecified, header.len())))
        );
    }

    #[test]
    fn classify_decides_from_the_signature() {
        assert_eq!(classify(b""), Start::Undecided);
        assert_eq!(classify(b"PROX"), Start::Undecided);
        assert_eq!(classify(b"PROXY "), Start::Header);
        assert_eq!(classify(b"\r\n\r\n\0"), Start::Undecided);
        assert_eq!(classify(V2_SIGNATURE), Start::Header);
        assert_eq!(classify(b"\x00\x00\x00\x10"), Start::NotHeader);
        assert_eq!(
            classify(b"\x16\x03\x01"),
            Start::NotHeader,
            "a TLS ClientHello"
        );
        assert_eq!(classify(b"PROXZ"), Start::NotHeader);
        assert_eq!(classify(b"\r\n\r\n\0\r\nQUIT\r"), Start::NotHeader);
    }

    #[test]
    fn parse_rejects_bytes_without_a_signature() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::NoSignature));
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Err(ProxyError::NoSignature));
    }

    #[test]
    fn parse_rejects_oversize_v1_without_waiting_for_more() {
        let mut line = b"PROXY TCP4 ".to_vec();
        line.resize(V1_MAX_LEN, b'1');
        assert_eq!(parse(&line), Err(ProxyError::V1TooLong));
        assert_eq!(parse(&line[..V1_MAX_LEN - 1]), Ok(None));
    }

    #[test]
    fn parse_rejects_oversize_v2_from_its_length_field() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x11]);
        let too_long = (V2_MAX_LEN - V2_FIXED_LEN + 1) as u16;
        header.extend_from_slice(&too_long.to_be_bytes());
        assert_eq!(
            parse(&header),
            Err(ProxyError::V2TooLong {
                len: V2_MAX_LEN + 1
            }),
            "decided from the 16 fixed bytes, before any of the body"
        );
        let mut at_limit = header.clone();
        at_limit[14..16].copy_from_slice(&((V2_MAX_LEN - V2_FIXED_LEN) as u16).to_be_bytes());
        assert_eq!(
            parse(&at_limit),
            Ok(None),
            "at the limit: waits for the body"
        );
    }

    #[test]
    fn parse_rejects_malformed_headers() {
        let mut bad_version = v2_local();
        bad_version[12] = 0x30;
        let mut bad_command = v2_local();
        bad_command[12] = 0x2f;
        let mut bad_family = v2_local();
        bad_family[13] = 0x40;
        let mut short_addresses = V2_SIGNATURE.to_vec();
        short_addresses.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        let cases: Vec<(&str, Vec<u8>, u8)> = vec![
            (
                "v1 lower-case protocol",
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                1,
            ),
            (
                "v1 bad address",
                b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n".to_vec(),
                1,
            ),
            ("v1 IPv6 in TCP4", b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(), 1),
            (
                "v1 port too big",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(),
                1,
            ),
            (
                "v1 leading zero port",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n".to_vec(),
                1,
            ),
            (
                "v1 CR without LF",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX".to_vec(),
                1,
            ),
            (
                "v1 extra field",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(),
                1,
            ),
            ("v1 not UTF-8", b"PROXY TCP4 \xff\r\n".to_vec(), 1),
            ("v2 version 3", bad_version, 2),
            ("v2 command 15", bad_command, 2),
            ("v2 family 4", bad_family, 2),
            ("v2 length below the addresses", short_addresses, 2),
        ];
        for (name, input, version) in cases {
            match parse(&input) {
                Err(ProxyError::Malformed { version: v, .. }) => assert_eq!(v, version, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn parse_malformed_headers_fail_at_some_prefix_and_from_then_on() {
        // Once a prefix is refused, every longer one is too: an error is final.
        let input = b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\nmore";
        let mut failed = false;
        for end in 0..=input.len() {
            let result = parse(&input[..end]);
            if failed {
                assert!(result.is_err(), "first {end} bytes: {result:?}");
            }
            failed = result.is_err();
        }
        assert!(failed);
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            ProxyError::V2TooLong { len: 4000 }.to_string(),
            "PROXY v2 header of 4000 bytes, over the 2048-byte limit"
        );
        assert_eq!(
            proxied_v4().to_string(),
            "client 203.0.113.7:56324 to 192.0.2.1:7878"
        );
    }
}
