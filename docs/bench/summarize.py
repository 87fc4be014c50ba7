#!/usr/bin/env python3
"""Turns side-by-side.sh's raw records (section, row, round, target, metric, value; tab-separated)
into the markdown table for docs/PERFORMANCE.md: medians of each side, and the median [min-max] of
the per-round ratios (both sides of a ratio measured in the same round, minutes apart at most)."""
import argparse, math, statistics, sys, time, platform, subprocess
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("data")
ap.add_argument("--secs"); ap.add_argument("--rounds"); ap.add_argument("--bin"); ap.add_argument("--idle-conns")
args = ap.parse_args()

D = defaultdict(dict)   # (section, row, target, metric) -> {round: value}
for line in open(args.data):
    f = line.rstrip("\n").split("\t")
    if len(f) != 6:
        continue
    sec, row, rnd, tg, metric, val = f
    try:
        v = float(val)
    except ValueError:
        v = math.nan
    if math.isfinite(v):
        D[(sec, row, tg, metric)][rnd] = v


def vals(sec, row, tg, metric):
    return D.get((sec, row, tg, metric), {})


def med(sec, row, tg, metric):
    v = list(vals(sec, row, tg, metric).values())
    return statistics.median(v) if v else None


def ratios(sec, row, a, b, metric, invert=False):
    """per-round a/b (or b/a with invert), rounds where both were measured"""
    va, vb = vals(sec, row, a, metric), vals(sec, row, b, metric)
    out = []
    for r in sorted(set(va) & set(vb), key=int):
        x, y = (vb[r], va[r]) if invert else (va[r], vb[r])
        if y > 0:
            out.append(x / y)
    return out


def spread(rs, digits=2):
    if not rs:
        return "n/a"
    m = statistics.median(rs)
    if len(rs) == 1:
        return f"{m:.{digits}f}×"
    return f"**{m:.{digits}f}×** [{min(rs):.{digits}f}–{max(rs):.{digits}f}]"


def rate(x):
    if x is None:
        return "n/a"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M/s"
    if x >= 1e3:
        return f"{x / 1e3:.0f}k/s"
    return f"{x:.0f}/s"


def us(x):
    if x is None:
        return "n/a"
    return f"{x:.2f} µs" if x < 10 else f"{x:.1f} µs"


def verdict(rs, op, target):
    """met/missed on the median of the per-round ratios; how far when missed"""
    if not rs:
        return "n/a"
    m = statistics.median(rs)
    if op == "<=":
        ok = m <= target
        miss = (m / target - 1) * 100
    else:
        ok = m >= target
        miss = (1 - m / target) * 100
    spans = (min(rs) <= target <= max(rs)) if len(rs) > 1 else False
    if ok:
        return "met" + (" (not in every round)" if spans else "")
    return f"**missed** by {miss:.0f} %" + (" (met in some rounds)" if spans else "")


rows = []           # (row, mono, c, tokio, redis, other, ratio, target, result)
details = []        # (row, per-round ratios)
NA = "—"

# --- raw echo against the C loop, tokio and redis --------------------------------------------------
ECHO = [("64B-x50-pp", "Raw echo 64 B × 50 conns, ping-pong"),
        ("64B-x50-P16", "Raw echo 64 B × 50 conns, `-P 16`"),
        ("64B-x500-pp", "Raw echo 64 B × 500 conns, ping-pong"),
        ("64B-x500-P16", "Raw echo 64 B × 500 conns, `-P 16`"),
        ("16KiB-x10-pp", "Raw echo 16 KiB × 10 conns, ping-pong")]
for key, label in ECHO:
    if not vals("echo", key, "raw", "cpu_us"):
        continue
    cell = lambda tg: f"{us(med('echo', key, tg, 'cpu_us'))} · {rate(med('echo', key, tg, 'rate'))}"
    rs = ratios("echo", key, "raw", "c", "cpu_us")
    tok = f"{cell('tokio')} · {spread(ratios('echo', key, 'tokio', 'c', 'cpu_us'))} C"
    red = NA
    if vals("echo", key, "redis", "cpu_us"):
        red = f"ECHO (RESP, `bench echo --redis`): {cell('redis')} · {spread(ratios('echo', key, 'redis', 'c', 'cpu_us'))} C"
    if vals("echo", key, "redis-bench", "cpu_us"):
        red += f"; PING (redis-benchmark): {cell('redis-bench')}"
    rows.append((label + ", server CPU/request", cell("raw"), cell("c"), tok, red, NA,
                 spread(rs) + " C", "≤ 1.00× C", verdict(rs, "<=", 1.0)))
    details.append((label + ": raw / C", rs))
    details.append((label + ": tokio / C", ratios("echo", key, "tokio", "c", "cpu_us")))
    if vals("echo", key, "redis", "cpu_us"):
        details.append((label + ": redis ECHO / C", ratios("echo", key, "redis", "c", "cpu_us")))

