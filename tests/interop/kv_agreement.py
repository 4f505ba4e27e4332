"""ibrain's belief about each replica's KV cache against the engine's actual cache.

usage:
  kv_agreement.py load IBRAIN_PORT N CONCURRENCY SEED     chat requests with shared prefixes
  kv_agreement.py agree IBRAIN_PORT MIN NAME=ENGINE_PORT...   (MIN 0: report only)
        waits until ibrain has applied every batch each engine published (its
        ibrain_kv_event_next_sequence against the engine's published_batches), then compares
        the blocks each engine holds (/debug/kv_blocks) with what ibrain believes it holds
        (/debug/affinity, "set:tag" of each believed entry). Fails unless both
        common/engine and common/ibrain are at least MIN for every replica.
  kv_agreement.py believes IBRAIN_PORT NAME PROMPT_FILE
        prints how many of PROMPT_FILE's blocks (the engine's prefix keys, one hex per line)
        ibrain believes NAME holds
"""
import json
import random
import re
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def get(url):
    return urllib.request.urlopen(url, timeout=10).read()


def chat(port, messages, max_tokens=2):
    body = json.dumps({"model": "mock", "max_tokens": max_tokens, "messages": messages}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
        return r.status, r.headers.get("X-Engine-Id")


WORDS = ("cache prefix router replica engine token block stream latency batch queue event "
         "kernel memory tensor model prompt answer question system user policy load").split()


def load(port, n, conc, seed):
    rnd = random.Random(seed)
    systems = [" ".join(rnd.choice(WORDS) for _ in range(45)) for _ in range(8)]
    jobs = []
    for i in range(n):
        s = systems[rnd.randrange(len(systems))]
        u = f"request {i}: " + " ".join(rnd.choice(WORDS) for _ in range(60))
        jobs.append([{"role": "system", "content": s}, {"role": "user", "content": u}])
    with ThreadPoolExecutor(conc) as ex:
        res = list(ex.map(lambda m: chat(port, m), jobs))
    bad = [r for r in res if r[0] != 200]
    if bad:
        print(f"FAIL: {len(bad)} requests failed: {bad[:3]}")
        sys.exit(1)
    by = {}
    for _, e in res:
        by[e] = by.get(e, 0) + 1
    print(json.dumps(by, sort_keys=True))


def metric(text, name, replica):
    m = re.search(rf'^{name}{{replica="{re.escape(replica)}"}} (\d+)$', text, re.M)
    return int(m.group(1)) if m else None


def fingerprints(keys, mask):
    return {f"{k & mask:x}:{(k >> 40) | 1:x}" for k in keys}


def agree(port, least, pairs):
    deadline = time.time() + 15
    while True:
        text = get(f"http://127.0.0.1:{port}/metrics").decode()
        pages = {n: json.loads(get(f"http://127.0.0.1:{p}/debug/kv_blocks")) for n, p in pairs}
        if all(metric(text, "ibrain_kv_event_next_sequence", n) == pages[n]["published_batches"] for n, _ in pairs):
            break
        if time.time() > deadline:
            print("FAIL: ibrain did not catch up with the engines' batches:",
                  {n: (metric(text, "ibrain_kv_event_next_sequence", n), pages[n]["published_batches"])
                   for n, _ in pairs})
            sys.exit(1)
        time.sleep(0.05)
    aff = {r["name"]: r for r in json.loads(get(f"http://127.0.0.1:{port}/debug/affinity"))["replicas"]}
    out, ok = {}, True
    for n, _ in pairs:
        r = aff[n]
        want = fingerprints([int(b["prefix_key"], 16) for b in pages[n]["blocks"]], r["set_mask"])
        have = set(r["believed"])
        common = len(want & have)
        a = common / len(want) if want else 1.0
        b = common / len(have) if have else 1.0
        facts = set(r["facts"])
        out[n] = {"engine": len(want), "ibrain": len(have), "common": common, "mode": r["mode"],
                  "agreement": round(min(a, b), 4), "facts": len(facts), "facts_held": len(facts & want)}
        ok = ok and min(a, b) >= least and r["mode"] == "precise"
    print(json.dumps(out, sort_keys=True))
    if not ok:
        print(f"FAIL: agreement below {least} or a replica not precise")
        sys.exit(1)


def believes(port, name, keyfile):
    keys = [int(x, 16) for x in open(keyfile).read().split()]
    aff = {r["name"]: r for r in json.loads(get(f"http://127.0.0.1:{port}/debug/affinity"))["replicas"]}
    r = aff[name]
    print(len(fingerprints(keys, r["set_mask"]) & set(r["believed"])))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "load":
        load(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif cmd == "agree":
        agree(int(sys.argv[2]), float(sys.argv[3]), [a.split("=", 1) for a in sys.argv[4:]])
    elif cmd == "believes":
        believes(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"unknown command {cmd}")
