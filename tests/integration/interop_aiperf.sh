# A benchmark client users already trust drives ibrain: aiperf (NVIDIA, from PyPI, pinned in
# tools/requirements-aiperf.txt, run offline by tools/aiperf.sh) sends 120 streaming chats
# with shared prefixes through ibrain to two engines, at concurrency 4. Checked: aiperf saw
# every request succeed with a first token and inter-token latencies, and ibrain and the
# engines counted exactly the requests aiperf sent (no request lost or counted twice).
source "$IB_SRC/tests/lib/proc.sh"

venv=${IB_AIPERF_VENV:-$HOME/.cache/ibrain/aiperf-venv}
[ -x "$venv/bin/aiperf" ] || ib_fail "aiperf missing ($venv): run tools/setup.sh"

ib_engine e1 --model demo --itl-ms 1
ib_engine e2 --model demo --itl-ms 1
ib_ibrain ib --workers 1 --model demo --replica e1=127.0.0.1:$(ib_port e1) --replica e2=127.0.0.1:$(ib_port e2)
base="http://127.0.0.1:$(ib_port ib)"
bash "$IB_SRC/tools/aiperf.sh" "$base" demo "$IB_TMP/aiperf" --request-count 120 --concurrency 4 \
  --isl 128 --isl-stddev 0 --osl 16 --osl-stddev 0 --num-prefix-prompts 4 --prompt-prefix-length 256 \
  --extra-inputs ignore_eos:true >"$IB_TMP/aiperf.log" 2>&1 ||
  ib_fail "aiperf failed: $(tail -c 2000 "$IB_TMP/aiperf.log")"
report="$IB_TMP/aiperf/profile_export_aiperf.json"
[ -f "$report" ] || ib_fail "aiperf wrote no report: $(tail -c 2000 "$IB_TMP/aiperf.log")"
v() { ib_json "$report" "(lambda x: int(x) if isinstance(x, float) and x.is_integer() else x)((d.get('$1') or {}).get('${2:-avg}'))"; }
ib_expect_eq "aiperf's successful requests" "$(v request_count)" 120
ib_expect_eq "aiperf's failed requests" "$(v error_request_count)" None
ttft=$(v time_to_first_token p50) itl=$(v inter_token_latency p50)
/usr/bin/python3 -c "import sys; sys.exit(0 if float('$ttft') > 0 and float('$itl') > 0 else 1)" ||
  ib_fail "aiperf measured no TTFT ($ttft) or ITL ($itl)"
ib_expect_eq "ibrain's 200s" "$(ib_metric "$base/metrics" 'ibrain_requests_total{route="/v1/chat/completions",status="200"}')" 120
served=0
for e in e1 e2; do
  served=$((served + $(ib_metric_sum "http://127.0.0.1:$(ib_port $e)/metrics" '^vllm:request_success_total.*finished_reason="(stop|length)"')))
done
ib_expect_eq "requests the engines finished" "$served" 120
echo "aiperf through ibrain: 120/120 ok, TTFT p50 ${ttft} ms, ITL p50 ${itl} ms, $(v request_throughput) req/s"
echo "interop_aiperf: ok"
