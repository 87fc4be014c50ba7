//! A connection's open streams: the requests that take time, each on the stream id its
//! request came on — a command ([`Exec`]), a download ([`Get`]), an upload ([`Put`]) or a
//! directory listing ([`List`]). A request answered at once (echo, STAT, DELETE, MKDIR) never
//! enters the table.
//!
//! **Memory.** The table is allocated with the first such request, its list with room for
//! every stream a connection may open ([`Limits::max_streams_per_connection`]), so opening
//! one never grows it. After the last one ends the list is freed at once and the table itself
//! (a few dozen bytes, remembering the child numbers just freed) at the connection's next
//! drive in a later turn; a connection that never opened a stream pays 8 bytes for it.
//!
//! **Child numbers.** Each command has a *child number* (below [`exec::CHILD_NUMBERS`]) that
//! names its pipes and pidfd in poll tokens; [`Streams::free_child_number`] never hands out a
//! number freed in the same turn of the loop, so an event of that turn's batch for the old
//! command cannot reach a new one.
//!
//! **Access lines.** Each entry carries its request's access-line fields (`Stream::record`:
//! the request as logged, its start, its bytes, its outcome once known), filled in by its
//! kind's pump and written out by [`close_record`] when the entry leaves the table — finished,
//! abandoned by the client, or released at a close — together with the counters of how it
//! ended ([`crate::metrics`]).
//!
//! **One module per kind of entry.** `exec.rs`, `get.rs`, `put.rs` and `list.rs` each hold
//! one kind and its turn of work; none knows of the table or of the others. This file holds
//! the table: lookups by stream id, the counts, and the loops over every entry.
//!
//! **Disk calls block**: a read or write of the page cache takes microseconds, one of a cold
//! disk milliseconds, an `fsync` of a big file seconds. So each turn a connection does at
//! most [`disk_budget`](crate::limits::Limits::disk_budget) bytes of file work — queueing
//! DATA ranges (sent later with `sendfile`), hashing, re-reading a resumed upload, listing —
//! and comes back next turn (nginx's `sendfile_max_chunk` rule). Every disk call goes through
//! the [`Disk`] in the connection's [`Context`] (`cx.files`): a transfer holds handles the
//! disk gave out, given back when it ends, never a descriptor — but for a GET's file, whose
//! DATA ranges the outbox sends with `sendfile`. Output obeys the outbox like everything
//! else: STDOUT and STDERR frames, DATA ranges and listing pages are produced only while
//! [`Outbox::may_produce`] is true.
//!
//! [`Limits::max_streams_per_connection`]: crate::limits::Limits::max_streams_per_connection

mod exec;
mod get;
mod list;
mod put;

use std::sync::Arc;
use std::time::Duration;

use log::debug;

pub(crate) use exec::Exec;
pub(crate) use get::Get;
pub(crate) use list::List;
pub(crate) use put::{Put, Received};

use super::context::{Budget, Context, Pumped};
use crate::access::Grant;
use crate::limits::Limits;
use crate::metrics::access::{Line, Outcome, Record};
use crate::metrics::{ExitCause, RequestKind};
use crate::outbox::Outbox;
use crate::proto::FrameType;
use crate::proto::exec::EndReason;
use crate::service::disk::{Disk, JobDone};
use crate::service::exec::ChildSource;
use crate::timer::Tick;

/// One open stream: its id, and what runs on it.
#[derive(Debug)]
pub(crate) struct Stream {
    /// The stream id its request came on (0 for an upload being discarded: the client may
    /// reuse the id at once).
    pub(crate) id: u32,
    /// What runs on it.
    pub(crate) kind: StreamKind,
    /// Its access line's fields so far, logged when it ends; `None` for an upload being
    /// discarded on stream 0 (its line was written when it failed).
    pub(crate) record: Option<Box<Record>>,
}