# --- framed against raw, same server process -------------------------------------------------------
for key, label, thr in (("64B-x50-pp", "Framed vs raw echo, 64 B × 50, ping-pong", 0.95),
                        ("16KiB-x10-pp", "Framed vs raw echo, 16 KiB × 10, ping-pong", 0.9)):
    if not vals("echo", key, "framed", "cpu_us"):
        continue
    cell = lambda tg: f"{us(med('echo', key, tg, 'cpu_us'))} · {rate(med('echo', key, tg, 'rate'))}"
    rs = ratios("echo", key, "framed", "raw", "cpu_us")
    eq = [1 / r for r in rs]          # throughput-equivalent: raw cost / framed cost
    rows.append((label + ", server CPU/request", "framed " + cell("framed"), NA, NA, NA, "raw (same process) " + cell("raw"),
                 spread(rs) + f" raw (≡ {spread(eq)})", f"≤ {1 / thr:.2f}× raw (≥ {thr}×)", verdict(rs, "<=", 1 / thr)))
    details.append((label + ": framed / raw CPU", rs))

# --- the generators against the same C server ----------------------------------------------------
for key, label in (("64B-x50-pp", "Generators against c-echo, 64 B × 50, ping-pong"),
                   ("64B-x50-P16", "Generators against c-echo, 64 B × 50, `-P 16`")):
    if not vals("gen", key, "bench", "rate"):
        continue
    cell = lambda tg: f"{rate(med('gen', key, tg, 'rate'))}; c-echo {us(med('gen', key, tg, 'cpu_us'))}/req"
    rs = ratios("gen", key, "bench", "loadgen", "rate")
    rows.append((label + ", requests/s", "`bench echo --raw` " + cell("bench"), NA, NA, NA, "loadgen " + cell("loadgen"),
                 spread(rs) + " loadgen's rate", "≥ 0.95× (not the bottleneck)", verdict(rs, ">=", 0.95)))
    details.append((label + ": bench / loadgen requests/s", rs))

# --- UDP ----------------------------------------------------------------------------------------------
for key, label in (("64B", "UDP echo 64 B × 50 sockets"), ("1400B", "UDP echo 1400 B × 50 sockets"),
                   ("64Bx16", "UDP echo 64 B × 50 sockets, 16 in flight")):
    if not vals("udp", key, "mono", "cpu_us"):
        continue
    cell = lambda tg: f"{us(med('udp', key, tg, 'cpu_us'))} · {rate(med('udp', key, tg, 'rate'))}"
    rp, rbat = ratios("udp", key, "mono", "c-plain", "cpu_us"), ratios("udp", key, "mono", "c-batch", "cpu_us")
    vp, vb = verdict(rp, "<=", 0.9), verdict(rbat, "<=", 1.0)
    rows.append((label + ", server CPU/datagram", cell("mono"), "plain " + cell("c-plain"), NA, NA,
                 "C recvmmsg/sendmmsg " + cell("c-batch"), f"{spread(rp)} plain; {spread(rbat)} batch",
                 "≤ 0.90× plain, ≤ 1.00× batch", f"plain: {vp}; batch: {vb}"))
    details.append((label + ": mono / C plain", rp)); details.append((label + ": mono / C batch", rbat))

# --- short connections --------------------------------------------------------------------------
if vals("connect", "short-64B", "mono", "cpu_us"):
    key = "short-64B"
    cell = lambda tg: f"{us(med('connect', key, tg, 'cpu_us'))} · {rate(med('connect', key, tg, 'rate'))}"
    rs = ratios("connect", key, "mono", "c", "cpu_us")
    rows.append(("Short connections (connect, 64 B echo, close) × 50, server CPU/connection", cell("mono"), cell("c"),
                 f"{cell('tokio')} · {spread(ratios('connect', key, 'tokio', 'c', 'cpu_us'))} C", NA, NA,
                 spread(rs) + " C", "≤ 1.00× C", verdict(rs, "<=", 1.0)))
    details.append(("Short connections: mono / C", rs))

# --- instructions per request (deterministic: one run) -----------------------------------------
if vals("instr", "echo-64B-x10-pp", "raw", "instr"):
    i = lambda tg: (f"{med('instr', 'echo-64B-x10-pp', tg, 'instr'):,.0f}" if med('instr', 'echo-64B-x10-pp', tg, 'instr') is not None else "n/a")
    for tg, label, target in (("raw", "raw", 300), ("framed", "framed", 450)):
        v = med("instr", "echo-64B-x10-pp", tg, "instr")
        if v is None:
            continue
        res = "met" if v <= target else f"**missed** by {(v / target - 1) * 100:.0f} %"
        rows.append((f"User-space instructions per request, {label} echo 64 B × 10 (cachegrind)", i(tg), i("c"), i("tokio"),
                     NA, NA, "— (a count, one run)", f"≤ {target}", res))

