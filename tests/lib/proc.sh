# Process and port helpers, sourced by every integration test (bash), and by the perf/
# and tools/ scripts for the first group alone.
#
# Helpers with no side effects (all a perf or tool script gets, with IB_PROC_HELPERS_ONLY=1
# set while sourcing):
#   ib_free_port                a loopback port free right now.
#   ib_wait_port_file FILE PID  wait (10 s) for a port file while PID lives; prints the port.
#                               Returns 1 when PID exited first, 2 on timeout.
#   ib_wait_tcp PORT            wait (5 s) until 127.0.0.1:PORT accepts; 1 when it never does.
#   ib_wait_redis PORT PID      wait (10 s) until a redis-server on PORT answers PING while
#                               PID lives. Returns 1 when PID exited first, 2 on timeout.
#   ib_cpu_ticks PID            user + system CPU time of PID, in ticks (getconf CLK_TCK).
#
# The test harness (sourcing without IB_PROC_HELPERS_ONLY: needs IB_BUILD and IB_SRC, makes
# $IB_TMP, stops every process it started on exit):
#   ib_spawn NAME CMD ARGS...   start CMD in the background; its output goes to $IB_TMP/NAME.log.
#                               If ARGS contain the word @PORTFILE it is replaced by
#                               $IB_TMP/NAME.port, where the program writes the port it bound
#                               (every ibrain binary takes --listen 127.0.0.1:0 --port-file F).
#   ib_wait_port NAME           wait (10 s) for NAME's port file; sets and prints the port.
#   ib_port NAME                the port NAME bound.
#   ib_wait_http URL [STATUS]   wait (10 s) until URL answers STATUS (200).
#   ib_engine NAME ARGS...      start ib-mock-engine on a free loopback port and wait until
#                               it is healthy.
#   ib_ibrain NAME ARGS...      start ibrain on a free loopback port and wait until healthy.
#   ib_redis NAME [PORT] ARGS   start redis-server on loopback (a free port unless given).
#   ib_stop NAME [SIGNAL]       signal NAME's process group (TERM), wait up to 10 s for NAME
#                               (then KILL the group); returns NAME's exit status.
#   ib_fail MSG                 print MSG and the logs of every process, exit 1.
#   IB_PYTHON                   the project's venv's python (tools/setup.sh makes the venv at
#                               ${IB_VENV:-~/.cache/ibrain/venv}); ib_need_venv fails without it.
#
# Every process started here leads its own process group (setsid), so that it and anything
# it started are stopped by PID when the test exits, however it exits.
# Ports are never guessed: programs bind port 0 and report the port they got.

# ---- helpers with no side effects ----

# ib_free_port: a loopback port free right now (for servers that cannot bind port 0 and
# report it, such as redis-server).
ib_free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ib_wait_port_file() {
  local file=$1 pid=$2 i
  for ((i = 0; i < 100; i++)); do
    if [ -s "$file" ]; then
      cat "$file"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 2
}

