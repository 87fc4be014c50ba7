//! The file service, blocking: fetch, store, list, stat, delete and create files under a
//! server's root. `monoreactor get`, `put`, `ls`, `stat`, `rm` and `mkdir` are thin layers over
//! this, and tests can drive it with any `Write` as the sink and any `Read + Seek` as the source.
//!
//! One request at a time, each on a new stream (1, 2, 3, ...), answered before the next one
//! starts (see [`crate::proto::files`] for the frames):
//!
//! - [`FileClient::get`]: GET, then FILE_INFO, DATA covering `[offset, size)` in order, and
//!   DIGEST. Every byte written to the sink is hashed, continuing the hash of the `offset`
//!   bytes the caller already has, and the whole file's BLAKE3 must equal the DIGEST (and
//!   FILE_INFO's hash, if the server gave one): otherwise [`ClientError::Verify`].
//! - [`FileClient::put`]: PUT with the declared hash (resumable), PUT_READY says how much the
//!   server already holds, DATA from there, then our DIGEST; the server's DIGEST must equal
//!   the declared hash.
//! - [`FileClient::list`], [`FileClient::stat`], [`FileClient::mkdir`], [`FileClient::delete`]:
//!   one request, one answer (LIST's may come in several pages).
//!
//! An ERROR on the request's stream ends that request ([`ClientError::Server`]); the
//! connection stays usable. An ERROR on stream 0 ends the connection. When the client gives up
//! on a transfer for a reason of its own (a local write fails, the bytes do not add up), it
//! sends an ERROR on the transfer's stream, so the server stops sending or abandons the upload;
//! frames still in flight for that stream are skipped by later requests.
//!
//! Around these, the helpers the command line uses and tests may reuse: [`Destination`] (where
//! a download goes, checked before it starts), [`download`] (to a file atomically: a part file
//! beside it, verified, synced and renamed, resumable; through anything else, never replacing
//! it), [`spool`] (a pipe into an anonymous temporary file, hashed on the way, so it can be
//! put like a file), [`hash_reader`], [`normalize_remote`], [`sort_entries`]. Listings and
//! STAT answers come back typed ([`OwnedDirEntry`], [`FileInfo`]); showing them as text or
//! JSON is the command line's business.
//!
//! # Timeouts
//! [`FileClient::connect`] bounds the connect and the handshake by its `timeout`; afterwards
//! every read and write waits at most [`IO_TIMEOUT`] (the server may be busy hashing a large
//! file before it answers, or syncing one to disk). [`FileClient::set_timeout`] changes it.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::debug;

use super::{Client, ClientError, OwnedFrame, Pieces, Received, Target};
use crate::access::Token;
use crate::proto::files::{
    Digest, Entries, FileInfo, FileKind, GetRequest, Hash, MAX_PATH_LEN, PutFlags, PutReady,
    PutRequest,
};
use crate::proto::path::check_relative;
use crate::proto::{
    ErrorCode, ErrorMessage, Flags, Frame, FrameType, HEADER_LEN, Header, HelloOk, SessionFlags,
};

/// A GET in progress: where its DATA pieces go (the sink and the hash).
struct Download<'a> {
    stream: u32,
    total: u64,
    done: u64,
    sink: &'a mut dyn Write,
    hasher: blake3::Hasher,
    /// The buffer pieces are read into, between two pieces.
    spare: Option<Vec<u8>>,
}

impl Pieces for Download<'_> {
    fn buffer(&mut self) -> Vec<u8> {
        self.spare.take().unwrap_or_default()
    }

    fn take(&mut self, header: &Header, piece: Vec<u8>, len: usize) -> Result<(), ClientError> {
        if header.stream == self.stream && header.frame_type == FrameType::Data {
            let bytes = &piece[..len];
            if len as u64 > self.total - self.done {
                return Err(ClientError::Verify(format!(
                    "the server sent more than the {} bytes FILE_INFO announced",
                    self.total
                )));
            }
            self.sink.write_all(bytes).map_err(ClientError::Output)?;
            self.hasher.update(bytes);
            self.done += len as u64;
        }
        // Anything else is another stream's leftovers, dropped; the buffer is kept.
        self.spare = Some(piece);
        Ok(())
    }
}

/// The protocol version that has the file service.
pub const FILES_VERSION: u16 = 2;

/// Largest DATA payload sent (the server's own limit per DATA frame, and at most its frame
/// limit from HELLO_OK).
pub const MAX_DATA: usize = 1 << 20;

/// How long a read or write may wait once connected (see the module docs).
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// Size of the reads when hashing or spooling local data.
const READ_CHUNK: usize = 1 << 20;

/// One directory entry, owning its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedDirEntry {
    /// Its name within the directory.
    pub name: String,
    /// What it is (a symlink is reported as one, never followed).
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// What a successful GET delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetOutcome {
    /// The server's FILE_INFO for the file.
    pub info: FileInfo,
    /// The whole file's BLAKE3, as computed here and confirmed by the server's DIGEST.
    pub hash: Hash,
}

/// What a successful PUT did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The upload's id from PUT_READY (derived from path, size and hash).
    pub upload_id: u64,
    /// Bytes the server already held when the upload started (non-zero only on a resume).
    pub held: u64,
    /// The hash the server computed over the stored file (equal to the declared one).
    pub hash: Hash,
}

/// A connection that has done HELLO and makes file requests, one at a time.
#[derive(Debug)]
pub struct FileClient {
    client: Client,
    hello: HelloOk,
    next_stream: u32,
}

