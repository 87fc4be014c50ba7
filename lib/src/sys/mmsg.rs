//! Batched datagram I/O: `recvmmsg` and `sendmmsg`, up to [`BATCH`] datagrams per system call
//! instead of one. The UDP echo spends most of its time in system-call entry and exit at small
//! sizes, so a batch of 16 datagrams costs about as much as one did.
//!
//! The message headers point into the caller's buffers; they are built on the stack for each
//! call, so nothing here holds a raw pointer between calls.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

/// Most datagrams one call moves (the C reference's batch uses 64; the loop's per-turn
/// datagram budget bounds a turn anyway).
pub(crate) const BATCH: usize = 64;

/// Receives up to `bufs.len()` (at most [`BATCH`]) datagrams without blocking, each into its
/// buffer; records each one's length and sender in `got`. Returns how many arrived (at least
/// one), or the error of the first (`WouldBlock` when none is waiting). A datagram longer than
/// its buffer reports its full length (`MSG_TRUNC`), so the caller can tell.
pub(crate) fn recv_many(
    socket: BorrowedFd<'_>,
    bufs: &mut [Box<[u8]>],
    got: &mut [(usize, SocketAddr)],
) -> io::Result<usize> {
    let count = bufs.len().min(got.len()).min(BATCH);
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [MaybeUninit::uninit(); BATCH];
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..count {
        iovs[i].write(libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: bufs[i].len(),
        });
        hdrs[i].msg_hdr.msg_name = (&raw mut addrs[i]).cast();
        hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = iovs[i].as_mut_ptr();
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    let received = loop {
        // SAFETY: `hdrs[..count]` point at `count` live iovecs over the caller's buffers and at
        // `addrs`, all of which outlive the call; the kernel writes only within them.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if n >= 0 {
            break n as usize;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    };
    for i in 0..received {
        // Not an IP sender (cannot happen on an IP socket): reported as port 0, which the
        // echo never answers.
        let source =
            from_storage(&addrs[i]).unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        got[i] = (hdrs[i].msg_len as usize, source);
    }
    Ok(received)
}

/// Sends `msgs` (at most [`BATCH`] of them) in order without blocking. Returns how many went
/// (fewer than asked: the next one would block or failed, and says so when sent again), or
/// the error of the first.
pub(crate) fn send_many(socket: BorrowedFd<'_>, msgs: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
    let count = msgs.len().min(BATCH);
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut storage: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut lens: [libc::socklen_t; BATCH] = [0; BATCH];
    let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [MaybeUninit::uninit(); BATCH];
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, (payload, target)) in msgs.iter().take(count).enumerate() {
        lens[i] = to_storage(target, &mut storage[i]);
        iovs[i].write(libc::iovec {
            // The kernel only reads through it (sendmmsg).
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        });
        hdrs[i].msg_hdr.msg_name = (&raw mut storage[i]).cast();
        hdrs[i].msg_hdr.msg_namelen = lens[i];
        hdrs[i].msg_hdr.msg_iov = iovs[i].as_mut_ptr();
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    loop {
        // SAFETY: `hdrs[..count]` point at live iovecs over the caller's payloads and at
        // `storage`, all of which outlive the call; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// The socket address in `storage`, if it is IPv4 or IPv6.
fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, which it can.
            let v4 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a `sockaddr_in6`, which it can.
            let v6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `storage` as the kernel wants it; returns its length.
fn to_storage(addr: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: a `sockaddr_storage` is large and aligned enough for a `sockaddr_in`.
            let out = unsafe {
                &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            out.sin_family = libc::AF_INET as libc::sa_family_t;
            out.sin_port = v4.port().to_be();
            out.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: a `sockaddr_storage` is large and aligned enough for a `sockaddr_in6`.
            let out = unsafe {
                &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            out.sin6_port = v6.port().to_be();
            out.sin6_flowinfo = v6.flowinfo();
            out.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            out.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn socket_addresses_round_trip_through_storage() {
        for addr in [
            "127.0.0.1:7".parse::<SocketAddr>().unwrap(),
            "[::1]:65535".parse().unwrap(),
            "[fe80::1%2]:9".parse().unwrap(),
        ] {
            // SAFETY: all-zero is a valid `sockaddr_storage`.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            to_storage(&addr, &mut storage);
            assert_eq!(from_storage(&storage), Some(addr));
        }
    }

    #[test]
    fn a_batch_goes_out_and_comes_in_with_its_senders() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; usize::from(i) + 1]).collect();
        let msgs: Vec<(&[u8], SocketAddr)> = payloads.iter().map(|p| (p.as_slice(), to)).collect();
        assert_eq!(send_many(client.as_fd(), &msgs).unwrap(), 5);

        let mut bufs: Vec<Box<[u8]>> = (0..8).map(|_| vec![0; 16].into_boxed_slice()).collect();
        let mut got = vec![(0, to); 8];
        let mut received = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while received < 5 && std::time::Instant::now() < deadline {
            match recv_many(server.as_fd(), &mut bufs[received..], &mut got[received..]) {
                Ok(n) => received += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(error) => panic!("{error}"),
            }
        }
        assert_eq!(received, 5);
        for (i, payload) in payloads.iter().enumerate() {
            assert_eq!(got[i], (payload.len(), client.local_addr().unwrap()));
            assert_eq!(&bufs[i][..payload.len()], payload.as_slice());
        }
        let error = recv_many(server.as_fd(), &mut bufs, &mut got).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_datagram_longer_than_its_buffer_reports_its_full_length() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .send_to(&[7; 100], server.local_addr().unwrap())
            .unwrap();
        let mut bufs: Vec<Box<[u8]>> = vec![vec![0; 10].into_boxed_slice()];
        let mut got = vec![(0, client.local_addr().unwrap())];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match recv_many(server.as_fd(), &mut bufs, &mut got) {
                Ok(1) => break,
                Ok(n) => panic!("{n} datagrams"),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "nothing arrived");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(error) => panic!("{error}"),
            }
        }
        assert_eq!(got[0].0, 100, "MSG_TRUNC gives the datagram's real length");
    }
}
