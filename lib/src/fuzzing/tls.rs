//! The `tls_session` target: a server `TlsSession` over a [`FuzzIo`], the input choosing
//! what the client sends and how every read and write is cut (see [`tls_session`]).
//!
//! Everything is deterministic, so an input means the same run every time: both sides use a
//! crypto provider that is rustls' ring provider with a seeded random source (reset at the
//! start of each run), X25519 on a private key drawn from it, and the server's ECDSA P-256
//! key signing with a fixed nonce seed; the client checks the server's certificate against
//! the same fixed certificate at a fixed time. So a recorded client flight replayed as raw
//! bytes completes the handshake again, and the fuzzer can reach the record layer on its
//! own too.

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, KeyProvider, SecureRandom, SharedSecret,
    SupportedKxGroup,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::NoServerSessionStorage;
use rustls::sign::{Signer, SigningKey};
use rustls::time_provider::TimeProvider;
use rustls::{
    ClientConfig, ClientConnection, NamedGroup, RootCertStore, ServerConfig, SignatureAlgorithm,
    SignatureScheme,
};

use crate::testkit::{FuzzIo, ReadStep, WriteStep};
use crate::transport::tls::{INCOMING_MAX, RECORD_BUFFER_LEN, RecordBuffers, TlsSession};
use crate::transport::{ALPN, Transport};

/// The server's certificate, self-signed, made once with `openssl req -x509 -newkey ec
/// -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500 -subj /CN=localhost -addext
/// subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE -addext
/// extendedKeyUsage=serverAuth`; the client trusts it as its root.
pub const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBpzCCAU2gAwIBAgIUSek3gPyfAhSlzu3yK/CVd/U9njEwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwNzE4MzgzMFoYDzIxMjYxMTEz
MTgzODMwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATS7wwerEgKGpSe2dUkNU12a2h5F3YD5q1VkCSgXvNgc7D7s5s+FVF9
z3hrMmuMKbJl93nW2NBLQQlzVO/gtlnco3sweTAdBgNVHQ4EFgQU2juc9AtNR+G2
GckmC1PXJz+2MJ4wHwYDVR0jBBgwFoAU2juc9AtNR+G2GckmC1PXJz+2MJ4wFAYD
VR0RBA0wC4IJbG9jYWxob3N0MAwGA1UdEwEB/wQCMAAwEwYDVR0lBAwwCgYIKwYB
BQUHAwEwCgYIKoZIzj0EAwIDSAAwRQIgd3Y5kBaxFJP02arfhtBqS+71ed7d7Iyh
TVgxEEwu5EQCIQCCGlTBltj0UwPYuUbJuwa6QJ29GDp1CpVKtC4gYhD4gQ==
-----END CERTIFICATE-----
";

/// The certificate's key (PKCS#8), public on purpose: it protects nothing.
pub const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgW2y3QdzuyfBhLnKI
5WDZN3EucAtq+l2GHUNu5fwtwEuhRANCAATS7wwerEgKGpSe2dUkNU12a2h5F3YD
5q1VkCSgXvNgc7D7s5s+FVF9z3hrMmuMKbJl93nW2NBLQQlzVO/gtlnc
-----END PRIVATE KEY-----
";

/// The client's clock: 2027-01-01, within the certificate's validity.
const NOW: u64 = 1_798_761_600;

/// The modes of the input's first byte (taken modulo 3).
pub mod mode {
    /// Every byte the client sends comes from the input, from the first one.
    pub const RAW: u8 = 0;
    /// A real client completes the handshake and sends its records; then the input's bytes.
    pub const AFTER_HANDSHAKE: u8 = 1;
    /// A real client completes the handshake; its records are mutated as the input says.
    pub const MUTATED: u8 = 2;
}