impl FileClient {
    /// Connects to `addr` and sends HELLO with `token` (none: the server decides; one with a
    /// token refuses file requests without it). `timeout` bounds the connect and the
    /// handshake; later reads and writes wait at most [`IO_TIMEOUT`].
    pub fn connect(
        target: impl Into<Target>,
        token: Option<&Token>,
        timeout: Duration,
    ) -> Result<FileClient, ClientError> {
        let credentials = token.map_or(&[][..], Token::as_bytes);
        let (client, hello) = Client::connect_with(target, credentials, timeout)?;
        let mut files = FileClient::from_client(client, hello)?;
        files.set_timeout(Some(IO_TIMEOUT))?;
        Ok(files)
    }

    /// Wraps a client that has already done HELLO, with the server's answer. Refuses a
    /// connection that cannot have the file service: one that speaks version 1, or an
    /// authenticated one whose HELLO_OK lacks [`SessionFlags::FILES`] (a server from before
    /// it). An unauthenticated one is accepted: the server's UNAUTHENTICATED answer to the
    /// first request then says what is missing.
    pub fn from_client(client: Client, hello: HelloOk) -> Result<FileClient, ClientError> {
        let authenticated = hello.flags.contains(SessionFlags::AUTHENTICATED);
        if hello.version < FILES_VERSION
            || (authenticated && !hello.flags.contains(SessionFlags::FILES))
        {
            return Err(ClientError::Unsupported {
                version: hello.version,
                feature: "file service",
            });
        }
        Ok(FileClient {
            client,
            hello,
            next_stream: 1,
        })
    }

    /// The server's HELLO_OK: the version, the frame limit, the session flags.
    pub fn hello_ok(&self) -> HelloOk {
        self.hello
    }

