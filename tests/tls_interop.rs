//! The TLS listener against a second, independent TLS 1.3 implementation: `openssl s_client`
//! driving the real server binary with the framed protocol as raw bytes (the hex dumps of
//! docs/PROTOCOL.md), over each cipher suite, with key updates of both kinds from OpenSSL's
//! side mid-stream, a HelloRetryRequest (a first key share the server does not support), and a
//! client certificate. Then a multi-MiB GET verified with BLAKE3 over each cipher suite with
//! rustls' client. The OpenSSL tests are skipped, saying so, only when `openssl` is missing.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoreactor::proto::files::FileInfo;
use monoreactor::proto::{FrameType, HEADER_LEN, Header};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite};
use support::files::{blake3_of, get_frame};
use support::{IO_TIMEOUT, Server, TempDir, retry};
use tls_support::{ALPN, ServerFiles, TestCa, connect, recv_frame};

/// HELLO, version 1..=2, no credentials (PROTOCOL.md 8.1, `dump: hello`).
const HELLO: &str = "01 01 00 00 00 00 00 00 00 00 00 0a 4d 4e 52 58 00 01 00 02 00 00";
/// ECHO_REQUEST "hello" on stream 1, and its reply (PROTOCOL.md, `dump: echo-request`,
/// `dump: echo-reply`).
const ECHO_REQUEST: &str = "10 01 00 00 00 00 00 01 00 00 00 05 68 65 6c 6c 6f";
const ECHO_REPLY: &str = "11 01 00 00 00 00 00 01 00 00 00 05 68 65 6c 6c 6f";

/// The TLS 1.3 suites, as OpenSSL names them and as the server logs them (rustls' names).
const SUITES: [(&str, &str); 3] = [
    ("TLS_AES_128_GCM_SHA256", "TLS13_AES_128_GCM_SHA256"),
    ("TLS_AES_256_GCM_SHA384", "TLS13_AES_256_GCM_SHA384"),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS13_CHACHA20_POLY1305_SHA256",
    ),
];

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex"))
        .collect()
}

/// `openssl`, or `None` after printing why the test is skipped.
fn openssl() -> Option<PathBuf> {
    let found = ["/usr/bin/openssl", "/usr/local/bin/openssl"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists());
    if found.is_none() {
        println!("skipped: openssl is not installed (looked in /usr/bin and /usr/local/bin)");
    }
    found
}

/// A server with TLS on the framed listener, at debug level (the suite and the client key of
/// each handshake are logged), with `extra` flags.
fn tls_server(dir: &TempDir, extra: &[&str]) -> (Server, ServerFiles) {
    let files = ServerFiles::write(dir.path());
    let mut args: Vec<String> = files.flags();
    args.extend(["-v", "-v"].map(String::from));
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(&args), files)
}

/// A running `openssl s_client`: stdin to send (frames, or its `k` / `K` commands), what it
/// received (stdout, the server's plaintext: `-quiet` prints nothing else there), its stderr,
/// and its `-msg` trace (written to a file, read once it has exited).
struct SClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    msg_file: PathBuf,
    /// Bytes of stdout already matched by `expect`.
    seen: usize,
}

