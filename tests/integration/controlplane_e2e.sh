# The whole control plane on loopback, driven by ibctl: redis-server, ib-clusterd (local
# driver), two ib-orchestrators (one leader through the Redis lease), ibrain reading the
# snapshot the leader writes.
#   - JWT: HS256 and RS256 accepted; missing, garbage, expired, not-yet-valid, wrong
#     issuer, wrong audience, bad signature, alg none, another RS256 key -> 401; a token
#     without the write scope -> 403.
#   - Bad specs -> 400 naming the field, nothing created.
#   - create -> ready -> requests through ibrain answered by the new replicas;
#   - a rolling update (new version) under continuous load: zero failed requests, then
#     only the new generation answers;
#   - a bad update (the engine cannot start) leaves the old generation serving; the next
#     update repairs it;
#   - an engine killed -> restarted by its manager -> back in the snapshot;
#   - the leader orchestrator killed -> the other takes over within the lease and
#     snapshots keep flowing (a scale through it reaches ibrain);
#   - the cluster server killed -> 503 from the REST API, ibrain keeps serving; restarted
#     on the same port and state directory -> the workload is still there, adopted;
#   - promtool on both orchestrators' and the cluster server's /metrics;
#   - delete -> ibrain stops routing to the workload.
source "$IB_SRC/tests/lib/proc.sh"
CD="$IB_BUILD/controlplane"
IBCTL="$CD/ibctl"
SNAP="$IB_BUILD/tools/ib-snapshot"
LEASE_MS=1500

ib_redis redis
rport=$(ib_port redis)
echo weights >"$IB_TMP/weights.bin"
head -c 48 /dev/urandom | base64 >"$IB_TMP/secret"
head -c 48 /dev/urandom | base64 >"$IB_TMP/other-secret"
openssl genrsa -out "$IB_TMP/rs.pem" 2048 2>/dev/null
openssl rsa -in "$IB_TMP/rs.pem" -pubout -out "$IB_TMP/rs.pub" 2>/dev/null
openssl genrsa -out "$IB_TMP/other.pem" 2048 2>/dev/null

start_clusterd() { # NAME [PORT]
  ib_spawn "$1" "$CD/ib-clusterd" --listen "127.0.0.1:${2:-0}" --port-file @PORTFILE --state-dir "$IB_TMP/state" \
    --http-listen 127.0.0.1:0 --http-port-file "$IB_TMP/$1.http" --drain-grace-ms 1000 \
    --engine "$IB_BUILD/tools/ib-mock-engine --listen 127.0.0.1:{port} --model {model} --id {replica} --itl-ms 2"
  ib_wait_port "$1" >/dev/null
}
start_clusterd cd
cport=$(ib_port cd)
for o in o1 o2; do
  ib_spawn "$o" "$CD/ib-orchestrator" --listen 127.0.0.1:0 --port-file @PORTFILE --cluster "127.0.0.1:$cport" \
    --redis "127.0.0.1:$rport" --instance-id "$o" --lease-ms $LEASE_MS --sync-ms 100 \
    --jwt-secret-file "$IB_TMP/secret" --jwt-public-key "$IB_TMP/rs.pub" --jwt-issuer ibrain --jwt-audience ibrain-api
  ib_wait_port "$o" >/dev/null
done
ib_ibrain ib --redis "127.0.0.1:$rport" --redis-reread-ms 1000
front=$(ib_port ib)

token() { "$IBCTL" token create --iss ibrain --aud ibrain-api "$@"; }
token --secret-file "$IB_TMP/secret" >"$IB_TMP/token"
export IBCTL_TOKEN_FILE="$IB_TMP/token" IBCTL_SERVER="http://127.0.0.1:$(ib_port o1)"

