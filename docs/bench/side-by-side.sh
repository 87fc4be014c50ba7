#!/usr/bin/env bash
# side-by-side.sh BIN — issue 7 §4: every peer side by side, one markdown table.
#
# BIN is a monoreactor release binary. Every row compares monoreactor with its peers measured in the
# same minute: ROUNDS interleaved rounds (A B C A B C ..., the order rotated each round), and for each
# row the ratio to the reference is taken per round; the table shows the median of those ratios and
# their spread [min–max]. Costs are the server's own CPU time (user+sys, /proc/PID/stat) per request,
# as ../shared/bench-tools/compare-echo.sh counts them; no row has an absolute wall-clock target.
#
# Environment:
#   SECS=3        seconds measured per load run (loadgen adds 0.5 s of warm-up)
#   ROUNDS=3      interleaved rounds (at least 3 for a spread)
#   GET_ROUNDS    rounds of the 1 GiB GET (cheap: default max(ROUNDS, 5))
#   SECTIONS      which sections, in order (default: "echo udp connect instr idle get exec")
#   BENCH_TOOLS   the shared bench-tools directory (default ../shared/bench-tools beside the repository)
#   BENCH_TOOLS_TARGET  where the references and generators are built (default /tmp/bench-tools-target)
#   GET_FILE      the 1 GiB file to serve (default /tmp/side-by-side-1GiB.bin; made once)
#   RECORDS       where the raw records of the run go (default /tmp/side-by-side-last.tsv)
#   IDLE_CONNS=10000  connections held open for the idle-memory row
#   KEEP=1        keep the work directory (raw data, server logs) after the run
# Needs: gcc, cargo, python3, redis-server + redis-benchmark 7, nginx (nginx-light), curl, iperf3,
# valgrind (for the instructions row). See COMMANDS.md.
set -u
[ $# -eq 1 ] || { echo "usage: $0 PATH/TO/monoreactor" >&2; exit 2; }
BIN=$(realpath "$1"); [ -x "$BIN" ] || { echo "not executable: $1" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
TOOLS=${BENCH_TOOLS:-$(cd "$HERE/../../../shared/bench-tools" 2>/dev/null && pwd)}
[ -d "$TOOLS" ] || { echo "no bench-tools directory: set BENCH_TOOLS" >&2; exit 2; }
T=${BENCH_TOOLS_TARGET:-/tmp/bench-tools-target}; mkdir -p "$T"; export BENCH_TOOLS_TARGET=$T
SECS=${SECS:-3} ROUNDS=${ROUNDS:-3}
GET_ROUNDS=${GET_ROUNDS:-$(( ROUNDS < 5 ? 5 : ROUNDS ))}
SECTIONS=${SECTIONS:-echo gen udp connect instr idle get exec}
IDLE_CONNS=${IDLE_CONNS:-10000}
GET_FILE=${GET_FILE:-/tmp/side-by-side-1GiB.bin}
LOADGEN=$T/release/loadgen TOKIO=$T/release/tokio-echo CECHO=$T/c-echo
W=$(mktemp -d /tmp/side-by-side.XXXXXX)
DATA=$W/data.tsv; : >"$DATA"
TCK=$(getconf CLK_TCK)
T0=$(date +%s)
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log() { printf '[%4ds] %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }

# --- processes: every one started here is stopped here, by pid ----------------------------------
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  PIDS=()
  [ "${KEEP:-0}" = 1 ] && echo "work directory kept: $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# start NAME CMD... : runs CMD in the background, stdout in $W/NAME.out, stderr in $W/NAME.err; sets SPID
start() {
  local name=$1; shift
  "$@" >"$W/$name.out" 2>"$W/$name.err" &
  SPID=$!; PIDS+=("$SPID")
}
stop() { # stop PID: SIGTERM, wait (bounded: SIGKILL after 5 s)
  local p=$1 i
  kill "$p" 2>/dev/null
  for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  wait "$p" 2>/dev/null
  local keep=() q; for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done; PIDS=("${keep[@]}")
}
# wait_for FILE AWK-PROGRAM : prints the first match, waiting up to 10 s
wait_for() {
  local i v
  for i in $(seq 200); do
    v=$(awk "$2" "$1" 2>/dev/null | head -1); [ -n "$v" ] && { echo "$v"; return 0; }
    sleep 0.05
  done
  echo "timed out waiting in $1 for $2" >&2; return 1
}
wait_port() { # wait_port PORT : until something accepts on 127.0.0.1:PORT (10 s)
  local i; for i in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on port $1" >&2; return 1
}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }   # utime+stime, whatever the comm
rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
now_ns() { date +%s%N; }
rec() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$DATA"; }   # section row round target metric value
# rotate N ITEMS... : the items, starting at index N mod count (A B C, B C A, C A B, ...)
rotate() { local n=$1; shift; local a=("$@") k=$#; local i; for i in $(seq 0 $((k-1))); do echo "${a[$(( (i+n) % k ))]}"; done; }

# --- build what is missing (a no-op when built) --------------------------------------------------
build() {
  [ -x "$TOKIO" ] || (cd "$TOOLS/tokio-echo" && CARGO_TARGET_DIR=$T cargo build --release -q) || exit 1
  [ -x "$CECHO" ] || gcc -O2 -o "$CECHO" "$TOOLS/c-echo/echo.c" || exit 1
  [ -x "$T/c-udp-echo" ] || gcc -O2 -o "$T/c-udp-echo" "$TOOLS/c-udp/udp-echo.c" || exit 1
  [ -x "$T/udpgen" ] || gcc -O2 -o "$T/udpgen" "$TOOLS/c-udp/udpgen.c" || exit 1
  [ -x "$T/connectgen" ] || gcc -O2 -o "$T/connectgen" "$TOOLS/c-connect/connectgen.c" || exit 1
  [ -x "$T/release/loadgen" ] || (cd "$TOOLS/loadgen" && CARGO_TARGET_DIR=$T cargo build --release -q) || exit 1
}

# --- servers --------------------------------------------------------------------------------------
start_mono() { # start_mono NAME ARGS... ; sets MPID, MFRAMED, MRAW, MUDP (when enabled)
  local name=$1; shift
  start "$name" "$BIN" serve -q "$@"; MPID=$SPID
  MFRAMED=$(wait_for "$W/$name.out" '$2=="framed"{print $3}') || return 1
  MRAW=$(awk '$2=="echo-tcp"{print $3}' "$W/$name.out"); MUDP=$(awk '$2=="echo-udp"{print $3}' "$W/$name.out")
}
start_c() { start c-echo "$CECHO" 0; CPID=$SPID; CADDR=127.0.0.1:$(wait_for "$W/c-echo.out" '{print $2}'); }
start_tokio() { start "tokio$1" "$TOKIO" 127.0.0.1:0 current; TPID=$SPID; TADDR=$(wait_for "$W/tokio$1.out" '{print $2}'); }
start_redis() { # start_redis NAME ; sets RPID, RPORT, RADDR
  RPORT=$(free_port)
  start "$1" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --maxclients 11000 \
    --dir "$W" --logfile "$W/$1.log" --daemonize no
  RPID=$SPID; RADDR=127.0.0.1:$RPORT; wait_port "$RPORT"
}

# --- one load run ---------------------------------------------------------------------------------
# lg PID ADDR CONNS SIZE DEPTH [ENV=VAL...] -> "us_per_req req_per_s" ("nan nan" if the run failed)
lg() {
  local pid=$1 addr=$2 conns=$3 size=$4 depth=$5; shift 5
  local b a out
  b=$(ticks "$pid")
  out=$(env "$@" "$LOADGEN" "$addr" "$conns" "$size" "$SECS" "$depth" 2>>"$W/loadgen.err") || { echo "nan nan"; return; }
  a=$(ticks "$pid")
  # loadgen warms up 0.5 s before it measures SECS; the CPU delta covers both (as compare-echo.sh)
  echo "$out" | awk -v a="$a" -v b="$b" -v t="$TCK" -v s="$SECS" '$2>0{printf "%.3f %d\n", (a-b)/t*1e6/($2*(s+0.5)), $2; ok=1} END{if(!ok)print "nan nan"}'
}
# mb PID ADDR --raw|--redis CONNS SIZE DEPTH -> "us_per_req req_per_s": `monoreactor bench echo`,
# whose report has the server's CPU per request (--pid) over the measured window
mb() {
  local out
  out=$("$BIN" bench echo "$3" --addr "$2" -c "$4" -s "$5" -P "$6" -d "$SECS" --pid "$1" --json 2>>"$W/bench.err") || { echo "nan nan"; return; }
  echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.3f %d" % (r["server_cpu_us_per_request"], r["throughput"]))' 2>/dev/null || echo "nan nan"
}
# rb CONNS DEPTH NREQ -> "us_per_req req_per_s": redis-benchmark -t ping (PING_INLINE + PING_MBULK)
rb() {
  local b a out p=""
  [ "$2" -gt 1 ] && p="-P $2"
  b=$(ticks "$RPID")
  out=$(redis-benchmark -h 127.0.0.1 -p "$RPORT" -t ping -c "$1" $p -n "$3" -q 2>&1 | tr '\r' '\n' | grep 'requests per second')
  a=$(ticks "$RPID")
  echo "$out" | awk -v a="$a" -v b="$b" -v t="$TCK" -v n="$3" '{r+=$2; k++} END{if(k) printf "%.3f %d\n", (a-b)/t*1e6/(n*k), r/k; else print "nan nan"}'
}

# --- sections -------------------------------------------------------------------------------------
section_echo() {
  log "echo: monoreactor raw+framed, c-echo, tokio-echo (current_thread), redis-server (RESP ECHO via monoreactor bench; PING via redis-benchmark); $ROUNDS rounds x ${SECS}s"
  start_mono mono-echo --listen 127.0.0.1:0 --echo-tcp 127.0.0.1:0 --echo-udp 127.0.0.1:0 --max-conns 11000 --root "$W/mono-root" || return
  local mpid=$MPID mraw=$MRAW mframed=$MFRAMED
  start_c; start_tokio ""
  local redis_ok=0
  if command -v redis-server >/dev/null && start_redis redis; then redis_ok=1; else log "  no redis-server: redis columns skipped"; fi
  declare -A rbrate=()
  local r sc name conns size depth tgts tg v
  for r in $(seq "$ROUNDS"); do
    for sc in "64B-x50-pp 50 64 1" "64B-x50-P16 50 64 16" "64B-x500-pp 500 64 1" "64B-x500-P16 500 64 16" "16KiB-x10-pp 10 16384 1"; do
      set -- $sc; name=$1 conns=$2 size=$3 depth=$4
      tgts="raw c tokio"
      case $name in 64B-x50-pp|16KiB-x10-pp) tgts="raw framed c tokio" ;; esac
      if [ $redis_ok = 1 ]; then
        tgts="$tgts redis"
        [ "$size" = 64 ] && command -v redis-benchmark >/dev/null && tgts="$tgts redis-bench"
      fi
      for tg in $(rotate $((r-1)) $tgts); do
        case $tg in
          raw) v=$(lg "$mpid" "$mraw" "$conns" "$size" "$depth") ;;
          framed) v=$(lg "$mpid" "$mframed" "$conns" "$size" "$depth" LOADGEN_FRAMED=1) ;;
          c) v=$(lg "$CPID" "$CADDR" "$conns" "$size" "$depth") ;;
          tokio) v=$(lg "$TPID" "$TADDR" "$conns" "$size" "$depth") ;;
          redis) v=$(mb "$RPID" "$RADDR" --redis "$conns" "$size" "$depth") ;;
          redis-bench)
            # -n sized from the previous round's rate so the two tests take about SECS together
            local n=${rbrate[$name]:-$(( depth > 1 ? 400000 : 60000 ))}
            n=$(( n * SECS / 2 )); [ "$n" -lt 20000 ] && n=20000
            v=$(rb "$conns" "$depth" "$n"); rbrate[$name]=${v#* } ;;
        esac
        set -- $v
        rec echo "$name" "$r" "$tg" cpu_us "$1"; rec echo "$name" "$r" "$tg" rate "$2"
        log "  round $r $name $tg: $1 us/req, $2 req/s"
      done
    done
  done
  ECHO_MPID=$mpid ECHO_RAW=$mraw ECHO_UDP=$MUDP
  stop "$CPID"; stop "$TPID"; [ $redis_ok = 1 ] && stop "$RPID"
}

