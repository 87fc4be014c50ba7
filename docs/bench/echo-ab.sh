#!/usr/bin/env bash
# echo-ab.sh A_BINARY B_BINARY: two monoreactor builds, interleaved A B A B (ROUNDS rounds, 3 by
# default), each a fresh server: the raw echo's CPU per request against c-echo and tokio-echo
# (compare-echo.sh, three scenarios), then the framed echo's CPU per request (`bench echo`, 50
# connections, 64 B, with B's load generator). Compare the per-round ratios, not absolute
# figures: the machine's speed drifts between minutes.
set -u
[ $# -eq 2 ] || { echo "usage: $0 A_BINARY B_BINARY" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
TOOLS=${BENCH_TOOLS:-$(cd "$(dirname "$0")/../../../shared/bench-tools" && pwd)}
A=$1 B=$2
for r in $(seq "$ROUNDS"); do
  for bin in "$A" "$B"; do
    tmp=$(mktemp -d)
    "$bin" serve -q --listen 127.0.0.1:0 --echo-tcp 127.0.0.1:0 --echo-udp off >"$tmp/out" 2>/dev/null &
    pid=$!
    for _ in $(seq 100); do
      grep -q echo-tcp "$tmp/out" && grep -q framed "$tmp/out" && break
      sleep 0.05
    done
    raw=$(awk '$2=="echo-tcp"{print $3}' "$tmp/out")
    framed=$(awk '$2=="framed"{print $3}' "$tmp/out")
    echo "== round $r $bin"
    SECS=3 "$TOOLS/compare-echo.sh" "$raw" "$pid" 2>&1 | tail -4
    "$B" bench echo --addr "$framed" -c 50 -s 64 -d 3 --pid "$pid" 2>&1 | grep -E "req/s|CPU per req"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null
    rm -rf "$tmp"
  done
done
