//! Every limit the server enforces, in one place (the redis `server.h` habit): a reader who
//! wants to know "what stops a client from ..." finds the answer here, with its default.

use std::fmt;
use std::time::Duration;

use crate::proto::HEADER_LEN;

/// Resource limits and timeouts. `Limits::default()` is what `monoreactor serve` runs with;
/// flags override some fields, and [`Limits::validate`] rejects combinations that make no sense.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, framed and raw echo together. Default 10,000, at most
    /// [`MAX_CONNECTIONS`]. At start it is
    /// clamped to what `RLIMIT_NOFILE` allows after [`Limits::reserved_fds`]. One more client
    /// is accepted, told `SERVER_BUSY` (framed) or just closed (raw echo), and dropped.
    pub max_connections: usize,
    /// File descriptors kept back from `max_connections` for listeners, the poll, the signal
    /// pipe and the spare descriptor used to shed connections on `EMFILE`. Default 32.
    pub reserved_fds: usize,
    /// Largest frame payload accepted, in bytes. Default 1 MiB. A header declaring more is
    /// refused from its 12 bytes, before anything is allocated for the body. It also bounds a
    /// connection's input buffer: one frame plus its header.
    pub max_frame_len: u32,
    /// Size of the pooled I/O buffers, and so of one read. Default 64 KiB: a 16 KiB message, or
    /// hundreds of small pipelined frames, in one `read`. At least [`MIN_IO_BUFFER_LEN`].
    pub io_buffer_len: usize,
    /// Free buffers the pool keeps for reuse. Default 256 (16 MiB of 64 KiB buffers at most).
    /// An idle connection holds none: buffers return to the pool as soon as they are empty.
    pub pooled_buffers: usize,
    /// Pending output at which the server stops reading a connection (backpressure). Default
    /// 256 KiB. Output never exceeds this by more than one reply, so a client that sends but
    /// never reads costs at most about this much memory.
    pub output_high_water: usize,
    /// Pending output at which reading resumes. Default 64 KiB; the gap keeps a connection from
    /// flapping between reading and not reading on every write.
    pub output_low_water: usize,
    /// Bytes read from one connection in one turn of the loop before the others get theirs.
    /// Default 256 KiB. A connection with work left goes on the ready list for the next turn.
    pub read_budget: usize,
    /// Frames handled for one connection in one turn. Default 128.
    pub frame_budget: usize,
    /// Connections accepted from one listener in one turn. Default 64.
    pub accept_budget: usize,
    /// UDP datagrams received in one turn. Default 64.
    pub datagram_budget: usize,
    /// UDP replies held while `send_to` would block. Default 256 datagrams; beyond that,
    /// replies are dropped and counted.
    pub udp_queue_len: usize,
    /// Bytes of UDP replies held while `send_to` would block. Default 1 MiB.
    pub udp_queue_bytes: usize,
    /// A connection with no read or write progress for this long is closed (framed clients get
    /// a `TIMEOUT` error first). Default 300 s.
    pub idle_timeout: Duration,
    /// A framed client must have sent its HELLO within this of connecting. Default 10 s. A
    /// connection that says nothing holds a slot only this long, not the whole idle timeout
    /// (sshd's `LoginGraceTime`); before HELLO it stands in for the frame timeout.
    pub hello_timeout: Duration,
    /// A frame whose first byte has arrived must be complete within this. Default 30 s. This is
    /// what closes a slowloris client that keeps the connection busy one byte at a time.
    pub frame_timeout: Duration,
    /// How long a closing connection may take to flush its last output and have the peer close
    /// its side (a "lingering close", so a final error frame is not destroyed by a reset).
    /// Default 2 s.
    pub linger_timeout: Duration,
    /// After SIGINT/SIGTERM: how long pending output may take to flush before every connection
    /// is closed and the process exits. Default 5 s.
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the server keeps accepting and serving while failing load
    /// balancers' health checks (PROXY v2 `LOCAL`, v1 `UNKNOWN`), before the shutdown proper
    /// closes the listeners: the time for the balancer to see the server go and stop sending
    /// it clients. Default 0 here; `serve` makes it [`DEFAULT_PROXIED_DRAIN_DELAY`] when the
    /// PROXY protocol is on (without the header no health check can be told apart, so there
    /// is nothing for a balancer to see).
    pub drain_delay: Duration,

    // --- Before authentication ---
    /// Largest payload accepted before a connection has authenticated: any frame before HELLO,
    /// and echo on a connection that did not present the server's token (when one is
    /// configured). Default 4 KiB. A header declaring more is refused from its 12 bytes, so a
    /// client that never authenticates pins at most this much input (redis CVE-2025-21605).
    pub pre_auth_max_frame: u32,

    // --- Remote exec (per worker process: these are one server's limits) ---
    /// Commands running at once on the whole server, counting killed ones not yet reaped.
    /// Default 64; one more is refused with `LIMIT_REACHED`, never queued.
    pub max_exec: usize,
    /// Streams running at once on one connection: commands and file transfers (GET, PUT,
    /// LIST) together; one more is refused with `LIMIT_REACHED` on its stream. Default 32, the
    /// most ([`MAX_STREAMS_PER_CONNECTION`]): a tree of small files needs that many in flight
    /// to keep the server busy (docs/PERFORMANCE.md, "Whole trees"), and the server-wide
    /// limits ([`Limits::max_exec`], [`Limits::max_transfers`]) bound what they hold.
    /// `--max-commands-per-conn` sets it.
    pub max_streams_per_connection: usize,
    /// Longest a command may run before its process group gets SIGTERM (then SIGKILL after
    /// [`Limits::exec_kill_grace`]). Default 60 s; a client may ask for less, never more.
    pub exec_timeout: Duration,
    /// Time between SIGTERM and SIGKILL whenever the server stops a command (time limit,
    /// output cap, disconnect, shutdown). Default 2 s.
    pub exec_kill_grace: Duration,
    /// After a command exits, how long an output pipe may stay open with nothing to read (a
    /// background grandchild holding it) before EXIT is sent anyway. Time spent not reading
    /// because the client is slow does not count. Default 1 s.
    pub exec_drain_timeout: Duration,
    /// Output (stdout and stderr together) one command may send. Default 64 MiB; past it the
    /// rest is discarded and the process group is stopped, and EXIT says why.
    pub exec_output_cap: u64,
    /// The program an `exec -t` with no argv runs (an EXEC with a PTY and no argument): a
    /// name looked up in the fixed `PATH`, or a path. Default `sh`; `--exec-shell` sets it.
    /// The access allowlist judges it like any argv.
    pub exec_shell: String,
    /// STDIN credit per command, bytes: what a client may send ahead of the command's reading,
    /// and so the most stdin the server holds for it. Default 256 KiB, at least 1.
    pub stdin_window: u32,
    /// File work one connection may do per turn, bytes: DATA ranges queued for `sendfile`,
    /// bytes hashed or re-read, directory entries listed (4 KiB each). Default 4 MiB, twice
    /// nginx's `sendfile_max_chunk`: about a millisecond of page-cache work.
    pub disk_budget: usize,
    /// File transfers (GET, PUT, LIST) running at once on the server. Default 256: eight
    /// clients each sending a tree with a full window (an open file and a few bytes of
    /// bookkeeping each).
    pub max_transfers: usize,
    /// Largest file a PUT may store, bytes. Default 16 GiB.
    pub max_put: u64,
    /// Bytes of buffer all connections together may hold (input being assembled, output
    /// waiting); past it, the connections holding the most are closed with LIMIT_REACHED.
    /// Default 1 GiB (`serve` uses a quarter of the machine's memory unless told otherwise).
    pub max_client_memory: usize,
}