    /// Sets how long a read or a write may wait (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        let socket = self.client.stream();
        socket.set_read_timeout(timeout)?;
        socket.set_write_timeout(timeout)?;
        Ok(())
    }

    /// A new stream id for a request (for the pipelined transfers of [`super::tree`]).
    pub(crate) fn open_stream(&mut self) -> u32 {
        let stream = self.next_stream;
        self.next_stream = self.next_stream.checked_add(1).unwrap_or(1);
        stream
    }

    /// The connection under this client, for [`super::tree`], which keeps several requests
    /// in flight on it.
    pub(crate) fn raw(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Gives up the file client, returning the connection.
    pub fn into_client(self) -> Client {
        self.client
    }

    /// STAT: what `path` names (a symlink is reported as one). `""` is the root.
    pub fn stat(&mut self, path: &str) -> Result<FileInfo, ClientError> {
        let stream = self.request(FrameType::Stat, path.as_bytes())?;
        let frame = self.next_on(stream)?;
        match frame.header.frame_type {
            FrameType::FileInfo => FileInfo::parse(&frame.payload).map_err(ClientError::Message),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    /// STAT, with the permission bits a server of this version sends after FILE_INFO's 50
    /// bytes (`None` from an older server, which does not).
    pub fn stat_with_mode(&mut self, path: &str) -> Result<(FileInfo, Option<u32>), ClientError> {
        let stream = self.request(FrameType::Stat, path.as_bytes())?;
        let frame = self.next_on(stream)?;
        match frame.header.frame_type {
            FrameType::FileInfo => {
                let info = FileInfo::parse(&frame.payload).map_err(ClientError::Message)?;
                Ok((info, FileInfo::parse_mode(&frame.payload)))
            }
            other => Err(ClientError::Unexpected(other)),
        }
    }

    /// LIST: the entries of directory `dir` (`""` is the root), in the server's order (the
    /// caller sorts), every page collected until the one with END_STREAM.
    pub fn list(&mut self, dir: &str) -> Result<Vec<OwnedDirEntry>, ClientError> {
        let stream = self.request(FrameType::List, dir.as_bytes())?;
        let mut entries = Vec::new();
        loop {
            let frame = self.next_on(stream)?;
            if frame.header.frame_type != FrameType::Entries {
                return Err(ClientError::Unexpected(frame.header.frame_type));
            }
            for entry in Entries::new(&frame.payload) {
                let entry = entry.map_err(ClientError::Message)?;
                entries.push(OwnedDirEntry {
                    name: entry.name.to_string(),
                    kind: entry.kind,
                    size: entry.size,
                    mtime_ns: entry.mtime_ns,
                });
            }
            if frame.header.flags.contains(Flags::END_STREAM) {
                return Ok(entries);
            }
        }
    }

    /// MKDIR: creates directory `path` (one level: its parent must exist).
    pub fn mkdir(&mut self, path: &str) -> Result<(), ClientError> {
        self.expect_done(FrameType::Mkdir, path)
    }

    /// DELETE: removes a file, a symlink (the link itself) or an empty directory.
    pub fn delete(&mut self, path: &str) -> Result<(), ClientError> {
        self.expect_done(FrameType::Delete, path)
    }

    fn expect_done(&mut self, request: FrameType, path: &str) -> Result<(), ClientError> {
        let stream = self.request(request, path.as_bytes())?;
        let frame = self.next_on(stream)?;
        match frame.header.frame_type {
            FrameType::Done => Ok(()),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    /// GET: writes bytes `offset..` of `remote` to `sink` and verifies the whole file.
    ///
    /// `prefix` is a hasher that has hashed the `offset` bytes the caller already has
    /// (`blake3::Hasher::new()` for a whole file); every byte written to `sink` continues it,
    /// and the result must equal the server's DIGEST, and FILE_INFO's hash if it carried one,
    /// or this returns [`ClientError::Verify`] (after the bytes were written: the caller
    /// decides what to do with them). `progress(done, total)` is called after FILE_INFO and
    /// after each DATA frame, with `done` counting from the start of the file.
    ///
    /// Errors: [`ClientError::Server`] for the server's ERROR (not found, a directory, an
    /// offset past the end, ...), [`ClientError::Output`] if `sink` fails (the server is told
    /// to stop), [`ClientError::Verify`] if the bytes do not add up or do not match.
    pub fn get(
        &mut self,
        remote: &str,
        offset: u64,
        prefix: blake3::Hasher,
        sink: &mut dyn Write,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<GetOutcome, ClientError> {
        if prefix.count() != offset {
            return Err(ClientError::Io(io::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the prefix hasher has hashed {} bytes, the offset is {offset}",
                    prefix.count()
                ),
            )));
        }
        let request = GetRequest {
            offset,
            path: remote,
        };
        let mut payload = vec![0; request.payload_len()];
        request.emit(&mut payload);
        let stream = self.request(FrameType::Get, &payload)?;
        let result = self.receive(stream, offset, prefix, sink, progress);
        if let Err(error) = &result {
            self.abandon_after(stream, error);
        }
        result
    }

    /// Receives a GET's frames. Each DATA payload is read in pieces of [`STREAM_PIECE`](super::STREAM_PIECE)
    /// bytes into one buffer small enough to stay in the cache, and each piece is written to
    /// `sink` and hashed while it is there. (Hashing on a second thread was measured slower
    /// on a 2-core machine: the pieces then travel between the cores' caches, which costs more
    /// kernel time in the copy than the overlap saves.)
    fn receive(
        &mut self,
        stream: u32,
        offset: u64,
        hasher: blake3::Hasher,
        sink: &mut dyn Write,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<GetOutcome, ClientError> {
        let mut download = Download {
            stream,
            total: 0,
            done: offset,
            sink,
            hasher,
            spare: None,
        };
        let (info, digest) = self.receive_frames(&mut download, progress)?;
        self.verify(offset, info, digest, download.done, download.hasher)
    }

    /// The frames of a GET up to its DIGEST; DATA goes through `download`.
    fn receive_frames(
        &mut self,
        download: &mut Download<'_>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(FileInfo, Digest), ClientError> {
        let stream = download.stream;
        let offset = download.done;
        let frame = self.next_on(stream)?;
        if frame.header.frame_type != FrameType::FileInfo {
            return Err(ClientError::Unexpected(frame.header.frame_type));
        }
        let info = FileInfo::parse(&frame.payload).map_err(ClientError::Message)?;
        if frame.header.flags.contains(Flags::END_STREAM) {
            return Err(ClientError::Verify(
                "the server ended the transfer after FILE_INFO, without a DIGEST".to_string(),
            ));
        }
        if offset > info.size {
            return Err(ClientError::Verify(format!(
                "the server accepted offset {offset} for a file of {} bytes",
                info.size
            )));
        }
        download.total = info.size;
        progress(download.done, download.total);
        loop {
            let (header, frame) = match self.client.recv_frame_streaming(download)? {
                Received::Streamed(header) => (header, None),
                Received::Frame(frame) => (frame.header, Some(frame)),
            };
            if header.frame_type == FrameType::Error
                && (header.stream == stream || header.stream == 0)
            {
                let payload = frame.map(|frame| frame.payload).unwrap_or_default();
                return Err(server_error(&payload));
            }
            if header.stream != stream {
                debug!(
                    "skipping {} on stream {} (waiting on {stream})",
                    header.frame_type, header.stream
                );
                continue;
            }
            match header.frame_type {
                FrameType::Data => {
                    if let Some(frame) = frame {
                        // A small DATA frame arrives whole.
                        let len = frame.payload.len();
                        download.take(&header, frame.payload, len)?;
                    }
                    progress(download.done, download.total);
                    if header.flags.contains(Flags::END_STREAM) {
                        return Err(ClientError::Verify(
                            "the server ended the transfer without a DIGEST".to_string(),
                        ));
                    }
                }
                FrameType::Digest => {
                    let payload = frame.map(|frame| frame.payload).unwrap_or_default();
                    let digest = Digest::parse(&payload).map_err(ClientError::Message)?;
                    if download.done != download.total {
                        return Err(ClientError::Verify(format!(
                            "the transfer ended after {} of the {} bytes FILE_INFO announced",
                            download.done, download.total
                        )));
                    }
                    download.sink.flush().map_err(ClientError::Output)?;
                    return Ok((info, digest));
                }
                FrameType::Unknown(byte) => debug!("ignoring frame type 0x{byte:02x}"),
                other => return Err(ClientError::Unexpected(other)),
            }
        }
    }

    /// Checks the bytes received against the DIGEST and FILE_INFO's hash.
    fn verify(
        &self,
        offset: u64,
        info: FileInfo,
        digest: Digest,
        done: u64,
        hasher: blake3::Hasher,
    ) -> Result<GetOutcome, ClientError> {
        debug_assert_eq!(done, info.size);
        let computed = *hasher.finalize().as_bytes();
        let cause = if offset > 0 {
            format!(
                "the {offset} bytes resumed from are probably from another version of \
                 the file, or it changed during the transfer"
            )
        } else {
            "the file changed during the transfer, or bytes were corrupted".to_string()
        };
        if computed != digest.hash {
            return Err(ClientError::Verify(format!(
                "the file hashes to {} here but to {} on the server: {cause}",
                hex(&computed),
                hex(&digest.hash)
            )));
        }
        if let Some(announced) = info.hash.filter(|&known| known != computed) {
            return Err(ClientError::Verify(format!(
                "the file hashes to {} here, but the server announced {}: {cause}",
                hex(&computed),
                hex(&announced)
            )));
        }
        Ok(GetOutcome {
            info,
            hash: computed,
        })
    }

    /// PUT: stores `size` bytes from `source` (its start to `size`) as `remote`, declaring
    /// `hash`, the whole file's BLAKE3 (the upload can then be resumed). With `resume` the
    /// server keeps what it holds of an earlier upload of the same path, size and hash, and
    /// `source` is sought to there; otherwise it starts from 0. DATA frames are at most
    /// [`MAX_DATA`] bytes and at most the server's frame limit. `progress(done, size)` is
    /// called after PUT_READY and after each DATA frame.
    ///
    /// The server's ERROR (a hash mismatch, no space, a limit, ...) is noticed as soon as it
    /// arrives, not only after the last byte. Errors reading `source` are
    /// [`ClientError::Local`] (the server is told to stop; a declared upload's partial stays
    /// there for a resume). The server's final DIGEST must equal `hash`.
    pub fn put<R: Read + Seek + ?Sized>(
        &mut self,
        remote: &str,
        source: &mut R,
        size: u64,
        hash: Hash,
        resume: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<PutOutcome, ClientError> {
        let request = PutRequest {
            size,
            flags: if resume {
                PutFlags::RESUME
            } else {
                PutFlags::NONE
            },
            hash: Some(hash),
            attrs: None,
            path: remote,
        };
        let mut payload = vec![0; request.payload_len()];
        request.emit(&mut payload);
        let stream = self.request(FrameType::Put, &payload)?;
        let result = self.send(stream, source, size, hash, progress);
        if let Err(error) = &result {
            self.abandon_after(stream, error);
        }
        result
    }

    fn send<R: Read + Seek + ?Sized>(
        &mut self,
        stream: u32,
        source: &mut R,
        size: u64,
        hash: Hash,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<PutOutcome, ClientError> {
        let frame = self.next_on(stream)?;
        if frame.header.frame_type != FrameType::PutReady {
            return Err(ClientError::Unexpected(frame.header.frame_type));
        }
        let ready = PutReady::parse(&frame.payload).map_err(ClientError::Message)?;
        if ready.held > size {
            return Err(ClientError::Verify(format!(
                "the server holds {} bytes of a {size}-byte upload",
                ready.held
            )));
        }
        source
            .seek(SeekFrom::Start(ready.held))
            .map_err(|source| local("seek in the local file", source))?;
        let mut done = ready.held;
        progress(done, size);
        let chunk = MAX_DATA.min(self.hello.max_payload_len as usize).max(1);
        let mut wire = vec![0; HEADER_LEN + chunk];
        while done < size {
            let len = chunk.min(usize::try_from(size - done).unwrap_or(usize::MAX));
            read_exactly(source, &mut wire[HEADER_LEN..HEADER_LEN + len])?;
            Header {
                frame_type: FrameType::Data,
                flags: Flags::NONE,
                stream,
                len: len as u32,
            }
            .emit(&mut wire[..HEADER_LEN]);
            self.send_on(stream, &wire[..HEADER_LEN + len])?;
            done += len as u64;
            progress(done, size);
            // Nothing is due on this stream before our DIGEST: anything for it is the server
            // refusing (an ERROR on the stream or on the connection) or going away. Frames
            // left from an earlier request on another stream are skipped without waiting.
            while self.input_pending() {
                let frame = self.client.recv_frame()?;
                let header = frame.header;
                if header.frame_type == FrameType::Error
                    && (header.stream == stream || header.stream == 0)
                {
                    return Err(server_error(&frame.payload));
                }
                if header.stream == stream {
                    return Err(ClientError::Unexpected(header.frame_type));
                }
                debug!(
                    "skipping {} on stream {} (sending on {stream})",
                    header.frame_type, header.stream
                );
            }
        }
        let mut trailer = [0; Digest::PAYLOAD_LEN];
        Digest { hash }.emit(&mut trailer);
        let digest = Frame::new(FrameType::Digest, Flags::END_STREAM, stream, &trailer).to_vec();
        self.send_on(stream, &digest)?;
        let frame = self.next_on(stream)?;
        if frame.header.frame_type != FrameType::Digest {
            return Err(ClientError::Unexpected(frame.header.frame_type));
        }
        let stored = Digest::parse(&frame.payload).map_err(ClientError::Message)?;
        if stored.hash != hash {
            return Err(ClientError::Verify(format!(
                "the server stored a file that hashes to {}, not the {} sent",
                hex(&stored.hash),
                hex(&hash)
            )));
        }
        Ok(PutOutcome {
            upload_id: ready.upload_id,
            held: ready.held,
            hash: stored.hash,
        })
    }

    /// Sends a request on a new stream and returns the stream.
    fn request(&mut self, frame_type: FrameType, payload: &[u8]) -> Result<u32, ClientError> {
        if payload.len() > self.hello.max_payload_len as usize {
            // The server would refuse it from the header and close the connection.
            return Err(ClientError::TooLarge {
                len: payload.len(),
                max: self.hello.max_payload_len,
            });
        }
        let stream = self.next_stream;
        self.next_stream = self.next_stream.checked_add(1).unwrap_or(1);
        let frame = Frame::new(frame_type, Flags::NONE, stream, payload).to_vec();
        self.send_on(stream, &frame)?;
        Ok(stream)
    }

    /// Sends bytes for `stream`. If the send fails, the server has probably said why before it
    /// closed: that ERROR is returned when it can still be read.
    fn send_on(&mut self, stream: u32, bytes: &[u8]) -> Result<(), ClientError> {
        let Err(error) = self.client.send_raw(bytes) else {
            return Ok(());
        };
        if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            return Err(ClientError::Io(error));
        }
        match self.next_on(stream) {
            Err(server @ ClientError::Server { .. }) => Err(server),
            _ => Err(ClientError::Io(error)),
        }
    }

    /// The next frame on `stream`. An ERROR on it or on stream 0 is returned as
    /// [`ClientError::Server`]; frames on other streams (requests given up on) and frames of
    /// types this build does not know are skipped.
    fn next_on(&mut self, stream: u32) -> Result<OwnedFrame, ClientError> {
        loop {
            let frame = self.client.recv_frame()?;
            let header = frame.header;
            if header.frame_type == FrameType::Error
                && (header.stream == stream || header.stream == 0)
            {
                return Err(server_error(&frame.payload));
            }
            if header.stream != stream {
                debug!(
                    "skipping {} on stream {} (waiting on {stream})",
                    header.frame_type, header.stream
                );
                continue;
            }
            if let FrameType::Unknown(byte) = header.frame_type {
                debug!("ignoring frame type 0x{byte:02x}");
                continue;
            }
            return Ok(frame);
        }
    }

    /// Whether something has arrived that the next read would return (bytes, end of file or
    /// an error), without blocking. Under TLS a record may be only a session ticket or a key
    /// update: the read that follows then waits for a frame, as it would anyway.
    fn input_pending(&mut self) -> bool {
        self.client.input_pending()
    }

    /// After `error` ended a transfer early, tells the server to stop it, unless the stream or
    /// the connection is already over.
    fn abandon_after(&mut self, stream: u32, error: &ClientError) {
        let reason = match error {
            ClientError::Output(_) | ClientError::Local { .. } => "a local I/O error",
            ClientError::Verify(_) => "the bytes do not add up",
            ClientError::Message(_) | ClientError::Unexpected(_) => "an unexpected answer",
            _ => return,
        };
        let text = format!("client gave up on the transfer: {reason}");
        let mut wire = Vec::new();
        ErrorMessage::new(ErrorCode::IoFailed, &text).encode(stream, &mut wire);
        if let Err(error) = self.client.send_raw(&wire) {
            debug!("cannot send ERROR for stream {stream}: {error}");
        }
    }
}

/// ERROR payload → [`ClientError::Server`] (or the reason it does not parse).
pub(super) fn server_error(payload: &[u8]) -> ClientError {
    match ErrorMessage::parse(payload) {
        Ok(error) => ClientError::Server {
            code: error.code,
            text: error.text.to_string(),
        },
        Err(error) => ClientError::Message(error),
    }
}

/// A local file's failure, named.
pub(super) fn local(what: &str, source: io::Error) -> ClientError {
    ClientError::Local {
        what: what.to_string(),
        source,
    }
}

/// `read_exact`, with a file that ended early named as one that changed.
fn read_exactly<R: Read + ?Sized>(source: &mut R, buf: &mut [u8]) -> Result<(), ClientError> {
    source.read_exact(buf).map_err(|error| {
        let error = if error.kind() == ErrorKind::UnexpectedEof {
            io::Error::new(
                ErrorKind::UnexpectedEof,
                "it is shorter than when it was measured (did it change?)",
            )
        } else {
            error
        };
        local("read the local file", error)
    })
}

/// A hash in lowercase hex, as `b3sum` prints it.
pub fn hex(hash: &Hash) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}

/// Hashes everything `input` yields (retrying interrupted reads); `progress(done)` after each
/// read. The hasher's [`count`](blake3::Hasher::count) is the length.
pub fn hash_reader(
    input: &mut dyn Read,
    progress: &mut dyn FnMut(u64),
) -> io::Result<blake3::Hasher> {
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => return Ok(hasher),
            Ok(n) => n,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&chunk[..n]);
        progress(hasher.count());
    }
}

/// An unnamed temporary file in `dir`: `O_TMPFILE` where the file system has it, else a file
/// created with a fresh name and unlinked at once. Either way it vanishes when closed.
pub fn anonymous_file(dir: &Path) -> io::Result<File> {
    let tmpfile = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match tmpfile {
        Ok(file) => return Ok(file),
        Err(error) => debug!("no O_TMPFILE in {}: {error}", dir.display()),
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    for attempt in 0..100 {
        let path = dir.join(format!(
            ".monoreactor-spool-{}-{nanos}-{attempt}",
            std::process::id()
        ));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(error) if error.kind() == ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(
        ErrorKind::AlreadyExists,
        format!("no free temporary name in {}", dir.display()),
    ))
}

/// Copies `input` (a pipe: its size and hash are unknown until it ends) into an anonymous
/// temporary file in `dir` ([`anonymous_file`]), hashing it on the way, and rewinds the file.
/// Returns the file, its size and its BLAKE3, ready for [`FileClient::put`]. `input_name`
/// names the input in errors ("standard input").
pub fn spool(
    input: &mut dyn Read,
    input_name: &str,
    dir: &Path,
) -> Result<(File, u64, Hash), ClientError> {
    let mut file = anonymous_file(dir).map_err(|source| {
        local(
            &format!("create a temporary file in {}", dir.display()),
            source,
        )
    })?;
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(local(&format!("read {input_name}"), error)),
        };
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n]).map_err(|source| {
            local(
                &format!("write a temporary file in {}", dir.display()),
                source,
            )
        })?;
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|source| local("rewind the temporary file", source))?;
    Ok((file, hasher.count(), *hasher.finalize().as_bytes()))
}