section_gen() {
  log "gen: the generators against c-echo: ../shared/bench-tools/loadgen vs monoreactor bench echo --raw; $ROUNDS rounds x ${SECS}s"
  start_c
  local r sc name conns depth tg v
  for r in $(seq "$ROUNDS"); do
    for sc in "64B-x50-pp 50 1" "64B-x50-P16 50 16"; do
      set -- $sc; name=$1 conns=$2 depth=$3
      for tg in $(rotate $((r-1)) loadgen bench); do
        case $tg in
          loadgen) v=$(lg "$CPID" "$CADDR" "$conns" 64 "$depth") ;;
          bench) v=$(mb "$CPID" "$CADDR" --raw "$conns" 64 "$depth") ;;
        esac
        set -- $v
        rec gen "$name" "$r" "$tg" cpu_us "$1"; rec gen "$name" "$r" "$tg" rate "$2"
        log "  round $r $name $tg: c-echo $1 us/req, $2 req/s"
      done
    done
  done
  stop "$CPID"
}

section_udp() {
  log "udp: compare-udp.sh (monoreactor vs c-udp-echo plain and batch), $ROUNDS rounds x ${SECS}s"
  ensure_main || return
  SECS=$SECS ROUNDS=$ROUNDS "$TOOLS/compare-udp.sh" "$ECHO_UDP" "$ECHO_MPID" >"$W/udp.txt" 2>&1
  cat "$W/udp.txt" >&2
  # rows: round scenario m_us m_rate m_lost p_us p_rate p_lost b_us b_rate b_lost
  awk 'NF==11 && $1~/^[0-9]+$/{print $1, $2, $3, $4, $6, $7, $9, $10}' "$W/udp.txt" | while read -r r sc mu mr pu pr bu br; do
    rec udp "$sc" "$r" mono cpu_us "$mu"; rec udp "$sc" "$r" mono rate "$mr"
    rec udp "$sc" "$r" c-plain cpu_us "$pu"; rec udp "$sc" "$r" c-plain rate "$pr"
    rec udp "$sc" "$r" c-batch cpu_us "$bu"; rec udp "$sc" "$r" c-batch rate "$br"
  done
}

