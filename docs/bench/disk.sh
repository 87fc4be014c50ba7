#!/usr/bin/env bash
# The disk figures of issue 12, for one or two builds of monoreactor in the same sitting:
#   - a 1 GiB PUT (verified, durable, atomic) against `dd bs=1M conv=fsync` of the same file;
#   - the server's CPU for that PUT (and its disk helper's), per GiB;
#   - the longest loop stall another client sees (`bench probe`: a 64 B echo every ms) during
#     a 1 GiB PUT, during a PUT that replaces a 1 GiB file, and during a DELETE of one.
#
# Usage: docs/bench/disk.sh ROUNDS BINARY [BINARY...]
# Each round runs every binary in turn (rotated, so none always goes first), each on a fresh
# server, and prints one line per binary; quote medians and ranges across rounds. The disk of
# this VM drifts from minute to minute: compare figures from the same rounds only.
# Needs: a 1 GiB scratch file (made once in $DISK_BENCH_DIR, default /tmp/monoreactor-disk),
# `dd`, and nothing else. Talks to 127.0.0.1 only; stops every process it started, by pid.
set -euo pipefail

rounds=${1:?usage: disk.sh ROUNDS BINARY [BINARY...]}
shift
[ $# -ge 1 ] || { echo "usage: disk.sh ROUNDS BINARY [BINARY...]" >&2; exit 2; }
dir=${DISK_BENCH_DIR:-/tmp/monoreactor-disk}
mkdir -p "$dir"
big=$dir/big.bin
[ -s "$big" ] || head -c 1G /dev/urandom >"$big"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true; }
trap cleanup EXIT

# probe BINARY ADDR SECS COMMAND...: runs COMMAND while the probe pings; prints "p99.9 max" (µs).
probe() {
    local bin=$1 addr=$2 secs=$3 out
    shift 3
    out=$(mktemp)
    "$bin" bench probe --addr "$addr" -d "$secs" >"$out" 2>/dev/null &
    local probe_pid=$!
    sleep 0.5
    "$@" >/dev/null 2>&1
    wait "$probe_pid" || true
    awk '{for (i = 1; i <= NF; i++) { if ($i == "p99.9") p = $(i+1); if ($i == "max") m = $(i+1) } }
         END { printf "%s %s", p, m }' "$out"
    rm -f "$out"
}

one() {
    local bin=$1 round=$2 root=$dir/root-$round
    rm -rf "$root"
    mkdir -p "$root"
    "$bin" serve --listen 127.0.0.1:0 --echo-tcp off --echo-udp off --root "$root" \
        >"$dir/serve.out" 2>"$dir/serve.err" &
    server_pid=$!
    local addr=
    for _ in $(seq 50); do
        addr=$(awk '/^listening framed/ {print $3}' "$dir/serve.out")
        [ -n "$addr" ] && break
        sleep 0.1
    done
    local helper
    helper=$(pgrep -P "$server_pid" | head -1 || true)

    sync
    sleep 1
    local s0 h0 t0 t1 s1 h1
    s0=$(ticks "$server_pid")
    h0=$([ -n "$helper" ] && ticks "$helper" || echo 0)
    t0=$(now)
    "$bin" put --addr "$addr" "$big" first.bin 2>/dev/null
    t1=$(now)
    s1=$(ticks "$server_pid")
    h1=$([ -n "$helper" ] && ticks "$helper" || echo 0)
    local put_s
    put_s=$(secs "$t0" "$t1")

    sync
    sleep 1
    t0=$(now)
    dd if="$big" of="$dir/dd.bin" bs=1M conv=fsync 2>/dev/null
    t1=$(now)
    local dd_s
    dd_s=$(secs "$t0" "$t1")
    rm -f "$dir/dd.bin"

    sync
    sleep 1
    local during_put during_replace during_delete
    during_put=$(probe "$bin" "$addr" 5 "$bin" put --addr "$addr" "$big" second.bin)
    sync
    sleep 1
    during_replace=$(probe "$bin" "$addr" 5 "$bin" put --addr "$addr" "$big" first.bin)
    sync
    sleep 1
    during_delete=$(probe "$bin" "$addr" 2 "$bin" rm --addr "$addr" second.bin)
    sleep 1

    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    rm -rf "$root"
    printf '%s round %s: put %.2f s, dd %.2f s, put/dd speed %.2f; cpu per GiB: server %.2f s, helper %.2f s; stall us (p99.9 max): put %s, replace %s, delete %s\n' \
        "$(basename "$(dirname "$(dirname "$(dirname "$bin")")")")" "$round" "$put_s" "$dd_s" \
        "$(echo "$dd_s / $put_s" | bc -l)" "$(echo "($s1 - $s0) / 100" | bc -l)" \
        "$(echo "($h1 - $h0) / 100" | bc -l)" "$during_put" "$during_replace" "$during_delete"
}

bins=("$@")
for round in $(seq "$rounds"); do
    # Rotate the order each round.
    for i in "${!bins[@]}"; do
        one "${bins[$(((i + round) % ${#bins[@]}))]}" "$round"
    done
done
