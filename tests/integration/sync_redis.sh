# The routing snapshot through a real redis-server: ibrain starts with no replica, learns
# workloads and replicas from the snapshot ib-snapshot writes, follows version changes on
# every worker (removed replicas get nothing new, draining ones finish their streams),
# keeps routing on its last snapshot while Redis is down or restarting (zero failed
# requests under load), reports Redis on /metrics, and sends no Redis command per request.
source "$IB_SRC/tests/lib/proc.sh"
snap="$IB_BUILD/tools/ib-snapshot"
command -v redis-server >/dev/null || ib_fail "redis-server missing: run tools/setup.sh"

ib_redis redis
rport=$(ib_port redis)
for e in qa qb; do ib_engine "$e" --model qwen3 --itl-ms 1; done
ib_engine la --model llama --template llama3 --itl-ms 1
ib_engine slow --model qwen3 --itl-ms 10
# Write-back off here, so that the Redis command count below is the sync alone
# (tests/integration/sync_writeback.sh covers write-back).
ib_ibrain ib --workers 2 --redis "127.0.0.1:$rport" --redis-reread-ms 300 --no-writeback
port=$(ib_port ib)
url="http://127.0.0.1:$port"
metric() { ib_metric "$url/metrics" "$1"; }
wait_version() { ib_wait_snapshot "$url" "$1"; }
# put VERSION REPLICAS_JSON: two workloads, qwen3 (chatml) and llama (llama3).
put() {
  cat >"$IB_TMP/snap.json" <<JSON
{"version": $1,
 "workloads": [{"id": "wq", "model": "qwen3", "chat_template": "chatml", "block_size": 16},
               {"id": "wl", "model": "llama", "chat_template": "llama3", "policy": "least-load"}],
 "replicas": $2}
JSON
  "$snap" --redis "127.0.0.1:$rport" put "$IB_TMP/snap.json" >/dev/null || ib_fail "ib-snapshot put $1"
  wait_version "$1"
}
rep() { printf '{"id":"%s","workload":"%s","address":"127.0.0.1:%s","state":"%s"}' "$1" "$2" "$(ib_port "$1")" "${3:-ready}"; }
# served_by MODEL: the replica that answered one fresh-connection request
served_by() {
  curl -s -D "$IB_TMP/h.txt" -o "$IB_TMP/b.json" -w '%{http_code}' "$url/v1/chat/completions" \
    -d "{\"model\":\"$1\",\"messages\":[{\"role\":\"user\",\"content\":\"hello $RANDOM\"}],\"max_tokens\":2}" >"$IB_TMP/code"
  [ "$(cat "$IB_TMP/code")" = 200 ] || { echo "HTTP $(cat "$IB_TMP/code")"; return; }
  tr -d '\r' <"$IB_TMP/h.txt" | awk -F': ' 'tolower($1) == "x-ib-replica" {print $2}'
}

# 1. No snapshot yet: a clear 503, and not ready.
code=$(curl -s -o "$IB_TMP/e.json" -w '%{http_code}' "$url/v1/chat/completions" \
  -d '{"model":"qwen3","messages":[{"role":"user","content":"hi"}]}')
ib_expect_eq "before any snapshot" "$code/$(ib_json "$IB_TMP/e.json" 'd["error"]["code"]')" "503/no_snapshot"
ib_expect_eq "ready before any snapshot" "$(curl -s -o /dev/null -w '%{http_code}' "$url/ready")" 503
ib_expect_eq "redis up" "$(metric ibrain_redis_up)" 1

# 2. Version 1: both workloads routable, each to its own replicas.
put 1 "[$(rep qa wq), $(rep qb wq), $(rep la wl)]"
declare -A seen=()
for i in $(seq 1 12); do seen[$(served_by qwen3)]=1; done
ib_expect_eq "qwen3 served by" "$(echo "${!seen[@]}" | tr ' ' '\n' | sort | tr '\n' ' ')" "qa qb "
ib_expect_eq "llama served by" "$(served_by llama)" la
curl -s "$url/v1/models" >"$IB_TMP/models.json"
ib_expect_eq "models" "$(ib_json "$IB_TMP/models.json" 'sorted(m["id"] for m in d["data"])')" "['llama', 'qwen3']"
ib_expect_eq "ready" "$(curl -s -o /dev/null -w '%{http_code}' "$url/ready")" 200
code=$(curl -s -o "$IB_TMP/e.json" -w '%{http_code}' "$url/v1/chat/completions" -d '{"model":"gone","messages":[{"role":"user","content":"x"}]}')
ib_expect_eq "unknown model" "$code/$(ib_json "$IB_TMP/e.json" 'd["error"]["code"]')" "404/model_not_found"