section_connect() {
  log "connect: compare-connect.sh (monoreactor raw echo vs c-echo, tokio-echo; short connections), $ROUNDS rounds x ${SECS}s"
  ensure_main || return
  SECS=$SECS ROUNDS=$ROUNDS "$TOOLS/compare-connect.sh" "$ECHO_RAW" "$ECHO_MPID" >"$W/connect.txt" 2>&1
  cat "$W/connect.txt" >&2
  # rows: round m_us m_rate m_err c_us c_rate c_err t_us t_rate t_err
  awk 'NF==10 && $1~/^[0-9]+$/{print $1, $2, $3, $5, $6, $8, $9}' "$W/connect.txt" | while read -r r mu mr cu cr tu tr; do
    rec connect short-64B "$r" mono cpu_us "$mu"; rec connect short-64B "$r" mono rate "$mr"
    rec connect short-64B "$r" c cpu_us "$cu"; rec connect short-64B "$r" c rate "$cr"
    rec connect short-64B "$r" tokio cpu_us "$tu"; rec connect short-64B "$r" tokio rate "$tr"
  done
}

# udp and connect reuse the echo section's server; started here when echo was not run
ensure_main() {
  [ -n "${ECHO_MPID:-}" ] && kill -0 "$ECHO_MPID" 2>/dev/null && return 0
  start_mono mono-main --listen 127.0.0.1:0 --echo-tcp 127.0.0.1:0 --echo-udp 127.0.0.1:0 --max-conns 11000 --root "$W/mono-root" || return 1
  ECHO_MPID=$MPID ECHO_RAW=$MRAW ECHO_UDP=$MUDP
}