# ---- JWT ----
api() { # TOKEN METHOD PATH [BODY]: prints the HTTP status; the body goes to $IB_TMP/api.json
  local auth=()
  [ -n "$1" ] && auth=(-H "Authorization: Bearer $1")
  curl -s -o "$IB_TMP/api.json" -w '%{http_code}' -X "$2" "${auth[@]}" "http://127.0.0.1:$(ib_port o1)$3" \
    ${4:+-H 'Content-Type: application/json' -d "$4"}
}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
alg_none="$(printf '{"alg":"none","typ":"JWT"}' | b64url).$(printf '{"iss":"ibrain","aud":"ibrain-api","exp":%d,"scope":"workloads:read workloads:write"}' $((now + 600)) | b64url)."
hs=$(cat "$IB_TMP/token")
ib_expect_eq "HS256 token" "$(api "$hs" GET /v1/workloads)" 200
ib_expect_eq "RS256 token" "$(api "$(token --key "$IB_TMP/rs.pem")" GET /v1/workloads)" 200
ib_expect_eq "no token" "$(api "" GET /v1/workloads)" 401
ib_expect_eq "garbage token" "$(api "not.a.jwt" GET /v1/workloads)" 401
ib_expect_eq "expired token" "$(api "$(token --secret-file "$IB_TMP/secret" --ttl-s -120)" GET /v1/workloads)" 401
ib_expect_eq "not-yet-valid token" "$(api "$(token --secret-file "$IB_TMP/secret" --nbf-s 3600)" GET /v1/workloads)" 401
ib_expect_eq "wrong issuer" "$(api "$("$IBCTL" token create --iss evil --aud ibrain-api --secret-file "$IB_TMP/secret")" GET /v1/workloads)" 401
ib_expect_eq "wrong audience" "$(api "$("$IBCTL" token create --iss ibrain --aud other --secret-file "$IB_TMP/secret")" GET /v1/workloads)" 401
ib_expect_eq "bad HS256 signature" "$(api "$(token --secret-file "$IB_TMP/other-secret")" GET /v1/workloads)" 401
ib_expect_eq "another RS256 key" "$(api "$(token --key "$IB_TMP/other.pem")" GET /v1/workloads)" 401
ib_expect_eq "alg none" "$(api "$alg_none" GET /v1/workloads)" 401
grep -q '"type":"authentication_error"' "$IB_TMP/api.json" || ib_fail "401 body: $(cat "$IB_TMP/api.json")"
ro=$(token --secret-file "$IB_TMP/secret" --scope workloads:read)
ib_expect_eq "read scope, GET" "$(api "$ro" GET /v1/workloads)" 200
ib_expect_eq "read scope, POST" "$(api "$ro" POST /v1/workloads '{"id":"x","model":"x","weights":"/"}')" 403
grep -q '"code":"insufficient_scope"' "$IB_TMP/api.json" || ib_fail "403 body: $(cat "$IB_TMP/api.json")"
echo "jwt: HS256 and RS256 accepted; 9 kinds of bad token refused with 401; a missing scope with 403"

# ---- bad specs: 400 naming the field, nothing created ----
bad_spec() { # BODY FIELD
  ib_expect_eq "status of $1" "$(api "$hs" POST /v1/workloads "$1")" 400
  ib_expect_eq "field of $1" "$(ib_json "$IB_TMP/api.json" 'd["error"].get("param")')" "$2"
}
bad_spec '{"id":"w1","model":"m","weights":"'"$IB_TMP"'/weights.bin","engine":"tgi"}' engine
bad_spec '{"id":"w1","model":"m","weights":"'"$IB_TMP"'/weights.bin","replicas":-1}' replicas
bad_spec '{"id":"w1","model":"m","weights":"/no/such/weights"}' weights
bad_spec '{"id":"w1","model":"m"}' weights
bad_spec '{"id":"W 1","model":"m","weights":"'"$IB_TMP"'/weights.bin"}' id
bad_spec '{"id":"w1","model":"m","weights":"'"$IB_TMP"'/weights.bin","replicas":"2"}' replicas
bad_spec '{"id":"w1","model":"m","weights":"'"$IB_TMP"'/weights.bin","replica":2}' replica
bad_spec '{"id":"w1","model":"m","weights":"'"$IB_TMP"'/weights.bin","policy":"random"}' policy
ib_expect_eq "invalid JSON" "$(api "$hs" POST /v1/workloads '{"id":')" 400
ib_expect_eq "workloads after bad specs" "$("$IBCTL" -o json workload list)" '{"object":"list","data":[]}'
ib_expect_eq "no manager started" "$(pgrep -fc -- "ib-manager .*--state-dir $IB_TMP/state" || true)" 0
"$IBCTL" workload create w1 --model m --weights /no/such 2>"$IB_TMP/ibctl.err" && ib_fail "ibctl accepted a bad spec"
grep -q 'weights' "$IB_TMP/ibctl.err" || ib_fail "ibctl error: $(cat "$IB_TMP/ibctl.err")"
echo "bad specs: 400 with the field named, nothing created; ibctl says: $(cat "$IB_TMP/ibctl.err")"

