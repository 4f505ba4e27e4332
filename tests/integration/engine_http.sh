# ib-mock-engine's HTTP surface: success shapes, and every kind of bad request gets an
# OpenAI-style JSON error with the right status while the engine keeps serving.
source "$IB_SRC/tests/lib/proc.sh"

ib_engine e1 --itl-ms 1 --max-model-len 4096 --max-body-bytes 65536 --model demo
base="http://127.0.0.1:$(ib_port e1)"

# post PATH BODY -> "STATUS BODY"
post() { curl -s -o "$IB_TMP/resp" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "$2" "$base$1"; }
expect_error() { # PATH BODY STATUS PARAM
  local code
  code=$(post "$1" "$2")
  ib_expect_eq "status for $2" "$code" "$3"
  ib_json "$IB_TMP/resp" 'd["error"]["message"]' >/dev/null || ib_fail "no error message for $2: $(cat "$IB_TMP/resp")"
  ib_expect_eq "param for $2" "$(ib_json "$IB_TMP/resp" 'd["error"]["param"]')" "$4"
}

# Success, non-streaming: shape and usage.
code=$(post /v1/chat/completions '{"model":"demo","messages":[{"role":"user","content":"hello"}],"max_tokens":5}')
ib_expect_eq "chat status" "$code" 200
ib_expect_eq "object" "$(ib_json "$IB_TMP/resp" 'd["object"]')" chat.completion
ib_expect_eq "completion tokens" "$(ib_json "$IB_TMP/resp" 'd["usage"]["completion_tokens"]')" 5
ib_expect_eq "finish" "$(ib_json "$IB_TMP/resp" 'd["choices"][0]["finish_reason"]')" length
ib_expect_eq "content length" "$(ib_json "$IB_TMP/resp" 'len(d["choices"][0]["message"]["content"])')" 20
code=$(post /v1/completions '{"model":"demo","prompt":"once upon a time"}')
ib_expect_eq "completions status" "$code" 200
ib_expect_eq "default length, stop" "$(ib_json "$IB_TMP/resp" '(d["usage"]["completion_tokens"], d["choices"][0]["finish_reason"])')" "(64, 'stop')"

# Success, streaming: SSE events, role first, usage chunk, [DONE] last.
curl -s -N -H 'Content-Type: application/json' "$base/v1/chat/completions" \
  -d '{"model":"demo","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}],"max_tokens":4}' \
  >"$IB_TMP/sse"
/usr/bin/python3 - "$IB_TMP/sse" <<'PY' || ib_fail "bad SSE stream: $(cat "$IB_TMP/sse")"
import json, sys
events = [e for e in open(sys.argv[1]).read().split("\n\n") if e]
assert all(e.startswith("data: ") for e in events), events
assert events[-1] == "data: [DONE]", events[-1]
chunks = [json.loads(e[6:]) for e in events[:-1]]
content = [c for c in chunks if c["choices"]]
assert len(content) == 4, len(content)
assert content[0]["choices"][0]["delta"]["role"] == "assistant"
assert content[-1]["choices"][0]["finish_reason"] == "length"
assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
assert chunks[-1]["usage"]["completion_tokens"] == 4 and chunks[-1]["choices"] == []
PY

# Bad requests.
expect_error /v1/chat/completions '{"model":"demo","messages":[{"role":"user","content":"x"}' 400 None
expect_error /v1/chat/completions 'garbage' 400 None
expect_error /v1/chat/completions '' 400 None
expect_error /v1/chat/completions '{"model":"demo","messages":[{"role":"user","content":5}]}' 400 'messages[0].content'
expect_error /v1/chat/completions '{"model":"demo","messages":[{"role":"user","content":"x"}],"stream":"yes"}' 400 stream
expect_error /v1/chat/completions '{"model":"demo","messages":[{"role":"user","content":"x"}],"max_tokens":0}' 400 max_tokens
expect_error /v1/chat/completions '{"messages":[{"role":"user","content":"x"}]}' 400 model
expect_error /v1/chat/completions '{"model":"other","messages":[{"role":"user","content":"x"}]}' 404 model
ib_expect_eq "404 code" "$(ib_json "$IB_TMP/resp" 'd["error"]["code"]')" model_not_found
expect_error /v1/completions '{"model":"demo","prompt":"x","max_tokens":5000}' 400 prompt
ib_expect_eq "context code" "$(ib_json "$IB_TMP/resp" 'd["error"]["code"]')" context_length_exceeded
expect_error /v1/nothing '{}' 404 None
code=$(curl -s -o "$IB_TMP/resp" -w '%{http_code}' "$base/v1/chat/completions")
ib_expect_eq "GET on a POST route" "$code" 405
# Oversized body: refused by libh2o's limit (413) before parsing.
head -c 70000 /dev/zero | tr '\0' 'a' >"$IB_TMP/big"
code=$(curl -s -o /dev/null -w '%{http_code}' --data-binary @"$IB_TMP/big" "$base/v1/completions")
ib_expect_eq "oversized body" "$code" 413

# Keep-alive: two requests on one connection.
n=$(curl -s -v "$base/health" "$base/health" 2>&1 | grep -c 'Re-using existing connection' || true)
ib_expect_eq "connection reuse" "$n" 1

# Still serving, and the errors were counted.
code=$(post /v1/chat/completions '{"model":"demo","messages":[{"role":"user","content":"still there?"}],"max_tokens":1}')
ib_expect_eq "after bad input" "$code" 200
# (into a file first: grep -q exits at the match, and under pipefail curl's SIGPIPE would fail)
curl -s "$base/metrics" >"$IB_TMP/metrics"
grep -q 'ib_engine_http_requests_total{route="/v1/chat/completions",status="404"} 1' "$IB_TMP/metrics" ||
  ib_fail "404 not counted: $(grep http_requests "$IB_TMP/metrics")"
ib_stop e1 || ib_fail "engine exited with $?"
echo "engine_http: ok"
