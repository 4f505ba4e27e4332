# Clients nobody here wrote, through ibrain: the openai npm SDK and the openai Python SDK
# (sync and async, streaming and not, and the engine's errors surfacing as typed SDK
# errors), and promtool on ibrain's /metrics.
source "$IB_SRC/tests/lib/proc.sh"

sdk="$IB_SRC/third_party/npm/node_modules/openai"
[ -d "$sdk" ] || ib_fail "openai SDK missing: run tools/setup.sh"
ib_engine e1 --itl-ms 1 --model qwen3-demo
ib_engine e2 --itl-ms 1 --model qwen3-demo
ib_ibrain ib --workers 2 --model qwen3-demo --replica e1=127.0.0.1:$(ib_port e1) --replica e2=127.0.0.1:$(ib_port e2)
base="http://127.0.0.1:$(ib_port ib)"
node "$IB_SRC/tests/interop/openai_sdk.cjs" "$sdk" "$base/v1" qwen3-demo >"$IB_TMP/sdk.log" 2>&1 ||
  ib_fail "openai SDK through ibrain: $(cat "$IB_TMP/sdk.log")"
cat "$IB_TMP/sdk.log"
ib_need_venv
"$IB_PYTHON" "$IB_SRC/tests/interop/openai_sdk.py" "$base/v1" qwen3-demo >"$IB_TMP/sdk-py.log" 2>&1 ||
  ib_fail "openai Python SDK through ibrain: $(cat "$IB_TMP/sdk-py.log")"
cat "$IB_TMP/sdk-py.log"
curl -s "$base/metrics" >"$IB_TMP/metrics.txt"
promtool check metrics <"$IB_TMP/metrics.txt" >"$IB_TMP/promtool.log" 2>&1 || ib_fail "promtool: $(cat "$IB_TMP/promtool.log")"
grep -q '^ibrain_requests_total{route="/v1/chat/completions",status="200"} [1-9]' "$IB_TMP/metrics.txt" ||
  ib_fail "chat requests not counted: $(grep requests_total "$IB_TMP/metrics.txt")"
grep -q '^ibrain_time_to_first_byte_seconds_count [1-9]' "$IB_TMP/metrics.txt" || ib_fail "no TTFB observations"
ib_stop ib || ib_fail "ibrain exited with $?"
echo "proxy_interop: ok"
