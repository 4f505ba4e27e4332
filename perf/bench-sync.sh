#!/usr/bin/env bash
# Redis snapshot sync, measured:
#   1. propagation: ib-snapshot writes CHANGES snapshot versions INTERVAL_MS apart to a
#      loopback redis-server; ibrain (2 workers) logs, for each, the time from the write
#      (MULTI/SET/PUBLISH) to every worker routing with it. Prints p50, p99 and max.
#   2. throughput: ibrain (1 worker, pinned to CPU 0) in front of a fixed-response nginx
#      (CPU 0), wrk on CPU 1 with the ~2 KB chat POST of bench-proxy.sh, once with the
#      static configuration (--replica) and once with the replica from the Redis snapshot
#      and write-back on. Medians of REPEAT runs of DURATION seconds, alternating.
#
# usage: perf/bench-sync.sh [BUILD_DIR]
#   env: CHANGES=1000 INTERVAL_MS=5 REPEAT=3 DURATION=8 CONNS=64 ORDER="static redis" (order within a round)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
[ -d "$build" ] || build="$top/$build"
changes=${CHANGES:-1000}
interval=${INTERVAL_MS:-5}
repeat=${REPEAT:-3}
duration=${DURATION:-8}
conns=${CONNS:-64}
source "$top/perf/lib.sh"
write_post_lua
start_backend 0

start_redis
snap() { "$build/tools/ib-snapshot" --redis "127.0.0.1:$rport" "$@"; }
cat >"$tmp/snap.json" <<JSON
{"workloads": [{"id": "w", "model": "demo", "policy": "affinity"}],
 "replicas": [{"id": "backend", "workload": "w", "address": "127.0.0.1:$bport"},
              {"id": "spare", "workload": "w", "address": "127.0.0.1:$bport", "state": "draining"}]}
JSON

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(redis-server --version | awk '{print $1, $2, $3}')"

# 1. propagation
iport=$(ib_free_port)
"$build/dataplane/ibrain" --listen "127.0.0.1:$iport" --workers 2 --redis "127.0.0.1:$rport" 2>"$tmp/prop.log" &
ipid=$!
pids+=($ipid)
wait_port "$iport"
snap bench "$tmp/snap.json" "$changes" "$interval" >/dev/null
sleep 1
kill "$ipid"
wait "$ipid" 2>/dev/null || true
/usr/bin/python3 - "$tmp/prop.log" "$changes" "$interval" <<'PY'
import re, statistics, sys
us = [int(m.group(1)) for m in re.finditer(r"every worker on it (\d+) us after", open(sys.argv[1]).read())]
us.sort()
if not us:
    sys.exit("no propagation figures in the log")
q = lambda p: us[min(len(us) - 1, int(p * len(us)))]
print("propagation (write -> every worker on the new version), %d of %s changes %s ms apart:" % (len(us), sys.argv[2], sys.argv[3]))
print("  p50 %d us, p99 %d us, max %d us, mean %.0f us" % (q(0.5), q(0.99), us[-1], statistics.mean(us)))
PY

# 2. throughput, static vs Redis snapshot + write-back
run_wrk() {
  taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" -s "$tmp/post.lua" "http://127.0.0.1:$1/v1/chat/completions" >"$tmp/wrk.out" 2>&1
  grep -q "Non-2xx\|Socket errors" "$tmp/wrk.out" && { cat "$tmp/wrk.out" >&2; exit 1; }
  awk '/Requests\/sec/ {print $2}' "$tmp/wrk.out"
}
snap put "$tmp/snap.json" >/dev/null
: >"$tmp/static" && : >"$tmp/redis"
for ((r = 0; r < repeat; r++)); do
  for mode in ${ORDER:-static redis}; do
    iport=$(ib_free_port)
    if [ $mode = static ]; then
      args=(--replica "backend=127.0.0.1:$bport" --model demo)
    else
      args=(--redis "127.0.0.1:$rport")
    fi
    taskset -c 0 "$build/dataplane/ibrain" --listen "127.0.0.1:$iport" --workers 1 "${args[@]}" 2>"$tmp/ib.log" &
    ipid=$!
    wait_port "$iport"
    for _ in $(seq 100); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$iport/ready")" = 200 ] && break
      sleep 0.05
    done
    run_wrk "$iport" >>"$tmp/$mode"
    kill "$ipid"
    wait "$ipid" 2>/dev/null || true
  done
done
/usr/bin/python3 - "$tmp/static" "$tmp/redis" "$repeat" "$duration" "$conns" <<'PY'
import statistics, sys
s = [float(x) for x in open(sys.argv[1])]
r = [float(x) for x in open(sys.argv[2])]
print("throughput, ibrain on one core, %s runs of %s s, %s connections (requests/s):" % (sys.argv[3], sys.argv[4], sys.argv[5]))
print("  static --replica:            median %.0f (runs %s)" % (statistics.median(s), ", ".join("%.0f" % x for x in s)))
print("  Redis snapshot + write-back: median %.0f (runs %s)" % (statistics.median(r), ", ".join("%.0f" % x for x in r)))
print("  ratio %.3f" % (statistics.median(r) / statistics.median(s)))
PY
