# The engines' own load, read from their /metrics (--engine-metrics-ms): traffic ibrain did
# not send counts. Six long streams go to engine e1 directly, as another router's would;
# ibrain (least-load) then sends its requests to e2, which its own counters alone could not
# tell apart from e1. An engine whose /metrics cannot be read is routed on ibrain's
# counters alone, and /metrics and the log say so.
source "$IB_SRC/tests/lib/proc.sh"

ib_engine e1 --itl-ms 50
ib_engine e2 --itl-ms 50
ib_ibrain ib --policy least-load --engine-metrics-ms 100 --workers 2 \
  --replica "e1=127.0.0.1:$(ib_port e1)" --replica "e2=127.0.0.1:$(ib_port e2)"
ibp=$(ib_port ib)
metric() { ib_metric "http://127.0.0.1:$ibp/metrics" "$1"; }

# six streams of 200 tokens x 50 ms straight to e1 (10 s each); stopped with the test
for ((i = 0; i < 6; i++)); do
  ib_spawn "s$i" curl -s -N "http://127.0.0.1:$(ib_port e1)/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"mock","stream":true,"max_tokens":200,"messages":[{"role":"user","content":"a long answer"}]}'
done
for ((i = 0; i < 100; i++)); do
  [ "$(metric 'ibrain_replica_engine_requests{replica="e1",state="running"}')" = 6 ] && break
  sleep 0.05
done
ib_expect_eq "e1's running requests as ibrain read them" \
  "$(metric 'ibrain_replica_engine_requests{replica="e1",state="running"}')" 6
ib_expect_eq "e1's engine metrics up" "$(metric 'ibrain_replica_engine_metrics_up{replica="e1"}')" 1
for ((i = 0; i < 10; i++)); do
  e=$(curl -s -D - -o /dev/null "http://127.0.0.1:$ibp/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"mock","max_tokens":1,"messages":[{"role":"user","content":"short"}]}' |
    tr -d '\r' | awk -F': ' 'tolower($1) == "x-engine-id" {print $2}')
  ib_expect_eq "request $i goes to the engine with less load" "$e" e2
done

# e2 gone: its load cannot be read any more
ib_stop e2 || true
for ((i = 0; i < 100; i++)); do
  [ "$(metric 'ibrain_replica_engine_metrics_up{replica="e2"}')" = 0 ] && break
  sleep 0.05
done
ib_expect_eq "e2's engine metrics up once it is gone" "$(metric 'ibrain_replica_engine_metrics_up{replica="e2"}')" 0
grep -q "replica e2: its engine's /metrics cannot be read: routed on ibrain's own counters" "$IB_TMP/ib.log" ||
  ib_fail "no log line for e2's unreadable metrics"
[ "$(metric 'ibrain_replica_engine_metrics_errors_total{replica="e2"}')" -ge 1 ] || ib_fail "e2's read errors not counted"
ib_stop ib || ib_fail "ibrain exited with $?"
echo "PASS"
