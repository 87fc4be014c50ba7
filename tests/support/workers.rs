//! Helpers for `serve --workers N`: finding the workers of a supervisor, counting the sockets
//! each holds, and a raw echo round trip that reports failures instead of panicking.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::{IO_TIMEOUT, Server, children_of, retry};

/// The live (not zombie) children of the supervisor: its workers, sorted by pid.
pub fn workers(server: &Server) -> Vec<u32> {
    let mut pids: Vec<u32> = children_of(server.pid())
        .into_iter()
        .filter(|&(_, state)| state != 'Z')
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// Waits until the supervisor has `count` live workers satisfying `accept`; panics after
/// `timeout`.
#[track_caller]
pub fn wait_workers(
    server: &Server,
    count: usize,
    timeout: Duration,
    accept: impl Fn(&[u32]) -> bool,
) -> Vec<u32> {
    retry(timeout, || {
        let pids = workers(server);
        (pids.len() == count && accept(&pids)).then_some(pids)
    })
    .unwrap_or_else(|| {
        panic!(
            "the supervisor did not have {count} suitable workers within {timeout:?} (it has {:?}); stderr:\n{}",
            workers(server),
            server.stderr_text()
        )
    })
}

/// How many established TCP connections `pid` holds (its listeners, UDP socket and
/// signal pipe are not counted); 0 if it is gone. Matches the socket inodes in
/// `/proc/PID/fd` against the ESTABLISHED entries of `/proc/net/tcp` and `tcp6`.
///
/// Those tables are read in pages while other tests open and close connections, so an entry
/// may show twice (hence the set) or be missed once: callers that need an exact count retry.
pub fn connections_of(pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: HashSet<String> = entries
        .flatten()
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.path()).ok()?;
            let target = target.to_string_lossy();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut established = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if let (Some(&"01"), Some(inode)) = (fields.get(3), fields.get(9)) {
                if inodes.contains(*inode) {
                    established.insert(inode.to_string());
                }
            }
        }
    }
    established.len()
}

/// Why a raw echo round trip failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoFailure {
    /// `connect` itself failed.
    Connect,
    /// Connected, but the echo did not come back whole.
    Echo,
}

/// Connects to the raw echo `addr`, or says why not.
pub fn try_connect(addr: SocketAddr) -> Result<TcpStream, EchoFailure> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|_| EchoFailure::Connect)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok();
    stream.set_write_timeout(Some(IO_TIMEOUT)).ok();
    Ok(stream)
}

/// Sends `payload` on `stream` and reads it back.
pub fn try_echo(stream: &mut TcpStream, payload: &[u8]) -> Result<(), EchoFailure> {
    stream.write_all(payload).map_err(|_| EchoFailure::Echo)?;
    let mut back = vec![0; payload.len()];
    stream
        .read_exact(&mut back)
        .map_err(|_| EchoFailure::Echo)?;
    if back == payload {
        Ok(())
    } else {
        Err(EchoFailure::Echo)
    }
}
