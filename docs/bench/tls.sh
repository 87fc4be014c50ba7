#!/usr/bin/env bash
# tls.sh BINARY: the TLS figures of docs/PERFORMANCE.md, each measured beside its reference in
# the same minute (ROUNDS interleaved rounds, 3 by default; compare the per-round ratios).
#
# One certificate (ECDSA P-256, made here with openssl) for both servers, TLS 1.3 only, no
# session tickets, and whatever suite the client prefers (rustls and curl both pick
# TLS_AES_256_GCM_SHA384 first). The reference is nginx (Debian's nginx-light with
# libnginx-mod-stream), one worker:
#   - echo: our framed echo with and without TLS, against nginx's `stream` proxy with and
#     without `ssl` in front of c-echo (../shared/bench-tools): nginx proxies where we answer,
#     so what compares fairly is the increment TLS adds to each server's CPU per request (the
#     nginx worker's CPU only; c-echo's is not counted);
#   - a 1 GiB GET over TLS, verified by the client (BLAKE3), against `curl -o /dev/null` over
#     HTTPS from nginx with `sendfile` off (it cannot sendfile under TLS either): wall time;
#   - full handshakes (no resumption): server CPU per handshake, `bench connect --tls
#     --handshake-only` against both;
#   - idle TLS connections: server memory per connection (`bench idle --tls`).
set -u
[ $# -eq 1 ] || { echo "usage: $0 MONOREACTOR_BINARY" >&2; exit 2; }
BIN=$(realpath "$1")
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-3}
# Which parts each round runs (PARTS=get ROUNDS=9: only the GET, more samples).
PARTS=${PARTS:-"echo handshake get idle"}
part() { [[ " $PARTS " == *" $1 "* ]]; }
TOOLS=${BENCH_TOOLS:-$(cd "$(dirname "$0")/../../../shared/bench-tools" && pwd)}
command -v nginx >/dev/null || { echo "needs nginx: apt-get install nginx-light libnginx-mod-stream" >&2; exit 2; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 2; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# --- certificate, files, servers -----------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -addext basicConstraints=critical,CA:FALSE 2>/dev/null
mkdir -p "$tmp/root" "$tmp/www"
head -c $((1 << 30)) /dev/urandom >"$tmp/root/big"
ln "$tmp/root/big" "$tmp/www/big"

make -s -C "$TOOLS/c-echo" >/dev/null 2>&1 || true
CECHO=$(find "$TOOLS" /tmp/bench-tools-target -name c-echo -type f -perm -u+x 2>/dev/null | head -1)
[ -n "$CECHO" ] || { echo "c-echo not built: see $TOOLS/README.md" >&2; exit 2; }
"$CECHO" 0 >"$tmp/cecho.out" &
pids+=($!)

wait_line() { # FILE PATTERN
  for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "no '$2' in $1" >&2; exit 1
}
wait_line "$tmp/cecho.out" listening
CECHO_PORT=$(awk '/listening/{print $2}' "$tmp/cecho.out")

serve() { # NAME FLAGS...: starts a server, sets NAME_PID and NAME_ADDR
  local name=$1; shift
  "$BIN" serve -q --listen 127.0.0.1:0 --echo-tcp off --echo-udp off --root "$tmp/root" "$@" \
    >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pids+=($!)
  printf -v "${name}_PID" %s $!
  wait_line "$tmp/$name.out" framed
  printf -v "${name}_ADDR" %s "$(awk '$2=="framed"{print $3}' "$tmp/$name.out")"
}
serve PLAIN
serve TLS --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGX_PLAIN=$(free_port) NGX_TLS=$(free_port) NGX_HTTPS=$(free_port)
cat >"$tmp/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
user root;
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 20000; }
stream {
  ssl_certificate $tmp/cert.pem;
  ssl_certificate_key $tmp/key.pem;
  ssl_protocols TLSv1.3;
  ssl_session_tickets off;
  server { listen 127.0.0.1:$NGX_PLAIN; proxy_pass 127.0.0.1:$CECHO_PORT; }
  server { listen 127.0.0.1:$NGX_TLS ssl; proxy_pass 127.0.0.1:$CECHO_PORT; }
}
http {
  access_log off;
  client_body_temp_path $tmp/nginx-body;
  proxy_temp_path $tmp/nginx-proxy;
  fastcgi_temp_path $tmp/nginx-fastcgi;
  uwsgi_temp_path $tmp/nginx-uwsgi;
  scgi_temp_path $tmp/nginx-scgi;
  server {
    listen 127.0.0.1:$NGX_HTTPS ssl;
    ssl_certificate $tmp/cert.pem;
    ssl_certificate_key $tmp/key.pem;
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    root $tmp/www;
  }
}
EOF
nginx -c "$tmp/nginx.conf" -g 'daemon off;' &
NGX_MASTER=$!
pids+=($NGX_MASTER)
for _ in $(seq 100); do NGX_WORKER=$(pgrep -P "$NGX_MASTER" | head -1); [ -n "$NGX_WORKER" ] && break; sleep 0.05; done
[ -n "${NGX_WORKER:-}" ] || { echo "nginx did not start: $(cat "$tmp/nginx-error.log")" >&2; exit 1; }