# ---- create -> ready -> routed ----
"$IBCTL" workload create demo --model demo --weights "$IB_TMP/weights.bin" --replicas 2 --version v1 --wait --timeout 60 \
  >"$IB_TMP/create.txt" 2>&1 || ib_fail "create: $(cat "$IB_TMP/create.txt")"
cat "$IB_TMP/create.txt"
"$IBCTL" workload list
chat() { # prints "STATUS ENGINE-ID"
  curl -s -D "$IB_TMP/h.txt" -o "$IB_TMP/chat.json" -w '%{http_code}' "http://127.0.0.1:$front/v1/chat/completions" \
    -H 'Content-Type: application/json' -d '{"model":"demo","max_tokens":2,"messages":[{"role":"user","content":"'"$1"'"}]}'
  echo " $(awk -F': ' 'tolower($1) == "x-engine-id" {print $2}' "$IB_TMP/h.txt" | tr -d '\r')"
}
for ((i = 0; i < 50; i++)); do [[ "$(chat hello)" == "200 demo-g"* ]] && break; sleep 0.1; done
seen=""
for i in $(seq 1 12); do seen="$seen $(chat "question $i" | awk '{print $1 ":" $2}')"; done
echo "12 requests through ibrain:$seen" | head -c 300; echo
for s in $seen; do [[ "$s" == 200:demo-g1-r[01] ]] || ib_fail "request not answered by generation 1: $s"; done

# ---- rolling update under load: zero failed requests ----
"$IB_LOAD_BIN" --target "127.0.0.1:$front" --model demo --shared-prefix 4,150 --system-tokens 100 \
  --question-tokens 10 --output-tokens 8 --rate 100 --json "$IB_TMP/load.json" --quiet >"$IB_TMP/load.txt" 2>&1 &
loader=$!
sleep 1
t0=$(date +%s%N)
"$IBCTL" workload update demo --version v2 --engine-args "--itl-ms 1" --wait --timeout 60 >"$IB_TMP/update.txt" 2>&1 ||
  ib_fail "update: $(cat "$IB_TMP/update.txt")"
t1=$(date +%s%N)
cat "$IB_TMP/update.txt"
wait "$loader" || ib_fail "ib-load: $(cat "$IB_TMP/load.txt")"
ib_expect_eq "requests during the rolling update (ok/errors)" \
  "$(ib_json "$IB_TMP/load.json" 'd["ok"]')/$(ib_json "$IB_TMP/load.json" 'd["errors"]')" "600/0"
