# Two ibrain instances behind one (imaginary) load balancer share what they route through
# Redis (write-back): a conversation whose turns alternate between the two instances stays
# on one replica, each later turn routed by affinity on whichever instance receives it.
source "$IB_SRC/tests/lib/proc.sh"
snap="$IB_BUILD/tools/ib-snapshot"

ib_redis redis
rport=$(ib_port redis)
reps=""
for e in r1 r2 r3 r4; do
  ib_engine "$e" --model demo --itl-ms 1 --prefill-us-per-token 5
  reps+="${reps:+,}{\"id\":\"$e\",\"workload\":\"w\",\"address\":\"127.0.0.1:$(ib_port $e)\"}"
done
echo "{\"workloads\":[{\"id\":\"w\",\"model\":\"demo\",\"policy\":\"affinity\"}],\"replicas\":[$reps]}" >"$IB_TMP/snap.json"
"$snap" --redis "127.0.0.1:$rport" put "$IB_TMP/snap.json" >/dev/null || ib_fail "ib-snapshot put"
for i in a b; do
  ib_ibrain "ib$i" --workers 2 --redis "127.0.0.1:$rport" --instance-id "ib-$i"
done
for i in a b; do
  for ((k = 0; k < 100; k++)); do
    [ "$(ib_metric "http://127.0.0.1:$(ib_port ib$i)/metrics" ibrain_snapshot_version)" != 0 ] && break
    sleep 0.05
  done
done

/usr/bin/python3 - "$(ib_port iba)" "$(ib_port ibb)" "$IB_TMP" >"$IB_TMP/conv.txt" 2>&1 <<'PY' || ib_fail "alternating conversations: $(cat "$IB_TMP/conv.txt")"
import http.client, json, random, sys, time
ports = [int(sys.argv[1]), int(sys.argv[2])]
rng = random.Random(11)
def words(k):
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(k))
def applied(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    for line in conn.getresponse().read().decode().splitlines():
        if line.startswith("ibrain_writeback_applied_total "):
            return int(line.split()[1])
    return 0
seen = {p: applied(p) for p in ports}
used = set()
for c in range(6):
    # A system prompt of its own: the first turn matches nothing and lands anywhere.
    messages = [{"role": "system", "content": "You are assistant %d. %s" % (c, words(80))}]
    served = []
    for t in range(4):
        messages.append({"role": "user", "content": "Conversation %d, turn %d: %s" % (c, t, words(100))})
        port = ports[t % 2]  # turns alternate between the two instances
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": "demo", "messages": messages, "max_tokens": 8}),
                     {"Content-Type": "application/json", "X-IB-Debug": "1"})
        r = conn.getresponse()
        data = json.loads(r.read())
        assert r.status == 200, data
        route = dict(kv.split("=", 1) for kv in r.getheader("X-IB-Route", "").split())
        served.append((port, r.getheader("X-IB-Replica"), route.get("reason"), route.get("matched")))
        messages.append({"role": "assistant", "content": data["choices"][0]["message"]["content"]})
        # Write-back runs every 100 ms: wait until the other instance has applied this turn.
        other = ports[(t + 1) % 2]
        deadline = time.time() + 5
        while applied(other) <= seen[other] and time.time() < deadline:
            time.sleep(0.02)
        seen[other] = applied(other)
    print(c, served)
    if c == 0:  # the next turn of this conversation, for the instance started later
        messages.append({"role": "user", "content": "Conversation 0, turn 4: %s" % words(100)})
        json.dump({"model": "demo", "messages": messages, "max_tokens": 8}, open(sys.argv[3] + "/next_turn.json", "w"))
        json.dump({"replica": served[0][1]}, open(sys.argv[3] + "/conv.json", "w"))
    assert len({s[1] for s in served}) == 1, "conversation %d moved between replicas: %s" % (c, served)
    assert all(s[2] == "affinity" for s in served[1:]), "a later turn was not routed by affinity: %s" % served
    used |= {s[1] for s in served}
assert len(used) >= 2, "all conversations on %s" % used
print("ok", sorted(used))
PY
cat "$IB_TMP/conv.txt"
for i in a b; do
  applied=$(ib_metric "http://127.0.0.1:$(ib_port ib$i)/metrics" ibrain_writeback_applied_total)
  [ "${applied:-0}" -gt 0 ] || ib_fail "ib$i applied no write-back"
  echo "ib$i applied $applied prefix insertions from the other instance"
done
promtool check metrics < <(curl -s "http://127.0.0.1:$(ib_port iba)/metrics") >/dev/null 2>&1 || ib_fail "promtool"

# Write-back talks to Redis per tick (100 ms), not per request: the command count over 3 s
# is about the same at 30 and at 300 requests per second.
commands() { redis-cli -p "$rport" info commandstats | awk -F'[=,:]' '/^cmdstat_/ {s += $3} END {print s}'; }
for rate in 30 300; do
  before=$(commands)
  "$IB_LOAD_BIN" --target "127.0.0.1:$(ib_port iba)" --model demo --shared-prefix 4,$((rate * 3 / 4)) --system-tokens 100 \
    --question-tokens 20 --output-tokens 2 --rate "$rate" --json "$IB_TMP/load$rate.json" --quiet >/dev/null 2>&1 ||
    ib_fail "ib-load at $rate/s"
  n=$(($(commands) - before))
  ok=$(ib_json "$IB_TMP/load$rate.json" 'd["ok"]')
  echo "at $rate requests/s: $ok requests, $n Redis commands from both instances"
  [ "$n" -le 250 ] || ib_fail "$n Redis commands for $ok requests at $rate/s"
done

# A new instance first reads the last minute of the stream: without a single request of
# its own it learns where the others routed, and a conversation's next turn sent to it
# goes by affinity to the replica that holds the conversation.
first_replica=$(ib_json "$IB_TMP/conv.json" 'd["replica"]')
ib_ibrain ibc --workers 1 --redis "127.0.0.1:$rport" --instance-id ib-c
for ((k = 0; k < 100; k++)); do
  [ "$(ib_metric "http://127.0.0.1:$(ib_port ibc)/metrics" ibrain_writeback_applied_total)" -gt 0 ] 2>/dev/null && break
  sleep 0.05
done
caught=$(ib_metric "http://127.0.0.1:$(ib_port ibc)/metrics" ibrain_writeback_applied_total)
[ "${caught:-0}" -gt 0 ] || ib_fail "the new instance read nothing of the last minute"
curl -s -D "$IB_TMP/c.h" -o /dev/null "http://127.0.0.1:$(ib_port ibc)/v1/chat/completions" -H 'X-IB-Debug: 1' \
  -H 'Content-Type: application/json' --data-binary @"$IB_TMP/next_turn.json"
grep -qi "^x-ib-replica: $first_replica" "$IB_TMP/c.h" || ib_fail "next turn on the new instance left $first_replica: $(cat "$IB_TMP/c.h")"
grep -qi "^x-ib-route: .*reason=affinity" "$IB_TMP/c.h" || ib_fail "next turn on the new instance not by affinity: $(cat "$IB_TMP/c.h")"
echo "a new instance caught up on $caught prefix insertions and routed a returning conversation to $first_replica by affinity"
ib_stop ibc || ib_fail "ibc exited with $?"
for i in a b; do ib_stop "ib$i" || ib_fail "ib$i exited with $?"; done
for e in r1 r2 r3 r4; do ib_stop "$e" || ib_fail "$e exited with $?"; done
echo "sync_writeback: ok"
