#!/usr/bin/env bash
# A flame graph of ibrain under load: starts two mock engines and ibrain (1 worker, CPU 0),
# drives it with ib-load (CPU 1) for DURATION seconds while `perf record` samples ibrain,
# then folds the stacks into OUT_DIR/ibrain-flame.svg (and .html) and prints the top
# frames.
#
# usage: perf/flamegraph.sh OUT_DIR [BUILD_DIR]
#   env: DURATION=10 FREQ=999; the load: ITL_MS=2 (the engines' time per token),
#   CONCURRENCY=256 streams, OUTPUT_TOKENS=16 per response, IBRAIN_ARGS (extra flags)
set -euo pipefail
out=${1:?usage: perf/flamegraph.sh OUT_DIR [BUILD_DIR]}
build=${2:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
duration=${DURATION:-10}
freq=${FREQ:-999}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"' EXIT
command -v perf >/dev/null || { echo "perf not found: tools/setup.sh installs linux-perf" >&2; exit 1; }

for i in 0 1; do
  taskset -c 1 "$top/$build/tools/ib-mock-engine" --listen 127.0.0.1:0 --port-file "$tmp/e$i.port" --id "e$i" \
    --max-seqs 100000 --itl-ms "${ITL_MS:-2}" --itl-us-per-seq 0 --prefill-us-per-token 0 --overhead-ms 0 2>/dev/null &
  pids+=($!)
done
for i in 0 1; do for _ in $(seq 50); do [ -s "$tmp/e$i.port" ] && break; sleep 0.1; done; done
taskset -c 0 "$top/$build/dataplane/ibrain" --listen 127.0.0.1:0 --port-file "$tmp/ib.port" --workers 1 \
  --replica "e0=127.0.0.1:$(cat "$tmp/e0.port")" --replica "e1=127.0.0.1:$(cat "$tmp/e1.port")" ${IBRAIN_ARGS:-} 2>/dev/null &
ibpid=$!
pids+=($ibpid)
for _ in $(seq 50); do [ -s "$tmp/ib.port" ] && break; sleep 0.1; done

taskset -c 1 "$top/$build/perf/ib-load" --target "127.0.0.1:$(cat "$tmp/ib.port")" --shared-prefix 16,100000 \
  --system-tokens 256 --question-tokens 64 --output-tokens "${OUTPUT_TOKENS:-16}" --concurrency "${CONCURRENCY:-256}" \
  --quiet >/dev/null 2>&1 &
loadpid=$!
pids+=($loadpid)
sleep 1
perf record -F "$freq" -g -p "$ibpid" -o "$tmp/perf.data" -- sleep "$duration" 2>"$tmp/perf.log" ||
  { cat "$tmp/perf.log" >&2; exit 1; }
kill "$loadpid" 2>/dev/null || true
perf script -i "$tmp/perf.data" >"$tmp/perf.txt" 2>/dev/null
/usr/bin/python3 "$top/perf/flamegraph.py" "$tmp/perf.txt" "$out/ibrain-flame.svg" --title "ibrain, 1 worker, streaming load"
/usr/bin/python3 "$top/perf/flamegraph.py" "$tmp/perf.txt" "$out/ibrain-flame.html" --title "ibrain, 1 worker, streaming load" >/dev/null
echo "wrote $out/ibrain-flame.svg and $out/ibrain-flame.html"
