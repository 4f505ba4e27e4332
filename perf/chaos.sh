#!/usr/bin/env bash
# The chaos campaign (issue 18, part 2): a steady replayed trace through two ibrain
# instances to four engines of one workload (the whole stack: ib-clusterd with the local
# driver, two orchestrators, Redis with a replica and three Sentinels), while faults are
# injected one at a time, then overlapping. For each fault it reports the requests that
# failed (before the first token, mid-stream), what the clients saw, and how long routing
# and the control plane took to be normal again (perf/chaos.py).
#
#   perf/chaos.sh [BUILD_DIR] [--quick] [--out FILE.md]
#
# Everything runs in a network namespace the script makes (ibchaos-PID) and deletes. The
# network faults hit only what ibrain sends to one engine: ibrain runs with group 4242 and
# an nftables rule matches that group and the engine's port (the manager's own health
# checks of its engine pass). This kernel has no netem qdisc: the delay is ib-netdelay
# (NFQUEUE), the loss nftables' numgen, the partition a drop rule.
# The client is ib-load with --failover (a client-side balancer: a refused connection goes
# to the other ibrain), a per-request log, streaming chats of the conversation trace.
# --quick: the single faults only, each shorter (about 3 minutes in all instead of 7).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$SRC/build QUICK=0 OUT=""
while (($#)); do
  case $1 in
  --quick) QUICK=1; shift ;;
  --out) OUT=$2; shift 2 ;;
  -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
  *) BUILD=$(cd "$1" && pwd); shift ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "chaos.sh: needs root (network namespace, nftables)" >&2; exit 2; }
for b in dataplane/ibrain controlplane/ib-clusterd controlplane/ib-orchestrator controlplane/ibctl tools/ib-netdelay perf/ib-load; do
  [ -x "$BUILD/$b" ] || { echo "chaos.sh: $BUILD/$b missing (make build; ib-netdelay needs libnetfilter-queue-dev)" >&2; exit 2; }
done
if [ -z "${IB_CHAOS_NS:-}" ]; then
  ns=ibchaos-$$
  ip netns add "$ns"
  trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
  ip -n "$ns" link set lo up
  args=("$BUILD"); ((QUICK)) && args+=(--quick); [ -n "$OUT" ] && args+=(--out "$OUT")
  rc=0
  IB_CHAOS_NS=$ns ip netns exec "$ns" bash "$0" "${args[@]}" || rc=$?
  exit $rc
fi

# ---- inside the namespace: the harness of the integration tests ----
export IB_BUILD=$BUILD IB_SRC=$SRC
source "$SRC/tests/lib/proc.sh"
CD="$BUILD/controlplane"
GID=4242 # ibrain's group: what the network faults match
ITL_MS=15 OUT_TOKENS=32 SPEEDUP=6
events="$IB_TMP/events" timeline="$IB_TMP/timeline.tsv" reqlog="$IB_TMP/requests.tsv"
now() { date +%s.%N | cut -c1-14; }
note() { # KIND NAME [WHAT]: the schedule, for the report
  echo "$(now) $*" >>"$events"
  [ "$1" = start ] && echo "[$(date +%T)] fault $2: ${*:3}" || true
}

# ---- Redis: a master, a replica, three Sentinels ----
ib_redis ra
ib_redis rb "" --replicaof 127.0.0.1 "$(ib_port ra)"
sent=() sentinels=()
for s in s1 s2 s3; do
  p=$(ib_free_port)
  cat >"$IB_TMP/$s.conf" <<CONF
port $p
bind 127.0.0.1
sentinel monitor ibm 127.0.0.1 $(ib_port ra) 2
sentinel down-after-milliseconds ibm 1000
sentinel failover-timeout ibm 5000
CONF
  ib_spawn "$s" redis-sentinel "$IB_TMP/$s.conf"
  echo "$p" >"$IB_TMP/$s.port"
  sent+=(--redis-sentinel "127.0.0.1:$p")
  sentinels+=("$p")
