#!/usr/bin/env bash
# The whole-tree figures of issue 16: `put -r` and `get -r` of two trees against
# `rsync -a` to and from an rsync daemon and `tar c | nc` into `tar x`, all on loopback:
#   - small: 10,000 files of 4 KiB in 100 directories (target: at least rsync's speed);
#   - large: 100 files of 10 MiB in one directory (target: at least 0.9x tar | nc's speed).
#
# Usage: docs/bench/tree.sh ROUNDS BINARY
# Each round times, for each tree, the six transfers one after the other in a rotated order
# (so none always goes first): ours up and down, rsync up and down, tar | nc up and down.
# It prints one line per transfer, then the medians, the spread (min-max) and the ratios
# rsync/ours and (tar|nc)/ours (above 1: ours is faster). The disk of this VM drifts from
# minute to minute: only figures from the same rounds are compared.
#
# What each one guarantees differs, so each of rsync and tar | nc is timed twice: as it
# returns, and until a `sync` of what it wrote returns. Ours verifies every file's BLAKE3,
# makes each one visible atomically and makes the tree durable (one syncfs) before `put -r`
# or `get -r` returns; rsync and tar write through the page cache and sync nothing. Every run
# starts from warm caches on the sending side, an empty destination and nothing left to write
# back (an untimed `sync` before it).
#
# Nothing is deleted while it runs: every transfer writes a fresh destination (TREE.ROUND),
# and everything is removed at the end. This VM's ext4 has no journal, and such an ext4 skips,
# when it allocates an inode, every inode of the group freed in the last minute (five more if
# its block is not yet written back): after an `rm -rf` of 10,000 files, each of the next
# creations scans past them all, and `perf` shows 50-70 % of the receiver's CPU in ext4's
# `recently_deleted`, rsync's as much as ours. A run therefore also waits out deletions made
# before it: leave 6 minutes after the last run (whose cleanup deletes its trees), or after a
# `cargo build` that rewrote a target directory.
#
# Needs: rsync, nc (OpenBSD netcat: `-N`), tar, bc. Builds the trees once in
# $TREE_BENCH_DIR (default /tmp/monoreactor-tree). Talks to 127.0.0.1 only; stops every
# process it started, by pid, and removes what it wrote except the source trees.
set -euo pipefail

rounds=${1:?usage: tree.sh ROUNDS BINARY}
bin=${2:?usage: tree.sh ROUNDS BINARY}
bin=$(realpath "$bin")
for tool in rsync nc tar bc; do
    command -v "$tool" >/dev/null || { echo "tree.sh: needs $tool" >&2; exit 2; }
done
dir=${TREE_BENCH_DIR:-/tmp/monoreactor-tree}
mkdir -p "$dir"
src=$dir/src
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$dir/root" "$dir/rsync" "$dir/down" "$dir/tarx"
}
trap cleanup EXIT

# The trees, made once: random bytes so nothing compresses or deduplicates.
if [ ! -f "$src/.made" ]; then
    rm -rf "$src"
    mkdir -p "$src/small" "$src/large"
    head -c $((10000 * 4096)) /dev/urandom >"$dir/pool"
    python3 - "$dir/pool" "$src/small" <<'EOF'
import os, sys
pool, out = sys.argv[1], sys.argv[2]
with open(pool, "rb") as f:
    data = f.read()
for d in range(100):
    os.mkdir(f"{out}/d{d:02}")
    for i in range(100):
        n = d * 100 + i
        with open(f"{out}/d{d:02}/f{i:02}", "wb") as g:
            g.write(data[n * 4096:(n + 1) * 4096])
EOF
    rm -f "$dir/pool"
    for i in $(seq -w 0 99); do head -c 10M /dev/urandom >"$src/large/f$i"; done
    touch "$src/.made"
