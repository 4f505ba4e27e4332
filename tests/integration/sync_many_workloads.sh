# Many workloads through a real redis-server: ibrain follows a snapshot of 40 workloads
# (more than the 32 its routing table once held, fewer than the cluster server's limit),
# lists all 40 on GET /v1/models and routes the 40th one's model to its replica. A snapshot
# over a limit (include/ibrain/limits.h) is refused by its writer, ib-snapshot, with an
# error naming the limit; ibrain never sees it and keeps the one in force.
source "$IB_SRC/tests/lib/proc.sh"
snap="$IB_BUILD/tools/ib-snapshot"
command -v redis-server >/dev/null || ib_fail "redis-server missing: run tools/setup.sh"

ib_redis redis
rport=$(ib_port redis)
ib_engine last --model m40 --itl-ms 1
ib_engine other --model other --itl-ms 1
ib_ibrain ib --workers 2 --redis "127.0.0.1:$rport" --redis-reread-ms 300 --no-writeback
url="http://127.0.0.1:$(ib_port ib)"
metric() { ib_metric "$url/metrics" "$1"; }
wait_version() { ib_wait_snapshot "$url" "$1"; }
# snapshot_json VERSION WORKLOADS REPLICAS: workloads w1..wN serving models m1..mN; replicas
# r1..rM, replica k of workload ((k-1) % N) + 1. The 40th workload's replicas are on engine
# 'last', every other one's on engine 'other'.
snapshot_json() {
  /usr/bin/python3 - "$1" "$2" "$3" "$(ib_port last)" "$(ib_port other)" <<'PY'
import json, sys
version, nw, nr, last, other = (int(a) for a in sys.argv[1:])
wls = [{"id": "w%d" % i, "model": "m%d" % i, "policy": "least-load"} for i in range(1, nw + 1)]
reps = []
for k in range(1, nr + 1):
    w = (k - 1) % nw + 1
    reps.append({"id": "r%d" % k, "workload": "w%d" % w, "state": "ready",
                 "address": "127.0.0.1:%d" % (last if w == 40 else other)})
print(json.dumps({"version": version, "workloads": wls, "replicas": reps}))
PY
}

# 1. 40 workloads, one replica each.
snapshot_json 7 40 40 >"$IB_TMP/s40.json"
"$snap" --redis "127.0.0.1:$rport" put "$IB_TMP/s40.json" >/dev/null || ib_fail "ib-snapshot put of 40 workloads"
wait_version 7
ib_expect_eq "redis errors" "$(metric ibrain_redis_errors_total)" 0
curl -s "$url/v1/models" >"$IB_TMP/models.json"
ib_expect_eq "models listed" "$(ib_json "$IB_TMP/models.json" 'len(d["data"])')" 40
ib_expect_eq "model ids" "$(ib_json "$IB_TMP/models.json" 'sorted(int(m["id"][1:]) for m in d["data"]) == list(range(1, 41))')" True
code=$(curl -s -D "$IB_TMP/h.txt" -o "$IB_TMP/b.json" -w '%{http_code}' "$url/v1/chat/completions" \
  -d '{"model":"m40","messages":[{"role":"user","content":"hello"}],"max_tokens":2}')
ib_expect_eq "m40 status" "$code" 200
ib_expect_eq "m40 routed to" "$(tr -d '\r' <"$IB_TMP/h.txt" | awk -F': ' 'tolower($1) == "x-ib-replica" {print $2}')" r40
# The mock engine names itself (--id) in the completion's id.
ib_expect_eq "m40 answered by engine 'last'" "$(ib_json "$IB_TMP/b.json" '"-last-" in d["id"]')" True

# 2. The writer refuses one workload, or one replica, over the limits, naming the limit;
#    Redis keeps version 7 and ibrain stays on it with no error counted.
limit() { awk -v n="$1" '$1 == "#define" && $2 == n {print $3}' "$IB_SRC/include/ibrain/limits.h"; }
max_wl=$(limit IB_MAX_WORKLOADS)
max_rep=$(limit IB_MAX_REPLICAS)
[ -n "$max_wl" ] && [ -n "$max_rep" ] || ib_fail "IB_MAX_WORKLOADS / IB_MAX_REPLICAS not found in include/ibrain/limits.h"
snapshot_json 8 "$((max_wl + 1))" "$((max_wl + 1))" >"$IB_TMP/over_wl.json"
snapshot_json 9 40 "$((max_rep + 1))" >"$IB_TMP/over_rep.json"
for f in over_wl over_rep; do
  if "$snap" --redis "127.0.0.1:$rport" put "$IB_TMP/$f.json" >/dev/null 2>"$IB_TMP/$f.err"; then
    ib_fail "ib-snapshot wrote $f.json"
  fi
done
grep -q "IB_MAX_WORKLOADS" "$IB_TMP/over_wl.err" || ib_fail "refusal does not name the limit: $(cat "$IB_TMP/over_wl.err")"
grep -q "IB_MAX_REPLICAS" "$IB_TMP/over_rep.err" || ib_fail "refusal does not name the limit: $(cat "$IB_TMP/over_rep.err")"
echo "ib-snapshot refuses: $(cat "$IB_TMP/over_wl.err")"
echo "ib-snapshot refuses: $(cat "$IB_TMP/over_rep.err")"
ib_expect_eq "stored version" "$("$snap" --redis "127.0.0.1:$rport" get | ib_json /dev/stdin 'd["version"]')" 7
sleep 0.5 # more than one re-read
ib_expect_eq "version in force" "$(metric ibrain_snapshot_version)" 7
ib_expect_eq "redis errors after the refusals" "$(metric ibrain_redis_errors_total)" 0

ib_stop ib || ib_fail "ibrain exited with $?"
for e in last other; do ib_stop "$e" || ib_fail "$e exited with $?"; done
ib_stop redis
echo "sync_many_workloads: ok"
