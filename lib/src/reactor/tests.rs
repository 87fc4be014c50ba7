//! Loop-level tests: slots, stale tokens, timers under churn, fairness within a turn.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::thread::sleep;

use std::net::SocketAddr;
use std::time::Duration;

use mio::Token;
use mio::net::{TcpListener, TcpStream};

use super::slots::Slot;
use super::token::{ConnKey, Source, Sub};
use super::*;
use crate::conn::State;
use crate::proto::Hello;
use crate::timer::Tick;

fn reactor() -> (Reactor, SocketAddr) {
    let framed = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = framed.local_addr().unwrap();
    let setup = Setup {
        sockets: Sockets {
            framed,
            echo_tcp: None,
            echo_udp: None,
            metrics: None,
        },
        limits: Limits::default(),
        access: Access::ECHO_ONLY,
        root: None,
        files: false,
        handle_signals: false,
        disk_helper: None,
        tls: None,
        reload: crate::reload::Reload::default(),
        lifecycle: None,
        proxy: ProxyPolicy::default(),
    };
    (Reactor::new(setup).unwrap(), addr)
}

fn keys(core: &Core) -> Vec<ConnKey> {
    core.conns
        .iter()
        .map(|(slot, s)| ConnKey {
            slot: slot as u32,
            generation: s.generation,
        })
        .collect()
}

/// Connects and accepts; loopback completes the handshake before `connect` returns, so one
/// accept call finds it.
fn connect_and_accept(core: &mut Core, addr: SocketAddr) -> (StdTcpStream, ConnKey) {
    let before = keys(core);
    let client = StdTcpStream::connect(addr).unwrap();
    core.accept(Source::FramedListener);
    let new: Vec<ConnKey> = keys(core)
        .into_iter()
        .filter(|key| !before.contains(key))
        .collect();
    assert_eq!(new.len(), 1, "exactly one connection accepted");
    (client, new[0])
}

/// One poll event for `key`'s socket, readable and writable: it only records readiness and
/// puts the connection on this turn's list.
fn event(core: &mut Core, key: ConnKey) {
    core.serve_conn(key, Sub::Socket, true, true, false);
}

/// Ends the turn's event handling: drives every connection on this turn's list, once.
fn drive_this_turn(core: &mut Core) {
    core.serve_ready_list();
}

/// Starts the next turn as `Reactor::run` does: the connections queued for it become this
/// turn's list.
fn next_turn(core: &mut Core) {
    std::mem::swap(&mut core.ready, &mut core.ready_now);
    core.static_queued = 0;
    core.env.turn += 1;
}

fn hello() -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::current().encode(&mut wire);
    wire
}

#[test]
fn an_idle_connection_costs_one_96_byte_slot_and_one_16_byte_timer_entry() {
    // The per-connection memory figures in docs/PERFORMANCE.md rest on these sizes. In debug
    // builds mio adds a selector id to every socket for its own checks; allow exactly that.
    let socket_extra = std::mem::size_of::<TcpStream>() - std::mem::size_of::<i32>();
    let slot = std::mem::size_of::<Slot>();
    assert!(slot <= 96 + socket_extra, "Slot is {slot} bytes");
    assert_eq!(std::mem::size_of::<(Tick, Token)>(), 16);
}

#[test]
fn slot_closed_in_a_batch_is_not_reused_and_its_stale_token_reaches_nothing() {
    let (mut reactor, addr) = reactor();
    let core = &mut reactor.core;

    // One batch: A is marked for closing (as a protocol error or EOF would); B is accepted
    // and the batch still holds an event for A, whose client has a HELLO waiting.
    let (mut client_a, key_a) = connect_and_accept(core, addr);
    client_a.write_all(&hello()).unwrap();
    core.mark_closing(key_a.slot as usize);
    let (_client_b, key_b) = connect_and_accept(core, addr);
    assert_ne!(
        key_b.slot, key_a.slot,
        "a slot closing in this batch is not handed out"
    );
    event(core, key_a);
    drive_this_turn(core);
    let slot_a = &core.conns[key_a.slot as usize];
    assert_eq!(
        (slot_a.conn.state(), slot_a.conn.pending_input()),
        (State::AwaitingHello, 0),
        "the later event for A did not drive it"
    );
    client_a.set_nonblocking(true).unwrap();
    assert_eq!(
        client_a.read(&mut [0; 64]).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "A got no HELLO_OK"
    );
    core.close_marked();
    assert!(!core.conns.contains(key_a.slot as usize));

    // Next batch: C reuses A's slot under a new generation; A's token is now stale.
    let (mut client_c, key_c) = connect_and_accept(core, addr);
    assert_eq!(key_c.slot, key_a.slot, "the freed slot is reused");
    assert_ne!(key_c.generation, key_a.generation);
    client_c.write_all(&hello()).unwrap();
    next_turn(core);
    event(core, key_a);
    drive_this_turn(core);
    assert_eq!(
        core.conns[key_c.slot as usize].conn.state(),
        State::AwaitingHello,
        "stale token did not drive C"
    );
    client_c.set_nonblocking(true).unwrap();
    assert_eq!(
        client_c.read(&mut [0; 64]).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );

    // C's own token does reach C (retry until its HELLO has arrived).
    for _ in 0..100 {
        next_turn(core);
        event(core, key_c);
        drive_this_turn(core);
        if core.conns[key_c.slot as usize].conn.state() == State::Open {
            break;
        }
        sleep(Duration::from_millis(10));
    }
    assert_eq!(core.conns[key_c.slot as usize].conn.state(), State::Open);
}

