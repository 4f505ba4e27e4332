#!/usr/bin/env bash
# Resource bounds (issue 18, part 3): one ibrain with many connections, many streams, a
# slow-loris crowd, and a tight memory limit. Prints what each section measured.
#
#   perf/bounds.sh [BUILD_DIR] [conns] [streams] [loris] [cgroup]   (default: all four)
#
# conns    50,000 idle keep-alive connections (from 127.0.0.2-3): ibrain's memory and
#          descriptors per connection, a normal client's latency beside them, then 2,000
#          more than the cap (the longest-idle make room).
# streams  10,000 concurrent streams through ibrain to 4 mock engines: memory and
#          descriptors per stream; then with a cap of 8,000 connections: the rest are told
#          503 with Retry-After.
# loris    10,000 connections trickling a request head a byte a second for 30 s, beside a
#          normal client at 20 requests/s: its latency against the same client alone.
# cgroup   ibrain in a memory cgroup (v1) of 96 MiB, 40 clients each sending a 4 MB body but
#          its last byte: with its default budget (half the limit) it answers 503 once over
#          it, is not killed, and serves normally after; without a budget it is killed.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$SRC/build sections=()
for a in "$@"; do
  case $a in
  conns | streams | loris | cgroup) sections+=("$a") ;;
  -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
  *) BUILD=$(cd "$a" && pwd) ;;
  esac
