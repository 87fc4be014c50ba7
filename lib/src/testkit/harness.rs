//! [`ConnHarness`]: a connection driven the way the reactor drives it, the clock in the test's hands.

use crate::service::disk::{Disk, JobDone};
use std::fs::File;
use std::io::{self, Read, Write};
use std::time::Duration;

use crate::access::{Access, Token};
use crate::buffer::BufferPool;
use crate::conn::{Connection, Context, Protocol, Verdict};
use crate::limits::Limits;
use crate::service::exec::{ChildSource, Children};
use crate::testkit::{ScriptedChildren, ScriptedDisk};
use crate::timer::{Tick, WallClock};
use crate::transport::{Peer, Readiness, Transport};

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
/// use monoreactor::proto::{Flags, Frame, FrameType, Hello, HelloOk, PROTOCOL_VERSION, SessionFlags};
/// use monoreactor::testkit::{Builder, ConnHarness};
/// use monoreactor::{Limits, Verdict};
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
///
/// Commands run on a [`ScriptedChildren`] by default ([`ConnHarness::with_exec`]); any other
/// [`Children`] — one that checks what the connection does, or injects faults — goes in with
/// [`ConnHarness::with_children`]. [`ConnHarness::input_consumed`] says how much of what the
/// peer sent the connection has handled.
#[derive(Debug)]
pub struct ConnHarness<C: Children = ScriptedChildren> {
    /// The connection under test.
    pub conn: Connection,
    /// Its buffer pool.
    pub pool: BufferPool,
    /// Its limits.
    pub limits: Limits,
    /// The time the next drive sees.
    pub now: Tick,
    /// Access rules (default: echo only, no token); an access file's with
    /// [`Access::parse`](crate::access::Access::parse).
    pub access: Access,
    /// Who the peer is, as the transport would say (default [`Peer::LOCAL`]: plaintext, on
    /// this machine, no certificate); script TLS or another host here.
    pub peer: Peer,
    /// Child processes, when commands are enabled ([`ConnHarness::with_exec`],
    /// [`ConnHarness::with_children`]).
    pub children: Option<C>,
    /// The loop's turn number, advanced by every event and drive.
    pub turn: u64,
    /// The file service's disk, over a real directory, when files are enabled
    /// ([`ConnHarness::with_files`]); its blocking calls are made at once, or held until the
    /// test completes them ([`ConnHarness::with_disk`]).
    pub disk: Option<ScriptedDisk>,
    /// Bytes the connection has read from its transport through this harness.
    pub input_read: u64,
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
            peer: Peer::LOCAL,
            children: None,
            disk: None,
            turn: 0,
            input_read: 0,
        }
    }

    /// Commands enabled behind `token`, run by [`ScriptedChildren`].
    pub fn with_exec(self, token: &[u8]) -> ConnHarness {
        self.with_children(token, ScriptedChildren::new())
    }

    /// The scripted children.
    ///
    /// # Panics
    /// Without [`ConnHarness::with_exec`].
    pub fn children(&mut self) -> &mut ScriptedChildren {
        self.children.as_mut().expect("with_exec() first")
    }
}

impl<C: Children> ConnHarness<C> {
    /// Commands enabled behind `token`, run by `children`: a checking or fault-injecting
    /// [`Children`] of your own, or a [`ScriptedChildren`] set up beforehand.
    pub fn with_children<D: Children>(self, token: &[u8], children: D) -> ConnHarness<D> {
        ConnHarness {
            conn: self.conn,
            pool: self.pool,
            limits: self.limits,
            now: self.now,
            access: Access {
                token: Some(Token::new(token.to_vec()).expect("a valid token")),
                exec: true,
                credentials: None,
            },
            peer: self.peer,
            children: Some(children),
            turn: self.turn,
            disk: self.disk,
            input_read: self.input_read,
        }
    }

    /// The children, whatever their type.
    ///
    /// # Panics
    /// Without [`ConnHarness::with_exec`] or [`ConnHarness::with_children`].
    pub fn children_mut(&mut self) -> &mut C {
        self.children
            .as_mut()
            .expect("with_exec() or with_children() first")
    }

    /// How much of what the peer sent the connection has consumed: the bytes it read
    /// ([`ConnHarness::input_read`]) less those it still holds unhandled (a partial frame, or
    /// frames that backpressure or the budget held back).
    pub fn input_consumed(&self) -> u64 {
        self.input_read - self.conn.pending_input() as u64
    }

    /// Blocking disk calls are held until the test completes them ([`ScriptedDisk::run_next`],
    /// [`ScriptedDisk::finish_next`]) instead of being made at once.
    ///
    /// # Panics
    /// Without [`ConnHarness::with_files`] first.
    pub fn with_disk(mut self) -> Self {
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
        self.turn += 1;
        self.with_context(|conn, cx| conn.handle_disk_done(done, cx));
        self.drive_this_turn(io)
    }

    /// Serves files from a real directory `root` (created if missing), as the reactor does.
    ///
    /// # Panics
    /// If the directory cannot be opened.
    pub fn with_files(mut self, root: &std::path::Path) -> Self {
        self.disk = Some(ScriptedDisk::new(
            root,
            self.limits.max_transfers,
            self.limits.max_put,
        ));
        self
    }

    /// One readiness event for the socket, then one drive.
    pub fn event<S: Transport>(&mut self, io: &mut S, readable: bool, writable: bool) -> Verdict {
        self.conn.on_ready(readable, writable);
        self.drive(io)
    }

    /// One readiness event that also reports the peer's FIN (`EPOLLRDHUP`) or an error, as
    /// the reactor passes it on, then one drive.
    pub fn hangup_event<S: Transport>(&mut self, io: &mut S, writable: bool) -> Verdict {
        self.conn.on_ready(true, writable);
        self.conn.on_read_closed();
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
        self.drive_this_turn(io)
    }