impl SClient {
    /// `s_client` to the server's framed port, TLS 1.3, ALPN `monoreactor`, verifying the
    /// server against the test CA, with `extra` options.
    fn start(openssl: &Path, server: &Server, dir: &TempDir, label: &str, extra: &[&str]) -> Self {
        let msg_file = dir.join(&format!("{label}.msg"));
        let ca = dir.join("ca.pem");
        let mut child = Command::new(openssl)
            .arg("s_client")
            .args(["-connect", &server.framed().to_string()])
            .args([
                "-tls1_3",
                "-alpn",
                "monoreactor",
                "-servername",
                "localhost",
            ])
            .args(["-CAfile", &ca.display().to_string(), "-verify_return_error"])
            // Quiet: stdout is the server's bytes only. Not ignoring stdin's end: that is how
            // the test closes (close_notify), and what lets the `k`/`K` commands work.
            .args(["-quiet", "-no_ign_eof"])
            .args(["-msg", "-msgfile", &msg_file.display().to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl s_client");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (into_out, into_err) = (Arc::clone(&stdout), Arc::clone(&stderr));
        let readers = vec![
            std::thread::spawn(move || {
                let mut buf = [0; 64 << 10];
                while let Ok(n @ 1..) = out.read(&mut buf) {
                    into_out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }),
            std::thread::spawn(move || {
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = err.read(&mut buf) {
                    into_err
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }),
        ];
        SClient {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers,
            msg_file,
            seen: 0,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write to s_client");
        stdin.flush().expect("flush s_client's stdin");
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next `want.len()` bytes the server sent are `want`.
    #[track_caller]
    fn expect(&mut self, want: &[u8]) {
        let end = self.seen + want.len();
        let got = retry(IO_TIMEOUT, || {
            let out = self.stdout.lock().unwrap();
            (out.len() >= end).then(|| out[self.seen..end].to_vec())
        });
        let Some(got) = got else {
            let have = self.stdout.lock().unwrap().len() - self.seen;
            panic!(
                "s_client received {have} of {} bytes; its stderr:\n{}",
                want.len(),
                self.stderr()
            );
        };
        assert!(got == want, "s_client received other bytes than expected");
        self.seen = end;
    }

    /// HELLO, and the server's HELLO_OK.
    #[track_caller]
    fn hello(&mut self) {
        self.send(&hex(HELLO));
        let end = self.seen + HEADER_LEN;
        let head = retry(IO_TIMEOUT, || {
            let out = self.stdout.lock().unwrap();
            (out.len() >= end).then(|| out[self.seen..end].to_vec())
        })
        .unwrap_or_else(|| panic!("no HELLO_OK; s_client's stderr:\n{}", self.stderr()));
        let header = Header::parse(&head, u32::MAX).unwrap().unwrap();
        assert_eq!(header.frame_type, FrameType::HelloOk);
        self.seen = end;
        let payload = retry(IO_TIMEOUT, || {
            let out = self.stdout.lock().unwrap();
            (out.len() >= end + header.len as usize).then_some(())
        });
        assert!(payload.is_some(), "HELLO_OK's payload");
        self.seen += header.len as usize;
    }

    /// The documented ECHO_REQUEST, and its documented reply.
    #[track_caller]
    fn echo(&mut self) {
        self.send(&hex(ECHO_REQUEST));
        self.expect(&hex(ECHO_REPLY));
    }

    /// An ECHO_REQUEST of `len` bytes on `stream`: many records each way. s_client takes a
    /// read of its stdin that starts with `Q`, `R`, `k` or `K` for a command, and a read may
    /// start anywhere in the payload: so the payload has none of those bytes.
    #[track_caller]
    fn big_echo(&mut self, stream: u32, len: usize) {
        let mut payload = support::seeded_bytes(u64::from(stream), len);
        for byte in &mut payload {
            if b"QRkK".contains(byte) {
                *byte ^= 0x80;
            }
        }
        self.send(&support::echo_request(stream, &payload));
        let mut reply = support::echo_request(stream, &payload);
        reply[0] = hex(ECHO_REPLY)[0];
        self.expect(&reply);
    }

    /// s_client's `k` (KeyUpdate, update_not_requested) or `K` (update_requested) command, on
    /// a line of its own, seen by s_client before anything else is written.
    #[track_caller]
    fn key_update(&mut self, command: &str) {
        let before = self.stderr().matches("KEYUPDATE").count();
        self.send(format!("{command}\n").as_bytes());
        let done = retry(IO_TIMEOUT, || {
            (self.stderr().matches("KEYUPDATE").count() > before).then_some(())
        });
        assert!(
            done.is_some(),
            "s_client took no key update:\n{}",
            self.stderr()
        );
    }

    /// Closes stdin (s_client sends close_notify and exits) and returns its `-msg` trace.
    #[track_caller]
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let deadline = Instant::now() + IO_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait s_client") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let stderr = self.stderr();
        assert!(status.is_some(), "s_client did not exit:\n{stderr}");
        assert!(
            !stderr.contains(":error:"),
            "s_client reported an error:\n{stderr}"
        );
        std::fs::read_to_string(&self.msg_file).expect("the -msg trace")
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of the `-msg` trace about messages the client received (`<<<`) naming `what`.
fn received(trace: &str, what: &str) -> usize {
    trace
        .lines()
        .filter(|line| line.starts_with("<<<") && line.ends_with(what))
        .count()
}

/// Lines of the `-msg` trace about messages the client sent (`>>>`) naming `what`.
fn sent(trace: &str, what: &str) -> usize {
    trace
        .lines()
        .filter(|line| line.starts_with(">>>") && line.ends_with(what))
        .count()
}

/// The server logged a handshake with `suite` (its rustls name).
#[track_caller]
fn assert_suite_logged(server: &Server, suite: &str) {
    let needle = format!("TLS established (Some({suite}))");
    let found = retry(IO_TIMEOUT, || {
        server.stderr_text().contains(&needle).then_some(())
    });
    assert!(found.is_some(), "{needle} in the server's log");
}

#[test]
fn openssl_s_client_speaks_the_framed_protocol_over_each_cipher_suite() {
    let Some(openssl) = openssl() else { return };
    let dir = TempDir::new("tls-interop-suites");
    let (server, _files) = tls_server(&dir, &[]);
    for (openssl_name, rustls_name) in SUITES {
        let mut client = SClient::start(
            &openssl,
            &server,
            &dir,
            openssl_name,
            &["-ciphersuites", openssl_name],
        );
        client.hello();
        client.echo();
        // Most of a MiB each way: dozens of full records, split as TCP and pipes like.
        client.big_echo(3, (1 << 20) - 64);
        client.echo();
        let trace = client.finish();
        assert_suite_logged(&server, rustls_name);
        // No tickets: nothing to resume, so no 0-RTT either.
        assert_eq!(received(&trace, "NewSessionTicket"), 0, "{trace}");
        assert_eq!(received(&trace, "ServerHello"), 1, "no HelloRetryRequest");
    }
    assert_eq!(server.threads(), 1);
}

#[test]
fn openssl_key_updates_mid_stream_are_followed_and_requests_answered_once() {
    let Some(openssl) = openssl() else { return };
    let dir = TempDir::new("tls-interop-keyupdate");
    let (server, _files) = tls_server(&dir, &[]);
    for (openssl_name, _) in SUITES {
        let mut client = SClient::start(
            &openssl,
            &server,
            &dir,
            &format!("ku-{openssl_name}"),
            &["-ciphersuites", openssl_name],
        );
        client.hello();
        client.echo();
        // update_not_requested: the server follows the client's key, keeps its own.
        client.key_update("k");
        client.echo();
        // update_requested: the server answers with a KeyUpdate of its own before its reply.
        client.key_update("K");
        client.echo();
        // Two requests before the server writes again: one answer (RFC 8446 §4.6.3).
        client.key_update("K");
        client.key_update("K");
        client.echo();
        // And records of all sizes under the updated keys.
        client.big_echo(9, 200_000);
        client.key_update("k");
        client.big_echo(11, 100_000);
        let trace = client.finish();
        assert_eq!(sent(&trace, "KeyUpdate"), 5, "{trace}");
        assert_eq!(
            received(&trace, "KeyUpdate"),
            2,
            "one KeyUpdate from the server per round of requests:\n{trace}"
        );
    }
    assert_eq!(server.threads(), 1);
}

#[test]
fn openssl_hello_retry_request_when_its_first_key_share_is_not_supported() {
    let Some(openssl) = openssl() else { return };
    let dir = TempDir::new("tls-interop-hrr");
    let (server, _files) = tls_server(&dir, &[]);
    // OpenSSL sends a key share for the first group only: P-521 and X448, which the server
    // (ring) does not support, so it asks again for the second.
    for (label, groups) in [("p521", "P-521:P-256"), ("x448", "X448:X25519")] {
        let mut client = SClient::start(&openssl, &server, &dir, label, &["-groups", groups]);
        client.hello();
        client.echo();
        client.key_update("K");
        client.echo();
        let trace = client.finish();
        // The HelloRetryRequest is a ServerHello on the wire: two of them.
        assert_eq!(received(&trace, "ServerHello"), 2, "{trace}");
        assert_eq!(received(&trace, "KeyUpdate"), 1, "{trace}");
    }
    // A group the server supports first: no retry.
    let mut client = SClient::start(&openssl, &server, &dir, "p384", &["-groups", "P-384"]);
    client.hello();
    client.echo();
    let trace = client.finish();
    assert_eq!(received(&trace, "ServerHello"), 1, "{trace}");
}

#[test]
fn openssl_with_a_client_certificate_is_verified_and_its_key_reaches_the_server() {
    let Some(openssl) = openssl() else { return };
    let dir = TempDir::new("tls-interop-mtls");
    let client_ca = TestCa::new("interop client CA");
    let ca_path = dir.join("clients.pem");
    std::fs::write(&ca_path, &client_ca.pem).unwrap();
    let ca_arg = ca_path.display().to_string();
    let (server, _files) = tls_server(&dir, &["--tls-client-ca", &ca_arg]);
    let alice = client_ca.client("alice");
    let (cert, key) = (dir.join("alice.pem"), dir.join("alice.key"));
    std::fs::write(&cert, &alice.cert_pem).unwrap();
    std::fs::write(&key, &alice.key_pem).unwrap();
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let mut client = SClient::start(
        &openssl,
        &server,
        &dir,
        "alice",
        &["-cert", &cert_arg, "-key", &key_arg],
    );
    client.hello();
    client.echo();
    client.key_update("K");
    client.echo();
    let trace = client.finish();
    assert_eq!(sent(&trace, "CertificateVerify"), 1, "{trace}");
    let fingerprint = monoreactor::key_fingerprint(&alice.der)
        .unwrap()
        .to_string();
    let line = retry(IO_TIMEOUT, || {
        server
            .stderr_text()
            .lines()
            .find(|line| line.contains("TLS established") && line.contains(&fingerprint))
            .map(str::to_string)
    });
    assert!(
        line.is_some(),
        "client key {fingerprint} in the server's log"
    );
}

#[test]
fn openssl_offering_nothing_the_server_takes_is_told_why_and_the_server_lives_on() {
    let Some(openssl) = openssl() else { return };
    let dir = TempDir::new("tls-interop-refusals");
    let (server, files) = tls_server(&dir, &[]);
    let ca = dir.join("ca.pem").display().to_string();
    // What s_client prints for the alert the server sends.
    let cases: [(&[&str], &str); 3] = [
        (&["-tls1_2"], "alert protocol version"),
        (
            &["-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256"],
            "alert handshake failure",
        ),
        (&["-tls1_3", "-alpn", "h2"], "no application protocol"),
    ];
    for (options, alert) in cases {
        let finished = Command::new(&openssl)
            .arg("s_client")
            .args(["-connect", &server.framed().to_string()])
            .args(["-servername", "localhost", "-CAfile", &ca])
            .args(options)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl s_client");
        let stderr = String::from_utf8_lossy(&finished.stderr);
        assert!(!finished.status.success(), "{options:?} was accepted");
        assert!(
            stderr.contains(alert),
            "{options:?}: expected the alert '{alert}':\n{stderr}"
        );
    }
    // Still serving.
    let mut client = connect(
        server.framed(),
        tls_support::client_config(&files.ca.der, &[ALPN], None),
        IO_TIMEOUT,
    );
    client.write_all(&hex(HELLO)).unwrap();
    let (header, _) = recv_frame(&mut client);
    assert_eq!(header.frame_type, FrameType::HelloOk);
}

// === A large transfer over each suite, with rustls' client ===

/// A client configuration offering only `suite`.
fn single_suite_config(ca: &TestCa, suite: SupportedCipherSuite) -> Arc<ClientConfig> {
    let mut provider: CryptoProvider = (*tls_support::provider()).clone();
    provider.cipher_suites = vec![suite];
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Arc::new(config)
}

#[test]
fn a_multi_mib_get_arrives_whole_over_each_cipher_suite() {
    let dir = TempDir::new("tls-interop-get");
    let root = dir.join("root");
    std::fs::create_dir(&root).unwrap();
    let data = support::seeded_bytes(21, 6 << 20 | 4_321);
    std::fs::write(root.join("big"), &data).unwrap();
    let root_arg = root.display().to_string();
    let (server, files) = tls_server(&dir, &["--root", &root_arg]);
    let suites = tls_support::provider().cipher_suites.clone();
    assert_eq!(suites.len(), 3, "three TLS 1.3 suites on ring: {suites:?}");
    for suite in suites {
        let config = single_suite_config(&files.ca, suite);
        let mut client = connect(server.framed(), config, IO_TIMEOUT);
        client.write_all(&hex(HELLO)).unwrap();
        let (header, _) = recv_frame(&mut client);
        assert_eq!(header.frame_type, FrameType::HelloOk);
        assert_eq!(client.conn.negotiated_cipher_suite(), Some(suite));
        client.write_all(&get_frame(7, b"big", 0)).unwrap();
        let (header, info) = recv_frame(&mut client);
        assert_eq!(header.frame_type, FrameType::FileInfo);
        assert_eq!(FileInfo::parse(&info).unwrap().size, data.len() as u64);
        let mut hasher = blake3::Hasher::new();
        let mut received = 0;
        loop {
            let (header, payload) = recv_frame(&mut client);
            match header.frame_type {
                FrameType::Data => {
                    hasher.update(&payload);
                    received += payload.len();
                }
                FrameType::Digest => {
                    assert_eq!(payload, blake3_of(&data), "the server's digest");
                    break;
                }
                other => panic!("{other} during the GET over {suite:?}"),
            }
        }
        assert_eq!(received, data.len(), "{suite:?}");
        assert_eq!(
            *hasher.finalize().as_bytes(),
            blake3_of(&data),
            "BLAKE3 of what arrived over {suite:?}"
        );
        assert_suite_logged(&server, &format!("{:?}", suite.suite()));
    }
}
