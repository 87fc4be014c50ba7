//! Plaintext from another host, for real: the test makes a network namespace
//! (`mr-test-<pid>`) joined to this one by a veth pair, with addresses in 10.251.X.0/30 that
//! exist only on those two interfaces; the server listens on the host side's address (not a
//! loopback one) and the command-line client runs inside the namespace (`ip netns exec`), so
//! the server sees a connection from another address, as from another machine.
//!
//! Checked: plaintext on such an address needs `--insecure` to start at all; then plaintext
//! echo works and plaintext exec and file requests get FORBIDDEN "needs TLS" even with the
//! token; over TLS (no `--insecure`) the same requests work.
//!
//! Needs root and iproute2: without them (`ip netns add` fails) the test prints why and
//! passes. The namespace and the veth pair are deleted by a guard's `Drop`, also when the test
//! fails; every command it runs has a deadline, and it kills only the servers it started.

mod support;
#[path = "support/tls_proxy.rs"]
mod tls_proxy;

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Finished, Server, TempDir, retry, run_cli, wait_child};
use tls_proxy::Pki;

/// Longest any one command here may run.
const LIMIT: Duration = Duration::from_secs(30);

/// The token both servers require.
const TOKEN: &str = "a-token-that-crosses-the-veth-0123456789";

/// A network namespace and a veth pair into it, deleted on drop.
struct Netns {
    name: String,
    /// The host side of the veth pair (its peer lives in the namespace, and goes with it).
    host_link: String,
    /// The host side's address: where the server listens.
    host: Ipv4Addr,
}

impl Netns {
    /// `mr-test-<pid>` with `mrh<pid>` (host, 10.251.X.1/30) and `mrn<pid>` (namespace,
    /// 10.251.X.2/30), both up, X chosen among the /24s no interface here uses. `Err`: why
    /// the namespace cannot be made (not root, no iproute2, no netns support).
    fn create() -> Result<Netns, String> {
        let pid = std::process::id();
        let name = format!("mr-test-{pid}");
        let (host_link, ns_link) = (format!("mrh{pid}"), format!("mrn{pid}"));
        ip(&["netns", "add", &name])?;
        // From here on, the guard deletes whatever was made.
        let mut netns = Netns {
            name,
            host_link,
            host: Ipv4Addr::UNSPECIFIED,
        };
        let x = free_subnet()?;
        netns.host = Ipv4Addr::new(10, 251, x, 1);
        let host_cidr = format!("{}/30", netns.host);
        let ns_cidr = format!("10.251.{x}.2/30");
        let name = netns.name.clone();
        ip(&[
            "link",
            "add",
            &netns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &ns_link,
        ])?;
        ip(&["link", "set", &ns_link, "netns", &name])?;
        ip(&["addr", "add", &host_cidr, "dev", &netns.host_link])?;
        ip(&["link", "set", &netns.host_link, "up"])?;
        ip(&[
            "netns", "exec", &name, "ip", "addr", "add", &ns_cidr, "dev", &ns_link,
        ])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_link, "up"])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// `monoreactor ARGS` run inside the namespace, to completion within [`LIMIT`].
    fn cli(&self, args: &[&str]) -> Finished {
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.name,
                env!("CARGO_BIN_EXE_monoreactor"),
            ])
            .args(args)
            .env_remove("MONOREACTOR_TOKEN");
        run(command, LIMIT)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the host side deletes its peer; deleting the namespace would too.
        let _ = ip(&["link", "del", &self.host_link]);
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!("could not delete network namespace {}: {error}", self.name);
        }
    }
}

/// A third octet X such that no interface here has an address in 10.251.X.0/24.
fn free_subnet() -> Result<u8, String> {
    let mut command = Command::new("ip");
    command.args(["-4", "-o", "addr", "show"]);
    let shown = run(command, Duration::from_secs(10));
    if !shown.status.success() {
        return Err(format!("ip -4 addr show: {}", shown.stderr.trim()));
    }
    let start = (std::process::id() % 250) as u8;
    (0..250u8)
        .map(|offset| start.wrapping_add(offset) % 250 + 1)
        .find(|x| !shown.stdout.contains(&format!(" 10.251.{x}.")))
        .ok_or_else(|| "every 10.251.X.0/24 is in use".to_string())
}

/// `ip ARGS`, within 10 s; its stderr if it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let mut command = Command::new("ip");
    command.args(args);
    let done = run(command, Duration::from_secs(10));
    if done.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), done.stderr.trim()))
    }
}

