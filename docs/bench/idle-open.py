#!/usr/bin/env python3
"""idle-open.py KIND HOST:PORT N PID — server RSS per idle connection, the same way for every server.

KIND is raw (any echo server), framed (monoreactor's framed port: each connection says HELLO, as an
idle client of that protocol would) or redis. One connection is opened first and used once (an echo,
a HELLO, a PING), outside the count, so first-use costs (buffer pools, query buffers) are not spread
over the others; then the server's VmRSS is read, N connections are opened and left idle, and 1 s
later VmRSS is read again. Every connection must still be open (a closed one reads EOF at once).
Connections are closed with a reset (SO_LINGER 0): no TIME_WAIT pile-up across runs.
Prints: "N idle connections: server RSS A KiB -> B KiB, X bytes per connection".
"""
import resource, socket, struct, sys, time

kind, addr, n, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host, port = addr.rsplit(":", 1)
port = int(port)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 100)), hard))

HELLO = bytes([0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]) + b"MNRX" + bytes([0, 1, 0xFF, 0xFF, 0, 0])


def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def read_exact(s, k):
    b = b""
    while len(b) < k:
        c = s.recv(k - len(b))
        if not c:
            raise SystemExit("server closed a connection")
        b += c
    return b


def hello(s):
    s.sendall(HELLO)
    h = read_exact(s, 12)
    assert h[0] == 0x02, f"expected HELLO_OK, got frame type {h[0]:#04x}"
    read_exact(s, struct.unpack(">I", h[8:12])[0])


def connect():
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return s


def use_once(s):
    if kind == "framed":
        hello(s)
    elif kind == "redis":
        s.sendall(b"PING\r\n")
        assert read_exact(s, 7) == b"+PONG\r\n"
    else:
        s.sendall(b"x")
        assert read_exact(s, 1) == b"x"


held = [connect()]
use_once(held[0])
time.sleep(0.1)
before = rss_kib()
for _ in range(n):
    s = connect()
    if kind == "framed":
        hello(s)
    held.append(s)
time.sleep(1)
after = rss_kib()
for s in held:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            raise SystemExit("the server closed an idle connection")
    except BlockingIOError:
        pass
print(f"{n} idle connections: server RSS {before} KiB -> {after} KiB, "
      f"{(after - before) * 1024 / n:.0f} bytes per connection")
for s in held:
    s.close()