fi
# Warm the page cache on the sending side.
cat "$src"/small/*/* "$src"/large/* >/dev/null

now() { date +%s.%N; }
# Prints "SECONDS SECONDS_WITH_SYNC" for a transfer that ended at $2, begun at $1: the second
# adds a `sync` of what it wrote (ours syncs before it returns, so the two are the same).
timed() {
    local t0=$1 t1=$2 t2
    sync
    t2=$(now)
    echo "$(echo "$t1 - $t0" | bc) $(echo "$t2 - $t0" | bc)"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Our server, on a fresh root.
mkdir -p "$dir/root"
"$bin" serve -q --listen 127.0.0.1:0 --echo-tcp off --echo-udp off --root "$dir/root" \
    >"$dir/serve.out" 2>"$dir/serve.err" &
pids+=($!)
addr=
for _ in $(seq 100); do
    addr=$(awk '/^listening framed/ {print $3}' "$dir/serve.out")
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "tree.sh: the server did not start" >&2; cat "$dir/serve.err" >&2; exit 1; }

# An rsync daemon: module `dst` is where uploads land and downloads come from.
mkdir -p "$dir/rsync"
rport=$(free_port)
cat >"$dir/rsyncd.conf" <<EOF
pid file = $dir/rsyncd.pid
use chroot = no
uid = $(id -u)
gid = $(id -g)
[dst]
    path = $dir/rsync
    read only = no
EOF
rsync --daemon --no-detach --address=127.0.0.1 --port="$rport" --config="$dir/rsyncd.conf" &
pids+=($!)
sleep 0.5

# Each transfer: empties its destination (untimed), then prints its time in seconds, and its
# time to a synced disk (see `timed`).
ours_up() {
    local t0 t1
    t0=$(now)
    "$bin" put -r -q --addr "$addr" "$src/$1" "$1.$2"
    t1=$(now)
    timed "$t0" "$t1"
}
ours_down() {
    local t0 t1
    t0=$(now)
    "$bin" get -r -q --addr "$addr" "$1.from" "$dir/down/ours.$1.$2"
    t1=$(now)
    timed "$t0" "$t1"
}
rsync_up() {
    local t0 t1
    t0=$(now)
    rsync -a "$src/$1/" "rsync://127.0.0.1:$rport/dst/$1.$2/"
    t1=$(now)
    timed "$t0" "$t1"
}
rsync_down() {
    local t0 t1
    t0=$(now)
    rsync -a "rsync://127.0.0.1:$rport/dst/$1.from/" "$dir/down/rsync.$1.$2/"
    t1=$(now)
    timed "$t0" "$t1"
}
# tar c | nc into nc -l | tar x: the same pipeline either way on one host, so "down" runs it
# from the copy the other tools downloaded from, to the same file system as theirs.
tar_nc() {
    local from=$1 name=$2 to=$3 port t0 t1 rx
    mkdir -p "$to"
    port=$(free_port)
    (nc -l 127.0.0.1 "$port" | tar x -C "$to") &
    rx=$!
    sleep 0.2
    t0=$(now)
    tar c -C "$from" "$name" | nc -N 127.0.0.1 "$port"
    wait "$rx"
    t1=$(now)
    timed "$t0" "$t1"
}
tar_up() { tar_nc "$src" "$1" "$dir/tarx/$2"; }
tar_down() { tar_nc "$dir/root" "$1.from" "$dir/down/tar.$1.$2"; }

# What the downloads read: each tree stored once on our server and in rsync's module,
# before anything is timed.
mkdir -p "$dir/down" "$dir/tarx"
for tree in small large; do
    "$bin" put -r -q --addr "$addr" "$src/$tree" "$tree.from"
    rsync -a "$src/$tree/" "rsync://127.0.0.1:$rport/dst/$tree.from/"
done
cat "$dir/root"/small.from/*/* "$dir/root"/large.from/* >/dev/null

# Checks a destination holds the same bytes as the source (once per kind, untimed).
same() {
    diff -r "$src/$1" "$2" >/dev/null || { echo "tree.sh: $2 differs from $src/$1" >&2; exit 1; }
}

results=$dir/results
: >"$results"
kinds=(ours_up ours_down rsync_up rsync_down tar_up tar_down)
for round in $(seq "$rounds"); do
    for tree in small large; do
        n=${#kinds[@]}
        for k in $(seq 0 $((n - 1))); do
            kind=${kinds[$(((k + round) % n))]}
            # Nothing left to write back from the run before: each starts from a clean disk.
            sync
            t=$($kind "$tree" "$round")
            echo "round $round $tree $kind $t" | tee -a "$results"
            case $kind in
                ours_up) to=$dir/root/$tree.$round ;;
                ours_down) to=$dir/down/ours.$tree.$round ;;
                rsync_down) to=$dir/down/rsync.$tree.$round ;;
                rsync_up) to=$dir/rsync/$tree.$round ;;
                tar_up) to=$dir/tarx/$round/$tree ;;
                tar_down) to=$dir/down/tar.$tree.$round/$tree.from ;;
            esac
            [ "$round" = 1 ] && same "$tree" "$to"
            # A large tree's copy goes at once (a gigabyte each; its 100 inodes freed are
            # nothing to the allocator), a small tree's at the end.
            if [ "$tree" = large ]; then rm -rf "$to"; fi
        done
    done
done

echo
python3 - "$results" <<'EOF'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    _, _, tree, kind, t, synced = line.split()
    times.setdefault((tree, kind), []).append((float(t), float(synced)))
def cell(tree, kind, i):
    v = [t[i] for t in times[(tree, kind)]]
    return statistics.median(v), f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
print("seconds: median (min-max); +sync: until a sync of what was written returned; "
      "ratio above 1: ours is faster")
head = ["tree", "way", "ours", "rsync", "rsync+sync", "tar|nc", "tar|nc+sync",
        "rsync/ours", "rsync+sync/ours", "tar/ours", "tar+sync/ours"]
print(" | ".join(head))
for tree in ("small", "large"):
    for way in ("up", "down"):
        o, oc = cell(tree, f"ours_{way}", 1)
        r, rc = cell(tree, f"rsync_{way}", 0)
        rs, rsc = cell(tree, f"rsync_{way}", 1)
        t, tc = cell(tree, f"tar_{way}", 0)
        ts, tsc = cell(tree, f"tar_{way}", 1)
        print(" | ".join([tree, way, oc, rc, rsc, tc, tsc,
                          f"{r / o:.2f}", f"{rs / o:.2f}", f"{t / o:.2f}", f"{ts / o:.2f}"]))
EOF