ib_wait_tcp() {
  local i
  for ((i = 0; i < 100; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

ib_wait_redis() {
  local port=$1 pid=$2 i
  for ((i = 0; i < 100; i++)); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 2
}

ib_cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

if [ -n "${IB_PROC_HELPERS_ONLY:-}" ]; then
  return 0
fi

# ---- the test harness ----

set -euo pipefail
: "${IB_BUILD:?IB_BUILD must name the build directory}"
: "${IB_SRC:?IB_SRC must name the source directory}"
IB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/ib-test.XXXXXX")
declare -A IB_PID=()
IB_ENGINE_BIN="$IB_BUILD/tools/ib-mock-engine"
IB_LOAD_BIN="$IB_BUILD/perf/ib-load"
IB_IBRAIN_BIN="$IB_BUILD/dataplane/ibrain"
IB_PYTHON="${IB_VENV:-$HOME/.cache/ibrain/venv}/bin/python"
# Sanitizer builds: report leaks and errors, and fail the process when they happen.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=66}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$IB_SRC/tests/lsan.supp:print_suppressions=0}"
# TSan: libzmq, as Debian ships it, is not instrumented; its I/O threads receive into
# message buffers (the recv and memcpy interceptors record those writes) and hand them to
# the caller through lock-free pipes TSan cannot see, so every byte read afterwards was a
# race report to suppress, slow enough (a scan per racy address) to stall ibrain's events
# thread for seconds under a large batch. ignore_noninstrumented_modules: interceptors
# called from uninstrumented libraries record nothing; our own accesses are all checked.
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:exitcode=68:ignore_noninstrumented_modules=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:exitcode=67}"

# A process that crashed, or that a sanitizer failed (the exitcodes above), fails the
# test at its end, whenever it happened and whoever stopped it (ib_stop, the cleanup).
IB_CRASHED=""
ib__crash_check() { # NAME STATUS
  case $2 in
  66 | 67 | 68) IB_CRASHED+=" $1 (sanitizer, exit $2)" ;;
  132 | 134 | 135 | 136 | 139) IB_CRASHED+=" $1 (signal $(($2 - 128)))" ;;
  esac
}

ib__cleanup() {
  local rc=$?
  local name
  for name in "${!IB_PID[@]}"; do
    kill -TERM -- "-${IB_PID[$name]}" 2>/dev/null || true
  done
  for name in "${!IB_PID[@]}"; do
    local i
    for ((i = 0; i < 50; i++)); do
      kill -0 "${IB_PID[$name]}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-${IB_PID[$name]}" 2>/dev/null || true
  done
  local st
  for name in "${!IB_PID[@]}"; do
    st=0
    wait "${IB_PID[$name]}" 2>/dev/null || st=$?
    ib__crash_check "$name" "$st"
  done
  wait 2>/dev/null || true
  if [ -n "$IB_CRASHED" ] && { [ "$rc" -eq 0 ] || [ "$rc" -eq 77 ]; }; then
    echo "FAIL: crashed or failed by a sanitizer:$IB_CRASHED (logs in $IB_TMP)" >&2
    rc=1
  fi
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
    echo "--- test failed (exit $rc); work dir $IB_TMP kept" >&2
  elif [ -z "${IB_KEEP:-}" ]; then
    rm -rf "$IB_TMP"
  fi
  exit "$rc"
}
trap ib__cleanup EXIT

