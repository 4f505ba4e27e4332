# Redis HA: ibrain finds the master through 3 Redis Sentinels, and follows a failover to
# the replica under continuous load with zero failed requests; the writer (ib-snapshot)
# finds the new master the same way, and the snapshot it writes there reaches ibrain.
source "$IB_SRC/tests/lib/proc.sh"
snap="$IB_BUILD/tools/ib-snapshot"
command -v redis-sentinel >/dev/null || ib_fail "redis-sentinel missing: run tools/setup.sh"

ib_redis master
ib_redis replica "" --replicaof 127.0.0.1 "$(ib_port master)"
mport=$(ib_port master) rport=$(ib_port replica)
sent=()
for s in s1 s2 s3; do
  p=$(ib_free_port)
  cat >"$IB_TMP/$s.conf" <<CONF
port $p
bind 127.0.0.1
sentinel monitor ibm 127.0.0.1 $mport 2
sentinel down-after-milliseconds ibm 1000
sentinel failover-timeout ibm 5000
CONF
  ib_spawn "$s" redis-sentinel "$IB_TMP/$s.conf"
  echo "$p" >"$IB_TMP/$s.port"
  sent+=(--sentinel "127.0.0.1:$p")
done
# Sentinels know the replica and each other before anything depends on them.
for ((i = 0; i < 150; i++)); do
  ok=1
  for s in s1 s2 s3; do
    p=$(ib_port $s)
    [ "$(redis-cli -p "$p" sentinel replicas ibm 2>/dev/null | grep -c "^$rport\$")" -ge 1 ] || ok=0
    [ "$(redis-cli -p "$p" sentinel sentinels ibm 2>/dev/null | grep -c '^name$')" -ge 2 ] || ok=0
  done
  [ $ok = 1 ] && break
  sleep 0.1
done
[ $ok = 1 ] || ib_fail "sentinels did not discover the replica and each other in 15 s"

for e in e1 e2; do ib_engine "$e" --model demo --itl-ms 1; done
ibrain_sent=()
for s in s1 s2 s3; do ibrain_sent+=(--redis-sentinel "127.0.0.1:$(ib_port $s)"); done
ib_ibrain ib --workers 2 "${ibrain_sent[@]}" --redis-master ibm --redis-reread-ms 300
url="http://127.0.0.1:$(ib_port ib)"
put() {
  cat >"$IB_TMP/snap.json" <<JSON
{"workloads": [{"id": "w", "model": "demo"}], "replicas": $1}
JSON
  "$snap" "${sent[@]}" --master ibm put "$IB_TMP/snap.json" >>"$IB_TMP/put.log" 2>&1 || ib_fail "put: $(cat "$IB_TMP/put.log")"
}
wait_updates() {
  for ((i = 0; i < 200; i++)); do
    [ "$(ib_metric "$url/metrics" ibrain_snapshot_updates_total)" = "$1" ] && return 0
    sleep 0.05
  done
  ib_fail "ibrain did not apply snapshot number $1: $(curl -s "$url/metrics" | grep -E '^ibrain_(redis|snapshot)')"
}
rep() { printf '{"id":"%s","workload":"w","address":"127.0.0.1:%s"}' "$1" "$(ib_port "$1")"; }
put "[$(rep e1), $(rep e2)]"
wait_updates 1

"$IB_LOAD_BIN" --target "127.0.0.1:$(ib_port ib)" --model demo --shared-prefix 4,300 --system-tokens 200 \
  --question-tokens 20 --output-tokens 4 --rate 100 --json "$IB_TMP/load.json" --quiet >"$IB_TMP/load.txt" 2>&1 &
loader=$!
sleep 2
redis-cli -p "$(ib_port s1)" sentinel failover ibm >/dev/null || ib_fail "SENTINEL FAILOVER refused"
for ((i = 0; i < 150; i++)); do
  [ "$(redis-cli -p "$(ib_port s2)" sentinel get-master-addr-by-name ibm | tail -n 1)" = "$rport" ] && break
  sleep 0.1
done
[ "$(redis-cli -p "$(ib_port s2)" sentinel get-master-addr-by-name ibm | tail -n 1)" = "$rport" ] ||
  ib_fail "failover did not happen"
# Wait until the promoted replica takes writes, then write through it: e2 leaves.
for ((i = 0; i < 100; i++)); do
  [ "$(redis-cli -p "$rport" role | head -n 1)" = master ] && break
  sleep 0.1
done
put "[$(rep e1)]"
wait_updates 2
grep -q "master moved from 127.0.0.1:$mport to 127.0.0.1:$rport" "$IB_TMP/ib.log" ||
  ib_fail "ibrain did not report following the failover: $(cat "$IB_TMP/ib.log")"
ib_expect_eq "redis up after the failover" "$(ib_metric "$url/metrics" ibrain_redis_up)" 1
wait "$loader" || ib_fail "ib-load: $(cat "$IB_TMP/load.txt")"
ib_expect_eq "requests across the failover" \
  "$(ib_json "$IB_TMP/load.json" 'd["ok"]')/$(ib_json "$IB_TMP/load.json" 'd["errors"]')" "1200/0"
for i in $(seq 1 10); do
  r=$(curl -s -D - -o /dev/null "$url/v1/chat/completions" -d '{"model":"demo","messages":[{"role":"user","content":"x"}],"max_tokens":1}' |
    tr -d '\r' | awk -F': ' 'tolower($1) == "x-ib-replica" {print $2}')
  [ "$r" = e1 ] || ib_fail "request after the new snapshot went to '$r'"
done

ib_stop ib || ib_fail "ibrain exited with $?"
for e in e1 e2; do ib_stop "$e" || ib_fail "$e exited with $?"; done
echo "sync_sentinel: ok"