section_instr() {
  command -v valgrind >/dev/null || { log "instr: no valgrind, skipped"; return; }
  log "instr: instr-per-req.sh (cachegrind, deterministic; one run each, SECS=2)"
  local tg out
  for tg in raw framed c tokio; do
    case $tg in
      raw) out=$(SECS=2 "$TOOLS/instr-per-req.sh" echo-tcp -- "$BIN" serve -q --listen 127.0.0.1:0 --echo-tcp 127.0.0.1:0 --echo-udp off --root "$W/instr-root" 2>&1) ;;
      framed) out=$(SECS=2 PROTO=framed "$TOOLS/instr-per-req.sh" framed -- "$BIN" serve -q --listen 127.0.0.1:0 --echo-tcp off --echo-udp off --root "$W/instr-root" 2>&1) ;;
      c) out=$(SECS=2 "$TOOLS/instr-per-req.sh" port -- "$CECHO" 0 2>&1) ;;
      tokio) out=$(SECS=2 "$TOOLS/instr-per-req.sh" addr -- "$TOKIO" 127.0.0.1:0 current 2>&1) ;;
    esac
    echo "$tg: $out" >>"$W/instr.txt"; log "  $tg: $out"
    rec instr echo-64B-x10-pp 1 "$tg" instr "$(echo "$out" | awk '/instr_per_req/{print $NF}' | tail -1)"
  done
}

