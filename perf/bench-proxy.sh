#!/usr/bin/env bash
# ibrain against nginx and HAProxy as keep-alive reverse proxies in front of the same
# backends, each proxy with one worker, side by side in interleaved rounds (every proxy once
# per round), each figure the median of REPEAT rounds with its spread (min .. max).
#
# Headline layout ("apart", as a user's benchmark sets it up and a deployment runs): the
# proxy alone on CPU 0; the backend and the load generator together on CPU 1, so every
# proxy pays the cross-CPU hops a real deployment pays. Per proxy and round:
#   - saturating: wrk, CONNS connections, the ~2 KB chat POST -> req/s, proxy CPU us per request;
#   - fixed rate: ib-load, RATE req/s (Poisson, open loop, at most 64 kept-alive
#     connections), a ~2 KB chat POST, for DURATION s -> proxy CPU us per request;
#   - one connection: wrk -c1 -> p50/p99, and the latency the proxy adds over the backend
#     alone (measured right before, the proxy stopped; the median of the differences);
#   - SSE: the mock engine streaming 16 tokens 1 ms apart (chunked transfer encoding, as
#     vLLM does), STREAM_CONNS streams in flight, STREAM_REQUESTS responses (ib-load,
#     closed loop) -> proxy CPU us per streamed response;
#   - long SSE: 1,000 tokens 1 ms apart, LONG_CONNS in flight, LONG_REQUESTS responses.
# Second layout ("beside", the earlier headline): the proxy and the backend on CPU 0, wrk
# on CPU 1: saturating and one-connection figures.
# The plain backend is nginx answering a fixed completion; the streaming one is
# ib-mock-engine (--itl-ms 1, no prefill cost). CPU is the proxy's own (nginx: its worker),
# from /proc/PID/stat over the run, divided by the requests the run completed.
#
# ibrain runs with its defaults, which include busy polling (--busy-poll-us 50);
# ibrain-no-poll is --busy-poll-us 0; haproxy-busy-poll (PROXIES) is HAProxy's own.
# HAProxy runs with `option http-no-delay`, as a deployment streaming tokens must: without
# it a 16-token stream reached the client in one piece at its end (SSE TTFT p50 17.8 ms
# against nginx's 1.7 and ibrain's 1.9), which costs less CPU and is no stream.
# An A/B of two ibrain builds in the same rounds: IBRAIN_BASE=path/to/other/ibrain adds
# ibrain-base and ibrain-base-no-poll.
#
# usage: perf/bench-proxy.sh [BUILD_DIR]
#   env: REPEAT=3 DURATION=6 CONNS=32 RATE=20000 STREAM_CONNS=32 STREAM_REQUESTS=6000
#        LONG_CONNS=32 LONG_REQUESTS=96 LAYOUTS="apart beside"
#        PROXIES="ibrain nginx haproxy ibrain-no-poll" IBRAIN_ARGS IBRAIN_BASE
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
ibrain="$top/$build/dataplane/ibrain"
engine="$top/$build/tools/ib-mock-engine"
load="$top/$build/perf/ib-load"
repeat=${REPEAT:-3}
duration=${DURATION:-6}
conns=${CONNS:-32}
rate=${RATE:-20000}
stream_conns=${STREAM_CONNS:-32} stream_requests=${STREAM_REQUESTS:-6000}
long_conns=${LONG_CONNS:-32} long_requests=${LONG_REQUESTS:-96}
layouts=" ${LAYOUTS:-apart beside} "

source "$top/perf/lib.sh"
write_post_lua
# The backends: nginx answering a fixed completion on CPU 1 (apart) and on CPU 0 (beside,
# next to the proxy), and the mock engine streaming on CPU 1.
start_backend 1; bport_apart=$bport
start_backend 0; bport_beside=$bport
eport=$(ib_free_port)
taskset -c 1 "$engine" --listen "127.0.0.1:$eport" --model demo --itl-ms 1 --itl-us-per-seq 0 --overhead-ms 0 \
  --prefill-us-per-token 0 --max-seqs 4096 --cache-blocks 4096 >"$tmp/engine.log" 2>&1 &
pids+=($!)
wait_port "$eport"

# Each proxy runs on CPU 0 only while its own rows are measured, so that none of them
# (a busy-polling one least of all) takes CPU from another's run.
# start_proxy NAME BACKEND_PORT: starts it and sets $port and $pid (the process whose CPU
# is counted).
start_proxy() {
  port=$(ib_free_port)
  local up=$2
  case $1 in
    ibrain | ibrain-no-poll | ibrain-base | ibrain-base-no-poll)
      local extra="" bin=$ibrain
      case $1 in *-no-poll) extra="--busy-poll-us 0" ;; esac
      case $1 in ibrain-base*) bin=${IBRAIN_BASE:?IBRAIN_BASE names the other ibrain binary} ;; esac
      # shellcheck disable=SC2086
      taskset -c 0 "$bin" --listen 127.0.0.1:$port --workers 1 --model demo --replica backend=127.0.0.1:$up \
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
  upstream backend { server 127.0.0.1:$up; keepalive 128; }
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
  # without it HAProxy sends a chunked body with MSG_MORE while more is to come, and the
  # kernel holds a short stream's tokens until its end (TTFT = the whole stream)
  option http-no-delay