ib_fail() {
  echo "FAIL: $*" >&2
  local f
  for f in "$IB_TMP"/*.log; do
    [ -f "$f" ] || continue
    echo "--- $f (last 30 lines)" >&2
    tail -n 30 "$f" >&2
  done
  exit 1
}

ib_need_venv() {
  [ -x "$IB_PYTHON" ] || ib_fail "the project's Python venv is missing ($IB_PYTHON): run tools/setup.sh"
}

ib_spawn() {
  local name=$1
  shift
  local args=() a
  for a in "$@"; do
    if [ "$a" = "@PORTFILE" ]; then args+=("$IB_TMP/$name.port"); else args+=("$a"); fi
  done
  rm -f "$IB_TMP/$name.port"
  # setsid execs in place (a background job is no group leader): $! is the program's PID
  # and its process group.
  setsid "${args[@]}" >"$IB_TMP/$name.log" 2>&1 &
  IB_PID[$name]=$!
}

ib_wait_port() {
  local name=$1 rc=0
  ib_wait_port_file "$IB_TMP/$name.port" "${IB_PID[$name]}" || rc=$?
  case $rc in
  0) ;;
  1) ib_fail "$name exited before listening" ;;
  *) ib_fail "$name did not report a port within 10 s" ;;
  esac
}

ib_port() { cat "$IB_TMP/$1.port"; }

ib_wait_http() {
  local url=$1 want=${2:-200} i code
  for ((i = 0; i < 100; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
    [ "$code" = "$want" ] && return 0
    sleep 0.1
  done
  ib_fail "$url did not answer $want within 10 s (last: $code)"
}

ib_engine() {
  local name=$1
  shift
  ib_spawn "$name" "$IB_ENGINE_BIN" --listen 127.0.0.1:0 --port-file @PORTFILE --id "$name" "$@"
  local port
  port=$(ib_wait_port "$name")
  ib_wait_http "http://127.0.0.1:$port/health"
}

# ib_redis NAME [PORT] [ARGS...]: a redis-server on loopback (no persistence), on PORT or a
# free port; waits until it answers PING. ib_port NAME gives the port.
ib_redis() {
  local name=$1 port=${2:-} rc=0
  shift $(($# > 1 ? 2 : 1))
  [ -n "$port" ] || port=$(ib_free_port)
  # Its own directory: a replica's full sync writes an RDB file there, which a later
  # redis-server started in the same directory would load.
  mkdir -p "$IB_TMP/$name.dir"
  ib_spawn "$name" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$IB_TMP/$name.dir" "$@"
  ib_wait_redis "$port" "${IB_PID[$name]}" || rc=$?
  case $rc in
  0) echo "$port" >"$IB_TMP/$name.port" ;;
  1) ib_fail "$name (redis-server) exited before answering" ;;
  *) ib_fail "$name (redis-server) did not answer within 10 s" ;;
  esac
}

ib_ibrain() {
  local name=$1
  shift
  ib_spawn "$name" "$IB_IBRAIN_BIN" --listen 127.0.0.1:0 --port-file @PORTFILE "$@"
  local port
  port=$(ib_wait_port "$name")
  ib_wait_http "http://127.0.0.1:$port/health"
}

# ib_metric URL NAME{LABELS}: the value of one sample on a /metrics page (empty if absent).
ib_metric() {
  curl -s "$1" | awk -v m="$2" '$1 == m {print $2}'
}

# ib_metric_sum URL REGEX: the sum of the series whose line matches REGEX (awk ERE), 0 if none.
ib_metric_sum() {
  curl -s "$1" | awk -v re="$2" '$0 ~ re {n += $2} END {print n + 0}'
}

# ib_wait_snapshot BASE_URL VERSION: waits (5 s) until the ibrain at BASE_URL applied
# routing snapshot VERSION.
ib_wait_snapshot() {
  local i
  for ((i = 0; i < 100; i++)); do
    [ "$(ib_metric "$1/metrics" ibrain_snapshot_version)" = "$2" ] && return 0
    sleep 0.05
  done
  ib_fail "snapshot version $2 not applied (at $(ib_metric "$1/metrics" ibrain_snapshot_version))"
}

ib_stop() {
  local name=$1 sig=${2:-TERM} pid=${IB_PID[$1]} rc=0 i
  kill -"$sig" -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    # still there after 5 s: every thread's stack, for the slow stop's post-mortem
    if ((i == 50)) && command -v gdb >/dev/null; then
      timeout 30 gdb -p "$pid" -batch -ex "thread apply all bt" >"$IB_TMP/$name.stacks" 2>&1 || true
    fi
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  unset "IB_PID[$name]"
  ib__crash_check "$name" "$rc"
  return "$rc"
}

# wait_until SECS WHAT 'COND': until the shell condition holds (evaluated every 0.2 s), or fail.
wait_until() {
  local secs=$1 what=$2 i
  for ((i = 0; i < secs * 5; i++)); do eval "$3" && return 0; sleep 0.2; done
  ib_fail "$what: not within ${secs}s"
}

# ib_expect_eq WHAT GOT WANT
ib_expect_eq() {
  [ "$2" = "$3" ] || ib_fail "$1: got '$2', want '$3'"
}

# ib_json FILE EXPR: evaluates a python expression over the JSON document in FILE (as d).
ib_json() {
  /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