/// The part file a download into `dest` is written to: `.NAME.monoreactor-part` beside it.
/// `None` if `dest` has no file name (`/`, `..`).
pub fn part_path(dest: &Path) -> Option<PathBuf> {
    let name = dest.file_name()?;
    let mut part = OsString::from(".");
    part.push(name);
    part.push(".monoreactor-part");
    Some(dest.with_file_name(part))
}

/// Where a download goes, decided by [`Destination::resolve`] before the first byte is asked
/// for, so that a destination that cannot work costs no transfer, and so that nothing that
/// is not a regular file is ever replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A regular file, or nothing yet (its directory exists): written to its part file
    /// ([`part_path`]) beside it, verified, synced and renamed over it ([`download`]).
    File(PathBuf),
    /// Something else that can be written: a character or block device (`/dev/null`, a
    /// terminal, a disk), a FIFO. Opened for writing (never created, never truncated) and the
    /// bytes streamed into it as they are verified, as `cp` and `curl -o` do: there is no part
    /// file to rename, and renaming one over it would destroy it.
    Through(PathBuf),
}

impl Destination {
    /// Where a download of a remote file named `name` should go, given the command line's
    /// `local` (`None`: `name` in the current directory). Checked here, before anything is
    /// asked of the server:
    ///
    /// - `local` is an existing directory (or a symlink to one): `name` inside it, as `cp`
    ///   does. A `local` ending in `/` must be one.
    /// - Symlinks are followed, as `cp` and `curl -o` follow them: to a regular file, that
    ///   file is the one replaced (atomically, its part beside it) and the link stays a link;
    ///   to anything else, it is written through. A symlink to nothing is refused, as GNU `cp`
    ///   refuses one: creating a file at wherever it points is rarely what was meant.
    /// - The file itself may not be a directory; if it does not exist, its parent must be an
    ///   existing directory (the part file lives beside it, and nowhere else).
    ///
    /// Errors are [`ClientError::Local`], one line naming the path.
    pub fn resolve(local: Option<&Path>, name: &str) -> Result<Destination, ClientError> {
        let Some(local) = local else {
            return Destination::check(PathBuf::from(name));
        };
        let names_directory = local.as_os_str().as_encoded_bytes().ends_with(b"/");
        match fs::metadata(local) {
            Ok(meta) if meta.is_dir() => Destination::check(local.join(name)),
            Ok(_) if names_directory => Err(refused(local, "it is not a directory")),
            Err(error) if names_directory => {
                let why = match error.kind() {
                    ErrorKind::NotFound => "no such directory".to_string(),
                    ErrorKind::NotADirectory => "it is not a directory".to_string(),
                    _ => error.to_string(),
                };
                Err(refused(local, &why))
            }
            _ => Destination::check(local.to_path_buf()),
        }
    }