frontend fe
  bind 127.0.0.1:$port
  default_backend be
backend be
  server s1 127.0.0.1:$up
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

# cpu_us TICKS_BEFORE TICKS_AFTER N: the proxy's CPU microseconds per request
cpu_us() { awk -v a="$1" -v b="$2" -v n="$3" -v c="$clk" 'BEGIN {printf "%.1f", (n > 0 ? (b - a) / c * 1e6 / n : 0)}'; }

# run_wrk PORT CONNS PID: R="rps p50_us p99_us cpu_us_per_request" (wrk on CPU 1, DURATION s;
# PID empty: no CPU figure). The run_ functions set R rather than print, so that a failed
# run stops the script (set -e does not see into a command substitution).
run_wrk() {
  local port=$1 c=$2 pid=$3 t0=0 t1=0
  [ -n "$pid" ] && t0=$(ib_cpu_ticks "$pid")
  taskset -c 1 wrk -t1 -c"$c" -d"${duration}s" --latency -s "$tmp/post.lua" "http://127.0.0.1:$port/v1/chat/completions" \
    >"$tmp/wrk.out" 2>&1
  [ -n "$pid" ] && t1=$(ib_cpu_ticks "$pid")
  R=$(/usr/bin/python3 - "$tmp/wrk.out" "$t0" "$t1" "$clk" <<'PY'
import re, sys
out = open(sys.argv[1]).read(); ticks = int(sys.argv[3]) - int(sys.argv[2]); clk = int(sys.argv[4])
def us(v, unit): return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
p = {m.group(1): us(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
n = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
if "Non-2xx" in out or "Socket errors" in out:
    print("errors in wrk output:\n" + out, file=sys.stderr); sys.exit(1)
print(f"{rps:.0f} {p['50']:.0f} {p['99']:.0f} {ticks / clk * 1e6 / n:.1f}")
PY
  )
}

# run_load PORT PID ARGS...: R="cpu_us_per_request ttft_p50_ms", ib-load on CPU 1 with ARGS
# (a ~2 KB chat: 400 + 100 tokens of 4 bytes); every request must succeed
run_load() {
  local port=$1 pid=$2 t0 t1 ok ttft
  shift 2
  t0=$(ib_cpu_ticks "$pid")
  taskset -c 1 "$load" --target "127.0.0.1:$port" --model demo --system-tokens 400 --question-tokens 100 \
    --json "$tmp/load.json" --quiet "$@" >"$tmp/load.out" 2>&1 || { cat "$tmp/load.out" >&2; exit 1; }
  t1=$(ib_cpu_ticks "$pid")
  read -r ok ttft < <(/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
print(d["ok"] if d["errors"] == 0 else 0, d["ttft_ms"]["p50"])' "$tmp/load.json")
  [ "$ok" -gt 0 ] || { echo "ib-load: failed requests: $(cat "$tmp/load.out")" >&2; exit 1; }
  R="$(cpu_us "$t0" "$t1" "$ok") $ttft"
}

# The measurements of one proxy in one round; each appends a line to its series.
declare -A S
add() { S[$1]+="$2"$'\n'; } # add SERIES LINE
measure_apart() {
  local name=$1 b
  run_wrk "$bport_apart" 1 ""; b=$R
  start_proxy "$name" "$bport_apart"
  run_wrk "$port" "$conns" "$pid"; add "sat-$name" "$R"
  run_load "$port" "$pid" --no-stream --output-tokens 1 --rate "$rate" --max-conns 64 \
    --shared-prefix "8,$((rate * duration / 8))"
  add "rate-$name" "$R"
  run_wrk "$port" 1 "$pid"; add "one-$name" "$R"
  add "added-$name" "$(echo "$R $b" | awk '{print $2 - $6, $3 - $7}')"
  stop_proxy "$name"
  start_proxy "$name" "$eport"
  run_load "$port" "$pid" --output-tokens 16 --concurrency "$stream_conns" --max-conns "$stream_conns" \
    --shared-prefix "8,$((stream_requests / 8))"
  add "sse-$name" "$R"
  run_load "$port" "$pid" --output-tokens 1000 --concurrency "$long_conns" --max-conns "$long_conns" \
    --shared-prefix "8,$((long_requests / 8))"
  add "long-$name" "$R"
  stop_proxy "$name"
}
measure_beside() {
  local name=$1 b
  run_wrk "$bport_beside" 1 ""; b=$R
  start_proxy "$name" "$bport_beside"
  run_wrk "$port" "$conns" "$pid"; add "bsat-$name" "$R"
  run_wrk "$port" 1 "$pid"; add "bone-$name" "$R"
  add "badded-$name" "$(echo "$R $b" | awk '{print $2 - $6, $3 - $7}')"
  stop_proxy "$name"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r); $(date -u +%F)"
echo "versions: $(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | head -n1 | awk '{print $3}'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}'), ibrain $(git -C "$top" rev-parse --short HEAD)"
echo "request: ${#body}-byte chat completion POST (wrk); ib-load's 400+100-token chats (fixed rate, SSE)"
echo "ibrain: defaults ${IBRAIN_ARGS:-}; ibrain-no-poll: --busy-poll-us 0; haproxy-busy-poll: global busy-polling"
echo "$duration s per run, median of $repeat interleaved rounds (proxy order rotated each round), spread min .. max"
echo

default_names="ibrain nginx haproxy ibrain-no-poll"
[ -n "${IBRAIN_BASE:-}" ] && default_names+=" ibrain-base ibrain-base-no-poll"
read -r -a names <<<"${PROXIES:-$default_names}"
for round in $(seq "$repeat"); do
  echo "round $round of $repeat" >&2
  n=${#names[@]}
  for ((i = 0; i < n; i++)); do
    name=${names[$(((i + round - 1) % n))]}
    [[ $layouts == *" apart "* ]] && measure_apart "$name"
    [[ $layouts == *" beside "* ]] && measure_beside "$name"
  done
done

m() { echo -n "${S[$1]}" | awk -v c="$2" '{print $c}' | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
spread() { echo -n "${S[$1]}" | awk -v c="$2" '{print $c}' | sort -g | paste -sd' ' | awk '{print $1 ".." $NF}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
if [[ $layouts == *" apart "* ]]; then
  echo "apart (headline): the proxy alone on CPU 0; backend and load generator on CPU 1"
  echo "| proxy | req/s, $conns conns | CPU us/req, saturating | CPU us/req at $rate/s | 1-conn p50 us | added p50 us | added p99 us | CPU us per SSE response (16 x 1 ms) | CPU us per SSE response (1000 x 1 ms) | SSE TTFT p50 ms |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for name in "${names[@]}"; do
    echo "| $name | $(m "sat-$name" 1) | $(m "sat-$name" 4) ($(spread "sat-$name" 4)) | $(m "rate-$name" 1) ($(spread "rate-$name" 1)) | $(m "one-$name" 2) | $(m "added-$name" 1) | $(m "added-$name" 2) | $(m "sse-$name" 1) ($(spread "sse-$name" 1)) | $(m "long-$name" 1) ($(spread "long-$name" 1)) | $(m "sse-$name" 2) |"
  done
  if [ -n "${S[sat-ibrain]:-}" ] && [ -n "${S[sat-nginx]:-}" ] && [ -n "${S[sat-haproxy]:-}" ]; then
    best() { awk -v a="$1" -v b="$2" 'BEGIN {print (a < b ? a : b)}'; }
    echo
    echo "ibrain's advantage (the better peer's CPU / ibrain's; above 1 = ibrain uses less):"
    echo "  saturating: $(ratio "$(best "$(m sat-nginx 4)" "$(m sat-haproxy 4)")" "$(m sat-ibrain 4)")x;" \
      "at $rate/s: $(ratio "$(best "$(m rate-nginx 1)" "$(m rate-haproxy 1)")" "$(m rate-ibrain 1)")x;" \
      "SSE 16: $(ratio "$(m sse-haproxy 1)" "$(m sse-ibrain 1)")x HAProxy's, $(ratio "$(m sse-nginx 1)" "$(m sse-ibrain 1)")x nginx's;" \
      "SSE 1000: $(ratio "$(m long-haproxy 1)" "$(m long-ibrain 1)")x HAProxy's"
  fi
  echo
fi
if [[ $layouts == *" beside "* ]]; then
  echo "beside: the proxy and the backend on CPU 0; wrk on CPU 1"
  echo "| proxy | req/s, $conns conns | CPU us/req, saturating | 1-conn p50 us | added p50 us | added p99 us |"
  echo "|---|---:|---:|---:|---:|---:|"
  for name in "${names[@]}"; do
    echo "| $name | $(m "bsat-$name" 1) | $(m "bsat-$name" 4) ($(spread "bsat-$name" 4)) | $(m "bone-$name" 2) | $(m "badded-$name" 1) | $(m "badded-$name" 2) |"
  done
fi
if [ -n "${S[sat-ibrain-base]:-}" ]; then
  echo
  echo "ibrain / ibrain-base, CPU per request (medians): saturating $(ratio "$(m sat-ibrain 4)" "$(m sat-ibrain-base 4)")," \
    "at $rate/s $(ratio "$(m rate-ibrain 1)" "$(m rate-ibrain-base 1)"), SSE 16 $(ratio "$(m sse-ibrain 1)" "$(m sse-ibrain-base 1)")"
fi