CA=(--tls-ca "$tmp/cert.pem")
cpu_line() { grep -E "req/s|handshake/s|CPU per|errors" | tr -s ' ' | paste -sd ' ' -; }

for r in $(seq "$ROUNDS"); do
  echo "=== round $r"
  part echo && for size in 64 16384; do
    echo "-- echo $size B, 50 connections"
    echo "ours plain:  $("$BIN" bench echo --addr "$PLAIN_ADDR" -c 50 -s $size -d "$SECS" --pid "$PLAIN_PID" 2>&1 | cpu_line)"
    echo "ours TLS:    $("$BIN" bench echo --addr "tls://$TLS_ADDR" "${CA[@]}" -c 50 -s $size -d "$SECS" --pid "$TLS_PID" 2>&1 | cpu_line)"
    echo "nginx plain: $("$BIN" bench echo --raw --addr "127.0.0.1:$NGX_PLAIN" -c 50 -s $size -d "$SECS" --pid "$NGX_WORKER" 2>&1 | cpu_line)"
    echo "nginx TLS:   $("$BIN" bench echo --raw --addr "tls://127.0.0.1:$NGX_TLS" "${CA[@]}" -c 50 -s $size -d "$SECS" --pid "$NGX_WORKER" 2>&1 | cpu_line)"
  done
  part handshake && echo "-- full handshakes, 8 at a time" &&
  echo "ours:  $("$BIN" bench connect --handshake-only --addr "tls://$TLS_ADDR" "${CA[@]}" -c 8 -d "$SECS" --pid "$TLS_PID" 2>&1 | cpu_line)"
  part handshake && echo "nginx: $("$BIN" bench connect --handshake-only --addr "tls://127.0.0.1:$NGX_TLS" "${CA[@]}" -c 8 -d "$SECS" --pid "$NGX_WORKER" 2>&1 | cpu_line)"
  if part get; then
    echo "-- 1 GiB GET over TLS (wall seconds; the file is in the page cache)"
    start=$(date +%s.%N)
    "$BIN" get -q --addr "tls://$TLS_ADDR" "${CA[@]}" big /dev/null || { echo "get failed" >&2; exit 1; }
    ours=$(echo "$(date +%s.%N) - $start" | bc)
    start=$(date +%s.%N)
    curl -sf --cacert "$tmp/cert.pem" -o /dev/null "https://127.0.0.1:$NGX_HTTPS/big" || { echo "curl failed" >&2; exit 1; }
    theirs=$(echo "$(date +%s.%N) - $start" | bc)
    echo "ours get: ${ours}s  curl from nginx: ${theirs}s  ours/theirs speed: $(echo "scale=2; $theirs / $ours" | bc)"
  fi
done
part idle || exit 0
echo "=== idle TLS connections"
"$BIN" bench idle --addr "tls://$TLS_ADDR" "${CA[@]}" -c 2000 --pid "$TLS_PID" 2>&1 | tail -3
"$BIN" bench idle --addr "$PLAIN_ADDR" -c 2000 --pid "$PLAIN_PID" 2>&1 | tail -3
