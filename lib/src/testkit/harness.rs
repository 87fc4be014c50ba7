//! [`ConnHarness`]: a connection driven the way the reactor drives it, the clock in the test's hands.

use crate::service::disk::{Disk, JobDone};
use std::time::Duration;

use crate::access::{Access, Token};
use crate::buffer::BufferPool;
use crate::conn::{Connection, Context, Protocol, Verdict};
use crate::limits::Limits;
use crate::service::exec::{ChildSource, Children};
use crate::testkit::{ScriptedChildren, ScriptedDisk};
use crate::timer::{Tick, WallClock};
use crate::transport::Transport;

/// Drives one [`Connection`](crate::conn::Connection) through a [`ScriptedIo`](crate::testkit::ScriptedIo) (or a [`MemoryIo`](crate::testkit::MemoryIo)) exactly as the
/// reactor does, so a test
/// states only what the peer sends, what the connection must write, and what time it is.
///
/// Two rules of the real loop shape every script, and the harness keeps both:
/// - **Readiness is an edge.** [`ConnHarness::event`] is one poll event: it records the
///   readiness ([`Connection::on_ready`]) and drives once. The connection then reads until the
///   socket says `WouldBlock` — or until a read comes back *shorter* than its buffer, which
///   proves the socket drained (epoll(7)). So bytes scripted after a short read or a
///   `read_would_block` are only read at the next `event`, as on a real socket.
/// - **Budgets end a turn.** When a drive returns [`Verdict::Again`], the reactor drives again
///   next turn without any event; [`ConnHarness::drive`] is that next turn, and
///   [`ConnHarness::settle`] repeats it until the verdict changes.
///
/// ```
/// use monoreactor::{Limits, Verdict};
/// use monoreactor::proto::{Flags, Frame, FrameType, Hello, HelloOk, PROTOCOL_VERSION, SessionFlags};
/// use monoreactor::testkit::{Builder, ConnHarness};
///
/// let mut hello = Vec::new();
/// Hello::current().encode(&mut hello);
/// let mut hello_ok = Vec::new();
/// HelloOk {
///     version: PROTOCOL_VERSION,
///     max_payload_len: Limits::default().max_frame_len,
///     flags: SessionFlags::AUTHENTICATED,
/// }
/// .encode(&mut hello_ok);
/// let request = Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 1, b"hi").to_vec();
/// let reply = Frame::new(FrameType::EchoReply, Flags::END_STREAM, 1, b"hi").to_vec();
///
/// let mut io = Builder::new()
///     .read(&hello)    // the client's HELLO: shorter than the read buffer, so the socket
///     .write(&hello_ok) // counts as drained and the connection answers without reading on
///     .read(&request)  // a second packet: read only at the next readiness event
///     .write(&reply)
///     .eof()           // the client closes
///     .build();
/// let mut harness = ConnHarness::framed(Limits::default());
/// assert_eq!(harness.event(&mut io, true, true), Verdict::Wait);
/// assert_eq!(harness.event(&mut io, true, false), Verdict::Wait);
/// assert_eq!(harness.event(&mut io, true, false), Verdict::Close);
/// ```
#[derive(Debug)]
pub struct ConnHarness {
    /// The connection under test.
    pub conn: Connection,
    /// Its buffer pool.
    pub pool: BufferPool,
    /// Its limits.
    pub limits: Limits,
    /// The time the next drive sees.
    pub now: Tick,
    /// Access rules (default: echo only, no token).
    pub access: Access,
    /// Child processes, when commands are enabled ([`ConnHarness::with_exec`]).
    pub children: Option<ScriptedChildren>,
    /// The loop's turn number, advanced by every event and drive.
    pub turn: u64,
    /// The file service's disk, over a real directory, when files are enabled
    /// ([`ConnHarness::with_files`]); its blocking calls are made at once, or held until the
    /// test completes them ([`ConnHarness::with_disk`]).
    pub disk: Option<ScriptedDisk>,
}

impl ConnHarness {
    /// A framed connection accepted at tick 0.
    pub fn framed(limits: Limits) -> ConnHarness {
        ConnHarness::new(Protocol::Framed, limits)
    }

    /// A connection of `protocol` accepted at tick 0.
    pub fn new(protocol: Protocol, limits: Limits) -> ConnHarness {
        ConnHarness {
            conn: Connection::new(protocol, Tick(0), &limits),
            pool: BufferPool::new(limits.io_buffer_len, 8),
            limits,
            now: Tick(0),
            access: Access::ECHO_ONLY,
            children: None,
            disk: None,
            turn: 0,
        }
    }