# 3. Version 2 removes qb: every worker stops sending to it (fresh connections land on both
#    workers through SO_REUSEPORT).
put 2 "[$(rep qa wq), $(rep la wl)]"
for i in $(seq 1 20); do
  r=$(served_by qwen3)
  [ "$r" = qa ] || ib_fail "request $i after qb was removed went to '$r'"
done
curl -s "$url/metrics" >"$IB_TMP/m.txt"
grep -q 'replica="qb"' "$IB_TMP/m.txt" && ib_fail "qb still on /metrics after its removal"

# 4. A draining replica finishes its streams: with version 3 'slow' is qwen3's only ready
#    replica, so a 150-token stream (1.5 s) goes there; version 4 drains 'slow' and readies
#    'qa' while the stream runs: it completes, and new requests go to 'qa'.
put 3 "[$(rep qa wq draining), $(rep slow wq), $(rep la wl)]"
/usr/bin/python3 - "$port" >"$IB_TMP/stream.txt" 2>&1 <<'PY' &
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
body = json.dumps({"model": "qwen3", "stream": True, "max_tokens": 150, "session_id": "drain-test",
                   "messages": [{"role": "user", "content": "tell me a long story"}]})
c.request("POST", "/v1/chat/completions", body, {"X-Session-Id": "drain-test"})
r = c.getresponse()
replica = r.getheader("X-IB-Replica")
text = r.read().decode()
chunks = sum(1 for l in text.splitlines() if l.startswith("data: {"))
print(replica, r.status, chunks, "[DONE]" in text)
PY
streamer=$!
sleep 0.3
put 4 "[$(rep qa wq), $(rep slow wq draining), $(rep la wl)]"
for i in $(seq 1 10); do
  r=$(served_by qwen3)
  [ "$r" = qa ] || ib_fail "request $i went to '$r' while 'slow' drains"
done
wait "$streamer" || ib_fail "streaming client failed: $(cat "$IB_TMP/stream.txt")"
read -r who status chunks done <"$IB_TMP/stream.txt"
ib_expect_eq "stream on the draining replica" "$who $status $chunks $done" "slow 200 150 True"

# 5. Redis down for 10 s and then restarted, under load: no request fails, /metrics says
#    down then up, and the snapshot in force stays.
calls_before=$(redis-cli -p "$rport" info commandstats | awk -F'[=,:]' '/^cmdstat_/ {s += $3} END {print s}')
"$IB_LOAD_BIN" --target "127.0.0.1:$port" --model qwen3 --shared-prefix 4,400 --system-tokens 200 \
  --question-tokens 20 --output-tokens 4 --rate 100 --json "$IB_TMP/load.json" --quiet >"$IB_TMP/load.txt" 2>&1 &
loader=$!
sleep 2
calls_during=$(redis-cli -p "$rport" info commandstats | awk -F'[=,:]' '/^cmdstat_/ {s += $3} END {print s}')
ib_stop redis
sleep 1
ib_expect_eq "redis up while stopped" "$(metric ibrain_redis_up)" 0
sleep 9
ib_redis redis "$rport"
# The restarted Redis is empty; the writer's automatic version (Unix ms) still grows.
sed -i 's/"version": 4/"version": 0/' "$IB_TMP/snap.json"
"$snap" --redis "127.0.0.1:$rport" put "$IB_TMP/snap.json" >/dev/null || ib_fail "ib-snapshot put after restart"
wait_version "$(redis-cli -p "$rport" --no-raw get ib:snapshot >/dev/null; "$snap" --redis "127.0.0.1:$rport" get | ib_json /dev/stdin 'd["version"]')"
ib_expect_eq "redis up after restart" "$(metric ibrain_redis_up)" 1
wait "$loader" || ib_fail "ib-load: $(cat "$IB_TMP/load.txt")"
ib_expect_eq "requests during the outage" "$(ib_json "$IB_TMP/load.json" 'd["ok"]')/$(ib_json "$IB_TMP/load.json" 'd["errors"]')" "1600/0"
# Commands Redis served in the first 2 s of the load (about 200 requests): the periodic
# re-read only, none per request.
per_request=$(/usr/bin/python3 -c "print(round(($calls_during - $calls_before) / 200.0, 3))")
echo "redis commands per routed request during load: $per_request ($((calls_during - calls_before)) commands in 2 s)"
[ $((calls_during - calls_before)) -le 20 ] || ib_fail "Redis served $((calls_during - calls_before)) commands in 2 s of load"
promtool check metrics < <(curl -s "$url/metrics") >/dev/null 2>&1 || ib_fail "promtool rejects /metrics"

ib_stop ib || ib_fail "ibrain exited with $?"
for e in qa qb la slow; do ib_stop "$e" || ib_fail "$e exited with $?"; done
ib_stop redis
echo "sync_redis: ok"
