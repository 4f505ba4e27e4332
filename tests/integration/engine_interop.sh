# Clients nobody here wrote: the openai npm SDK (streaming and not) and promtool.
source "$IB_SRC/tests/lib/proc.sh"

sdk="$IB_SRC/third_party/npm/node_modules/openai"
[ -d "$sdk" ] || ib_fail "openai SDK missing: run tools/setup.sh"
command -v promtool >/dev/null || ib_fail "promtool missing: run tools/setup.sh"

ib_engine e1 --itl-ms 1 --model qwen3-demo
base="http://127.0.0.1:$(ib_port e1)"
node "$IB_SRC/tests/interop/openai_sdk.cjs" "$sdk" "$base/v1" qwen3-demo >"$IB_TMP/sdk.log" 2>&1 ||
  ib_fail "openai SDK: $(cat "$IB_TMP/sdk.log")"
cat "$IB_TMP/sdk.log"

curl -s "$base/metrics" >"$IB_TMP/metrics.txt"
promtool check metrics <"$IB_TMP/metrics.txt" >"$IB_TMP/promtool.log" 2>&1 ||
  ib_fail "promtool: $(cat "$IB_TMP/promtool.log")"
grep -q '^ib_engine_generation_tokens_total{model_name="qwen3-demo"} [1-9]' "$IB_TMP/metrics.txt" ||
  ib_fail "no generation counted"
ib_stop e1 || ib_fail "engine exited with $?"
echo "engine_interop: ok"
