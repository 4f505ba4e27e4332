#!/usr/bin/env bash
# The soak (issue 18, part 3): the conversation trace at its own pace (3.4 requests/s, an
# hour) through two ibrain instances sharing what they route through Redis, to four mock
# engines. Every minute: each ibrain's RSS, descriptors and buffered bytes, Redis's memory
# and the write-back stream's length, and the affinity table's occupancy (entries believed,
# from /debug/affinity). At the end, the slope of each after a 10-minute warm-up and over
# the last third of the run (perf/soak_slopes.py).
#
#   perf/soak.sh [BUILD_DIR] [--minutes N]   (default 60; the trace is sped up to fit)
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$SRC/build MINUTES=60
while (($#)); do
  case $1 in
  --minutes) MINUTES=$2; shift 2 ;;
  -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
  *) BUILD=$(cd "$1" && pwd); shift ;;
  esac
done
export IB_BUILD=$BUILD IB_SRC=$SRC
source "$SRC/tests/lib/proc.sh"
ib_redis redis
rport=$(ib_port redis)
reps=()
for e in e1 e2 e3 e4; do
  ib_engine "$e" --model mock --itl-ms 5 --cache-blocks 4000
  reps+=("{\"id\":\"$e\",\"workload\":\"w\",\"address\":\"127.0.0.1:$(ib_port "$e")\"}")
done
cat >"$IB_TMP/snap.json" <<JSON
{"workloads": [{"id": "w", "model": "mock", "policy": "affinity", "cache_blocks": 4000}],
 "replicas": [$(IFS=,; echo "${reps[*]}")]}
JSON
"$BUILD/tools/ib-snapshot" --redis "127.0.0.1:$rport" put "$IB_TMP/snap.json" >/dev/null
for i in i1 i2; do
  ib_ibrain "$i" --workers 1 --redis "127.0.0.1:$rport" --instance-id "$i"
done
wait_until 20 "both instances route the 4 replicas" \
  '[ "$(ib_metric_sum "http://127.0.0.1:$(ib_port i1)/metrics" "^ibrain_replica_healthy")" = 4 ] &&
   [ "$(ib_metric_sum "http://127.0.0.1:$(ib_port i2)/metrics" "^ibrain_replica_healthy")" = 4 ]'
speedup=$(/usr/bin/python3 -c "print(round(59.0 / $MINUTES, 3))")
"$IB_LOAD_BIN" --target "127.0.0.1:$(ib_port i1)" --target "127.0.0.1:$(ib_port i2)" \
  --trace "$SRC/perf/traces/conversation_trace.jsonl" --speedup "$speedup" --max-input 2000 --max-output 32 \
  --timeout-s 60 --json "$IB_TMP/load.json" --quiet >"$IB_TMP/load.txt" 2>&1 &
loader=$!
samples="$IB_TMP/samples.tsv"
printf 'minute\ti1_rss_kb\ti2_rss_kb\ti1_fds\ti2_fds\ti1_buf\ti2_buf\tredis_bytes\tstream_len\tbelieved\n' >"$samples"
occupancy() {
  curl -s "http://127.0.0.1:$(ib_port i1)/debug/affinity" |
    /usr/bin/python3 -c 'import json,sys; print(sum(len(r["believed"]) for r in json.load(sys.stdin)["replicas"]))'
}
m=0
while kill -0 "$loader" 2>/dev/null; do
  p1=${IB_PID[i1]} p2=${IB_PID[i2]}
  printf '%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" \
    "$(awk '/^VmRSS/ {print $2}' "/proc/$p1/status")" "$(awk '/^VmRSS/ {print $2}' "/proc/$p2/status")" \
    "$(ls "/proc/$p1/fd" | wc -l)" "$(ls "/proc/$p2/fd" | wc -l)" \
    "$(ib_metric "http://127.0.0.1:$(ib_port i1)/metrics" ibrain_buffer_bytes)" \
    "$(ib_metric "http://127.0.0.1:$(ib_port i2)/metrics" ibrain_buffer_bytes)" \
    "$(redis-cli -p "$rport" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" {print $2}')" \
    "$(redis-cli -p "$rport" xlen ib:affinity)" \
    "$(occupancy)" >>"$samples"
  tail -n 1 "$samples"
  m=$((m + 1))
  for ((s = 0; s < 60 && $(kill -0 "$loader" 2>/dev/null && echo 1 || echo 0); s++)); do sleep 1; done
done
wait "$loader" || true
cat "$IB_TMP/load.txt"
/usr/bin/python3 "$SRC/perf/soak_slopes.py" "$samples"
echo "samples: $samples"
IB_KEEP=1
