//! Reading a process's resident memory, CPU time and thread count from `/proc` (Linux), for
//! the benchmark and the tests that hold the server to its memory and threading promises.

use std::fs;
use std::io;
use std::time::Duration;

/// A numeric field of `/proc/PID/status`, such as `VmRSS` (in kB) or `Threads`.
pub fn status_field(pid: u32, name: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            value.split_whitespace().next()?.parse().ok()
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no {name} in /proc/{pid}/status"),
            )
        })
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    status_field(pid, "VmRSS")
}

/// Number of threads.
pub fn threads(pid: u32) -> io::Result<u64> {
    status_field(pid, "Threads")
}

/// User plus system CPU time consumed so far.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after its closing ')' are fixed.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let parse = |index: usize| -> io::Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))
    };
    let ticks = parse(11)? + parse(12)?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(threads(pid).unwrap() >= 1);
        assert!(cpu_time(pid).is_ok());
        assert!(status_field(pid, "NoSuchField").is_err());
    }
}