done
((${#sections[@]})) || sections=(conns streams loris cgroup)
export IB_BUILD=$BUILD IB_SRC=$SRC
source "$SRC/tests/lib/proc.sh"
# Descriptors: as many as the hard limit allows. Where it is below what a section needs (a
# sandbox without CAP_SYS_RESOURCE: 20,000 here), the section runs at what fits and says so.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
N_IDLE=$((NOFILE - 1000 < 50000 ? NOFILE - 1000 : 50000))
N_STREAMS=$(((NOFILE - 1000) / 2 < 10000 ? (NOFILE - 1000) / 2 : 10000)) # a client and an upstream socket each
PY=/usr/bin/python3
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
latency() { # NAME PORT: 200 short streaming chats at 20/s; prints "p50 p99 ok/sent" of TTFT in ms
  "$IB_LOAD_BIN" --target "127.0.0.1:$2" --model mock --shared-prefix 4,50 --system-tokens 200 --question-tokens 20 \
    --output-tokens 4 --rate 20 --json "$IB_TMP/$1.json" --quiet >/dev/null 2>&1 || true
  ib_json "$IB_TMP/$1.json" '("%.2f ms p50, %.2f ms p99 TTFT, " % (d["ttft_ms"]["p50"], d["ttft_ms"]["p99"]) if d["ok"] else "") + "%d/%d ok" % (d["ok"], d["sent"])'
}

ib_engine e1 --model mock --itl-ms 1
engines=(--replica "e1=127.0.0.1:$(ib_port e1)")

section_conns() {
  echo "== conns: $N_IDLE idle keep-alive connections (descriptors: $NOFILE a process)"
  local cap=$((N_IDLE / 2))
  ib_ibrain ib --workers 2 --model mock "${engines[@]}" --max-conns-per-worker "$cap" --idle-timeout-ms 600000
  local port pid r0 f0 r1 f1
  port=$(ib_port ib) pid=${IB_PID[ib]}
  echo "alone: $(latency alone "$port")"
  r0=$(rss_kb "$pid") f0=$(fds "$pid")
  rm -f "$IB_TMP/idle.ready"
  ib_spawn idle "$PY" "$SRC/perf/bounds.py" idle "$port" "$N_IDLE" "$IB_TMP/idle.ready"
  wait_until 150 "$N_IDLE connections served" '[ -s "$IB_TMP/idle.ready" ]'
  cat "$IB_TMP/idle.log"
  r1=$(rss_kb "$pid") f1=$(fds "$pid")
  echo "ibrain: RSS $((r0 / 1024)) -> $((r1 / 1024)) MiB ($(((r1 - r0) * 1024 / N_IDLE)) bytes a connection), descriptors $f0 -> $f1"
  echo "beside them: $(latency beside "$port")"
  # 500 more than the cap: the longest idle make room, nobody is refused (the cap is under
  # the descriptor limit by 1,000)
  rm -f "$IB_TMP/more.ready"
  ib_spawn more "$PY" "$SRC/perf/bounds.py" idle "$port" 500 "$IB_TMP/more.ready"
  wait_until 60 "500 more served" '[ -s "$IB_TMP/more.ready" ]'
  echo "over the cap: $(cat "$IB_TMP/more.log"); evicted $(ib_metric "http://127.0.0.1:$port/metrics" ibrain_connections_evicted_total)," \
    "refused $(ib_metric "http://127.0.0.1:$port/metrics" ibrain_connections_refused_total)"
  ib_stop more >/dev/null || true
  ib_stop idle >/dev/null || true
  ib_stop ib || ib_fail "ibrain exited with $?"
}

section_streams() {
  echo "== streams: $N_STREAMS concurrent streams (descriptors: $NOFILE a process)"
  local e port pid peak_r=0 peak_f=0 r f r0 f0 loader
  for e in s1 s2 s3 s4; do ib_engine "$e" --model mock --itl-ms 1000 --itl-us-per-seq 0 --max-seqs 5000; done
  local ups=()
  for e in s1 s2 s3 s4; do ups+=(--replica "$e=127.0.0.1:$(ib_port "$e")"); done
  for cap in $N_STREAMS $((N_STREAMS * 4 / 10)); do
    ib_ibrain ib --workers 2 --model mock "${ups[@]}" --max-conns-per-worker "$cap"
    port=$(ib_port ib) pid=${IB_PID[ib]}
    r0=$(rss_kb "$pid") f0=$(fds "$pid") peak_r=0 peak_f=0
    "$IB_LOAD_BIN" --target "127.0.0.1:$port" --model mock --shared-prefix 100,100 --system-tokens 100 \
      --question-tokens 20 --output-tokens 12 --concurrency "$N_STREAMS" --limit "$N_STREAMS" --max-conns "$N_STREAMS" \
      --timeout-s 120 \
      --json "$IB_TMP/streams.json" --quiet >"$IB_TMP/streams.txt" 2>&1 &
    loader=$!
    while kill -0 "$loader" 2>/dev/null; do
      r=$(rss_kb "$pid") f=$(fds "$pid")
      ((r > peak_r)) && peak_r=$r
      ((f > peak_f)) && peak_f=$f
      sleep 0.5
    done
    wait "$loader" || true
    echo "cap $((cap * 2)) connections (2 workers): $(ib_json "$IB_TMP/streams.json" '"%d of %d streams ok; failed: %s" % (d["ok"], d["sent"], d["error_kinds"] or "none")')"
    echo "  ibrain peak: RSS $((r0 / 1024)) -> $((peak_r / 1024)) MiB ($(((peak_r - r0) * 1024 / N_STREAMS)) bytes a stream)," \
      "descriptors $f0 -> $peak_f"
    ib_stop ib || ib_fail "ibrain exited with $?"
  done
  for e in s1 s2 s3 s4; do ib_stop "$e" >/dev/null || true; done
}

section_loris() {
  echo "== loris: 10,000 connections trickling their heads"
  ib_ibrain ib --workers 2 --model mock "${engines[@]}"
  local port
  port=$(ib_port ib)
  echo "alone: $(latency alone "$port")"
  ib_spawn loris "$PY" "$SRC/perf/bounds.py" loris "$port" "$((N_IDLE < 10000 ? N_IDLE : 10000))" 30
  sleep 12 # the crowd connected and trickling, its first heads past the 10 s header timeout
  echo "beside them: $(latency beside "$port")"
  wait "${IB_PID[loris]}" || true
  unset "IB_PID[loris]"
  cat "$IB_TMP/loris.log"
  echo "ibrain counted $(ib_metric_sum "http://127.0.0.1:$port/metrics" '^ibrain_requests_total.*status="408"') 408s"
  ib_stop ib || ib_fail "ibrain exited with $?"
}

section_cgroup() {
  echo "== cgroup: 96 MiB"
  [ -d /sys/fs/cgroup/memory ] || { echo "no cgroup v1 memory controller here: skipped"; return; }
  local budget port cg st peak_buf peak_shed v
  for budget in default 0; do # 0: unbounded, as before the budget
    cg=/sys/fs/cgroup/memory/ibrain-bounds-$$-$budget
    mkdir "$cg"
    echo $((96 << 20)) >"$cg/memory.limit_in_bytes"
    local extra=()
    [ "$budget" = default ] || extra=(--max-buffer-mb "$budget")
    ib_spawn ib sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$IB_IBRAIN_BIN" --listen 127.0.0.1:0 \
      --port-file "$IB_TMP/ib.port" --workers 2 --model mock "${engines[@]}" "${extra[@]}"
    port=$(ib_wait_port ib)
    ib_wait_http "http://127.0.0.1:$port/health"
    echo "--max-buffer-mb $budget: budget $(ib_metric "http://127.0.0.1:$port/metrics" ibrain_buffer_budget_bytes) bytes;" \
      "alone: $(latency alone-$budget "$port")"
    "$PY" "$SRC/perf/bounds.py" pin "$port" 40 15 >"$IB_TMP/pin.txt" 2>&1 &
    local pinner=$! peak_buf=0
    while kill -0 "$pinner" 2>/dev/null; do
      v=$(ib_metric "http://127.0.0.1:$port/metrics" ibrain_buffer_bytes || true)
      [ -n "$v" ] && ((v > peak_buf)) && peak_buf=$v
      sleep 0.5
    done
    wait "$pinner" || true
    cat "$IB_TMP/pin.txt"
    if kill -0 "${IB_PID[ib]}" 2>/dev/null; then
      echo "  ibrain alive: buffers peaked at $((peak_buf >> 20)) MiB, $(ib_metric "http://127.0.0.1:$port/metrics" ibrain_requests_shed_total) requests shed;" \
        "after: $(latency after-$budget "$port")"
      ib_stop ib || ib_fail "ibrain exited with $?"
    else
      st=0
      wait "${IB_PID[ib]}" || st=$?
      unset "IB_PID[ib]"
      echo "  ibrain died (exit status $st: $( ((st == 137)) && echo SIGKILL || echo "?")), buffers last seen at $((peak_buf >> 20)) MiB"
    fi
    echo "  cgroup: peak $(($(cat "$cg/memory.max_usage_in_bytes") >> 20)) MiB, OOM kills $(awk '$1 == "oom_kill" {print $2}' "$cg/memory.oom_control")"
    rmdir "$cg"
  done
}

for s in "${sections[@]}"; do "section_$s"; done