    /// The path bytes are written to (for a followed symlink, the file it points to).
    pub fn path(&self) -> &Path {
        match self {
            Destination::File(path) | Destination::Through(path) => path,
        }
    }

    /// What `dest` names, the file itself (not a directory to put it in).
    fn check(dest: PathBuf) -> Result<Destination, ClientError> {
        match fs::metadata(&dest) {
            Ok(meta) if meta.is_dir() => Err(refused(&dest, "it is a directory")),
            Ok(meta) if meta.is_file() => {
                let is_link =
                    fs::symlink_metadata(&dest).is_ok_and(|meta| meta.file_type().is_symlink());
                if !is_link {
                    return Ok(Destination::File(dest));
                }
                // The part file goes beside the link's target, so the rename replaces the
                // target and leaves the link.
                let target = fs::canonicalize(&dest).map_err(|error| {
                    local(&format!("resolve the symlink {}", dest.display()), error)
                })?;
                debug!("{} is a symlink to {}", dest.display(), target.display());
                Ok(Destination::File(target))
            }
            Ok(_) => Ok(Destination::Through(dest)),
            Err(error) if error.kind() == ErrorKind::NotFound => {
                if fs::symlink_metadata(&dest).is_ok() {
                    return Err(refused(
                        &dest,
                        "it is a dangling symlink (not creating what it points to)",
                    ));
                }
                if dest.file_name().is_none() {
                    return Err(refused(&dest, "it does not name a file"));
                }
                let parent = match dest.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent,
                    _ => Path::new("."),
                };
                match fs::metadata(parent) {
                    Ok(meta) if meta.is_dir() => Ok(Destination::File(dest)),
                    Ok(_) => Err(refused(
                        &dest,
                        &format!("{} is not a directory", parent.display()),
                    )),
                    Err(error) if error.kind() == ErrorKind::NotFound => Err(refused(
                        &dest,
                        &format!("the directory {} does not exist", parent.display()),
                    )),
                    Err(error) => Err(refused(&dest, &format!("{}: {error}", parent.display()))),
                }
            }
            Err(error) => Err(refused(&dest, &error.to_string())),
        }
    }
}