done
wait_until 20 "sentinels know the replica and each other" \
  '[ "$(redis-cli -p "${sentinels[0]}" sentinel replicas ibm 2>/dev/null | grep -c "^$(ib_port rb)\$")" -ge 1 ] &&
   [ "$(redis-cli -p "${sentinels[0]}" sentinel sentinels ibm 2>/dev/null | grep -c "^name\$")" -ge 2 ]'
redis_master() { redis-cli -p "${sentinels[0]}" sentinel get-master-addr-by-name ibm | tail -n 1; }

# ---- control plane ----
echo weights >"$IB_TMP/weights.bin"
start_clusterd() {
  ib_spawn cd "$CD/ib-clusterd" --listen "127.0.0.1:$cd_port" --state-dir "$IB_TMP/state" --drain-grace-ms 500 \
    --engine "$BUILD/tools/ib-mock-engine --listen 127.0.0.1:{port} --model {model} --id {replica} --itl-ms $ITL_MS"
  ib_wait_tcp "$cd_port" || ib_fail "ib-clusterd did not listen"
}
start_orch() { # NAME PORT
  ib_spawn "$1" "$CD/ib-orchestrator" --listen "127.0.0.1:$2" --cluster "127.0.0.1:$cd_port" "${sent[@]}" \
    --redis-master ibm --instance-id "$1" --no-auth
  ib_wait_tcp "$2" || ib_fail "$1 did not listen"
}
cd_port=$(ib_free_port) o1_port=$(ib_free_port) o2_port=$(ib_free_port)
start_clusterd
start_orch o1 "$o1_port"
start_orch o2 "$o2_port"
export IBCTL_SERVER="http://127.0.0.1:$o1_port"
"$CD/ibctl" workload create w --model mock --weights "$IB_TMP/weights.bin" --replicas 4 --wait --timeout 60 \
  >"$IB_TMP/create.txt" 2>&1 || ib_fail "create: $(cat "$IB_TMP/create.txt")"

