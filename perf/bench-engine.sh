#!/usr/bin/env bash
# Mock engine throughput on one core: ib-mock-engine pinned to CPU 0, ib-load pinned to
# CPU 1, closed loop at several concurrencies. The engine's timing model is set to cost
# almost nothing (0 prefill, 1 ms inter-token latency) so that the engine's own CPU is the
# limit. Prints, per concurrency: streams/s, tokens/s, the engine's CPU use, tokens per
# engine CPU-second. Each point is the median of REPEAT runs.
#
# usage: perf/bench-engine.sh [BUILD_DIR]   (env: CONCURRENCY="100 1000 4000" REPEAT=3 TOKENS=64)
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
IB_PROC_HELPERS_ONLY=1 source "$top/tests/lib/proc.sh"
engine="$top/$build/tools/ib-mock-engine"
load="$top/$build/perf/ib-load"
conc_list=${CONCURRENCY:-"100 1000 4000"}
repeat=${REPEAT:-3}
tokens=${TOKENS:-64}
tmp=$(mktemp -d)
trap 'kill $epid 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"' EXIT

taskset -c 0 "$engine" --listen 127.0.0.1:0 --port-file "$tmp/port" --max-seqs 100000 --prefill-us-per-token 0 \
  --overhead-ms 0 --itl-ms 1 --itl-us-per-seq 0 --cache-blocks 262144 2>"$tmp/engine.log" &
epid=$!
port=$(ib_wait_port_file "$tmp/port" "$epid")
clk=$(getconf CLK_TCK)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
echo "engine pinned to CPU 0, ib-load to CPU 1; $tokens tokens per stream, 1 ms inter-token latency; median of $repeat runs"
printf "%-12s %12s %14s %12s %18s %10s  %s\n" concurrency streams/s tokens/s engine_cpu tokens/cpu-second errors "tokens/s min..max"
for c in $conc_list; do
  rows=()
  for r in $(seq "$repeat"); do
    n=$((c * 5))
    t0=$(ib_cpu_ticks "$epid")
    taskset -c 1 "$load" --target 127.0.0.1:$port --shared-prefix 8,$(((n + 7) / 8)) --system-tokens 256 \
      --question-tokens 32 --output-tokens "$tokens" --concurrency "$c" --limit "$n" --max-conns $((c + 16)) \
      --json "$tmp/r.json" --quiet >/dev/null || true
    t1=$(ib_cpu_ticks "$epid")
    rows+=("$(/usr/bin/python3 - "$tmp/r.json" "$((t1 - t0))" "$clk" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); ticks = int(sys.argv[2]); clk = int(sys.argv[3])
cpu = ticks / clk; dur = d["duration_s"]
print(f'{d["throughput_rps"]:.1f} {d["output_tokens_per_s"]:.0f} {cpu / dur:.2f} {d["output_tokens"] / cpu if cpu else 0:.0f} {d["errors"]}')
PY
)")
  done
  sorted=$(printf "%s\n" "${rows[@]}" | sort -t' ' -k2 -n)
  med=$(echo "$sorted" | sed -n "$(((repeat + 1) / 2))p")
  lo=$(echo "$sorted" | head -n1 | cut -d' ' -f2)
  hi=$(echo "$sorted" | tail -n1 | cut -d' ' -f2)
  read -r sps tps cpu tpc err <<<"$med"
  printf "%-12s %12s %14s %12s %18s %10s  %s\n" "$c" "$sps" "$tps" "$cpu" "$tpc" "$err" "$lo..$hi"
done