/// A destination that cannot be written, as "cannot write DEST: WHY".
fn refused(dest: &Path, why: &str) -> ClientError {
    local(
        &format!("write {}", dest.display()),
        io::Error::other(why.to_string()),
    )
}

/// A download that failed, and what was left behind.
#[derive(Debug)]
pub struct DownloadError {
    /// Why it failed.
    pub error: ClientError,
    /// The part file kept for a resume, with its length: the same download with `resume`
    /// goes on from there. `None` when nothing a resume could use was kept (a verification
    /// failure, no byte arrived, a destination written through, or a verified file whose
    /// rename failed, which the error then names).
    pub kept: Option<(PathBuf, u64)>,
}

/// Downloads `remote` into `dest` ([`Destination::resolve`]).
///
/// To a [`Destination::File`], atomically: the bytes go to [`part_path`]`(dest)`, and only
/// once the whole file is verified ([`FileClient::get`]) is the part synced to disk (with
/// `durable`) and renamed over `dest` (then the directory is synced). Without `durable` the
/// rename is still atomic for every reader, but a crash soon after may leave `dest` empty or
/// short, as after `cp` or `curl -o`. With `resume`, an existing part is hashed and the GET
/// asks only for what it lacks; a part longer than the remote file is truncated and the
/// download starts over. Without it, a stale part is truncated. On failure: a verification
/// failure removes the part (its bytes are wrong, or from another version of the file); any
/// other failure (the network, the server, a local write) keeps a part that has bytes in it,
/// so a later `resume` goes on from there, and removes an empty one.
///
/// To a [`Destination::Through`], the bytes are written into it as they arrive; they cannot
/// be taken back, so a verification failure is only reported. It cannot be resumed.
pub fn download(
    client: &mut FileClient,
    remote: &str,
    dest: &Destination,
    resume: bool,
    durable: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<GetOutcome, DownloadError> {
    match dest {
        Destination::File(path) => {
            download_atomically(client, remote, path, resume, durable, progress)
        }
        Destination::Through(path) => {
            download_through(client, remote, path, resume, durable, progress)
                .map_err(|error| DownloadError { error, kept: None })
        }
    }
}

/// [`download`] into something that is not a regular file.
fn download_through(
    client: &mut FileClient,
    remote: &str,
    dest: &Path,
    resume: bool,
    durable: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<GetOutcome, ClientError> {
    if resume {
        return Err(refused(
            dest,
            "it is not a regular file, so there is nothing to resume",
        ));
    }
    // Neither O_CREAT (if it went away, a regular file must not appear in its place) nor
    // O_TRUNC (meaningless for a device or a FIFO). A FIFO's open waits for a reader.
    let mut file = OpenOptions::new()
        .write(true)
        .open(dest)
        .map_err(|source| local(&format!("open {}", dest.display()), source))?;
    let meta = file
        .metadata()
        .map_err(|source| local(&format!("stat {}", dest.display()), source))?;
    if meta.is_file() {
        // Replaced by a regular file since it was checked: writing into that without
        // truncating it would leave a mix of two files.
        return Err(refused(
            dest,
            "it became a regular file: run the command again",
        ));
    }
    let outcome = client
        .get(remote, 0, blake3::Hasher::new(), &mut file, progress)
        .map_err(|error| match error {
            ClientError::Output(source) => local(&format!("write {}", dest.display()), source),
            other => other,
        })?;
    // Only a disk holds what it was given; a terminal, a pipe or /dev/null has nothing to
    // sync (and may refuse to).
    if durable && meta.file_type().is_block_device() {
        file.sync_all()
            .map_err(|source| local(&format!("sync {}", dest.display()), source))?;
    }
    Ok(outcome)
}

/// Opens `dest`'s part file: truncated, or with `resume` hashed to its end (the offset to ask
/// from, and where the file is left positioned for appending). Never through a symlink
/// (`O_NOFOLLOW`: a part "file" planted as a symlink must not make us write elsewhere), never
/// anything but a regular file (a FIFO or a device planted under the part's name must not
/// receive the bytes, and then be renamed over `dest`).
pub(crate) fn open_part(
    dest: &Path,
    resume: bool,
) -> Result<(File, PathBuf, blake3::Hasher), ClientError> {
    let part = part_path(dest).ok_or_else(|| {
        local(
            &format!("download into {}", dest.display()),
            io::Error::new(ErrorKind::InvalidInput, "it does not name a file"),
        )
    })?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(!resume)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)
        .map_err(|source| local(&format!("create {}", part.display()), source))?;
    match file.metadata() {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(refused(&part, "it is not a regular file")),
        Err(source) => return Err(local(&format!("stat {}", part.display()), source)),
    }
    let mut prefix = blake3::Hasher::new();
    if resume {
        prefix = hash_reader(&mut file, &mut |_| {})
            .map_err(|source| local(&format!("read {}", part.display()), source))?;
    }
    Ok((file, part, prefix))
}

/// [`download`] into a regular file (or none yet), through its part file.
fn download_atomically(
    client: &mut FileClient,
    remote: &str,
    dest: &Path,
    resume: bool,
    durable: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<GetOutcome, DownloadError> {
    let nothing_kept = |error| DownloadError { error, kept: None };
    let (mut file, part, prefix) = open_part(dest, resume).map_err(nothing_kept)?;
    if resume {
        debug!("resuming {} at {} bytes", part.display(), prefix.count());
    }
    let offset = prefix.count();
    let mut result = client.get(remote, offset, prefix, &mut file, progress);
    if offset > 0
        && matches!(
            result,
            Err(ClientError::Server {
                code: ErrorCode::BadOffset,
                ..
            })
        )
    {
        debug!(
            "{} is longer than {remote} on the server: starting over",
            part.display()
        );
        result = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
            .map_err(|source| local(&format!("truncate {}", part.display()), source))
            .and_then(|()| client.get(remote, 0, blake3::Hasher::new(), &mut file, progress));
    }
    let synced = result.and_then(|outcome| {
        if durable {
            file.sync_all()
                .map_err(|source| local(&format!("sync {}", part.display()), source))?;
        }
        Ok(outcome)
    });
    let outcome = match synced {
        Ok(outcome) => outcome,
        Err(error) => {
            let error = match error {
                ClientError::Output(source) => local(&format!("write {}", part.display()), source),
                other => other,
            };
            let len = file.metadata().map_or(0, |meta| meta.len());
            drop(file);
            if matches!(error, ClientError::Verify(_)) || len == 0 {
                if let Err(remove) = fs::remove_file(&part) {
                    debug!("cannot remove {}: {remove}", part.display());
                }
                return Err(DownloadError { error, kept: None });
            }
            return Err(DownloadError {
                error,
                kept: Some((part, len)),
            });
        }
    };
    drop(file);
    // Checked again: whatever appeared at `dest` during the transfer (a device, a FIFO, a
    // symlink, a directory) must not be replaced either.
    let renamed = match fs::symlink_metadata(dest) {
        Ok(meta) if !meta.is_file() => Err(io::Error::other(
            "it is no longer a regular file (checked before the transfer)",
        )),
        _ => fs::rename(&part, dest),
    };
    if let Err(source) = renamed {
        // The verified file stays, but not as a part to resume: the same command would
        // meet the same obstacle.
        let source = io::Error::new(
            source.kind(),
            format!(
                "{source}; the verified download is kept in {}",
                part.display()
            ),
        );
        return Err(DownloadError {
            error: local(
                &format!("rename {} to {}", part.display(), dest.display()),
                source,
            ),
            kept: None,
        });
    }
    if durable {
        sync_parent(dest);
    }
    Ok(outcome)
}

/// Syncs the directory holding `path`, so a rename into it survives a crash. Best effort: a
/// file system that cannot sync directories has nothing more to offer.
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if let Err(error) = File::open(dir).and_then(|dir| dir.sync_all()) {
        debug!("cannot sync {}: {error}", dir.display());
    }
}

/// A remote path as typed → a request path: `.` components, repeated and trailing slashes
/// dropped (`./a//b/` → `a/b`; `.` → `""`, the root), then the protocol's rules checked
/// locally ([`check_relative`]: no absolute path, no `..`, no reserved name; at most
/// [`MAX_PATH_LEN`] bytes), so a mistake costs no connection.
pub fn normalize_remote(text: &str) -> Result<String, String> {
    if text.starts_with('/') {
        return Err(format!(
            "`{text}` is absolute; remote paths are relative to the server's root (`.` is the root)"
        ));
    }
    let path = squash(text);
    check_relative(&path).map_err(|error| format!("`{text}`: {error}"))?;
    if path.len() > MAX_PATH_LEN {
        return Err(format!(
            "the path is {} bytes; at most {MAX_PATH_LEN} fit in a request",
            path.len()
        ));
    }
    Ok(path)
}

/// `text` without empty and `.` components.
fn squash(text: &str) -> String {
    text.split('/')
        .filter(|component| !component.is_empty() && *component != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Like [`normalize_remote`], for `rm`: the last component may also name a partial upload,
/// as `ls` shows them (`.monoreactor-partial-<id>`).
pub fn normalize_removable(text: &str) -> Result<String, String> {
    normalize_remote(text).or_else(|refused| {
        let path = squash(text);
        match crate::proto::files::parse_delete_path(path.as_bytes()) {
            Ok(_) if !text.starts_with('/') => Ok(path),
            _ => Err(refused),
        }
    })
}

/// The last component of a request path (`""` for the root).
pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Sorts entries by name, byte order (as `LC_ALL=C ls` does).
pub fn sort_entries(entries: &mut [OwnedDirEntry]) {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_are_normalized_and_checked_locally() {
        assert_eq!(normalize_remote(".").as_deref(), Ok(""));
        assert_eq!(normalize_remote("").as_deref(), Ok(""));
        assert_eq!(normalize_remote("./a//b/").as_deref(), Ok("a/b"));
        assert_eq!(normalize_remote("a/./b").as_deref(), Ok("a/b"));
        assert!(normalize_remote("/etc/passwd").is_err());
        assert!(normalize_remote("a/../b").is_err());
        assert!(normalize_remote("a/.monoreactor-partial-1").is_err());
        assert!(normalize_remote("a\\b").is_err());
        assert!(normalize_remote(&"x".repeat(MAX_PATH_LEN + 1)).is_err());
        assert_eq!(base_name("a/b/c.txt"), "c.txt");
        assert_eq!(base_name("c"), "c");
        assert_eq!(base_name(""), "");
    }

    #[test]
    fn part_files_sit_beside_the_destination() {
        assert_eq!(
            part_path(Path::new("dir/file.bin")),
            Some(PathBuf::from("dir/.file.bin.monoreactor-part"))
        );
        assert_eq!(
            part_path(Path::new("file")),
            Some(PathBuf::from(".file.monoreactor-part"))
        );
        assert_eq!(part_path(Path::new("/")), None);
    }

    #[test]
    fn destinations_are_resolved_like_cp_and_never_replace_what_is_not_a_file() {
        let dir = std::env::temp_dir().join(format!("mr-destination-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub/taken")).unwrap();
        fs::write(dir.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.join("dangling")).unwrap();
        let at = |name: &str| dir.join(name);
        let resolve = |local: &str, name: &str| Destination::resolve(Some(&at(local)), name);

        assert_eq!(resolve("file", "r").unwrap(), Destination::File(at("file")));
        assert_eq!(resolve("new", "r").unwrap(), Destination::File(at("new")));
        assert_eq!(resolve("sub", "r").unwrap(), Destination::File(at("sub/r")));
        assert_eq!(
            resolve("sub/", "r").unwrap(),
            Destination::File(at("sub/r"))
        );
        let target = fs::canonicalize(at("file")).unwrap();
        assert_eq!(resolve("link", "r").unwrap(), Destination::File(target));
        assert_eq!(
            Destination::resolve(Some(Path::new("/dev/null")), "r").unwrap(),
            Destination::Through(PathBuf::from("/dev/null"))
        );
        assert_eq!(
            Destination::resolve(None, "r").unwrap(),
            Destination::File(PathBuf::from("r"))
        );
        for (local, name, why) in [
            ("sub", "taken", "is a directory"),
            ("dangling", "r", "dangling symlink"),
            ("missing/", "r", "no such directory"),
            ("file/", "r", "not a directory"),
            ("missing/r", "r", "does not exist"),
        ] {
            let error = resolve(local, name).unwrap_err().to_string();
            assert!(error.contains(why), "{local}: {error}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spooling_hashes_and_rewinds() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut file, size, hash) =
            spool(&mut &data[..], "test input", &std::env::temp_dir()).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(hash, *blake3::hash(&data).as_bytes());
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        let hasher = hash_reader(&mut &data[..], &mut |_| {}).unwrap();
        assert_eq!(hasher.count(), size);
        assert_eq!(*hasher.finalize().as_bytes(), hash);
    }
}