/// The drain delay `serve` uses when the PROXY protocol is on and `--drain-delay` is not
/// given: 1 s covers HAProxy's usual `inter 200 fall 2` (two failed checks 200 ms apart, plus
/// each check's own time) with room to spare.
pub const DEFAULT_PROXIED_DRAIN_DELAY: Duration = Duration::from_secs(1);

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            reserved_fds: 32,
            max_frame_len: 1 << 20,
            io_buffer_len: 64 << 10,
            pooled_buffers: 256,
            output_high_water: 256 << 10,
            output_low_water: 64 << 10,
            read_budget: 256 << 10,
            frame_budget: 128,
            accept_budget: 64,
            datagram_budget: 64,
            udp_queue_len: 256,
            udp_queue_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(300),
            hello_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            linger_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            drain_delay: Duration::ZERO,
            pre_auth_max_frame: 4 << 10,
            max_exec: 64,
            max_streams_per_connection: MAX_STREAMS_PER_CONNECTION,
            exec_timeout: Duration::from_secs(60),
            exec_kill_grace: Duration::from_secs(2),
            exec_drain_timeout: Duration::from_secs(1),
            exec_output_cap: 64 << 20,
            exec_shell: "sh".to_string(),
            stdin_window: 256 << 10,
            disk_budget: 4 << 20,
            max_transfers: 256,
            max_put: 16 << 30,
            max_client_memory: 1 << 30,
        }
    }
}