/// The opcodes (an opcode byte is taken modulo 8; missing argument bytes read as 0).
pub mod op {
    /// `len: u16`: the client sends `len` more bytes: from the input in the raw modes, the
    /// next of its (mutated) records in [`MUTATED`](super::mode::MUTATED) mode.
    pub const SEND: u8 = 0;
    /// `kind: u8`, `n: u16`: the next read is cut to `n` bytes (0), would block (1), is
    /// interrupted (2) or fails with a reset (3).
    pub const READ: u8 = 1;
    /// `kind: u8`, `n: u16`: the next write is cut to `n` bytes (0), would block (1), is
    /// interrupted (2) or fails with a broken pipe (3).
    pub const WRITE: u8 = 2;
    /// `len: u8`: a drive: reads of `len + 1` bytes until the session says `WouldBlock`
    /// (again after the end of the handshake), the end or an error; then `send_pending`.
    pub const DRIVE: u8 = 3;
    /// The client's FIN.
    pub const FIN: u8 = 4;
    /// `len: u16`: the server writes `len` bytes of plaintext.
    pub const WRITE_PLAIN: u8 = 5;
    /// The server shuts its write side (close_notify once established).
    pub const SHUTDOWN: u8 = 6;
    /// `n: u16`: the send buffer has `n` bytes of room (`0xffff`: unlimited).
    pub const ROOM: u8 = 7;
}

/// The mutations of [`MUTATED`](mode::MUTATED) mode (a kind byte is taken modulo 4).
pub mod mutation {
    /// `at: u16`, `mask: u8`: the byte at `at` is XORed with `mask` (1 if 0).
    pub const FLIP: u8 = 0;
    /// `at: u16`, `byte: u8`: `byte` is inserted before `at`.
    pub const INSERT: u8 = 1;
    /// `at: u16`, `len: u8`: `len + 1` bytes are removed from `at`.
    pub const REMOVE: u8 = 2;
    /// `at: u16`: the stream ends at `at`.
    pub const TRUNCATE: u8 = 3;
}

/// Reads past which a run is an endless loop.
const MAX_READS: usize = 100_000;
/// Control records that may wait behind a full record in the outgoing buffer (a KeyUpdate,
/// close_notify, a fatal alert), each at most a KeyUpdate sealed.
const CONTROL_SLACK: usize = 4 * 64;
/// The most `TlsSession::buffer_bytes` may be (transport/tls.rs, "Memory"): the incoming
/// buffer one whole record, the outgoing one a record buffer (or the handshake flight, less)
/// and the control records behind a full record.
pub const BUFFER_BOUND: usize = INCOMING_MAX + RECORD_BUFFER_LEN + CONTROL_SLACK;

/// The two sides: each draws from a random source of its own, so that the server's draws are
/// the same whether or not a real client ran beside it (a recorded flight replays).
const CLIENT: usize = 0;
const SERVER: usize = 1;

thread_local! {
    static RANDOM: [Cell<u64>; 2] = const { [Cell::new(0), Cell::new(0)] };
}

/// splitmix64 over the side's state, reset by [`reseed`].
fn next_random(side: usize) -> u64 {
    RANDOM.with(|states| {
        let state = &states[side];
        let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn reseed() {
    RANDOM.with(|states| {
        states[CLIENT].set(0x6d6f_6e6f_7265_6163);
        states[SERVER].set(0x746f_7273_6572_7672);
    });
}

#[derive(Debug)]
struct SeededRandom(usize);

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&next_random(self.0).to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

/// X25519 (ring's) on a private key made from one seeded byte.
#[derive(Debug)]
struct SeededX25519(usize);

struct X25519Exchange {
    private: ring::agreement::EphemeralPrivateKey,
    public: ring::agreement::PublicKey,
}

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        #[allow(deprecated)]
        let rng = ring::test::rand::FixedByteRandom {
            byte: next_random(self.0) as u8,
        };
        let private =
            ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::X25519, &rng)
                .map_err(|_| GetRandomFailed)?;
        let public = private.compute_public_key().map_err(|_| GetRandomFailed)?;
        Ok(Box::new(X25519Exchange { private, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer = ring::agreement::UnparsedPublicKey::new(&ring::agreement::X25519, peer_pub_key);
        ring::agreement::agree_ephemeral(self.private, &peer, |secret| SharedSecret::from(secret))
            .map_err(|_| rustls::PeerMisbehaved::InvalidKeyShare.into())
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_ref()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// ECDSA P-256 keys (ring's) signing with a fixed nonce seed: the same signature for the
/// same message.
#[derive(Debug)]
struct FixedNonceKeys;

#[derive(Debug)]
struct FixedNonceKey(Arc<ring::signature::EcdsaKeyPair>);

#[allow(deprecated)]
const NONCE_SEED: ring::test::rand::FixedByteRandom = ring::test::rand::FixedByteRandom { byte: 7 };

impl KeyProvider for FixedNonceKeys {
    fn load_private_key(
        &self,
        key_der: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        let PrivateKeyDer::Pkcs8(pkcs8) = key_der else {
            return Err(rustls::Error::General("not PKCS#8".into()));
        };
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &NONCE_SEED,
        )
        .map_err(|error| rustls::Error::General(error.to_string()))?;
        Ok(Arc::new(FixedNonceKey(Arc::new(pair))))
    }
}

impl SigningKey for FixedNonceKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(FixedNonceKey(Arc::clone(&self.0))) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl Signer for FixedNonceKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0
            .sign(&NONCE_SEED, message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|error| rustls::Error::General(error.to_string()))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

#[derive(Debug)]
struct FixedTime;

impl TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            NOW,
        )))
    }
}

