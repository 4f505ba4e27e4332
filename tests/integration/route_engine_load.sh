# The engines' own load, read from their /metrics (--engine-metrics-ms): traffic ibrain did
# not send counts. Six long streams go to engine e1 directly, as another router's would;
# ibrain (least-load) then sends its requests to e2, which its own counters alone could not
# tell apart from e1. An engine whose /metrics cannot be read is routed on ibrain's
# counters alone, and /metrics and the log say so. Under the affinity policy the engine's
# queue is queued prefill work: a prefix's holder whose engine is full spills.
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

# Affinity: the engine's queue counts as queued prefill work. e3 holds the prompt's prefix
# (ibrain sent it there), then another router's seven streams fill e3 (one running, six
# waiting: --max-seqs 1). ibrain's own counters still see e3 idle, but its engine's queue
# puts it over the load bound, and the prompt spills to e4.
ib_engine e3 --itl-ms 50 --max-seqs 1
ib_engine e4 --itl-ms 50 --max-seqs 1
ib_ibrain ia --policy affinity --engine-metrics-ms 100 --workers 2 \
  --replica "e3=127.0.0.1:$(ib_port e3)" --replica "e4=127.0.0.1:$(ib_port e4)"
iap=$(ib_port ia)
prompt="$(printf 'a system prompt shared by this conversation, long enough for several blocks %.0s' $(seq 1 12))"
ask() { # prints the engine that answered
  curl -s -D - -o /dev/null "http://127.0.0.1:$iap/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"mock","max_tokens":1,"messages":[{"role":"system","content":"'"$prompt"'"},{"role":"user","content":"'"$1"'"}]}' |
    tr -d '\r' | awk -F': ' 'tolower($1) == "x-engine-id" {print $2}'
}
holder=$(ask "first")
other=e4
[ "$holder" = e4 ] && other=e3
ib_expect_eq "the prompt again, both engines idle" "$(ask "second")" "$holder"
for ((i = 0; i < 7; i++)); do
  ib_spawn "q$i" curl -s -N "http://127.0.0.1:$(ib_port "$holder")/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"mock","stream":true,"max_tokens":200,"messages":[{"role":"user","content":"another router'"'"'s request"}]}'
done
ametric() { ib_metric "http://127.0.0.1:$iap/metrics" "$1"; }
wait_until 10 "$holder's queue as ibrain reads it" \
  'test "$(ametric "ibrain_replica_engine_requests{replica=\"$holder\",state=\"waiting\"}")" = 6'
ib_expect_eq "the prompt with $holder's engine queue full" "$(ask "third")" "$other"
ib_stop ia || ib_fail "ibrain (affinity) exited with $?"
echo "PASS"