section_idle() {
  log "idle: $IDLE_CONNS idle connections (idle-open.py; framed ones say HELLO): RSS per connection, fresh server each, $ROUNDS rounds"
  local r tg out v pid addr kind
  for r in $(seq "$ROUNDS"); do
    for tg in $(rotate $((r-1)) raw framed tokio $(command -v redis-server >/dev/null && echo redis)); do
      case $tg in
        raw|framed) start_mono "idle-$tg-$r" --listen 127.0.0.1:0 --echo-tcp 127.0.0.1:0 --echo-udp off --max-conns 11000 --root "$W/mono-root" || continue
             pid=$MPID; if [ $tg = raw ]; then addr=$MRAW kind=raw; else addr=$MFRAMED kind=framed; fi ;;
        tokio) start_tokio "-idle-$r"; pid=$TPID addr=$TADDR kind=raw ;;
        redis) start_redis "redis-idle-$r"; pid=$RPID addr=$RADDR kind=redis ;;
      esac
      sleep 0.3
      out=$(timeout 120 python3 "$HERE/idle-open.py" "$kind" "$addr" "$IDLE_CONNS" "$pid" 2>&1)
      v=$(echo "$out" | sed -n 's/.* KiB, \([0-9.]*\) bytes per connection.*/\1/p')
      rec idle "idle-$IDLE_CONNS" "$r" "$tg" bytes_per_conn "${v:-nan}"
      log "  round $r $tg: $out"
      stop "$pid"
    done
  done
}

section_get() {
  command -v nginx >/dev/null && command -v iperf3 >/dev/null && command -v curl >/dev/null || { log "get: needs nginx, curl, iperf3; skipped"; return; }
  local dir file
  dir=$(dirname "$GET_FILE") file=$(basename "$GET_FILE")
  if [ ! -f "$GET_FILE" ] || [ "$(stat -c %s "$GET_FILE")" != 1073741824 ]; then
    log "get: making $GET_FILE (1 GiB of random bytes)"
    mkdir -p "$dir"; head -c 1G /dev/urandom >"$GET_FILE.tmp" && mv "$GET_FILE.tmp" "$GET_FILE"
  fi
  cat "$GET_FILE" >/dev/null   # into the page cache
  log "get: 1 GiB GET, monoreactor get (verified) vs nginx sendfile + curl -o /dev/null vs iperf3 -R; $GET_ROUNDS rounds"
  start_mono mono-get --listen 127.0.0.1:0 --echo-tcp off --echo-udp off --root "$dir" || return
  local mpid=$MPID maddr=$MFRAMED
  local nport iport; nport=$(free_port); iport=$(free_port)
  mkdir -p "$W/nginx/logs"
  cat >"$W/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on; sendfile_max_chunk 2m; tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path $W/nginx/body; proxy_temp_path $W/nginx/proxy;
  fastcgi_temp_path $W/nginx/fastcgi; uwsgi_temp_path $W/nginx/uwsgi; scgi_temp_path $W/nginx/scgi;
  server { listen 127.0.0.1:$nport; root $dir; }
}
EOF
  start nginx nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log"; local npid=$SPID
  start iperf3 iperf3 -s -B 127.0.0.1 -p "$iport"; local ipid=$SPID
  wait_port "$nport" && wait_port "$iport" || return
  # warm-up, untimed: the server hashes the file once (then cached), nginx opens it
  "$BIN" get --addr "$maddr" "$file" - >/dev/null || { log "get: monoreactor get failed"; return; }
  curl -sf -o /dev/null "http://127.0.0.1:$nport/$file" || { log "get: curl from nginx failed"; return; }
  local r tg b a t0 t1 pid ok
  for r in $(seq "$GET_ROUNDS"); do
    for tg in $(rotate $((r-1)) mono nginx iperf3); do
      case $tg in mono) pid=$mpid ;; nginx) pid=$npid ;; iperf3) pid=$ipid ;; esac
      b=$(ticks "$pid"); t0=$(now_ns); ok=1
      case $tg in
        mono) "$BIN" get --addr "$maddr" "$file" - >/dev/null || ok=0 ;;
        nginx) curl -sf -o /dev/null "http://127.0.0.1:$nport/$file" || ok=0 ;;
        iperf3) iperf3 -c 127.0.0.1 -p "$iport" -n 1G -R -J >"$W/iperf3-client.json" 2>&1 || ok=0 ;;
      esac
      t1=$(now_ns); a=$(ticks "$pid")
      [ $ok = 1 ] || { log "  round $r $tg failed"; continue; }
      rec get GET-1GiB "$r" "$tg" secs "$(awk -v x=$((t1-t0)) 'BEGIN{printf "%.4f", x/1e9}')"
      [ $tg = iperf3 ] && rec get GET-1GiB "$r" iperf3 xfer_secs "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["seconds"])' "$W/iperf3-client.json" 2>/dev/null || echo nan)"
      rec get GET-1GiB "$r" "$tg" server_cpu_ms "$(awk -v d=$((a-b)) -v t="$TCK" 'BEGIN{printf "%.1f", d/t*1000}')"
      log "  round $r $tg: $(( (t1-t0)/1000000 )) ms, server CPU $(( (a-b)*1000/TCK )) ms"
    done
  done
  stop "$mpid"; stop "$npid"; stop "$ipid"
}

