# Clients nobody here wrote, against ib-mock-engine: the openai npm SDK (streaming and not),
# promtool, and the peer routers users deploy in front of vLLM (tools/requirements-peers.txt):
#   - SGLang Model Gateway (smg) must detect the mock as a vLLM worker (/v1/models owned_by,
#     /version), take its metadata, and read its load from /metrics under vLLM's names
#     (vllm:num_requests_running, vllm:kv_cache_usage_perc) while streams run;
#   - the vLLM router must find it healthy and route a chat to it.
source "$IB_SRC/tests/lib/proc.sh"

sdk="$IB_SRC/third_party/npm/node_modules/openai"
peers=${IB_PEERS_VENV:-$HOME/.cache/ibrain/peers-venv}/bin
[ -d "$sdk" ] || ib_fail "openai SDK missing: run tools/setup.sh"
command -v promtool >/dev/null || ib_fail "promtool missing: run tools/setup.sh"
[ -x "$peers/smg" ] && [ -x "$peers/vllm-router" ] || ib_fail "peer routers missing ($peers): run tools/setup.sh"

ib_engine e1 --itl-ms 1 --model qwen3-demo
base="http://127.0.0.1:$(ib_port e1)"
node "$IB_SRC/tests/interop/openai_sdk.cjs" "$sdk" "$base/v1" qwen3-demo >"$IB_TMP/sdk.log" 2>&1 ||
  ib_fail "openai SDK: $(cat "$IB_TMP/sdk.log")"
cat "$IB_TMP/sdk.log"

curl -s "$base/metrics" >"$IB_TMP/metrics.txt"
# promtool's lint objects to the colon of every vllm: name (it does on vLLM's own page); any
# other complaint, or a page it cannot parse, fails.
promtool check metrics <"$IB_TMP/metrics.txt" >"$IB_TMP/promtool.log" 2>&1 || true
if [ -n "$(grep -v "^vllm:[a-z0-9_]* metric names should not contain ':'\$" "$IB_TMP/promtool.log")" ]; then
  ib_fail "promtool: $(cat "$IB_TMP/promtool.log")"
fi
grep -q '^vllm:generation_tokens_total{engine="0",model_name="qwen3-demo"} [1-9]' "$IB_TMP/metrics.txt" ||
  ib_fail "no generation counted"
for s in 'vllm:time_to_first_token_seconds_count' 'vllm:inter_token_latency_seconds_count' \
  'vllm:e2e_request_latency_seconds_count'; do
  grep -q "^$s{engine=\"0\",model_name=\"qwen3-demo\"} [1-9]" "$IB_TMP/metrics.txt" || ib_fail "$s not observed"
done
ib_expect_eq "/version" "$(curl -s "$base/version")" '{"version":"0.11.0+ibmock"}'
ib_expect_eq "/load at rest" "$(curl -s "$base/load")" '{"server_load":0}'
ib_expect_eq "/v1/models owned_by" "$(curl -s "$base/v1/models" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["owned_by"])')" vllm
ib_stop e1 || ib_fail "engine exited with $?"

# SMG in front of a slower engine, so that streams are in flight while it polls the load.
ib_engine e2 --itl-ms 10 --model qwen3-demo
worker="http://127.0.0.1:$(ib_port e2)"
smg_port=$(ib_free_port)
ib_spawn smg "$peers/smg" launch --host 127.0.0.1 --port "$smg_port" --prometheus-host 127.0.0.1 \
  --prometheus-port "$(ib_free_port)" --worker-urls "$worker" --policy cache_aware --disable-tokenizer-autoload \
  --load-monitor-interval 1
smg="http://127.0.0.1:$smg_port"
# smg_worker EXPR: EXPR over SMG's view of its one worker (w), or empty when not registered yet.
smg_worker() {
  curl -s --max-time 2 "$smg/workers" | /usr/bin/python3 -c '
import json, sys
try:
    w = json.load(sys.stdin)["workers"][0]
except Exception:
    sys.exit(0)
print(eval(sys.argv[1]))' "$1"
}
for ((i = 0; i < 100; i++)); do
  [ "$(smg_worker 'w["runtime_type"], w["status"]')" = "('vllm', 'ready')" ] && break
  sleep 0.1
done
ib_expect_eq "SMG's worker" "$(smg_worker 'w["runtime_type"], w["status"], w["labels"]["served_model_name"], w["labels"]["version"]')" \
  "('vllm', 'ready', 'qwen3-demo', '0.11.0+ibmock')"
code=$(curl -s -o "$IB_TMP/smg-chat.json" -w '%{http_code}' "$smg/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"qwen3-demo","messages":[{"role":"user","content":"hello through smg"}],"max_tokens":4}')
ib_expect_eq "chat through SMG" "$code" 200
ib_expect_eq "SMG's answer" "$(ib_json "$IB_TMP/smg-chat.json" 'd["usage"]["completion_tokens"]')" 4
# Three streams of 2,000 tokens (20 s) hold the engine while SMG's load monitor reads it.
streams=()
for i in 1 2 3; do
  curl -s -N -o /dev/null "$smg/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\":\"qwen3-demo\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"long $i\"}],\"max_tokens\":2000}" &
  streams+=($!)
done
for ((i = 0; i < 100; i++)); do
  [ "$(smg_worker 'w["engine_load"]["loads"][0]["num_running_reqs"]')" = 3 ] && break
  sleep 0.1
done
load=$(smg_worker 'w["engine_load"]["loads"][0]["num_running_reqs"], w["engine_load"]["loads"][0]["token_usage"] > 0')
ib_expect_eq "/load with three streams in flight" "$(curl -s "$worker/load")" '{"server_load":3}'
kill "${streams[@]}" 2>/dev/null || true
wait "${streams[@]}" 2>/dev/null || true
ib_expect_eq "the load SMG read from the engine's /metrics (running, KV usage > 0)" "$load" "(3, True)"
echo "smg: detected the mock as vllm, routed through it, read its load $load"

# The vLLM router: healthy worker found, a chat routed (cache_aware, its default policy).
vr_port=$(ib_free_port)
ib_spawn vr "$peers/vllm-router" --host 127.0.0.1 --port "$vr_port" --prometheus-host 127.0.0.1 \
  --prometheus-port "$(ib_free_port)" --worker-urls "$worker" --policy cache_aware --worker-startup-check-interval 1
ib_wait_http "http://127.0.0.1:$vr_port/health"
code=$(curl -s -o "$IB_TMP/vr-chat.json" -w '%{http_code}' "http://127.0.0.1:$vr_port/v1/chat/completions" \
  -H 'Content-Type: application/json' \
  -d '{"model":"qwen3-demo","messages":[{"role":"user","content":"hello through vllm-router"}],"max_tokens":4}')
ib_expect_eq "chat through vllm-router" "$code" 200
ib_expect_eq "vllm-router's answer" "$(ib_json "$IB_TMP/vr-chat.json" 'd["usage"]["completion_tokens"]')" 4
echo "vllm-router: routed a chat to the mock"
echo "engine_interop: ok"
