#!/usr/bin/env python3
"""Clients for the resource-bound runs of perf/bounds.sh (standard library only).

  bounds.py idle PORT N READY_FILE
      Opens N keep-alive connections to 127.0.0.1:PORT, from source addresses 127.0.0.2,
      127.0.0.3, ... (about 28,000 ephemeral ports each), each sending GET /health and
      reading its answer, then keeps them all open and idle. Prints how many were served
      and what the others got, writes READY_FILE, and holds them until SIGTERM.

  bounds.py pin PORT N HOLD_S
      N clients that each send a 4 MB request body but its last byte and wait, for HOLD_S
      seconds: what ibrain buffers for them grows with N. Then reads what each was told
      (a 503, or nothing yet) and closes.

  bounds.py loris PORT N SECONDS
      N connections that each send one byte of a request head every second, for SECONDS;
      a connection the server closes (its 408) is opened again. Prints how many 408s came
      back and how many connections were made.
"""
import os
import selectors
import signal
import socket
import sys
import time


def source(i):
    return "127.0.0.%d" % (2 + i // 25000)


def connect_many(port, n, first=0):
    socks = []
    for i in range(first, first + n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((source(i), 0))
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    return socks


def idle(port, n, ready_file):
    port, n = int(port), int(n)
    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    sel = selectors.DefaultSelector()
    state, outcome, pending = {}, {}, 0

    def settle(timeout):
        nonlocal pending
        for key, ev in sel.select(timeout=timeout):
            s = key.fileobj
            err = 0
            try:
                if ev & selectors.EVENT_WRITE:
                    s.send(req)
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                b = s.recv(4096)
            except OSError as e:
                b, err = None, e.errno
            if b:
                state[s] += b
                if b"\r\n\r\n" not in state[s]:
                    continue
                kind = state[s].split(b" ", 2)[1].decode()
            else:
                kind = "closed" if b == b"" else "error %s" % os.strerror(err)
            outcome[kind] = outcome.get(kind, 0) + 1
            sel.unregister(s)
            pending -= 1

    # In batches of 500, each sent its request as soon as it is connected: binding source
    # ports gets slower as they fill, and a connection that waited past the server's
    # header timeout would be closed (rightly) before its request.
    socks = []
    for first in range(0, n, 500):
        batch = connect_many(port, min(500, n - first), first)
        for s in batch:
            sel.register(s, selectors.EVENT_WRITE)
            state[s] = b""
        socks += batch
        pending += len(batch)
        settle(0)
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        settle(1)
    served = outcome.get("200", 0)
    print("idle: %d connections, %d served and kept open; %s" % (n, served, ", ".join(
        "%s x%d" % kv for kv in sorted(outcome.items()) if kv[0] != "200") or "no other outcome"), flush=True)
    with open(ready_file, "w") as f:
        f.write("%d\n" % served)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])


def loris(port, n, seconds):
    port, n, seconds = int(port), int(n), float(seconds)
    socks = connect_many(port, n)
    made, closed_408, closed = n, 0, 0
    head = b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 100000
    pos = {s: 0 for s in socks}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        for i, s in enumerate(list(pos)):
            try:
                s.send(head[pos[s]:pos[s] + 1])
                pos[s] += 1
                continue
            except (BlockingIOError, InterruptedError):
                continue  # still connecting, or the buffer is full: next second
            except OSError:
                pass
            try:
                got = s.recv(4096)
            except OSError:
                got = b""
            closed_408 += got.startswith(b"HTTP/1.1 408")
            closed += 1
            del pos[s]
            s.close()
            t = connect_many(port, 1, made)[0]
            pos[t] = 0
            made += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    print("loris: %d connections trickling for %.0f s: %d made, %d closed by the server (%d with a 408)" % (
        n, seconds, made, closed, closed_408), flush=True)


def pin(port, n, hold):
    """N clients that each send an 8 MB request body but its last byte, then wait: what
    ibrain holds for them is theirs to bound."""
    port, n, hold = int(port), int(n), float(hold)
    size = 4000000
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % size)
    body = b"x" * (size - 1)
    socks, sent = [], {}
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        socks.append(s)
        sent[s] = 0
    data = head + body
    end = time.monotonic() + hold
    active = set(socks)
    while active and time.monotonic() < end:
        progress = False
        for s in list(active):
            try:
                k = s.send(memoryview(data)[sent[s]:sent[s] + 262144])
                sent[s] += k
                progress = progress or k > 0
                if sent[s] == len(data):
                    active.discard(s)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                active.discard(s)  # closed by the server (its 503)
        if not progress:
            time.sleep(0.05)
    time.sleep(max(0.0, end - time.monotonic()))
    seen = {}
    held = sum(sent.values())
    for s in socks:
        s.setblocking(True)
        s.settimeout(2)
        try:
            got = s.recv(64)
            status = got.split(b" ", 2)[1].decode() if got else "no answer yet"
        except socket.timeout:
            status = "no answer yet"
        except OSError:
            status = "reset"
        seen[status] = seen.get(status, 0) + 1
        s.close()
    print("pin: %d clients sending 4 MB bodies (all but the last byte), %.0f MB sent in %.0f s: %s" % (
        n, held / 1e6, hold, ", ".join("%s x%d" % kv for kv in sorted(seen.items()))), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "idle":
        idle(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "pin":
        pin(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "loris":
        loris(*sys.argv[2:])
    else:
        sys.exit(__doc__)