static SEEDED_RANDOM: [SeededRandom; 2] = [SeededRandom(CLIENT), SeededRandom(SERVER)];
static SEEDED_X25519: [SeededX25519; 2] = [SeededX25519(CLIENT), SeededX25519(SERVER)];
static FIXED_NONCE_KEYS: FixedNonceKeys = FixedNonceKeys;

fn provider(side: usize) -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![&SEEDED_X25519[side]];
    provider.secure_random = &SEEDED_RANDOM[side];
    provider.key_provider = &FIXED_NONCE_KEYS;
    Arc::new(provider)
}

fn cert() -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(CERT_PEM.as_bytes()).expect("the fixed certificate")
}

/// The server's configuration, as `TlsSettings::load` makes it, on the seeded provider.
fn server_config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let key = PrivateKeyDer::from_pem_slice(KEY_PEM.as_bytes()).expect("the fixed key");
        let mut config = ServerConfig::builder_with_provider(provider(SERVER))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![cert()], key)
            .expect("the fixed certificate and key");
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.max_early_data_size = 0;
        config.enable_secret_extraction = true;
        Arc::new(config)
    }))
}

fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.add(cert()).expect("the fixed certificate as a root");
        let mut config = ClientConfig::builder_with_details(provider(CLIENT), Arc::new(FixedTime))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = Resumption::disabled();
        Arc::new(config)
    }))
}

/// A client of the fixed configuration.
fn client() -> ClientConnection {
    let name = ServerName::try_from("localhost").expect("a server name");
    ClientConnection::new(client_config(), name).expect("a client")
}

/// The real client's flights in a handshake with the target's server (the ClientHello,
/// then ChangeCipherSpec and Finished), the same every time: replayed as raw bytes, they
/// complete the handshake again (for the seed corpus).
pub fn client_flights() -> Vec<Vec<u8>> {
    reseed();
    Run::new().handshake().1
}

/// The client's records after a real handshake for `header` (see [`tls_session`]'s
/// post-handshake modes: count, flags, lengths), for the seed corpus.
pub fn client_records_after_handshake(header: &[u8]) -> Vec<u8> {
    reseed();
    let mut run = Run::new();
    let (mut client, _) = run.handshake();
    client_records(&mut client, &mut Input(header)).0
}

/// Everything the client wants to send now.
fn client_bytes(client: &mut ClientConnection) -> Vec<u8> {
    let mut bytes = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut bytes).expect("into a Vec");
    }
    bytes
}

/// The input, read from the front; missing bytes read as 0.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&byte, rest)) => {
                self.0 = rest;
                byte
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

/// The server's side and what the checks remember.
struct Run {
    session: TlsSession,
    io: FuzzIo,
    buffers: RecordBuffers,
    /// Where the client's reading of the server's output stands (the handshake).
    delivered: usize,
    /// The handshake finished (the session said so, or is established).
    established: bool,
    /// The session failed (a read said `InvalidData`): nothing more may be handed out.
    failed: bool,
    /// A read returned the end of the stream.
    ended: bool,
    /// The plaintext handed out.
    plain: Vec<u8>,
    reads: usize,
}

impl Run {
    fn new() -> Run {
        Run {
            session: TlsSession::new(server_config()),
            io: FuzzIo::new(),
            buffers: RecordBuffers::new(4),
            delivered: 0,
            established: false,
            failed: false,
            ended: false,
            plain: Vec::new(),
            reads: 0,
        }
    }

    fn check_buffers(&self) {
        let held = self.session.buffer_bytes();
        assert!(
            held <= BUFFER_BOUND,
            "the session holds {held} bytes of buffer, over {BUFFER_BOUND}"
        );
    }