    /// Blocking disk calls are held until the test completes them ([`ScriptedDisk::run_next`],
    /// [`ScriptedDisk::finish_next`]) instead of being made at once.
    ///
    /// # Panics
    /// Without [`ConnHarness::with_files`] first.
    pub fn with_disk(mut self) -> ConnHarness {
        self.disk().hold_jobs();
        self
    }

    /// The scripted disk.
    ///
    /// # Panics
    /// Without [`ConnHarness::with_files`].
    pub fn disk(&mut self) -> &mut ScriptedDisk {
        self.disk.as_mut().expect("with_files() first")
    }

    /// A disk job's completion reaches the connection, then one drive (as the reactor does).
    pub fn disk_done<S: Transport>(&mut self, io: &mut S, done: JobDone) -> Verdict {
        self.with_context(|conn, cx| conn.handle_disk_done(done, cx));
        self.drive(io)
    }

    /// Commands enabled behind `token`, run by [`ScriptedChildren`].
    pub fn with_exec(mut self, token: &[u8]) -> ConnHarness {
        self.access = Access {
            token: Some(Token::new(token.to_vec()).expect("a valid token")),
            exec: true,
        };
        self.children = Some(ScriptedChildren::new());
        self
    }

    /// Serves files from a real directory `root` (created if missing), as the reactor does.
    ///
    /// # Panics
    /// If the directory cannot be opened.
    pub fn with_files(mut self, root: &std::path::Path) -> ConnHarness {
        self.disk = Some(ScriptedDisk::new(
            root,
            self.limits.max_transfers,
            self.limits.max_put,
        ));
        self
    }

    /// The scripted children.
    ///
    /// # Panics
    /// Without [`ConnHarness::with_exec`].
    pub fn children(&mut self) -> &mut ScriptedChildren {
        self.children.as_mut().expect("with_exec() first")
    }

    /// One readiness event for the socket, then one drive.
    pub fn event<S: Transport>(&mut self, io: &mut S, readable: bool, writable: bool) -> Verdict {
        self.conn.on_ready(readable, writable);
        self.drive(io)
    }

    /// One readiness event for a command's descriptor (child number `index`), then one drive.
    pub fn child_event<S: Transport>(
        &mut self,
        io: &mut S,
        index: u8,
        source: ChildSource,
    ) -> Verdict {
        self.conn.on_child_ready(index, source);
        self.drive(io)
    }

    /// One more turn without an event (what the reactor does after [`Verdict::Again`]).
    pub fn drive<S: Transport>(&mut self, io: &mut S) -> Verdict {
        self.turn += 1;
        self.with_context(|conn, cx| conn.drive(io, cx))
    }

    /// Runs `work` on the connection with the [`Context`] the reactor would give it.
    pub fn with_context<R>(
        &mut self,
        work: impl FnOnce(&mut Connection, &mut Context<'_>) -> R,
    ) -> R {
        // Read as the loop does, once per drive: the hash cache compares it with the times
        // of real files.
        let wall_clock = WallClock::read();
        let mut cx = Context {
            pool: &mut self.pool,
            limits: &self.limits,
            now: self.now,
            wall_clock,
            access: &self.access,
            children: self
                .children
                .as_mut()
                .map(|children| children as &mut dyn Children),
            turn: self.turn,
            auth_log: None,
            files: self.disk.as_mut().map(|disk| {
                disk.set_wall_clock(wall_clock);
                disk as &mut dyn Disk
            }),
        };
        work(&mut self.conn, &mut cx)
    }

    /// Drives again while the verdict is [`Verdict::Again`] (at most 10,000 turns).
    pub fn settle<S: Transport>(&mut self, io: &mut S) -> Verdict {
        let mut verdict = self.drive(io);
        for _ in 0..10_000 {
            if verdict != Verdict::Again {
                return verdict;
            }
            verdict = self.drive(io);
        }
        panic!("still Again after 10,000 turns");
    }

    /// Moves the clock to the connection's next deadline, lets it act on it, and drives.
    pub fn expire<S: Transport>(&mut self, io: &mut S) -> Verdict {
        self.now = self.conn.deadline(&self.limits);
        self.with_context(|conn, cx| conn.on_deadline(cx));
        self.drive(io)
    }

    /// Starts the connection's part of a server shutdown, with `grace` to finish, and drives.
    pub fn shutdown<S: Transport>(&mut self, io: &mut S, grace: Duration) -> Verdict {
        self.with_context(|conn, cx| conn.begin_shutdown(grace, cx));
        self.drive(io)
    }
}