/// Largest accepted [`Limits::max_connections`]: a connection's slot number has 20 bits in its
/// poll tokens (the rest name the generation and which of its descriptors). Linux's default
/// `nr_open`, the most descriptors a process can have, is the same 1,048,576.
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// Largest accepted [`Limits::max_streams_per_connection`]. A command's pipes are named in poll
/// tokens by a 6-bit child number (64 of them), and a number freed in one turn of the loop is
/// not handed out again in that turn, so live plus just-freed numbers stay within 64 even if
/// every stream is a command.
pub const MAX_STREAMS_PER_CONNECTION: usize = 32;

/// Descriptors one running command holds in the server: its stdin, stdout and stderr pipes
/// and its pidfd. They count against the open-file limit next to the connections.
pub(crate) const DESCRIPTORS_PER_COMMAND: usize = 4;

/// Smallest accepted [`Limits::max_frame_len`]: a HELLO's fixed part must fit.
pub const MIN_FRAME_LEN: u32 = 64;
/// Largest accepted [`Limits::max_frame_len`]: 64 MiB, so one client's input buffer stays
/// modest. Larger transfers are streams of frames.
pub const MAX_FRAME_LEN: u32 = 64 << 20;

/// Smallest accepted [`Limits::io_buffer_len`]: one frame header plus a payload of
/// [`MIN_FRAME_LEN`], so a pool buffer holds a whole frame of the smallest frame limit. A
/// command's output is read in pieces of the buffer's length less a header: a buffer no
/// larger than the header would leave no room for the payload (and a read of no bytes looks
/// like EOF), and one a few bytes larger would spend most of the output on headers.
pub const MIN_IO_BUFFER_LEN: usize = HEADER_LEN + MIN_FRAME_LEN as usize;

/// The default `--max-client-memory`: a quarter of the machine's memory (`MemTotal` in
/// `/proc/meminfo`), or 1 GiB where that cannot be read.
pub fn default_client_memory() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024) / 4)
        })
        .unwrap_or(1 << 30)
}

/// A [`Limits`] value that cannot work, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidLimits(pub String);

impl fmt::Display for InvalidLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidLimits {}

impl Limits {
    /// Largest number of bytes a connection's input buffer can hold: one maximal frame.
    pub fn input_cap(&self) -> usize {
        HEADER_LEN + self.max_frame_len as usize
    }

    /// Largest payload accepted before authentication: the pre-authentication limit, or the
    /// frame limit if that is smaller.
    pub fn pre_auth_frame_len(&self) -> u32 {
        self.pre_auth_max_frame.min(self.max_frame_len)
    }

    /// Largest number of bytes an output queue can hold: the high-water mark (past which
    /// nothing new is produced) plus one maximal frame.
    pub fn output_cap(&self) -> usize {
        self.output_high_water + self.input_cap()
    }

    /// Takes from `new` the limits a running loop can change (a reload, SIGHUP) and returns
    /// those that changed, named with their old and new values (`hello timeout 10s -> 1s`). Each is read afresh where it is used: a timeout when
    /// a deadline is armed (one already armed keeps its time), the exec limits when a command
    /// starts, the stream, transfer and PUT limits when a request arrives, the memory budget
    /// every turn, the grace when a shutdown begins. The others were sized once, at start (see
    /// `crate::reload`), and are left as they are.
    pub fn take_live(&mut self, new: &Limits) -> Vec<String> {
        let mut changed = Vec::new();
        macro_rules! take {
            ($($field:ident: $name:literal),* $(,)?) => {
                $(
                    if self.$field != new.$field {
                        changed.push(format!("{} {:?} -> {:?}", $name, self.$field, new.$field));
                        self.$field = new.$field;
                    }
                )*
            };
        }
        take!(
            idle_timeout: "idle timeout",
            hello_timeout: "hello timeout",
            frame_timeout: "frame timeout",
            shutdown_grace: "shutdown grace",
            drain_delay: "drain delay",
            exec_timeout: "exec timeout",
            exec_output_cap: "exec output cap",
            max_streams_per_connection: "streams per connection",
            max_put: "max put",
            max_transfers: "max transfers",
            max_client_memory: "max client memory",
        );
        changed
    }

