#!/usr/bin/env bash
# ibrain against nginx and HAProxy as keep-alive reverse proxies in front of the same
# backend, each proxy pinned to CPU 0, the load generator (wrk) and the backend on CPU 1.
# Same request for all: a ~2 KB chat-completions POST. Prints side by side, from this run:
#   - saturating load (wrk, CONNS connections): requests/s, proxy CPU, requests per
#     proxy CPU-second, p50/p99 latency;
#   - one connection: p50/p99 latency, and the latency each proxy adds over the backend
#     alone.
# Each figure is the median of REPEAT runs of DURATION seconds.
#
# usage: perf/bench-proxy.sh [BUILD_DIR]   (env: REPEAT=3 DURATION=8 CONNS=64 IBRAIN_ARGS=extra ibrain flags)
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
ibrain="$top/$build/dataplane/ibrain"
repeat=${REPEAT:-3}
duration=${DURATION:-8}
conns=${CONNS:-64}

source "$top/perf/lib.sh"
write_post_lua
# Backend: nginx answering a fixed completion, on BACKEND_CPU (default 0, beside the
# proxy, so that wrk has CPU 1 to itself and the load saturates the proxy; the CPU
# figures are per process either way).
start_backend "${BACKEND_CPU:-0}"

# Proxies, each on CPU 0.
iport=$(free_port)
taskset -c 0 "$ibrain" --listen 127.0.0.1:$iport --workers 1 --model demo --replica backend=127.0.0.1:$bport ${IBRAIN_ARGS:-} \
  2>"$tmp/ibrain.log" &
ipid=$!
pids+=($ipid)

nport=$(free_port)
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $tmp/nginx/nginx.pid; error_log $tmp/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000; client_body_buffer_size 64k; proxy_buffering off;
  upstream backend { server 127.0.0.1:$bport; keepalive 128; }
  server { listen 127.0.0.1:$nport;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
taskset -c 0 nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" &
pids+=($!)

hport=$(free_port)
cat >"$tmp/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$hport
  default_backend be
backend be
  server s1 127.0.0.1:$bport
CONF
taskset -c 0 haproxy -f "$tmp/haproxy.cfg" -db >"$tmp/haproxy.log" 2>&1 &
hpid=$!
pids+=($hpid)
wait_port "$iport"
wait_port "$nport"
wait_port "$hport"
for _ in $(seq 50); do [ -s "$tmp/nginx/nginx.pid" ] && break; sleep 0.05; done
nworker=$(pgrep -P "$(cat "$tmp/nginx/nginx.pid")" | head -n1) # nginx's worker, child of its master

clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run PORT CONNS PID -> "rps p50_us p99_us cpu_fraction"
run() {
  local port=$1 c=$2 pid=$3 t0=0 t1=0
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  taskset -c 1 wrk -t1 -c"$c" -d"${duration}s" --latency -s "$tmp/post.lua" "http://127.0.0.1:$port/v1/chat/completions" \
    >"$tmp/wrk.out" 2>&1
  [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
  /usr/bin/python3 - "$tmp/wrk.out" "$((t1 - t0))" "$clk" "$duration" <<'PY'
import re, sys
out = open(sys.argv[1]).read(); ticks = int(sys.argv[2]); clk = int(sys.argv[3]); dur = float(sys.argv[4])
def us(v, unit): return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
p = {m.group(1): us(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
if "Non-2xx" in out or "Socket errors" in out:
    print("errors in wrk output:\n" + out, file=sys.stderr); sys.exit(1)
print(f"{rps:.0f} {p['50']:.0f} {p['99']:.0f} {ticks / clk / dur:.3f}")
PY
}

median() { sort -n -k"$1" | sed -n "$(((repeat + 1) / 2))p"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
echo "versions: $(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | head -n1 | awk '{print $3}'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
echo "request: ${#body}-byte chat completion POST; proxies pinned to CPU 0; wrk on CPU 1; backend (nginx return 200) on CPU ${BACKEND_CPU:-0}"
echo "$duration s per run, median of $repeat runs; saturating load with $conns connections"
echo
fmt="%-9s %10s %10s %15s %9s %9s  %12s %12s %12s\n"
printf "$fmt" proxy "req/s" proxy_cpu "req/cpu-second" p50_us p99_us 1conn_p50_us 1conn_p99_us added_p50_us
backend_p50=0
for name in backend ibrain nginx haproxy; do
  case $name in
    backend) port=$bport pid="" ;;
    ibrain) port=$iport pid=$ipid ;;
    nginx) port=$nport pid=$nworker ;;
    haproxy) port=$hport pid=$hpid ;;
  esac
  sat=""
  single=""
  for _ in $(seq "$repeat"); do
    [ "$name" != backend ] && sat+="$(run "$port" "$conns" "$pid")"$'\n'
    single+="$(run "$port" 1 "")"$'\n'
  done
  read -r s_p50 s_p99 <<<"$(echo -n "$single" | median 2 | awk '{print $2, $3}')"
  if [ "$name" = backend ]; then
    backend_p50=$s_p50
    printf "$fmt" backend - - - - - "$s_p50" "$s_p99" -
    continue
  fi
  read -r rps p50 p99 cpu <<<"$(echo -n "$sat" | median 1)"
  per_cpu=$(/usr/bin/python3 -c "print(f'{$rps / $cpu:.0f}' if $cpu > 0 else '-')")
  printf "$fmt" "$name" "$rps" "$cpu" "$per_cpu" "$p50" "$p99" "$s_p50" "$s_p99" "$((s_p50 - backend_p50))"
done
