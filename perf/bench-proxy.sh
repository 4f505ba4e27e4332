#!/usr/bin/env bash
# ibrain against nginx and HAProxy as keep-alive reverse proxies in front of the same
# backend, each proxy pinned to CPU 0 beside the backend (BACKEND_CPU), the load generator (wrk) on CPU 1.
# Same request for all: a ~2 KB chat-completions POST. Prints side by side, from this run:
#   - saturating load (wrk, CONNS connections): requests/s, proxy CPU, requests per
#     proxy CPU-second, p50/p99 latency;
#   - one connection: p50/p99 latency, and the latency each proxy adds over the backend
#     alone.
# Each figure is the median of REPEAT runs of DURATION seconds.
#
# ibrain runs with its defaults, which include busy polling (--busy-poll-us 50: a worker
# with nothing to do polls its ring for 50 us, yielding the core, before it sleeps).
# Two more rows compare like with like: ibrain with busy polling off (--busy-poll-us 0),
# and HAProxy with its own busy polling on (global busy-polling).
#
# An A/B of two ibrain builds, side by side in the same rounds: IBRAIN_BASE=path/to/other/ibrain
# adds the rows ibrain-base and ibrain-base-no-poll; PROXIES picks the rows, e.g.
#   IBRAIN_BASE=../base/build/dataplane/ibrain PROXIES="ibrain ibrain-base" perf/bench-proxy.sh
#
# usage: perf/bench-proxy.sh [BUILD_DIR]
#   env: REPEAT=3 DURATION=8 CONNS=64 IBRAIN_ARGS=extra ibrain flags, IBRAIN_BASE, PROXIES
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

# Each proxy runs on CPU 0 only while its own rows are measured, so that none of them
# (a busy-polling one least of all) takes CPU from another's run.
# start_proxy NAME: starts it and sets $port and $pid (the process whose CPU is counted).
start_proxy() {
  port=$(ib_free_port)
  case $1 in
    ibrain | ibrain-no-poll | ibrain-base | ibrain-base-no-poll)
      local extra="" bin=$ibrain
      case $1 in *-no-poll) extra="--busy-poll-us 0" ;; esac
      case $1 in ibrain-base*) bin=${IBRAIN_BASE:?IBRAIN_BASE names the other ibrain binary} ;; esac
      # shellcheck disable=SC2086
      taskset -c 0 "$bin" --listen 127.0.0.1:$port --workers 1 --model demo --replica backend=127.0.0.1:$bport \
        $extra ${IBRAIN_ARGS:-} 2>"$tmp/$1.log" &
      pid=$!
      pids+=($pid)
      wait_port "$port"
      ;;
    nginx)
      mkdir -p "$tmp/nginx"
      cat >"$tmp/nginx/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $tmp/nginx/nginx.pid; error_log $tmp/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000; client_body_buffer_size 64k; proxy_buffering off;
  upstream backend { server 127.0.0.1:$bport; keepalive 128; }
  server { listen 127.0.0.1:$port;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
      taskset -c 0 nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" &
      pids+=($!)
      wait_port "$port"
      for _ in $(seq 50); do [ -s "$tmp/nginx/nginx.pid" ] && break; sleep 0.05; done
      pid=$(pgrep -P "$(cat "$tmp/nginx/nginx.pid")" | head -n1) # nginx's worker, child of its master
      ;;
    haproxy | haproxy-busy-poll)
      local extra=""
      [ "$1" = haproxy-busy-poll ] && extra="busy-polling"
      cat >"$tmp/$1.cfg" <<CONF
global
  nbthread 1
  maxconn 4000
  $extra
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$port
  default_backend be
backend be
  server s1 127.0.0.1:$bport
CONF
      taskset -c 0 haproxy -f "$tmp/$1.cfg" -db >"$tmp/$1.log" 2>&1 &
      pid=$!
      pids+=($pid)
      wait_port "$port"
      ;;
  esac
}

# stop_proxy NAME: stops what start_proxy started and waits for it to exit.
stop_proxy() {
  local victim=$pid
  [ "$1" = nginx ] && victim=$(cat "$tmp/nginx/nginx.pid")
  kill "$victim" 2>/dev/null || true
  while kill -0 "$victim" 2>/dev/null; do sleep 0.05; done
}

clk=$(getconf CLK_TCK)

