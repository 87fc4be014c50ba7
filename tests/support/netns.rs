//! A small data centre on one machine, for tests/multihost.rs: network namespaces, one for a
//! load balancer (HAProxy) and one per monoreactor host, joined by veth pairs, with the
//! processes started inside them and everything removed by [`Lab`]'s `Drop` (also when a
//! test panics): every process killed by its pid and reaped, every namespace deleted.
//!
//! Addresses: host `i` (0-based) is joined to the balancer's namespace by a veth pair, the
//! balancer's end `10.252.0.(4i+1)/30` (interface `v{i}`), the host's end `10.252.0.(4i+2)/30`
//! (`eth0`). The interfaces are made inside the namespaces and the addresses exist only there,
//! so two labs (two test runs at once) never see each other's, and nothing here touches this
//! machine's own network; only the namespaces' names are global, hence `mrlab{pid}{n}-...`.
//!
//! Needs root, iproute2 (`ip netns`) and, for the balancer, HAProxy: [`Lab::create`] says which
//! is missing, and the tests skip with that reason.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{Finished, TempDir, wait_child};

/// Longest an `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a server may take to print its `listening` lines.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The framed port of every host (and of the balancer's frontend).
pub const FRAMED_PORT: u16 = 7878;
/// The raw echo port of every host (and of the balancer's frontend).
pub const ECHO_PORT: u16 = 7007;
/// The balancer's frontend that routes by the client's address (`balance source`).
pub const FILES_PORT: u16 = 7879;

/// The balancer's frontends listen on its namespace's loopback: the clients run there too.
pub const FRONTEND: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Labs made by this process so far (their names must differ).
static LABS: AtomicUsize = AtomicUsize::new(0);

/// Why a lab cannot be made here, in one line; `None` if it can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".to_string());
    }
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !works("ip", &["netns", "list"]) {
        return Some("`ip netns` is unavailable (iproute2)".to_string());
    }
    if !works("haproxy", &["-v"]) {
        return Some("haproxy is not installed (apt-get install haproxy)".to_string());
    }
    None
}

/// One monoreactor host: its namespace, address and root, and its server while it runs.
pub struct Host {
    /// The namespace's name.
    pub netns: String,
    /// Its address, as the balancer reaches it.
    pub addr: Ipv4Addr,
    /// The balancer's address on the link to it (the peer the host sees).
    pub balancer_side: Ipv4Addr,
    /// Its own root directory.
    pub root: PathBuf,
    /// The server, while it runs.
    server: Option<Child>,
    /// Servers started so far (each logs to its own file).
    starts: usize,
}

/// The namespaces, the processes in them, and the scratch directory.
pub struct Lab {
    /// The balancer's namespace.
    pub balancer: String,
    /// The hosts.
    pub hosts: Vec<Host>,
    /// HAProxy, while it runs.
    haproxy: Option<Child>,
    /// Configuration, logs, the stats socket, the hosts' roots.
    pub dir: TempDir,
    /// Namespaces made so far (all deleted on drop).
    made: Vec<String>,
}

impl Lab {
    /// The balancer's namespace and `hosts` host namespaces, linked and up. `Err`: why not.
    pub fn create(hosts: usize) -> Result<Lab, String> {
        let prefix = format!(
            "mrlab{}{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            balancer: format!("{prefix}-lb"),
            hosts: Vec::new(),
            haproxy: None,
            dir: TempDir::new("multihost"),
            made: Vec::new(),
        };
        // From here on, `lab`'s Drop deletes whatever was made.
        lab.add_netns(&lab.balancer.clone())?;
        // HAProxy opens a connection to a host per client connection, thousands a second:
        // ports in TIME_WAIT are reused and the whole range is open (in its namespace only).
        let balancer = lab.balancer.clone();
        for setting in [
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65000",
        ] {
            ip(&["netns", "exec", &balancer, "sysctl", "-q", "-w", setting])?;
        }
        for index in 0..hosts {
            let netns = format!("{prefix}-h{index}");
            lab.add_netns(&netns)?;
            let octet = u8::try_from(4 * index).map_err(|_| "too many hosts".to_string())?;
            let balancer_side = Ipv4Addr::new(10, 252, 0, octet + 1);
            let addr = Ipv4Addr::new(10, 252, 0, octet + 2);
            let link = format!("v{index}");
            let balancer = lab.balancer.clone();
            ip(&[
                "-n", &balancer, "link", "add", &link, "type", "veth", "peer", "name", "eth0",
                "netns", &netns,
            ])?;
            ip(&[
                "-n",
                &balancer,
                "addr",
                "add",
                &format!("{balancer_side}/30"),
                "dev",
                &link,
            ])?;
            ip(&["-n", &balancer, "link", "set", &link, "up"])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            let root = lab.dir.join(&format!("root{index}"));
            std::fs::create_dir(&root).map_err(|error| format!("{}: {error}", root.display()))?;
            lab.hosts.push(Host {
                netns,
                addr,
                balancer_side,
                root,
                server: None,
                starts: 0,
            });
        }
        Ok(lab)
    }

