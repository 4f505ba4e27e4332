#!/usr/bin/env bash
# The fuzzing campaign (issue 18, part 4): every libFuzzer target (or those named) run for
# --runs executions or --max-time seconds, whichever comes first, one at a time on one core;
# then its corpus minimized (libFuzzer -merge=1) and, with --update-corpus, written back to
# tests/fuzz/corpus/TARGET: the hand-named seeds and regression inputs are always kept, the
# rest is the minimal set of units that keeps the coverage the run reached. With --coverage,
# each target replays its final corpus once in a source-coverage build (build-fuzzcov) and
# llvm-cov reports the lines reached in the files it names below.
#
#   tests/fuzz/campaign.sh [--runs N] [--max-time S] [--update-corpus] [--coverage] [TARGET...]
#
# Work, crashes and logs go to ~/.cache/ibrain/fuzz (outside the tree); the report to
# stdout and to ~/.cache/ibrain/fuzz/report.md. A crash stops that target, keeps its input
# as crash-TARGET-*, and makes the script exit 1 at the end.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=10000000 MAX_TIME=3600 UPDATE=0 COVERAGE=0 targets=()
while (($#)); do
  case $1 in
  --runs) RUNS=$2; shift 2 ;;
  --max-time) MAX_TIME=$2; shift 2 ;;
  --update-corpus) UPDATE=1; shift ;;
  --coverage) COVERAGE=1; shift ;;
  -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
  -*) echo "campaign.sh: unknown option $1" >&2; exit 2 ;;
  *) targets+=("$1"); shift ;;
  esac
done
# The files each target is there to test, for the coverage report.
declare -A FILES=(
  [fuzz_admin_http]="controlplane/common/admin_http.c dataplane/http/http1.c"
  [fuzz_chat_render]="dataplane/request/chat.c"
  [fuzz_engine_metrics]="dataplane/http/engine_metrics.c"
  [fuzz_http_client]="dataplane/http/client.c"
  [fuzz_http_request]="dataplane/http/http1.c"
  [fuzz_http_response]="dataplane/http/response.c"
  [fuzz_jwt]="controlplane/auth/jwt.c"
  [fuzz_kube]="controlplane/cluster/kube_config.c controlplane/cluster/kube_objects.c"
  [fuzz_kv_events]="dataplane/kvevents/decode.c"
  [fuzz_oai_request]="dataplane/request/chat.c dataplane/request/hashchain.c dataplane/request/oai_error.c"
  [fuzz_snapshot]="dataplane/sync/snapshot.c"
  [fuzz_syncbatch]="dataplane/proxy/writeback.c"
  [fuzz_tokenizer]="dataplane/tokenize/encode.c dataplane/tokenize/load.c dataplane/tokenize/prompt.c"
  [fuzz_trace_line]="perf/load/trace.c"
  [fuzz_workload_json]="controlplane/orchestrator/workload_json.c controlplane/cluster/engine.c"
)
if ((${#targets[@]} == 0)); then
  for f in "$SRC"/tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi
JOBS=2
CC=clang CXX=clang++ cmake -S "$SRC" -B "$SRC/build-fuzz" -DIB_FUZZ=ON >/dev/null
cmake --build "$SRC/build-fuzz" -j "$JOBS" --target "${targets[@]}" >/dev/null
if ((COVERAGE)); then
  CC=clang CXX=clang++ cmake -S "$SRC" -B "$SRC/build-fuzzcov" -DIB_FUZZ=ON -DIB_FUZZ_COVERAGE=ON >/dev/null
  cmake --build "$SRC/build-fuzzcov" -j "$JOBS" --target "${targets[@]}" >/dev/null
fi
OUT=${IB_FUZZ_DIR:-$HOME/.cache/ibrain/fuzz}
mkdir -p "$OUT"
report="$OUT/report.md"
{
  echo "Fuzzing campaign, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$SRC" rev-parse --short HEAD), $(nproc) cores, one target at a time"
  echo "(--runs $RUNS --max-time $MAX_TIME; clang $(clang --version | sed -n 's/.*version \([0-9.]*\).*/\1/p;q'), ASan+UBSan)"
  echo
  echo "| target | executions | seconds | exec/s | edges (cov) | features (ft) | corpus before -> after | lines covered | result |"
  echo "|---|---:|---:|---:|---:|---:|---|---|---|"
} >"$report"
failed=0
for t in "${targets[@]}"; do
  bin="$SRC/build-fuzz/tests/$t"
  [ -x "$bin" ] || { echo "campaign.sh: no target $t" >&2; exit 2; }
  corpus="$SRC/tests/fuzz/corpus/$t"
  work="$OUT/$t.work"
  mkdir -p "$work" "$corpus"
  before=$(find "$corpus" -type f | wc -l)
  t0=$(date +%s)
  rc=0
  "$bin" -runs="$RUNS" -max_total_time="$MAX_TIME" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$OUT/crash-$t-" "$work" "$corpus" >"$OUT/$t.log" 2>&1 || rc=$?
  secs=$(($(date +%s) - t0))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/$t.log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$OUT/$t.log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  result=ok
  if ((rc != 0)); then
    result="**crash** (exit $rc, input in $OUT, log $OUT/$t.log)"
    failed=1
  fi
  # Minimize: the units of the committed corpus and of this run that keep the coverage.
  min="$OUT/$t.min"
  rm -rf "$min"
  mkdir -p "$min"
  "$bin" -merge=1 -max_len=8192 -timeout=10 -rss_limit_mb=2048 "$min" "$corpus" "$work" >"$OUT/$t.merge.log" 2>&1 || true
  after=$(($(find "$min" -type f | wc -l)))
  if ((UPDATE)) && ((rc == 0)); then
    # Hand-named files (seeds, regression inputs) stay; the 40-hex-digit units are replaced.
    find "$corpus" -type f -regextype posix-extended -regex '.*/[0-9a-f]{40}' -delete
    for f in "$min"/*; do
      sum=$(sha1sum "$f" | cut -c1-40)
      dup=0
      for g in "$corpus"/*; do [ -f "$g" ] && cmp -s "$f" "$g" && { dup=1; break; }; done
      ((dup)) || cp "$f" "$corpus/$sum"
    done
    after=$(find "$corpus" -type f | wc -l)
  fi
  lines="-"
  if ((COVERAGE)); then
    prof="$OUT/$t.profraw"
    LLVM_PROFILE_FILE="$prof" "$SRC/build-fuzzcov/tests/$t" -runs=0 -max_len=8192 "$min" "$corpus" >/dev/null 2>&1 || true
    llvm-profdata merge -sparse "$prof" -o "$OUT/$t.profdata"
    # the rows of the target's own files: lines (column 8) and missed lines (column 9)
    lines=$(llvm-cov report "$SRC/build-fuzzcov/tests/$t" -instr-profile="$OUT/$t.profdata" 2>/dev/null |
      awk -v files="${FILES[$t]:-}" 'BEGIN {n = split(files, f, " ")}
        {for (i = 1; i <= n; i++) if (substr($1, length($1) - length(f[i]) + 1) == f[i]) {l += $8; m += $9}}
        END {if (l > 0) printf "%d of %d (%.1f%%)", l - m, l, 100 * (l - m) / l}')
    [ -n "$lines" ] || lines="-"
  fi
  rate=$((secs > 0 ? ${execs:-0} / secs : 0))
  echo "| $t | ${execs:-?} | $secs | $rate | ${cov:-?} | ${ft:-?} | $before -> $after | $lines | $result |" | tee -a "$report"
done
echo
echo "report: $report"
exit "$failed"