/// Logs a request's access line and counts how it ended: `otherwise` is the outcome when the
/// request recorded none (it was cut short).
pub(crate) fn close_record(
    record: &Record,
    cx: &mut Context<'_>,
    credential: Option<&str>,
    otherwise: Outcome,
) {
    let outcome = record.outcome.unwrap_or(otherwise);
    Line {
        peer: cx.peer.addr,
        credential,
        request: &record.request,
        outcome,
        bytes_in: record.bytes_in,
        bytes_out: record.bytes_out,
        millis: cx.now.0.saturating_sub(record.started.0),
    }
    .log();
    cx.count(|metrics| {
        if let Outcome::Error(code) = outcome {
            metrics.error(code);
        }
        match record.kind {
            RequestKind::Exec => metrics.exit(match outcome {
                Outcome::Exit(exit) => ExitCause::of_exit(&exit),
                Outcome::Ended(reason) => ExitCause::of_release(reason),
                _ => ExitCause::Disconnect,
            }),
            RequestKind::Get | RequestKind::Put | RequestKind::List => {
                if outcome == Outcome::Ok {
                    metrics.transfers_ok += 1;
                } else {
                    metrics.transfers_failed += 1;
                }
                match record.kind {
                    RequestKind::Get => metrics.get_bytes += record.bytes_out,
                    RequestKind::Put => metrics.put_bytes += record.bytes_in,
                    _ => {}
                }
            }
            _ => {}
        }
    });
}

/// What runs on a stream: one variant per kind of request that takes time.
#[derive(Debug)]
pub(crate) enum StreamKind {
    /// A command (EXEC).
    Exec(Exec),
    /// A download (GET).
    Get(Get),
    /// An upload (PUT), boxed: its upload state is twice the size of any other entry.
    Put(Box<Put>),
    /// A directory listing (LIST).
    List(List),
}

impl Stream {
    /// One turn of its work; `grant` shows its error texts as the client may see them.
    fn pump(
        &mut self,
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
        budget: &mut Budget,
        grant: Option<&Grant>,
    ) -> Pumped {
        let id = self.id;
        // An upload being discarded has no line left to write: its counts go nowhere.
        let mut detached = Record::new(RequestKind::Put, String::new(), cx.now);
        let record = self.record.as_deref_mut().unwrap_or(&mut detached);
        match &mut self.kind {
            StreamKind::Exec(exec) => exec.pump(id, outbox, cx, budget, record),
            StreamKind::Get(get) => get.pump(id, outbox, cx, budget, record),
            StreamKind::Put(put) => put.pump(id, outbox, cx, budget, grant, record),
            StreamKind::List(list) => list.pump(id, outbox, cx, budget, grant, record),
        }
    }

    /// Whether it has work that needs no new readiness event.
    fn wants_turn(&self, may_produce: bool, bytes_left: bool) -> bool {
        match &self.kind {
            StreamKind::Exec(exec) => exec.wants_turn(may_produce, bytes_left),
            StreamKind::Get(get) => get.wants_turn(may_produce),
            StreamKind::Put(put) => put.wants_turn(),
            StreamKind::List(_) => may_produce,
        }
    }

    /// Ends it before its time, for `reason`: a command is released (its group stopped), a
    /// transfer ends (an upload's resumable partial stays). Its access line says so, with the
    /// name of `grant`, the connection's credential.
    pub(crate) fn end(self, cx: &mut Context<'_>, reason: EndReason, grant: Option<&Grant>) {
        if let Some(record) = &self.record {
            let credential = grant.map(|grant| grant.name.as_str());
            close_record(record, cx, credential, Outcome::Ended(reason));
        }
        match self.kind {
            StreamKind::Exec(exec) => exec.end(cx, reason),
            transfer => {
                if let Some(disk) = cx.files.as_deref_mut() {
                    transfer.end_transfer(disk);
                }
            }
        }
    }

    /// It finished ([`Pumped::Finished`]): its last frame is queued, and its access line is
    /// written.
    fn finish(self, cx: &mut Context<'_>, grant: Option<&Grant>) {
        if let Some(record) = &self.record {
            let credential = grant.map(|grant| grant.name.as_str());
            close_record(record, cx, credential, Outcome::Ok);
        }
        match self.kind {
            StreamKind::Exec(exec) => {
                let reason = exec.session.reason();
                exec.end(cx, reason);
            }
            StreamKind::Put(put) => {
                if let Some(disk) = cx.files.as_deref_mut() {
                    put.finish(disk);
                }
            }
            transfer => {
                if let Some(disk) = cx.files.as_deref_mut() {
                    transfer.end_transfer(disk);
                }
            }
        }
    }
}

impl StreamKind {
    /// A transfer is over: what it holds goes back to the disk. (A command has nothing there.)
    fn end_transfer(self, disk: &mut dyn Disk) {
        match self {
            StreamKind::Exec(_) => {}
            StreamKind::Get(get) => get.end(disk),
            StreamKind::Put(put) => put.end(disk),
            StreamKind::List(list) => list.end(disk),
        }
    }
}