gen=$("$IBCTL" -o json workload get demo | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')
[ "$gen" -gt 1 ] || ib_fail "no new generation: $gen"
for i in $(seq 1 8); do
  s=$(chat "after $i" | awk '{print $1 ":" $2}')
  [[ "$s" == "200:demo-g$gen-r"[01] ]] || ib_fail "after the update, answered by $s (want generation $gen)"
done
echo "rolling update to generation $gen under 100 req/s: 600 of 600 requests ok, $(((t1 - t0) / 1000000)) ms to ready; new requests go to generation $gen"

# ---- a bad update does not take the workload down; the next update repairs it ----
"$IBCTL" workload update demo --engine-args "--no-such-flag" >"$IB_TMP/bad.txt" 2>&1 || ib_fail "bad update: $(cat "$IB_TMP/bad.txt")"
sleep 3
phase=$("$IBCTL" -o json workload get demo | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["status"]["phase"])')
ib_expect_eq "phase while the new generation cannot start" "$phase" rolling
for i in $(seq 1 6); do
  s=$(chat "during the bad update $i" | awk '{print $1 ":" $2}')
  [[ "$s" == "200:demo-g$gen-r"[01] ]] || ib_fail "during a broken update, answered by $s (want generation $gen)"
done
"$IBCTL" workload update demo --engine-args "--itl-ms 1" --wait --timeout 60 >"$IB_TMP/fix.txt" 2>&1 ||
  ib_fail "repairing update: $(cat "$IB_TMP/fix.txt")"
gen=$("$IBCTL" -o json workload get demo | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')
for i in $(seq 1 4); do
  s=$(chat "after the repair $i" | awk '{print $1 ":" $2}')
  [[ "$s" == "200:demo-g$gen-r"[01] ]] || ib_fail "after the repair, answered by $s (want generation $gen)"
done
echo "a bad update (--no-such-flag) left the old generation serving (phase rolling); the next update rolled to generation $gen"

# ---- an engine killed -> restarted -> back in the snapshot ----
snap_addr() { # REPLICA: its address in the stored snapshot
  "$SNAP" --redis "127.0.0.1:$rport" get | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(r["address"] for r in d["replicas"] if r["id"] == sys.argv[1]))' "$1"
}
victim="demo-g$gen-r0"
old_addr=$(snap_addr "$victim")
[ -n "$old_addr" ] || ib_fail "$victim not in the snapshot"
pkill -KILL -f -- "^$IB_BUILD/.*ib-mock-engine .*--id $victim( |$)" || ib_fail "no engine for $victim" # this build's only
for ((i = 0; i < 150; i++)); do
  new_addr=$(snap_addr "$victim")
  [ -n "$new_addr" ] && [ "$new_addr" != "$old_addr" ] && curl -sf "http://$new_addr/health" >/dev/null && break
  sleep 0.1
done
[ -n "$new_addr" ] && [ "$new_addr" != "$old_addr" ] || ib_fail "$victim not back in the snapshot (was $old_addr, now '$new_addr')"
echo "engine of $victim killed: restarted by its manager, back in the snapshot at $new_addr (was $old_addr)"

# ---- leader failover ----
leader_of() { curl -s "http://127.0.0.1:$(ib_port "$1")/health" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])'; }
if [ "$(leader_of o1)" = True ]; then leader=o1 follower=o2; else leader=o2 follower=o1; fi
ib_expect_eq "leader in Redis" "$(redis-cli -p "$rport" get ib:leader)" "$leader"
ib_expect_eq "the follower is not leading" "$(leader_of $follower)" False
v_before=$(ib_metric "http://127.0.0.1:$front/metrics" ibrain_snapshot_version)
t0=$(date +%s%N)
ib_stop "$leader" KILL || true
for ((i = 0; i < 100; i++)); do [ "$(leader_of $follower)" = True ] && break; sleep 0.05; done
t1=$(date +%s%N)
ib_expect_eq "$follower leads after $leader was killed" "$(leader_of $follower)" True
takeover_ms=$(((t1 - t0) / 1000000))
[ "$takeover_ms" -le $((LEASE_MS + 1000)) ] || ib_fail "takeover took $takeover_ms ms (lease $LEASE_MS ms)"
export IBCTL_SERVER="http://127.0.0.1:$(ib_port $follower)"
"$IBCTL" workload scale demo 3 --wait --timeout 60 >"$IB_TMP/scale.txt" 2>&1 || ib_fail "scale: $(cat "$IB_TMP/scale.txt")"
for ((i = 0; i < 50; i++)); do [ -n "$(snap_addr "demo-g$gen-r2")" ] && break; sleep 0.1; done
[ -n "$(snap_addr "demo-g$gen-r2")" ] || ib_fail "the new leader did not write the scaled workload"
for ((i = 0; i < 50; i++)); do
  v_after=$(ib_metric "http://127.0.0.1:$front/metrics" ibrain_snapshot_version)
  [ -n "$(ib_metric "http://127.0.0.1:$front/metrics" "ibrain_replica_in_flight{replica=\"demo-g$gen-r2\"}")" ] && break
  sleep 0.1
done
[ -n "$(ib_metric "http://127.0.0.1:$front/metrics" "ibrain_replica_in_flight{replica=\"demo-g$gen-r2\"}")" ] ||
  ib_fail "ibrain does not route to demo-g$gen-r2 (snapshot version $v_before -> $v_after)"
echo "leader $leader killed: $follower took over in $takeover_ms ms (lease $LEASE_MS ms); its snapshot (scale to 3) reached ibrain"

# ---- cluster server down and back (same port: the orchestrator's channel reconnects) ----
ib_stop cd KILL || true
code=$(curl -s -o "$IB_TMP/api.json" -w '%{http_code}' -H "Authorization: Bearer $hs" "$IBCTL_SERVER/v1/workloads/demo")
ib_expect_eq "REST while the cluster server is down" "$code" 503
grep -q 'cluster server is unavailable' "$IB_TMP/api.json" || ib_fail "503 body: $(cat "$IB_TMP/api.json")"
ib_expect_eq "ibrain while the cluster server is down" "$(chat "still there" | cut -d' ' -f1)" 200
echo "cluster server killed: REST answers 503 ($(cat "$IB_TMP/api.json")), ibrain keeps serving"
start_clusterd cd2 "$cport"
"$IBCTL" workload wait demo --timeout 30 >"$IB_TMP/wait.txt" 2>&1 || ib_fail "after the restart: $(cat "$IB_TMP/wait.txt")"
"$IBCTL" workload get demo
ib_expect_eq "replicas kept across the cluster server's restart" \
  "$("$IBCTL" -o json workload get demo | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["status"]["ready_replicas"], d["version"])')" "3 v2"
grep -q "3 of 3 replicas adopted" "$IB_TMP/cd2.log" || ib_fail "no adoption: $(cat "$IB_TMP/cd2.log")"
echo "cluster server restarted on the same state directory: 3 of 3 replicas adopted"

# ---- metrics ----
curl -fsS "$IBCTL_SERVER/metrics" >"$IB_TMP/orch.metrics" || ib_fail "orchestrator /metrics"
promtool check metrics <"$IB_TMP/orch.metrics" || ib_fail "promtool on the orchestrator's /metrics"
curl -fsS "http://127.0.0.1:$(cat "$IB_TMP/cd2.http")/metrics" >"$IB_TMP/cd.metrics" || ib_fail "cluster /metrics"
promtool check metrics <"$IB_TMP/cd.metrics" || ib_fail "promtool on the cluster server's /metrics"
ib_expect_eq "$follower leads" "$(ib_metric "$IBCTL_SERVER/metrics" ib_orch_leader)" 1
echo "promtool: orchestrator and cluster server /metrics ok"

# ---- delete -> ibrain stops routing ----
"$IBCTL" workload delete demo
for ((i = 0; i < 100; i++)); do [ "$(chat bye | cut -d' ' -f1)" = 404 ] && break; sleep 0.1; done
ib_expect_eq "ibrain after delete" "$(chat bye | cut -d' ' -f1)" 404
grep -q 'model_not_found' "$IB_TMP/chat.json" || ib_fail "after delete: $(cat "$IB_TMP/chat.json")"
for ((i = 0; i < 150; i++)); do pgrep -f -- "ib-manager .*--state-dir $IB_TMP/state" >/dev/null || break; sleep 0.1; done
pgrep -f -- "ib-manager .*--state-dir $IB_TMP/state" >/dev/null && ib_fail "managers left after delete: $(pgrep -af -- "ib-manager .*--state-dir $IB_TMP/state")"
echo "deleted: ibrain answers 404 model_not_found, every manager gone"
ib_stop "$follower" || ib_fail "ib-orchestrator exited with $?"
ib_stop cd2 || ib_fail "ib-clusterd exited with $?"
ib_stop ib || ib_fail "ibrain exited with $?"
echo "controlplane_e2e: ok"
