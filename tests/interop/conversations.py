"""Replays N multi-turn conversations through ibrain, turn by turn, and reports which
replica served each turn and why (X-IB-Replica, X-IB-Route with X-IB-Debug: 1).

usage: conversations.py PORT MODEL CONVERSATIONS TURNS   -> JSON on stdout
"""
import http.client
import json
import random
import sys

port, model, n, turns = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(7)


def words(k):
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5)) for _ in range(k))


system = "You are a careful assistant. " + words(60)
out = []
for c in range(n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    messages = [{"role": "system", "content": system}]
    served = []
    for t in range(turns):
        messages.append({"role": "user", "content": "Conversation %d, question %d: %s" % (c, t, words(120))})
        body = json.dumps({"model": model, "messages": messages, "max_tokens": 8})
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json", "X-IB-Debug": "1"})
        r = conn.getresponse()
        data = json.loads(r.read())
        if r.status != 200:
            sys.exit("HTTP %d: %s" % (r.status, data))
        route = dict(kv.split("=", 1) for kv in r.getheader("X-IB-Route", "").split())
        served.append({"replica": r.getheader("X-IB-Replica"), "reason": route.get("reason"),
                       "matched": route.get("matched"), "cached": data["usage"]["prompt_tokens_details"]["cached_tokens"],
                       "prompt_tokens": data["usage"]["prompt_tokens"]})
        messages.append({"role": "assistant", "content": data["choices"][0]["message"]["content"]})
    out.append(served)
print(json.dumps(out))