/// The open streams of one connection, and the grant it authenticated with.
#[derive(Debug)]
pub(crate) struct Streams {
    /// In the order the streams opened, but for removals, which move the last entry into the
    /// gap.
    entries: Vec<Stream>,
    /// Child numbers freed in turn `cooling_turn`, not to be reused before the next turn.
    cooling: u64,
    cooling_turn: u64,
    /// The access file's grant the connection authenticated with, kept for its whole life (a
    /// reload does not change it). It lives here rather than in the connection, whose every
    /// byte counts for every idle connection: only a connection authenticated by an access
    /// file pays for it, with this table (kept while the grant is).
    pub(crate) grant: Option<Arc<Grant>>,
}

impl Streams {
    /// An empty table with room for `capacity` streams.
    pub(crate) fn new(capacity: usize) -> Box<Streams> {
        Box::new(Streams {
            entries: Vec::with_capacity(capacity),
            cooling: 0,
            cooling_turn: 0,
            grant: None,
        })
    }

    /// An empty table holding `grant`, its list allocated with its first stream.
    pub(crate) fn for_grant(grant: Arc<Grant>) -> Box<Streams> {
        Box::new(Streams {
            entries: Vec::new(),
            cooling: 0,
            cooling_turn: 0,
            grant: Some(grant),
        })
    }

    /// Streams open: commands and transfers.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Commands running.
    pub(crate) fn commands(&self) -> usize {
        self.entries
            .iter()
            .filter(|stream| matches!(stream.kind, StreamKind::Exec(_)))
            .count()
    }

    /// Verified uploads being committed.
    pub(crate) fn commits(&self) -> usize {
        self.entries
            .iter()
            .filter(|stream| matches!(&stream.kind, StreamKind::Put(put) if put.is_committing()))
            .count()
    }

    /// Whether a stream is open on `id`.
    pub(crate) fn contains(&self, id: u32) -> bool {
        self.entries.iter().any(|stream| stream.id == id)
    }

    /// The command on stream `id`.
    pub(crate) fn command_mut(&mut self, id: u32) -> Option<&mut Exec> {
        self.entries
            .iter_mut()
            .find_map(|stream| match &mut stream.kind {
                StreamKind::Exec(exec) if stream.id == id => Some(exec),
                _ => None,
            })
    }

    /// A child number neither in use nor freed during `turn`.
    pub(crate) fn free_child_number(&self, turn: u64) -> Option<u8> {
        let cooling = if self.cooling_turn == turn {
            self.cooling
        } else {
            0
        };
        let used = self
            .entries
            .iter()
            .fold(cooling, |mask, stream| match &stream.kind {
                StreamKind::Exec(exec) => mask | 1 << exec.child_number,
                _ => mask,
            });
        (0..exec::CHILD_NUMBERS).find(|number| used & (1 << number) == 0)
    }