# --- idle memory ------------------------------------------------------------------------------------
key = f"idle-{args.idle_conns}"
if vals("idle", key, "raw", "bytes_per_conn"):
    b = lambda tg: (f"{med('idle', key, tg, 'bytes_per_conn'):,.0f} B" if med('idle', key, tg, 'bytes_per_conn') is not None else "n/a")
    rt, rr = ratios("idle", key, "raw", "tokio", "bytes_per_conn"), ratios("idle", key, "raw", "redis", "bytes_per_conn")
    rows.append((f"Server RSS per idle connection, {int(args.idle_conns):,} idle", f"raw {b('raw')}; framed {b('framed')}",
                 NA, b("tokio"), b("redis"), NA, f"{spread(rt, 3)} tokio; {spread(rr, 3)} redis", "none set (compare)", NA))
    details.append(("Idle: mono raw / tokio", rt)); details.append(("Idle: mono raw / redis", rr))

# --- 1 GiB GET ----------------------------------------------------------------------------------
if vals("get", "GET-1GiB", "mono", "secs"):
    key = "GET-1GiB"
    def s(tg):
        metric = "xfer_secs" if tg == "iperf3_xfer" else "secs"
        tg = "iperf3" if tg == "iperf3_xfer" else tg
        v = med("get", key, tg, metric)
        return f"{v:.2f} s" if v is not None else "n/a"
    c = lambda tg: (f"{med('get', key, tg, 'server_cpu_ms'):.0f} ms" if med('get', key, tg, 'server_cpu_ms') is not None else "n/a")
    rn = ratios("get", key, "mono", "nginx", "secs", invert=True)    # speed: nginx time / mono time
    ri = ratios("get", key, "mono", "iperf3", "secs", invert=True)
    rows.append(("1 GiB GET to /dev/null (monoreactor verified), wall time; speed ratio", s("mono"), NA, NA, NA,
                 f"nginx + `curl -o /dev/null` {s('nginx')}; iperf3 -R {s('iperf3')} (its own count of the transfer: {s('iperf3_xfer')})",
                 f"{spread(rn)} curl; {spread(ri)} iperf3", "≥ 0.85× curl", verdict(rn, ">=", 0.85)))
    rc = ratios("get", key, "mono", "nginx", "server_cpu_ms")
    rows.append(("Server CPU per 1 GiB GET", c("mono"), NA, NA, NA, f"nginx {c('nginx')}; iperf3 server {c('iperf3')}",
                 spread(rc) + " nginx", "none set", NA))
    details.append(("GET speed: mono / nginx+curl", rn)); details.append(("GET speed: mono / iperf3", ri))
    details.append(("GET server CPU: mono / nginx", rc))

# --- exec -------------------------------------------------------------------------------------------
if vals("exec", "exec-true-c1", "mono", "rate"):
    key = "exec-true-c1"
    rt = ratios("exec", key, "local", "mono", "rate")          # time per round trip: local rate / mono rate
    sp = [1 / x for x in rt]
    m, l = med("exec", key, "mono", "rate"), med("exec", key, "local", "rate")
    cpu = med("exec", key, "mono", "cpu_us")
    rows.append(("`exec -- true` round trips, 1 client; time per round trip",
                 f"{1e6 / m:.0f} µs ({m:,.0f}/s); server CPU {cpu:.0f} µs/command" if m and cpu else "n/a", NA, NA, NA,
                 f"local posix_spawn + waitpid: {1e6 / l:.0f} µs ({l:,.0f}/s)" if l else "n/a",
                 f"{spread(rt)} local (speed {spread(sp)})", "≤ 1.25× (speed ≥ 0.8×)", verdict(rt, "<=", 1.25)))
    details.append(("exec: mono / local time per round trip", rt))

# --- print ----------------------------------------------------------------------------------------
secs = {row: v for (sec, row, tg, metric), d in D.items() if sec == "meta" for v in d.values()}
print(f"## Side by side ({time.strftime('%Y-%m-%d %H:%M')})\n")
print(f"`side-by-side.sh {args.bin}`, SECS={args.secs}, ROUNDS={args.rounds}; {platform.node()}, "
      f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, Linux {platform.release()}. "
      "Costs are the server's CPU time (user+sys, /proc/PID/stat) per request; ratios are taken per round "
      "(both sides measured in the same round, the order rotated each round) and given as median [min–max].\n")
print("| Row | monoreactor | C loop | tokio (current_thread) | redis-server 7 | other peer | ratio, median [min–max] | target | result |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print("\nPer-round ratios (in round order):\n")
for label, rs in details:
    print(f"- {label}: " + (", ".join(f"{x:.2f}" for x in rs) if rs else "n/a"))
if secs:
    print("\nTime taken (s): " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()))