    /// Reads with `len`-byte buffers until the session has nothing more, then sends.
    fn drive(&mut self, len: usize) {
        let mut buf = vec![0; len];
        loop {
            self.reads += 1;
            assert!(self.reads < MAX_READS, "an endless loop of reads");
            let read = self
                .session
                .link(&mut self.io, &mut self.buffers)
                .read(&mut buf);
            self.check_buffers();
            if self.session.is_established() {
                self.established = true;
            }
            match read {
                Ok(0) => {
                    self.ended = true;
                    break;
                }
                Ok(n) => {
                    assert!(n <= len, "a read of {n} bytes into {len}");
                    assert!(
                        self.established,
                        "plaintext handed out before the handshake finished"
                    );
                    assert!(!self.failed, "plaintext handed out after an error");
                    assert!(!self.ended, "plaintext handed out after the end");
                    self.plain.extend_from_slice(&buf[..n]);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    if self.session.take_events().established {
                        assert!(self.session.is_established(), "established, says the event");
                        self.established = true;
                    } else {
                        break;
                    }
                }
                // The session's own failures (a transport error, a planned reset, leaves it
                // as it was: the reactor would close, but the session may go on).
                Err(error) => {
                    self.failed |= error.kind() == ErrorKind::InvalidData;
                    break;
                }
            }
        }
        let _ = self
            .session
            .link(&mut self.io, &mut self.buffers)
            .send_pending();
        self.check_buffers();
    }

    fn write_plain(&mut self, len: usize) {
        let data = vec![b'p'; len];
        let written = self
            .session
            .link(&mut self.io, &mut self.buffers)
            .write(&data);
        match written {
            Ok(n) => {
                assert!(n <= len && (n > 0 || len == 0), "a write of {n} of {len}");
                assert!(
                    n == 0 || self.session.is_established(),
                    "a write taken before the handshake"
                );
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Err(_) => {}
        }
        self.check_buffers();
    }

    /// Runs the handshake with a real client, unhindered; returns the client, established,
    /// and the client's flights.
    fn handshake(&mut self) -> (ClientConnection, Vec<Vec<u8>>) {
        let mut client = client();
        let mut flights = Vec::new();
        for _ in 0..16 {
            let bytes = client_bytes(&mut client);
            self.io.push(&bytes);
            if !bytes.is_empty() {
                flights.push(bytes);
            }
            self.drive(4096);
            let mut out = &self.io.output()[self.delivered..];
            let before = out.len();
            while !out.is_empty() {
                if client.read_tls(&mut out).is_err() || client.process_new_packets().is_err() {
                    break;
                }
            }
            self.delivered += before - out.len();
            if !client.is_handshaking() && self.established && !client.wants_write() {
                return (client, flights);
            }
        }
        panic!("the real client's handshake did not complete");
    }
}

/// The client's records after the handshake, as the header bytes say: `count % 5` data
/// records (each byte after it: `byte * 67` bytes of plaintext, rustls cutting at 16 KiB),
/// then per the flags byte a KeyUpdate after the first (1) and close_notify at the end (2).
/// Returns the records and the plaintext in them.
fn client_records(client: &mut ClientConnection, input: &mut Input<'_>) -> (Vec<u8>, Vec<u8>) {
    let count = input.u8() % 5;
    let flags = input.u8();
    let mut stream = Vec::new();
    let mut plain = Vec::new();
    for record in 0..count {
        let len = usize::from(input.u8()) * 67;
        let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ record).collect();
        client.writer().write_all(&data).expect("into rustls");
        plain.extend_from_slice(&data);
        stream.extend(client_bytes(client));
        if record == 0 && flags & 1 != 0 {
            client.refresh_traffic_keys().expect("a key update");
            stream.extend(client_bytes(client));
        }
    }
    if flags & 2 != 0 {
        client.send_close_notify();
        stream.extend(client_bytes(client));
    }
    (stream, plain)
}