/// Runs `command` to completion within `timeout` (killed, and the test failed, otherwise).
fn run(mut command: Command, timeout: Duration) -> Finished {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            // No `ip` at all: a failure the caller reports like any other.
            return Finished {
                status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
                stdout: String::new(),
                stderr: format!("cannot run {command:?}: {error}"),
            };
        }
    };
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|pipe| Box::new(pipe) as _));
    let stderr = drain(child.stderr.take().map(|pipe| Box::new(pipe) as _));
    let Some(status) = wait_child(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{command:?} did not exit within {timeout:?}");
    };
    Finished {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

#[track_caller]
fn succeeded(run: &Finished) -> &str {
    assert!(
        run.status.success(),
        "exit {}; stdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    &run.stdout
}

/// Refused by the server's rule for plaintext from another host: one line, non-zero.
#[track_caller]
fn needs_tls(run: &Finished, request: &str) {
    assert!(!run.status.success(), "went through: {}", run.stdout);
    assert!(
        run.stderr.contains("FORBIDDEN")
            && run.stderr.contains(&format!(
                "{request} needs TLS: this connection is plaintext"
            )),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

#[test]
fn plaintext_from_another_host_may_only_echo_and_tls_may_do_everything() {
    let netns = match Netns::create() {
        Ok(netns) => netns,
        Err(reason) => {
            eprintln!("skipped: cannot make a network namespace: {reason}");
            return;
        }
    };
    let dir = TempDir::new("tls-netns");
    let root = dir.join("root");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("there.txt"), b"on the server").unwrap();
    let token = dir.join("token");
    fs::write(&token, TOKEN).unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let listen = format!("{}:0", netns.host);
    let base = [
        "--listen",
        &listen,
        "--token-file",
        text(&token),
        "--exec",
        "--root",
        text(&root),
    ];

    // Plaintext on a non-loopback address: refused without --insecure.
    let mut args = vec!["serve", "--echo-tcp", "off", "--echo-udp", "off"];
    args.extend_from_slice(&base);
    let refused = run_cli(&args, LIMIT);
    assert!(!refused.status.success(), "{}", refused.stdout);
    let line = refused
        .stderr
        .lines()
        .find(|line| line.starts_with("monoreactor: "))
        .unwrap_or_default();
    assert!(
        line.contains("without TLS") && line.contains("--insecure"),
        "{}",
        refused.stderr
    );

    // With --insecure: echo from the namespace, and nothing else.
    let mut args = base.to_vec();
    args.push("--insecure");
    let plain = Server::start(&args);
    let addr = plain.framed();
    assert_eq!(addr.ip(), netns.host);
    let addr = addr.to_string();
    let token_flags = ["--token-file", text(&token)];
    // The veth may take a moment to carry traffic: the first echo is retried, boundedly.
    let echoed = retry(Duration::from_secs(10), || {
        let run = netns.cli(&["echo", "--addr", &addr, "from", "afar"]);
        run.status.success().then_some(run)
    });
    let echoed = echoed.unwrap_or_else(|| {
        let run = netns.cli(&["echo", "--addr", &addr, "x"]);
        panic!("no echo across the veth: {}", run.stderr)
    });
    assert_eq!(echoed.stdout, "from afar\n");
    let with_token = |command: &[&str]| {
        let mut args = vec![command[0], "--addr", &addr];
        args.extend_from_slice(&token_flags);
        args.extend_from_slice(&command[1..]);
        netns.cli(&args)
    };
    needs_tls(&with_token(&["exec", "--", "echo", "hi"]), "EXEC");
    needs_tls(&with_token(&["ls"]), "LIST");
    needs_tls(&with_token(&["stat", "there.txt"]), "STAT");
    let copy = dir.join("copy.txt");
    needs_tls(&with_token(&["get", "there.txt", text(&copy)]), "GET");
    assert!(!copy.exists());
    let local = dir.join("local.txt");
    fs::write(&local, b"from the namespace").unwrap();
    needs_tls(&with_token(&["put", text(&local), "new.txt"]), "PUT");
    needs_tls(&with_token(&["mkdir", "made"]), "MKDIR");
    assert!(!root.join("new.txt").exists() && !root.join("made").exists());
    drop(plain);

    // Over TLS, no --insecure: everything works from the namespace.
    let pki = Pki::new();
    let host = netns.host.to_string();
    let (cert, key) = pki.leaf(&[&host], false).write(dir.path(), "server");
    let ca = pki.write_ca(dir.path());
    let mut args = base.to_vec();
    args.extend(["--tls-cert", text(&cert), "--tls-key", text(&key)]);
    let tls = Server::start(&args);
    let addr = format!("tls://{}", tls.framed());
    let with_token = |command: &[&str]| {
        let mut args = vec![command[0], "--addr", &addr, "--tls-ca", text(&ca)];
        args.extend_from_slice(&token_flags);
        args.extend_from_slice(&command[1..]);
        netns.cli(&args)
    };
    assert_eq!(
        succeeded(&with_token(&["echo", "over", "tls"])),
        "over tls\n"
    );
    let ran = with_token(&["exec", "--", "sh", "-c", "echo hi; exit 3"]);
    assert_eq!(
        (ran.status.code(), ran.stdout.as_str()),
        (Some(3), "hi\n"),
        "{}",
        ran.stderr
    );
    let listing = succeeded(&with_token(&["ls"])).to_string();
    assert!(listing.contains("there.txt"), "{listing}");
    succeeded(&with_token(&["stat", "there.txt"]));
    succeeded(&with_token(&["get", "there.txt", text(&copy)]));
    assert_eq!(fs::read(&copy).unwrap(), b"on the server");
    succeeded(&with_token(&["put", text(&local), "new.txt"]));
    assert_eq!(
        fs::read(root.join("new.txt")).unwrap(),
        b"from the namespace"
    );
    succeeded(&with_token(&["mkdir", "made"]));
    assert!(root.join("made").is_dir());
    succeeded(&with_token(&["rm", "new.txt", "made"]));
    assert!(!root.join("new.txt").exists() && !root.join("made").exists());
}