    /// Checks that the limits are usable together.
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        let fail = |why: String| Err(InvalidLimits(why));
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&self.max_frame_len) {
            return fail(format!(
                "max frame length {} is outside {MIN_FRAME_LEN}..={MAX_FRAME_LEN}",
                self.max_frame_len
            ));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return fail(format!(
                "max connections must be between 1 and {MAX_CONNECTIONS}"
            ));
        }
        if self.output_low_water >= self.output_high_water {
            return fail(format!(
                "output low-water mark {} must be below the high-water mark {}",
                self.output_low_water, self.output_high_water
            ));
        }
        if self.pre_auth_max_frame < MIN_FRAME_LEN {
            return fail(format!(
                "pre-authentication frame limit {} is below {MIN_FRAME_LEN}",
                self.pre_auth_max_frame
            ));
        }
        if !(1..=MAX_STREAMS_PER_CONNECTION).contains(&self.max_streams_per_connection) {
            return fail(format!(
                "commands per connection must be between 1 and {MAX_STREAMS_PER_CONNECTION}"
            ));
        }
        if self.exec_shell.is_empty() || self.exec_shell.contains('\0') {
            return fail(format!(
                "exec shell {:?} must be a program name or path, not empty and without NUL",
                self.exec_shell
            ));
        }
        if self.max_exec == 0 {
            return fail("max commands must be at least 1".to_string());
        }
        if self.io_buffer_len < MIN_IO_BUFFER_LEN {
            return fail(format!(
                "I/O buffer length {} is below {MIN_IO_BUFFER_LEN} (a frame header and {MIN_FRAME_LEN} bytes)",
                self.io_buffer_len
            ));
        }
        if self.stdin_window == 0 {
            // A command started with the STDIN flag could be sent nothing but STDIN_EOF.
            return fail("stdin window must be at least 1 byte".to_string());
        }
        let budgets = [
            ("read budget", self.read_budget),
            ("frame budget", self.frame_budget),
            ("accept budget", self.accept_budget),
            ("datagram budget", self.datagram_budget),
            ("disk budget", self.disk_budget),
            ("max transfers", self.max_transfers),
        ];
        if let Some((name, _)) = budgets.iter().find(|(_, value)| *value == 0) {
            return fail(format!("{name} must be at least 1"));
        }
        if self.max_client_memory < self.input_cap() {
            return fail(format!(
                "max client memory {} cannot hold one maximal frame ({} bytes)",
                self.max_client_memory,
                self.input_cap()
            ));
        }
        let timeouts = [
            ("idle timeout", self.idle_timeout),
            ("hello timeout", self.hello_timeout),
            ("frame timeout", self.frame_timeout),
            ("linger timeout", self.linger_timeout),
            ("exec timeout", self.exec_timeout),
            ("exec kill grace", self.exec_kill_grace),
            ("exec drain timeout", self.exec_drain_timeout),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, value)| value.is_zero()) {
            return fail(format!("{name} must be longer than zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_takes_the_live_limits_and_leaves_the_sized_ones() {
        let mut running = Limits::default();
        let new = Limits {
            hello_timeout: Duration::from_secs(1),
            max_put: 10,
            max_connections: 5,
            max_frame_len: 4096,
            max_exec: 1,
            ..Limits::default()
        };
        assert_eq!(
            running.take_live(&new),
            ["hello timeout 10s -> 1s", "max put 17179869184 -> 10"]
        );
        assert_eq!(running.hello_timeout, Duration::from_secs(1));
        assert_eq!(running.max_put, 10);
        let sized = Limits::default();
        assert_eq!(
            (
                running.max_connections,
                running.max_frame_len,
                running.max_exec
            ),
            (sized.max_connections, sized.max_frame_len, sized.max_exec),
            "sized at start: a restart changes them"
        );
        assert!(running.take_live(&new).is_empty(), "nothing changes twice");
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn the_smallest_io_buffer_holds_a_smallest_frame() {
        let limits = Limits {
            io_buffer_len: MIN_IO_BUFFER_LEN,
            ..Limits::default()
        };
        assert_eq!(limits.validate(), Ok(()));
        assert_eq!(MIN_IO_BUFFER_LEN, HEADER_LEN + MIN_FRAME_LEN as usize);
    }

    #[test]
    fn validate_names_the_bad_field() {
        type Breakage = fn(&mut Limits);
        let cases: [(Breakage, &str); 9] = [
            (|l| l.io_buffer_len = HEADER_LEN, "I/O buffer length"),
            (
                |l| l.io_buffer_len = MIN_IO_BUFFER_LEN - 1,
                "I/O buffer length",
            ),
            (|l| l.stdin_window = 0, "stdin window"),
            (|l| l.max_frame_len = 1, "max frame length"),
            (|l| l.max_frame_len = u32::MAX, "max frame length"),
            (|l| l.max_connections = 0, "max connections"),
            (
                |l| l.max_connections = MAX_CONNECTIONS + 1,
                "max connections",
            ),
            (|l| l.output_low_water = l.output_high_water, "low-water"),
            (|l| l.idle_timeout = Duration::ZERO, "idle timeout"),
        ];
        for (break_it, expected) in cases {
            let mut limits = Limits::default();
            break_it(&mut limits);
            let error = limits.validate().unwrap_err();
            assert!(
                error.0.contains(expected),
                "{error} should mention {expected}"
            );
        }
    }
}