section_exec() {
  log "exec: bench exec -c 1 (true through the server) vs bench exec --local -c 1 (posix_spawn + waitpid); $ROUNDS rounds x ${SECS}s"
  (umask 077; head -c 32 /dev/urandom | base64 >"$W/token")
  start_mono mono-exec --listen 127.0.0.1:0 --echo-tcp off --echo-udp off --no-files --exec --token-file "$W/token" --root "$W/exec-root" || return
  local mpid=$MPID maddr=$MFRAMED r tg out rate cpu
  for r in $(seq "$ROUNDS"); do
    for tg in $(rotate $((r-1)) mono local); do
      cpu=nan
      case $tg in
        mono) out=$("$BIN" bench exec -c 1 -d "$SECS" --addr "$maddr" --token-file "$W/token" --pid "$mpid" --json 2>&1)
              rate=$(echo "$out" | grep -o '"throughput":[0-9.]*' | cut -d: -f2)
              cpu=$(echo "$out" | grep -o '"server_cpu_us_per_request":[0-9.]*' | cut -d: -f2) ;;
        local) out=$("$BIN" bench exec --local -c 1 -d "$SECS" 2>&1)
              rate=$(echo "$out" | sed -n 's/.*: \([0-9.]*\) commands\/s.*/\1/p') ;;
      esac
      rec exec exec-true-c1 "$r" "$tg" rate "${rate:-nan}"; rec exec exec-true-c1 "$r" "$tg" cpu_us "${cpu:-nan}"
      log "  round $r $tg: ${rate:-?} commands/s$([ "$cpu" = nan ] || echo ", server CPU $cpu us/command")"
    done
  done
  stop "$mpid"
}

build
log "monoreactor: $BIN ($("$BIN" --version 2>/dev/null)); SECS=$SECS ROUNDS=$ROUNDS; $(redis-server --version | awk '{print $1, $2, $3}'); $(nproc) cores"
for s in $SECTIONS; do
  s0=$(date +%s)
  "section_$s"
  rec meta "$s" 0 - seconds $(( $(date +%s) - s0 ))
done
[ -n "${ECHO_MPID:-}" ] && stop "$ECHO_MPID"
rec meta total 0 - seconds $(( $(date +%s) - T0 ))
python3 "$HERE/summarize.py" "$DATA" --secs "$SECS" --rounds "$ROUNDS" --bin "$BIN" --idle-conns "$IDLE_CONNS"
cp "$DATA" "${RECORDS:-/tmp/side-by-side-last.tsv}"   # the raw records of the last run