# run PORT CONNS PID -> "rps p50_us p99_us cpu_fraction"
run() {
  local port=$1 c=$2 pid=$3 t0=0 t1=0
  [ -n "$pid" ] && t0=$(ib_cpu_ticks "$pid")
  taskset -c 1 wrk -t1 -c"$c" -d"${duration}s" --latency -s "$tmp/post.lua" "http://127.0.0.1:$port/v1/chat/completions" \
    >"$tmp/wrk.out" 2>&1
  [ -n "$pid" ] && t1=$(ib_cpu_ticks "$pid")
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

# col_median COL: the median of column COL of the lines on stdin.
col_median() { awk -v c="$1" '{print $c}' | sort -n | sed -n "$(((repeat + 1) / 2))p"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
echo "versions: $(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | head -n1 | awk '{print $3}'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
echo "request: ${#body}-byte chat completion POST; proxies pinned to CPU 0; wrk on CPU 1; backend (nginx return 200) on CPU ${BACKEND_CPU:-0}"
echo "ibrain: defaults ${IBRAIN_ARGS:-}; ibrain-no-poll: --busy-poll-us 0; haproxy-busy-poll: global busy-polling"
echo "$duration s per run, median of $repeat runs; saturating load with $conns connections"
echo
fmt="%-18s %8s %9s %14s %8s %8s  %10s %10s %9s %11s %11s %10s %10s\n"
# The proxies take turns: each round measures every proxy once, so that this VM's drift
# over minutes (neighbours come and go) spreads over all of them instead of landing on
# whichever ran at the time. At one connection the backend alone is measured right
# before each proxy's run (the proxy stopped, so that a busy-polling one cannot slow it),
# and the added latency is the median of the differences run by run.
default_names="ibrain nginx haproxy ibrain-no-poll haproxy-busy-poll"
[ -n "${IBRAIN_BASE:-}" ] && default_names+=" ibrain-base ibrain-base-no-poll"
read -r -a names <<<"${PROXIES:-$default_names}"
declare -A sat single back added
for round in $(seq "$repeat"); do
  echo "round $round of $repeat" >&2
  for name in "${names[@]}"; do
    b=$(run "$bport" 1 "")
    start_proxy "$name"
    sat[$name]+="$(run "$port" "$conns" "$pid" | awk '{printf "%s %s %s %s %.0f", $1, $2, $3, $4, ($4 > 0 ? $1 / $4 : 0)}')"$'\n'
    s1=$(run "$port" 1 "$pid")
    stop_proxy "$name"
    back[$name]+="$b"$'\n'
    single[$name]+="$s1"$'\n'
    added[$name]+="$(echo "$s1 $b" | awk '{print $2 - $6, $3 - $7}')"$'\n'
  done
done
printf "$fmt" proxy "req/s" proxy_cpu "req/cpu-second" p50_us p99_us 1conn_p50 1conn_p99 1conn_cpu backend_p50 backend_p99 \
  added_p50 added_p99
m() { echo -n "$1" | col_median "$2"; } # m RUNS COL: the median of column COL
for name in "${names[@]}"; do
  printf "$fmt" "$name" "$(m "${sat[$name]}" 1)" "$(m "${sat[$name]}" 4)" "$(m "${sat[$name]}" 5)" "$(m "${sat[$name]}" 2)" \
    "$(m "${sat[$name]}" 3)" "$(m "${single[$name]}" 2)" "$(m "${single[$name]}" 3)" "$(m "${single[$name]}" 4)" \
    "$(m "${back[$name]}" 2)" "$(m "${back[$name]}" 3)" "$(m "${added[$name]}" 1)" "$(m "${added[$name]}" 2)"
done
# The spread of the efficiency figure over the rounds, and the A/B ratio when there is one.
echo
echo "req/cpu-second over the rounds (min .. max):"
for name in "${names[@]}"; do
  echo "  $name: $(echo -n "${sat[$name]}" | awk '{print $5}' | sort -n | paste -sd' ' | awk '{print $1 " .. " $NF}')"
done
if [ -n "${sat[ibrain]:-}" ] && [ -n "${sat[ibrain-base]:-}" ]; then
  a=$(m "${sat[ibrain]}" 5) b=$(m "${sat[ibrain-base]}" 5)
  echo "ibrain / ibrain-base, req/cpu-second (medians): $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", a / b}')"
  a=$(m "${added[ibrain]}" 1) b=$(m "${added[ibrain-base]}" 1)
  echo "added p50 at one connection: ibrain $a us, ibrain-base $b us"
fi