    /// A drive in the current turn: after what the reactor does in the same turn before it
    /// drives (a timer, a disk completion, the start of a shutdown).
    fn drive_this_turn<S: Transport>(&mut self, io: &mut S) -> Verdict {
        let mut counted = Counted { io, read: 0 };
        let verdict = self.with_context(|conn, cx| conn.drive(&mut counted, cx));
        self.input_read += counted.read;
        verdict
    }

    /// The connection is closed, as the reactor closes one after [`Verdict::Close`] (or when
    /// it drops it): its commands are released to the I/O layer, its transfers end.
    pub fn release(&mut self) {
        self.with_context(|conn, cx| conn.release(cx));
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
            peer: self.peer,
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
            metrics: None,
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
        let deadline = self.conn.deadline(&self.limits);
        self.advance_to(io, deadline)
    }

    /// Moves the clock to `at` (never back); if the connection's deadline has passed by then,
    /// lets it act on it (as the reactor's timer does); then drives, in the same turn.
    pub fn advance_to<S: Transport>(&mut self, io: &mut S, at: Tick) -> Verdict {
        self.now = self.now.max(at);
        self.turn += 1;
        if self.conn.deadline(&self.limits) <= self.now {
            self.with_context(|conn, cx| conn.on_deadline(cx));
        }
        self.drive_this_turn(io)
    }

    /// Starts the connection's part of a server shutdown, with `grace` to finish, and drives.
    pub fn shutdown<S: Transport>(&mut self, io: &mut S, grace: Duration) -> Verdict {
        self.turn += 1;
        self.with_context(|conn, cx| conn.begin_shutdown(grace, cx));
        self.drive_this_turn(io)
    }
}

/// A transport seen through the harness: everything passed on, the bytes read counted.
struct Counted<'a, S> {
    io: &'a mut S,
    read: u64,
}

impl<S: Transport> Read for Counted<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.io.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<S: Transport> Write for Counted<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.io.flush()
    }
}

impl<S: Transport> Transport for Counted<'_, S> {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.io.shutdown_write()
    }

    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        self.io.send_file(file, offset, len)
    }

    fn send_pending(&mut self) -> io::Result<()> {
        self.io.send_pending()
    }

    fn wants(&self) -> Readiness {
        self.io.wants()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::exec::{EndReason, ExecRequest, Resize, Signal, Termination};
    use crate::proto::{Flags, Frame, FrameType, Hello};
    use crate::service::exec::{ChildId, OutputPipe, SpawnError, SpawnSpec, Spawned};
    use crate::testkit::{FuzzIo, MemoryIo};

    /// A `Children` of a test's own: counts spawns, runs them on scripted children.
    #[derive(Debug, Default)]
    struct Counting {
        inner: ScriptedChildren,
        spawns: usize,
    }

    impl Children for Counting {
        fn spawn(&mut self, index: u8, spec: &SpawnSpec<'_>) -> Result<Spawned, SpawnError> {
            self.spawns += 1;
            self.inner.spawn(index, spec)
        }
        fn read(&mut self, child: ChildId, pipe: OutputPipe, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(child, pipe, buf)
        }
        fn write_stdin(&mut self, child: ChildId, bytes: &[u8]) -> io::Result<usize> {
            self.inner.write_stdin(child, bytes)
        }
        fn close_stdin(&mut self, child: ChildId) {
            self.inner.close_stdin(child);
        }
        fn close_output(&mut self, child: ChildId, pipe: OutputPipe) {
            self.inner.close_output(child, pipe);
        }
        fn signal(&mut self, child: ChildId, signal: Signal) -> io::Result<()> {
            self.inner.signal(child, signal)
        }
        fn exit_status(&mut self, child: ChildId) -> io::Result<Option<Termination>> {
            self.inner.exit_status(child)
        }
        fn resize(&mut self, child: ChildId, size: Resize) -> io::Result<()> {
            self.inner.resize(child, size)
        }
        fn release(&mut self, child: ChildId, reason: EndReason) {
            self.inner.release(child, reason);
        }
    }

    const TOKEN: &[u8] = b"0123456789abcdef";

    #[test]
    fn a_children_of_your_own_plugs_in() {
        let mut harness =
            ConnHarness::framed(Limits::default()).with_children(TOKEN, Counting::default());
        let mut io = MemoryIo::new();
        let mut wire = Vec::new();
        Hello::with_credentials(TOKEN).encode(&mut wire);
        ExecRequest::new(vec![b"true"]).encode(1, &mut wire);
        io.push(&wire);
        harness.event(&mut io, true, true);
        assert_eq!(harness.children_mut().spawns, 1);
        let frames = io.take_frames();
        assert_eq!(frames[1].header.frame_type, FrameType::Started);
        harness.release();
        assert!(harness.children_mut().inner.unreleased().next().is_none());
    }

    #[test]
    fn input_consumed_leaves_out_a_partial_frame() {
        let mut harness = ConnHarness::framed(Limits::default());
        let mut io = FuzzIo::new();
        let mut wire = Vec::new();
        Hello::current().encode(&mut wire);
        let echo = Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 1, b"hello").to_vec();
        wire.extend_from_slice(&echo[..15]);
        io.push(&wire);
        harness.event(&mut io, true, true);
        assert_eq!(harness.input_read, wire.len() as u64);
        assert_eq!(harness.input_consumed(), (wire.len() - 15) as u64);
        io.push(&echo[15..]);
        harness.event(&mut io, true, false);
        assert_eq!(harness.input_consumed(), harness.input_read);
    }
}
