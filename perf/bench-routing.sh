#!/usr/bin/env bash
# Routing quality: ib-load replays a trace through ibrain to N mock engines of equal,
# bounded prefix cache, once per policy, and prints side by side the engines' cache hit
# rate, TTFT p50/p99, throughput and load balance (max/mean requests per replica). Two
# ceilings for the hit rate: one engine whose cache is as large as all N together receiving
# everything directly (the pooled ceiling), and one engine with an unbounded cache.
#
# usage: perf/bench-routing.sh [BUILD_DIR]
#   env: N=4 TRACE=perf/traces/conversation_trace.jsonl LIMIT=1500 SPEEDUP=10
#        CACHE_BLOCKS=32768 (per engine, 16-token blocks) PREFILL_US=5 MAX_OUTPUT=64
#        POLICIES="affinity least-load round-robin consistent-hash" CEILINGS=1
#        IBRAIN_ARGS="--min-match-pct 25" (extra ibrain flags) REASONS=1 (print decisions by reason)
#        TOKENIZER=path/to/tokenizer.json (engines and ibrain count tokens and cut 16-token
#        blocks with it; default: 4-byte pseudo-tokens)
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
IB_PROC_HELPERS_ONLY=1 source "$top/tests/lib/proc.sh"
n=${N:-4}
trace=${TRACE:-$top/perf/traces/conversation_trace.jsonl}
limit=${LIMIT:-1500}
speedup=${SPEEDUP:-10}
cache=${CACHE_BLOCKS:-32768}
prefill=${PREFILL_US:-5}
maxout=${MAX_OUTPUT:-64}
tok_engine=() tok_ibrain=()
if [ -n "${TOKENIZER:-}" ]; then
  tok_engine=(--tokenizer "$TOKENIZER" --block-size 16)
  tok_ibrain=(--tokenizer "$TOKENIZER" --block-tokens 16)
fi
tmp=$(mktemp -d)
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$tmp"' EXIT

engine() { # NAME CACHE_BLOCKS; sets $port (not a subshell: the pid must stay in pids)
  rm -f "$tmp/$1.port"
  "$top/$build/tools/ib-mock-engine" --listen 127.0.0.1:0 --port-file "$tmp/$1.port" --id "$1" --model demo \
    --cache-blocks "$2" --prefill-us-per-token "$prefill" --max-seqs 1024 --max-model-len 262144 "${tok_engine[@]}" \
    >/dev/null 2>&1 &
  pids+=($!)
  port=$(ib_wait_port_file "$tmp/$1.port" "${pids[-1]}")
}

load() { # TARGET_PORT JSON METRICS...
  local port=$1 json=$2
  shift 2
  "$top/$build/perf/ib-load" --target "127.0.0.1:$port" --model demo --trace "$trace" --limit "$limit" \
    --speedup "$speedup" --max-output "$maxout" "$@" --json "$json" --quiet >/dev/null || true
}

report() { # LABEL JSON NREPLICAS
  /usr/bin/python3 - "$@" <<'PY'
import json, sys
label, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = json.load(open(path))
counts = list(d["engines"].values()) + [0] * (n - len(d["engines"]))
bal = max(counts) / (sum(counts) / n) if sum(counts) else float("nan")
t = d["ttft_ms"] or {"p50": float("nan"), "p99": float("nan")}
print("%-18s %8.4f %10.1f %10.1f %9.2f %9.3f %7d %7d" % (label, d["cache_hit_rate"] or 0, t["p50"], t["p99"],
      d["throughput_rps"], bal, d["ok"], d["errors"]))
PY
}

echo "trace: $(basename "$trace"), first $limit requests at ${speedup}x; $n engines of $cache blocks x 16 tokens;"
echo "prefill 2 ms + ${prefill} us per uncached token, 10 ms decode steps, outputs capped at $maxout tokens"
echo "tokens: ${TOKENIZER:-4-byte pseudo-tokens (no tokenizer)}"
printf "%-18s %8s %10s %10s %9s %9s %7s %7s\n" policy hit_rate ttft_p50 ttft_p99 req/s max/mean ok errors
for policy in ${POLICIES:-affinity least-load round-robin consistent-hash}; do
  metrics=()
  replicas=()
  for i in $(seq "$n"); do
    engine "e$i" "$cache"
    metrics+=(--metrics "127.0.0.1:$port")
    replicas+=(--replica "e$i=127.0.0.1:$port")
  done
  rm -f "$tmp/ib.port"
  "$top/$build/dataplane/ibrain" --listen 127.0.0.1:0 --port-file "$tmp/ib.port" --workers 1 --policy "$policy" \
    --model demo --cache-blocks "${IB_CACHE_BLOCKS:-$cache}" --max-body-bytes 16777216 --upstream-timeout-ms 600000 "${replicas[@]}" \
    "${tok_ibrain[@]}" ${IBRAIN_ARGS:-} >/dev/null 2>&1 &
  pids+=($!)
  load "$(ib_wait_port_file "$tmp/ib.port" "${pids[-1]}")" "$tmp/$policy.json" "${metrics[@]}"
  report "$policy" "$tmp/$policy.json" "$n"
  [ -n "${REASONS:-}" ] && curl -s "http://127.0.0.1:$(cat "$tmp/ib.port")/metrics" |
    awk '/^ibrain_route_decisions_total/ {printf "    %s %s\n", $1, $2}'
  stop_all
done
[ "${CEILINGS:-1}" = 1 ] || exit 0
engine pooled $((cache * n))
load "$port" "$tmp/pooled.json" --metrics "127.0.0.1:$port"
report "ceiling: pooled" "$tmp/pooled.json" 1
stop_all
engine unbounded $((1 << 22)) # 64M tokens: more than the replay's prompts
load "$port" "$tmp/unbounded.json" --metrics "127.0.0.1:$port"
report "ceiling: unbounded" "$tmp/unbounded.json" 1
stop_all
echo "(ceilings: one engine receives everything directly; their TTFT is one prefill unit's, not comparable)"
