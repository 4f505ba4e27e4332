# Shared by the perf/ scripts (sourced): a scratch directory and cleanup, ports, the
# fixed-response backend, the POST body. Sourcing it sets $tmp and the array pids
# (processes stopped, and $tmp removed, on exit), and gives the port and CPU helpers of
# tests/lib/proc.sh (ib_free_port, ib_wait_port_file, ib_wait_tcp, ib_cpu_ticks).

IB_PROC_HELPERS_ONLY=1 source "$(dirname "${BASH_SOURCE[0]}")/../tests/lib/proc.sh"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# wait_port PORT: waits until 127.0.0.1:PORT accepts, or exits the script.
wait_port() {
  ib_wait_tcp "$1" && return 0
  echo "port $1 never opened" >&2
  exit 1
}

# start_redis: a redis-server on a free loopback port (no persistence, in $tmp); sets $rport.
start_redis() {
  rport=$(ib_free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
  pids+=($!)
  wait_port "$rport"
}

# write_post_lua: the ~2 KB chat-completions POST, as $tmp/post.lua for wrk; sets $body.
write_post_lua() {
  body=$(/usr/bin/python3 -c '
import json
msg = "You are a helpful assistant. " * 20
q = "Summarise the following text in one sentence: " + "lorem ipsum dolor sit amet " * 45
print(json.dumps({"model": "demo", "max_tokens": 16, "messages": [{"role": "system", "content": msg}, {"role": "user", "content": q}]}))')
  /usr/bin/python3 - "$body" >"$tmp/post.lua" <<'PY'
import json, sys
print('wrk.method = "POST"')
print('wrk.headers["Content-Type"] = "application/json"')
print('wrk.body = %s' % json.dumps(sys.argv[1]))
PY
}

# start_backend CPU: nginx answering a fixed chat completion on a free port, pinned to CPU;
# sets $bport.
start_backend() {
  local resp='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"demo","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":512,"completion_tokens":1,"total_tokens":513}}'
  bport=$(ib_free_port)
  mkdir -p "$tmp/backend"
  cat >"$tmp/backend/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $tmp/backend/nginx.pid; error_log $tmp/backend/error.log;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000; client_body_buffer_size 64k;
  server { listen 127.0.0.1:$bport reuseport; location / { default_type application/json; return 200 '$resp'; } }
}
CONF
  taskset -c "$1" nginx -p "$tmp/backend" -c "$tmp/backend/nginx.conf" -e "$tmp/backend/error.log" &
  pids+=($!)
  wait_port "$bport"
}