#[test]
fn timer_queue_stays_proportional_to_open_connections_under_churn() {
    let (mut reactor, addr) = reactor();
    let core = &mut reactor.core;
    let (_kept, _) = connect_and_accept(core, addr);
    for _ in 0..3_000 {
        let (client, key) = connect_and_accept(core, addr);
        drop(client);
        core.mark_closing(key.slot as usize);
        core.close_marked();
    }
    assert_eq!(core.conns.len(), 1);
    assert!(
        core.env.timers.len() <= 2 * core.conns.len() + TIMER_SLACK,
        "{} timer entries for {} open connections",
        core.env.timers.len(),
        core.conns.len()
    );
}

#[test]
fn a_blasting_client_gets_one_budget_and_the_other_is_answered_in_the_same_turn() {
    let (mut reactor, addr) = reactor();
    let core = &mut reactor.core;
    core.env.limits.frame_budget = 16;
    let (mut blaster, key_blaster) = connect_and_accept(core, addr);
    let (mut pinger, key_pinger) = connect_and_accept(core, addr);
    let request = |stream| {
        crate::proto::Frame::new(
            crate::proto::FrameType::EchoRequest,
            crate::proto::Flags::END_STREAM,
            stream,
            b"x",
        )
        .to_vec()
    };
    let mut flood = hello();
    for stream in 1..=2_000 {
        flood.extend(request(stream));
    }
    blaster.write_all(&flood).unwrap();
    pinger.write_all(&[hello(), request(1)].concat()).unwrap();
    // One turn: both report readable, the blaster first. (Loopback has put the bytes in the
    // server's sockets by the time `write_all` returns.)
    event(core, key_blaster);
    event(core, key_pinger);
    drive_this_turn(core);
    assert!(
        core.conns[key_blaster.slot as usize].queued,
        "the blaster's work waits for the next turn"
    );
    assert_eq!(core.ready, vec![Source::Conn(key_blaster, Sub::Socket)]);
    assert_eq!(
        core.conns[key_pinger.slot as usize].conn.pending_output(),
        0,
        "the pinger was answered in this turn"
    );
    pinger
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = [0; 24 + 13];
    pinger.read_exact(&mut reply).unwrap();
    assert_eq!(reply[24], 0x11, "HELLO_OK then ECHO_REPLY");
}

#[test]
fn a_connection_is_driven_once_per_turn_however_many_events_it_has() {
    let (mut reactor, addr) = reactor();
    let core = &mut reactor.core;
    core.env.limits.frame_budget = 2;
    let (mut client, key) = connect_and_accept(core, addr);
    let mut wire = hello();
    for stream in 1..=10 {
        let request = crate::proto::Frame::new(
            crate::proto::FrameType::EchoRequest,
            crate::proto::Flags::END_STREAM,
            stream,
            b"x",
        );
        request.encode_into(&mut wire);
    }
    client.write_all(&wire).unwrap();
    // Several events for the connection in one batch (with commands, its pipes report too):
    // it is driven once, with one budget.
    event(core, key);
    event(core, key);
    assert_eq!(core.ready_now, vec![Source::Conn(key, Sub::Socket)]);
    drive_this_turn(core);
    assert!(
        core.conns[key.slot as usize].queued,
        "frames left after the budget: queued"
    );
    assert_eq!(core.ready, vec![Source::Conn(key, Sub::Socket)]);
    let pending = core.conns[key.slot as usize].conn.pending_input();
    event(core, key);
    assert_eq!(core.ready.len(), 1, "queued once");
    assert_eq!(
        core.conns[key.slot as usize].conn.pending_input(),
        pending,
        "an event for a queued connection only records readiness: one budget per turn"
    );
}

#[test]
fn a_packed_address_comes_back_as_it_went_in() {
    use super::slots::PackedAddr;
    use std::net::SocketAddr;
    for text in [
        "127.0.0.1:7878",
        "10.252.0.2:1",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "[::1]:443",
        "[2001:db8::ffff:1:2]:9",
        "[::]:0",
    ] {
        let addr: SocketAddr = text.parse().unwrap();
        assert_eq!(SocketAddr::from(PackedAddr::from(addr)), addr, "{text}");
    }
    // An IPv4 client on a dual-stack socket is the IPv4 address it is.
    let mapped: SocketAddr = "[::ffff:192.0.2.7]:80".parse().unwrap();
    assert_eq!(
        SocketAddr::from(PackedAddr::from(mapped)),
        "192.0.2.7:80".parse::<SocketAddr>().unwrap()
    );
}