    fn add_netns(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.made.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// Starts host `index`'s server: `serve` on its address, ports [`FRAMED_PORT`] and
    /// [`ECHO_PORT`], its own root, plus `extra`; returns once it printed its `listening`
    /// lines. Its stderr goes to `host{index}-{n}.log` in the lab's directory.
    pub fn start_host(&mut self, index: usize, extra: &[String]) {
        let host = &mut self.hosts[index];
        assert!(host.server.is_none(), "host {index} already runs");
        let log_path = self.dir.join(&format!("host{index}-{}.log", host.starts));
        host.starts += 1;
        let log = std::fs::File::create(&log_path).expect("a log file");
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &host.netns,
                env!("CARGO_BIN_EXE_monoreactor"),
            ])
            .args(["serve", "--listen"])
            .arg(format!("{}:{FRAMED_PORT}", host.addr))
            .arg("--echo-tcp")
            .arg(format!("{}:{ECHO_PORT}", host.addr))
            .args(["--echo-udp", "off", "--insecure", "--root"])
            .arg(&host.root)
            .args(extra)
            .env_remove("MONOREACTOR_TOKEN")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command.spawn().expect("spawn ip netns exec monoreactor");
        let stdout = child.stdout.take().expect("piped stdout");
        // `ip netns exec` execs the program in its place: the child's pid is the server's.
        host.server = Some(child);
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines.send(line);
            }
        });
        for _ in 0..2 {
            match received.recv_timeout(START_TIMEOUT) {
                Ok(line) if line.starts_with("listening ") => {}
                other => panic!(
                    "host {index} did not start ({other:?}); log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ),
            }
        }
    }

    /// The pid of host `index`'s server.
    pub fn host_pid(&self, index: usize) -> Option<u32> {
        self.hosts[index].server.as_ref().map(Child::id)
    }

    /// Sends `signal` to host `index`'s server.
    pub fn signal_host(&self, index: usize, signal: libc::c_int) {
        let pid = self.host_pid(index).expect("the host runs");
        // SAFETY: a signal to our own child, not yet reaped (its Child is still held).
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }

    /// Waits up to `timeout` for host `index`'s server to exit, and reaps it.
    pub fn wait_host_exit(&mut self, index: usize, timeout: Duration) -> Option<ExitStatus> {
        let child = self.hosts[index].server.as_mut()?;
        let status = wait_child(child, timeout)?;
        self.hosts[index].server = None;
        Some(status)
    }

    /// SIGKILLs host `index`'s server and reaps it.
    pub fn kill_host(&mut self, index: usize) {
        if let Some(mut child) = self.hosts[index].server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts HAProxy in the balancer's namespace on `config` (`STATS` in it is replaced by
    /// the stats socket's path), and waits until every server of `wait_backends` is UP.
    pub fn start_haproxy(&mut self, config: &str, wait_backends: &[&str]) {
        self.stop_haproxy();
        let socket = self.stats_socket();
        let _ = std::fs::remove_file(&socket);
        let path = self.dir.join("haproxy.cfg");
        std::fs::write(&path, config.replace("STATS", &socket.to_string_lossy()))
            .expect("write haproxy.cfg");
        let log = std::fs::File::create(self.dir.join("haproxy.log")).expect("a log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.balancer, "haproxy", "-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        self.haproxy = Some(child);
        for backend in wait_backends {
            for index in 0..self.hosts.len() {
                self.wait_state(backend, index, "UP", Duration::from_secs(10));
            }
        }
    }

    /// Kills HAProxy, if it runs.
    pub fn stop_haproxy(&mut self) {
        if let Some(mut child) = self.haproxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stats_socket(&self) -> PathBuf {
        self.dir.join("haproxy.sock")
    }

    /// One command on HAProxy's stats socket (a unix socket: a path, reachable from any
    /// network namespace); its answer, or `None` if HAProxy does not answer (yet).
    pub fn haproxy_command(&self, command: &str) -> Option<String> {
        let mut stream = UnixStream::connect(self.stats_socket()).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(format!("{command}\n").as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    }

    /// The status HAProxy shows for host `index` in `backend` (`UP`, `DOWN`, `UP 1/2`,
    /// `MAINT`, ...), from `show stat`.
    pub fn server_status(&self, backend: &str, index: usize) -> Option<String> {
        let stat = self.haproxy_command("show stat")?;
        let mut lines = stat.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let column = header.iter().position(|name| *name == "status")?;
        let server = format!("h{index}");
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|fields| fields.len() > column && fields[0] == backend && fields[1] == server)
            .map(|fields| fields[column].to_string())
    }

    /// Waits until host `index` has `status` in `backend`; panics after `timeout`. Returns how
    /// long it took.
    #[track_caller]
    pub fn wait_state(
        &self,
        backend: &str,
        index: usize,
        status: &str,
        timeout: Duration,
    ) -> Duration {
        let started = Instant::now();
        let mut seen = None;
        while started.elapsed() < timeout {
            seen = self.server_status(backend, index);
            if seen.as_deref() == Some(status) {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{backend}/h{index} not {status} within {timeout:?} (last seen {seen:?}); haproxy log:\n{}",
            std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
        );
    }

    /// `monoreactor ARGS` started in the balancer's namespace (a client of the frontends).
    pub fn spawn_client(&self, args: &[&str]) -> Child {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.balancer,
                env!("CARGO_BIN_EXE_monoreactor"),
            ])
            .args(args)
            .env_remove("MONOREACTOR_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a client in the balancer's namespace")
    }

    /// `monoreactor ARGS` in the balancer's namespace, to completion within `timeout`.
    pub fn client(&self, args: &[&str], timeout: Duration) -> Finished {
        finish(self.spawn_client(args), timeout)
    }

    /// Runs `command` inside host `index`'s namespace (`tc`, `ip`), within [`IP_TIMEOUT`].
    pub fn in_host(&self, index: usize, command: &[&str]) -> Result<(), String> {
        let mut args = vec!["netns", "exec", &self.hosts[index].netns];
        args.extend_from_slice(command);
        ip(&args)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_haproxy();
        for index in 0..self.hosts.len() {
            self.kill_host(index);
        }
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten() {
                let Ok(entry) = entry else { continue };
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".log") {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(20).collect();
                    eprintln!("--- {name} (last lines) ---");
                    for line in tail.into_iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        // Deleting a namespace deletes the interfaces in it, and so the veth pairs.
        for name in self.made.drain(..).rev() {
            if let Err(error) = ip(&["netns", "del", &name]) {
                eprintln!("could not delete network namespace {name}: {error}");
            }
        }
    }
}

/// Waits up to `timeout` for `child` and collects its output; killed (and the test failed)
/// otherwise.
pub fn finish(mut child: Child, timeout: Duration) -> Finished {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
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
        panic!("a client did not finish within {timeout:?}");
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// `ip ARGS` within [`IP_TIMEOUT`]; its stderr if it fails.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run ip: {error}"))?;
    let done = finish(child, IP_TIMEOUT);
    if done.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), done.stderr.trim()))
    }
}

/// Whether `path` exists (for waits on files the hosts write).
pub fn exists(path: &Path) -> bool {
    path.exists()
}