fn mutate(stream: &mut Vec<u8>, input: &mut Input<'_>) {
    for _ in 0..input.u8() % 8 {
        let kind = input.u8() % 4;
        let at = usize::from(input.u16());
        let arg = input.u8();
        if stream.is_empty() {
            continue;
        }
        let at = at % (stream.len() + 1);
        match kind {
            mutation::FLIP if at < stream.len() => stream[at] ^= arg.max(1),
            mutation::INSERT => stream.insert(at, arg),
            mutation::REMOVE => {
                let end = (at + usize::from(arg) + 1).min(stream.len());
                stream.drain(at..end);
            }
            mutation::TRUNCATE => stream.truncate(at),
            _ => {}
        }
    }
}

/// The `tls_session` target: a server `TlsSession` on the fixed certificate, driven over a
/// [`FuzzIo`] the way the reactor drives it. The first byte picks the [`mode`]: the client's
/// bytes are all the input's, or a real rustls client (the seeded provider: deterministic)
/// completes the handshake first and then its records are followed by the input's bytes
/// (garbage records) or mutated as the input says ([`mutation`]); then [`op`]s choose the
/// splits, would-blocks, short writes, the server's writes and shutdown and the FIN. After the
/// last op the rest is sent, the send buffer opened, and the session driven a last time.
///
/// Checks: no panic; no endless loop of reads (100,000 reads); `TlsSession::buffer_bytes`
/// within [`BUFFER_BOUND`] after every read and write; plaintext handed out only once the
/// handshake finished, never after the session failed (`InvalidData`) or the end of the
/// stream, and after a real handshake only a prefix of what the client sent; no write taken
/// before the handshake.
pub fn tls_session(data: &[u8]) {
    reseed();
    let mut input = Input(data);
    let mode = input.u8() % 3;
    let mut run = Run::new();
    // The client's bytes that SEND takes from (mutated mode), and the plaintext sent.
    let mut stream = Vec::new();
    let mut sent = 0;
    let mut expected = None;
    if mode != mode::RAW {
        let (mut client, _) = run.handshake();
        let (records, plain) = client_records(&mut client, &mut input);
        expected = Some(plain);
        if mode == mode::AFTER_HANDSHAKE {
            run.io.push(&records);
        } else {
            stream = records;
            mutate(&mut stream, &mut input);
        }
    }
    while !input.0.is_empty() {
        match input.u8() % 8 {
            op::SEND => {
                let len = usize::from(input.u16());
                if mode == mode::MUTATED {
                    let end = (sent + len).min(stream.len());
                    run.io.push(&stream[sent..end]);
                    sent = end;
                } else {
                    let bytes = input.bytes(len).to_vec();
                    run.io.push(&bytes);
                }
            }
            op::READ => {
                let kind = input.u8() % 4;
                let n = usize::from(input.u16());
                run.io.plan_read(match kind {
                    0 => ReadStep::Upto(n.max(1)),
                    1 => ReadStep::WouldBlock,
                    2 => ReadStep::Error(ErrorKind::Interrupted),
                    _ => ReadStep::Error(ErrorKind::ConnectionReset),
                });
            }
            op::WRITE => {
                let kind = input.u8() % 4;
                let n = usize::from(input.u16());
                run.io.plan_write(match kind {
                    0 => WriteStep::Upto(n),
                    1 => WriteStep::WouldBlock,
                    2 => WriteStep::Error(ErrorKind::Interrupted),
                    _ => WriteStep::Error(ErrorKind::BrokenPipe),
                });
            }
            op::DRIVE => {
                let len = usize::from(input.u8()) + 1;
                run.drive(len);
            }
            op::FIN => run.io.close(),
            op::WRITE_PLAIN => {
                let len = usize::from(input.u16());
                run.write_plain(len);
            }
            op::SHUTDOWN => {
                let _ = run
                    .session
                    .link(&mut run.io, &mut run.buffers)
                    .shutdown_write();
                run.check_buffers();
            }
            _ => {
                let n = input.u16();
                run.io.set_room(if n == u16::MAX {
                    usize::MAX
                } else {
                    usize::from(n)
                });
            }
        }
    }
    // Settle: the rest of the client's bytes, room to write, a last drive.
    if sent < stream.len() {
        run.io.push(&stream[sent..]);
    }
    run.io.set_room(usize::MAX);
    run.drive(16 << 10);
    run.drive(16 << 10);
    if let Some(expected) = expected {
        assert!(
            expected.starts_with(&run.plain),
            "plaintext handed out that the client did not send"
        );
    }
    let mut buffers = std::mem::replace(&mut run.buffers, RecordBuffers::new(0));
    run.session.recycle(&mut buffers);
}
