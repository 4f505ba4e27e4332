"""Raw HTTP/1.1 conversations for the proxy tests: things curl will not send.

usage: raw_http.py PORT CASE     (prints what the case checks; exits 1 on a failure)
"""
import socket
import sys
import time

PORT = int(sys.argv[1])
CASE = sys.argv[2]


def conn():
    s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(s, buf=b""):
    """Reads one response (Content-Length or chunked); returns (status, headers, body, rest)."""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise EOFError("closed before the head: %r" % buf)
        buf += d
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    if status == 100:
        return read_response(s, buf)
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n:
            d = s.recv(65536)
            if not d:
                raise EOFError("closed mid-body")
            buf += d
        return status, headers, buf[:n], buf[n:]
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += s.recv(65536)
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            while len(buf) < size + 2:
                d = s.recv(65536)
                if not d:
                    raise EOFError("closed mid-chunk")
                buf += d
            body += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                return status, headers, body, buf
    body = buf
    while True:
        d = s.recv(65536)
        if not d:
            return status, headers, body, b""
        body += d


def chat(max_tokens=2, stream=False, model="mock"):
    body = ('{"model":"%s","messages":[{"role":"user","content":"hi"}],"max_tokens":%d,"stream":%s}'
            % (model, max_tokens, "true" if stream else "false")).encode()
    return body


def post(path, body, extra=b""):
    return (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (path.encode(), len(body), extra)) + body


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)
    print("ok:", what)


if CASE == "pipelining":
    s = conn()
    reqs = post("/v1/chat/completions", chat(2)) + b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n" + \
        post("/v1/completions", b'{"model":"mock","prompt":"x","max_tokens":3}')
    s.sendall(reqs)
    st1, h1, b1, rest = read_response(s)
    st2, h2, b2, rest = read_response(s, rest)
    st3, h3, b3, rest = read_response(s, rest)
    check((st1, st2, st3) == (200, 200, 200), "three pipelined requests answered")
    check(b'"chat.completion"' in b1 and b'"status":"ok"' in b2 and b'"text_completion"' in b3,
          "pipelined responses in request order")
elif CASE == "chunked-body":
    s = conn()
    body = chat(2)
    parts = [body[:10], body[10:25], body[25:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    time.sleep(0.05)
    s.sendall(chunked[:17])
    time.sleep(0.05)
    s.sendall(chunked[17:])
    st, h, b, _ = read_response(s)
    check(st == 200 and b'"completion_tokens":2' in b, "chunked request body forwarded")
elif CASE == "expect-continue":
    s = conn()
    body = chat(1)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
              % len(body))
    interim = s.recv(100)
    check(interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), "100 Continue before the body")
    s.sendall(body)
    st, h, b, _ = read_response(s)
    check(st == 200, "request completed after 100 Continue")
elif CASE == "keepalive":
    s = conn()
    for i in range(5):
        s.sendall(post("/v1/chat/completions", chat(1)))
        st, h, b, _ = read_response(s)
        check(st == 200, "request %d on one connection" % i)
elif CASE.startswith("bad:"):
    # bad:STATUS:ESCAPED-BYTES -> the raw bytes get STATUS and a JSON error, then the
    # connection is closed.
    _, want, raw = CASE.split(":", 2)
    s = conn()
    s.sendall(raw.encode().decode("unicode_escape").encode("latin-1"))
    st, h, b, _ = read_response(s)
    check(st == int(want), "status %s for %r" % (want, raw[:40]))
    check(b'"error"' in b and h.get("content-type") == "application/json", "OpenAI-style JSON error")
elif CASE == "truncated-body":
    s = conn()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"model\":")
    s.shutdown(socket.SHUT_WR)
    rest = s.recv(100)
    check(rest == b"", "connection closed without a response for a truncated body")
elif CASE == "slowloris":
    s = conn()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n")
    t0 = time.time()
    st, h, b, _ = read_response(s)
    check(st == 408, "slow head gets 408 (after %.1f s)" % (time.time() - t0))
elif CASE == "stream-abort":
    # Opens a long stream, reads a little, disappears.
    s = conn()
    s.sendall(post("/v1/chat/completions", chat(2000, stream=True)))
    got = b""
    while got.count(b"data:") < 3:
        got += s.recv(65536)
    s.close()
    check(True, "client left mid-stream")
else:
    print("unknown case", CASE)
    sys.exit(2)