    /// Adds a stream that has just opened; an empty list gets room for `capacity` at once,
    /// so opening more never grows it.
    pub(crate) fn insert(
        &mut self,
        id: u32,
        kind: StreamKind,
        record: Option<Box<Record>>,
        capacity: usize,
    ) {
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(capacity);
        }
        self.entries.push(Stream { id, kind, record });
    }

    /// Takes the stream `id` out of the table (a command's child number cools for `turn`).
    pub(crate) fn remove(&mut self, id: u32, turn: u64) -> Option<Stream> {
        let at = self.entries.iter().position(|stream| stream.id == id)?;
        let stream = self.remove_at(at, turn);
        self.free_if_empty();
        Some(stream)
    }

    fn remove_at(&mut self, at: usize, turn: u64) -> Stream {
        let stream = self.entries.swap_remove(at);
        if let StreamKind::Exec(exec) = &stream.kind {
            self.cool(exec.child_number, turn);
        }
        stream
    }

    fn cool(&mut self, child_number: u8, turn: u64) {
        if self.cooling_turn != turn {
            self.cooling = 0;
            self.cooling_turn = turn;
        }
        self.cooling |= 1 << child_number;
    }

    /// The table itself must outlive this turn (it remembers the cooling child numbers); its
    /// list need not.
    fn free_if_empty(&mut self) {
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = Vec::new();
        }
    }

    /// Whether the table is empty and may be dropped: no stream is open, no child number is
    /// cooling in `turn` (dropping it would forget that), and it holds no grant.
    pub(crate) fn is_finished(&self, turn: u64) -> bool {
        self.grant.is_none()
            && self.entries.is_empty()
            && (self.cooling == 0 || self.cooling_turn != turn)
    }

    /// Records readiness for the command with child number `child_number`.
    pub(crate) fn on_child_ready(&mut self, child_number: u8, source: ChildSource) {
        let command = self
            .entries
            .iter_mut()
            .find_map(|stream| match &mut stream.kind {
                StreamKind::Exec(exec) if exec.child_number == child_number => Some(exec),
                _ => None,
            });
        if let Some(command) = command {
            command.on_ready(source);
        }
    }

    /// The commands, for what only they have: deadlines, signals.
    fn commands_mut(&mut self) -> impl Iterator<Item = &mut Exec> {
        self.entries
            .iter_mut()
            .filter_map(|stream| match &mut stream.kind {
                StreamKind::Exec(exec) => Some(exec),
                _ => None,
            })
    }

    /// The earliest deadline of any command (transfers have none: bytes moving keep the
    /// connection's idle deadline away).
    pub(crate) fn deadline(&self) -> Tick {
        self.entries
            .iter()
            .filter_map(|stream| match &stream.kind {
                StreamKind::Exec(exec) => Some(exec.session.poll_timeout()),
                _ => None,
            })
            .min()
            .unwrap_or(Tick::NEVER)
    }

    /// Passes `now` to every command whose deadline has come.
    pub(crate) fn handle_timeout(&mut self, now: Tick, limits: &Limits) {
        for command in self.commands_mut() {
            if command.session.poll_timeout() <= now {
                command.session.handle_timeout(now, limits);
            }
        }
    }

    /// Stops every command for a shutdown: SIGTERM now, SIGKILL after `kill_grace`.
    pub(crate) fn handle_shutdown(&mut self, now: Tick, kill_grace: Duration) {
        for command in self.commands_mut() {
            command.session.handle_shutdown(now, kill_grace);
        }
    }

    /// Whether a stream has work that needs no new readiness event: a command's bytes to move
    /// with readiness in hand (`bytes_left` of the read budget) or its exit to read; a
    /// transfer's disk work, or output the outbox may take (`may_produce`).
    pub(crate) fn wants_turn(&self, may_produce: bool, bytes_left: bool) -> bool {
        self.entries
            .iter()
            .any(|stream| stream.wants_turn(may_produce, bytes_left))
    }

    /// Runs every stream's work for this turn, as far as readiness, the outbox and the budget
    /// allow; the streams that finish leave the table. Commands go first, then transfers: a
    /// command waits on its full pipe, a file does not. Returns whether anything moved.
    pub(crate) fn pump(
        &mut self,
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> bool {
        let mut progress = false;
        for commands in [true, false] {
            let mut at = 0;
            while at < self.entries.len() {
                let stream = &mut self.entries[at];
                if matches!(stream.kind, StreamKind::Exec(_)) != commands {
                    at += 1;
                    continue;
                }
                match stream.pump(outbox, cx, budget, self.grant.as_deref()) {
                    Pumped::Running(moved) => {
                        progress |= moved;
                        at += 1;
                    }
                    Pumped::Finished => {
                        let finished = self.remove_at(at, cx.turn);
                        finished.finish(cx, self.grant.as_deref());
                        progress = true;
                    }
                }
            }
        }
        self.free_if_empty();
        progress
    }

    /// Ends every stream (the connection is closing): the transfers end (an upload's
    /// resumable partial stays), then the commands are released to the I/O layer, which stops
    /// their groups and reaps them.
    pub(crate) fn release_all(&mut self, cx: &mut Context<'_>, reason: EndReason) {
        self.end_where(cx, reason, |kind| !matches!(kind, StreamKind::Exec(_)));
        self.release_commands(cx, reason);
    }

    /// Releases every command to the I/O layer; transfers are left alone.
    pub(crate) fn release_commands(&mut self, cx: &mut Context<'_>, reason: EndReason) {
        // Last opened, first released.
        let mut at = self.entries.len();
        while at > 0 {
            at -= 1;
            if !matches!(self.entries[at].kind, StreamKind::Exec(_)) {
                continue;
            }
            let stream = self.entries.remove(at);
            if let StreamKind::Exec(exec) = &stream.kind {
                debug!(
                    "stream {}: command pid {} released ({reason})",
                    stream.id,
                    exec.session.pid()
                );
                self.cool(exec.child_number, cx.turn);
            }
            stream.end(cx, reason, self.grant.as_deref());
        }
        self.free_if_empty();
    }

    /// Ends the uploads still receiving (their resumable partials stay for a resume); GETs,
    /// LISTs and commits go on: they need nothing more from the client.
    pub(crate) fn release_uploads(&mut self, cx: &mut Context<'_>) {
        if cx.files.is_none() {
            return;
        }
        self.end_where(
            cx,
            EndReason::Disconnect,
            |kind| matches!(kind, StreamKind::Put(put) if put.is_receiving()),
        );
    }

    /// Ends the streams `which` picks, in table order, keeping the others' order.
    fn end_where(
        &mut self,
        cx: &mut Context<'_>,
        reason: EndReason,
        which: impl Fn(&StreamKind) -> bool,
    ) {
        let mut at = 0;
        while at < self.entries.len() {
            if which(&self.entries[at].kind) {
                let stream = self.entries.remove(at);
                if let StreamKind::Exec(exec) = &stream.kind {
                    self.cool(exec.child_number, cx.turn);
                }
                stream.end(cx, reason, self.grant.as_deref());
            } else {
                at += 1;
            }
        }
        self.free_if_empty();
    }

    /// DATA or DIGEST from the client for the upload on stream `id`: its next bytes, or its
    /// trailer. Frames for a stream with no upload receiving are ignored (they may have
    /// crossed the stream's ERROR on the wire).
    pub(crate) fn upload_frame(
        &mut self,
        id: u32,
        frame_type: FrameType,
        payload: &[u8],
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
    ) {
        let upload = self.entries.iter().position(|stream| {
            stream.id == id && matches!(&stream.kind, StreamKind::Put(put) if put.is_receiving())
        });
        let Some(at) = upload else {
            debug!("{frame_type} for stream {id}, which has no upload: ignored");
            return;
        };
        let entry = &mut self.entries[at];
        let StreamKind::Put(put) = &mut entry.kind else {
            return;
        };
        let received = put.on_frame(id, frame_type, payload, outbox, cx);
        if let (Received::More, Some(record)) = (&received, entry.record.as_deref_mut()) {
            if frame_type == FrameType::Data {
                record.bytes_in += payload.len() as u64;
            }
        }
        if matches!(received, Received::More) {
            return;
        }
        // Out of the table, and back at its end if it goes on (committing, or discarding on
        // stream 0).
        let Stream {
            kind: StreamKind::Put(put),
            mut record,
            ..
        } = self.entries.swap_remove(at)
        else {
            return;
        };
        let mut detached = Record::new(RequestKind::Put, String::new(), cx.now);
        let settled = put.settle(
            id,
            received,
            outbox,
            cx,
            self.grant.as_deref(),
            record.as_deref_mut().unwrap_or(&mut detached),
        );
        // Verified, it goes on on its stream, and its line waits for the DIGEST; failed, its
        // line is written now (a discard goes on, lineless, on stream 0).
        let (kept, record) = match settled {
            Some((kept_id, put)) if kept_id == id => (Some((kept_id, put)), record),
            kept => {
                if let Some(record) = record {
                    let credential = self.grant.as_deref().map(|grant| grant.name.as_str());
                    close_record(&record, cx, credential, Outcome::Ok);
                }
                (kept, None)
            }
        };
        if let Some((id, put)) = kept {
            self.insert(
                id,
                StreamKind::Put(put),
                record,
                cx.limits.max_streams_per_connection,
            );
        }
        self.free_if_empty();
    }

    /// Whether an upload has run ahead of the disk: the connection then reads no more until
    /// a sync comes back.
    pub(crate) fn disk_bound(&self) -> bool {
        self.entries
            .iter()
            .any(|stream| matches!(&stream.kind, StreamKind::Put(put) if put.disk_bound()))
    }

    /// A finished disk job: noted by the upload that waits for it (which may hand the disk
    /// its next job). Returns whether one did.
    pub(crate) fn on_disk_done(&mut self, done: &JobDone, disk: &mut dyn Disk) -> bool {
        self.entries
            .iter_mut()
            .any(|stream| match &mut stream.kind {
                StreamKind::Put(put) => put.on_disk_done(done, disk),
                _ => false,
            })
    }
}