# ---- two ibrain instances, group 4242 ----
i1_port=$(ib_free_port) i2_port=$(ib_free_port)
start_ibrain() { # NAME PORT
  ib_spawn "$1" setpriv --regid=$GID --clear-groups "$BUILD/dataplane/ibrain" --listen "127.0.0.1:$2" --workers 1 \
    "${sent[@]}" --redis-master ibm --instance-id "$1"
  ib_wait_http "http://127.0.0.1:$2/health"
}
start_ibrain i1 "$i1_port"
start_ibrain i2 "$i2_port"
wait_until 20 "both ibrain instances route 4 replicas" \
  '[ "$(ib_metric_sum "http://127.0.0.1:$i1_port/metrics" "^ibrain_replica_healthy")" = 4 ] &&
   [ "$(ib_metric_sum "http://127.0.0.1:$i2_port/metrics" "^ibrain_replica_healthy")" = 4 ]'

/usr/bin/python3 "$SRC/perf/chaos.py" watch "$timeline" "$i1_port,$i2_port" "$o1_port,$o2_port" 4 &
IB_PID[watch]=$!
normal() { # routing and control both normal in the watcher's last line
  [ -s "$timeline" ] && tail -n 1 "$timeline" | awk -F'\t' '{exit !($2 == 1 && $3 == 1)}'
}
settle() { # waits until normal for 2 s in a row (60 s at most), then QUIET s more
  local t0 ok=0
  t0=$(date +%s)
  while (($(date +%s) - t0 < 60)); do
    if normal; then ok=$((ok + 1)); ((ok >= 10)) && break; else ok=0; fi
    sleep 0.2
  done
  ((ok >= 10)) || echo "  (not normal after 60 s: $(tail -n 1 "$timeline" | cut -f4))"
  sleep "$QUIET"
}
settle_quietly() { QUIET=0 settle; }

# ---- the load: the conversation trace, streaming, through both instances ----
QUIET=5 FAULT_S=10
((QUICK)) && QUIET=3 FAULT_S=6
load_s=$((QUICK ? 200 : 440))
limit=$((load_s * 34 / 10 * SPEEDUP)) # the trace's 3.4 requests/s, sped up
load_start=$(now)
"$BUILD/perf/ib-load" --target "127.0.0.1:$i1_port" --target "127.0.0.1:$i2_port" --failover \
  --trace "$SRC/perf/traces/conversation_trace.jsonl" --speedup $SPEEDUP --limit $limit --max-input 1500 \
  --max-output $OUT_TOKENS --timeout-s 60 --requests-log "$reqlog" --json "$IB_TMP/load.json" --quiet \
  >"$IB_TMP/load.txt" 2>&1 &
loader=$!
sleep 8 # steady state first

# ---- faults ----
replica_of() { "$CD/ibctl" -o json workload get w | /usr/bin/python3 -c '
import json, sys
r = [x for x in json.load(sys.stdin)["status"]["replicas"] if x["id"].endswith("-r" + sys.argv[1])]
print(r[0]["address"].split(":")[1] if r else "")' "$1"; }
engine_pid() { # REPLICA_INDEX: the engine's PID (a process of this namespace listening on its port)
  local port pid
  port=$(replica_of "$1")
  for pid in $(ip netns pids "$IB_CHAOS_NS"); do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "ib-mock-engine --listen 127.0.0.1:$port " && { echo "$pid"; return; }
  done
}
nft_rule() { # PORT RULE...: a rule on what group $GID sends to PORT
  nft add rule inet chaos out meta skgid $GID tcp dport "$1" "${@:2}"
}
nft -f - <<'NFT'
table inet chaos {
  chain out { type filter hook output priority -10; }
}
NFT
iptables -A OUTPUT -m mark --mark 0x42 -j NFQUEUE --queue-num 42 --queue-bypass
nft_clear() { nft flush chain inet chaos out; }

fault_engine_kill() { # REPLICA
  local pid; pid=$(engine_pid "$1")
  note start "engine-kill-r$1" "engine r$1 SIGKILL mid-stream"
  kill -KILL "$pid"
}
fault_engine_hang() { # REPLICA
  local pid; pid=$(engine_pid "$1")
  note start "engine-hang-r$1" "engine r$1 SIGSTOP ${FAULT_S} s, then SIGCONT"
  kill -STOP "$pid"; sleep "$FAULT_S"; kill -CONT "$pid" 2>/dev/null || true
  note heal "engine-hang-r$1"
}
fault_net() { # NAME REPLICA WHAT RULE...
  local name=$1 r=$2 what=$3 port; port=$(replica_of "$r")
  shift 3
  note start "$name-r$r" "$what, ibrain -> engine r$r, ${FAULT_S} s"
  nft_rule "$port" "$@"
  sleep "$FAULT_S"
  nft_clear
  note heal "$name-r$r"
}
fault_delay() { # REPLICA
  ib_spawn netdelay "$BUILD/tools/ib-netdelay" --queue 42 --delay-ms 200
  sleep 0.2
  fault_net delay "$1" "200 ms delay" meta mark set 0x42
  ib_stop netdelay >/dev/null || true
}
fault_redis_kill() {
  local port name; port=$(redis_master)
  name=$([ "$port" = "$(ib_port ra)" ] && echo ra || echo rb)
  note start redis-kill "Redis master SIGKILL, restarted empty"
  ib_stop "$name" KILL >/dev/null 2>&1 || true
  rm -f "$IB_TMP/$name.dir/"*.rdb
  ib_redis "$name" "$port"
  note heal redis-kill
}
fault_failover() {
  note start sentinel-failover "Sentinel failover (SENTINEL FAILOVER)"
  local before; before=$(redis_master)
  redis-cli -p "${sentinels[0]}" sentinel failover ibm >/dev/null
  wait_until 20 "the failover" '[ "$(redis_master)" != "$before" ]'
  note heal sentinel-failover
}
leader() { # the orchestrator holding the lease
  local o
  for o in o1 o2; do
    [ "$(ib_metric "http://127.0.0.1:$(eval echo \$${o}_port)/metrics" ib_orch_leader)" = 1 ] && { echo $o; return; }
  done
}
fault_leader_kill() {
  local o; o=$(leader)
  note start leader-kill "orchestrator leader ($o) SIGKILL, restarted after 2 s"
  ib_stop "$o" KILL >/dev/null 2>&1 || true
  sleep 2
  start_orch "$o" "$(eval echo \$${o}_port)"
  note heal leader-kill
}
fault_clusterd_kill() {
  note start clusterd-kill "ib-clusterd SIGKILL, restarted after 2 s"
  IB_PID[cd-managers]=${IB_PID[cd]} # its managers stay in its process group
  kill -KILL "${IB_PID[cd]}"
  wait "${IB_PID[cd]}" 2>/dev/null || true
  unset "IB_PID[cd]"
  sleep 2
  start_clusterd
  note heal clusterd-kill
}
fault_ibrain_kill() { # NAME
  note start "ibrain-kill-$1" "ibrain $1 SIGKILL, restarted after 5 s"
  ib_stop "$1" KILL >/dev/null 2>&1 || true
  sleep 5
  start_ibrain "$1" "$(eval echo \$${1}_port)"
  note heal "ibrain-kill-$1"
}

echo "faults, one at a time:"
fault_engine_kill 0; settle
fault_engine_hang 1; settle
fault_delay 2; settle
fault_net loss 2 "5% loss" numgen random mod 100 '<' 5 drop; settle
fault_net partition 3 "partition" drop; settle
fault_redis_kill; settle
fault_failover; settle
fault_leader_kill; settle
fault_clusterd_kill; settle
fault_ibrain_kill i2; settle
if ((!QUICK)); then
  echo "faults overlapping:"
  # an engine, the Redis master and the leader at once
  o=$(leader) rport=$(redis_master)
  rname=$([ "$rport" = "$(ib_port ra)" ] && echo ra || echo rb)
  note start overlap-a "engine r3 SIGKILL + Redis master SIGKILL (restarted empty) + leader SIGKILL (restarted after 2 s)"
  kill -KILL "$(engine_pid 3)"
  ib_stop "$rname" KILL >/dev/null 2>&1 || true
  ib_stop "$o" KILL >/dev/null 2>&1 || true
  rm -f "$IB_TMP/$rname.dir/"*.rdb
  ib_redis "$rname" "$rport"
  sleep 2
  start_orch "$o" "$(eval echo \$${o}_port)"
  note heal overlap-a
  settle
  # a partition, a hung engine and one ibrain killed
  pport=$(replica_of 0) hpid=$(engine_pid 1)
  note start overlap-b "partition of r0 + engine r1 SIGSTOP (both ${FAULT_S} s) + ibrain i1 SIGKILL (restarted after 5 s)"
  nft_rule "$pport" drop
  kill -STOP "$hpid"
  ib_stop i1 KILL >/dev/null 2>&1 || true
  sleep 5
  start_ibrain i1 "$i1_port"
  sleep $((FAULT_S > 5 ? FAULT_S - 5 : 0))
  kill -CONT "$hpid" 2>/dev/null || true
  nft_clear
  note heal overlap-b
  settle
fi
echo "faults done; the load runs to its end"
wait "$loader" || true
cat "$IB_TMP/load.txt"
md="${OUT:-$IB_TMP/chaos.md}"
rc=0
/usr/bin/python3 "$SRC/perf/chaos.py" report "$events" "$timeline" "$reqlog" "$load_start" "$md" || rc=$?
echo "report: $md (work dir $IB_TMP)"
IB_KEEP=1
exit $rc
