"""Checks an engine's KV-cache events against vLLM's schema with code nobody here wrote:
pyzmq for the sockets, msgpack for the payloads, hashlib / pickle / cbor2 / xxhash for the
block hashes (vllm/v1/core/kv_cache_utils.py, vllm/distributed/kv_events.py).

usage: kv_events_check.py HTTP_BASE EVENTS_EP REPLAY_EP TOPIC ENCODING ALGO INT_HASHES SEED

Sends prompts that fill and overflow the engine's cache, then resets it, and checks:
  - every PUB message is [topic, 8-byte big-endian sequence from 0 with no gap, payload];
  - each payload is EventBatch [ts, events, data_parallel_rank], each event a tagged array
    or a map with "type", field by field, as ENCODING says;
  - every block hash is vLLM's hash_fn((parent or NONE_HASH, tuple(tokens), None)) with
    NONE_HASH = hash_fn(SEED), recomputed here, carried as its low 64 bits or its digest;
  - replaying the events gives exactly the blocks the engine's /debug/kv_blocks lists;
  - the replay socket returns the same payloads from any start, then (-1, b"").
"""
import hashlib
import json
import pickle
import sys
import time
import urllib.request

import cbor2
import msgpack
import xxhash
import zmq

base, ev_ep, rp_ep, topic, encoding, algo, int_hashes, seed = sys.argv[1:9]
int_hashes = int_hashes == "1"
topic = topic.encode()


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def hash_fn(obj):
    if algo == "sha256":
        return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()
    if algo == "sha256_cbor":
        return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()
    if algo == "xxhash":
        return xxhash.xxh3_128_digest(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    if algo == "xxhash_cbor":
        return xxhash.xxh3_128_digest(cbor2.dumps(obj, canonical=True))
    fail("unknown algo " + algo)


NONE_HASH = hash_fn(seed)


def external(digest):
    """vLLM's maybe_convert_block_hash."""
    return int.from_bytes(digest, "big") & ((1 << 64) - 1) if int_hashes else digest


def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode() if body is not None else b"",
                                 {"Content-Type": "application/json"}, method="POST")
    return urllib.request.urlopen(req, timeout=10).read()


ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.connect(ev_ep)
sub.setsockopt(zmq.SUBSCRIBE, topic)
# the slow joiner: probes until one batch gets through (earlier ones are lost to this
# subscriber, as to any; the replay socket has them)
deadline = time.time() + 10
n = 0
while True:
    n += 1
    post("/v1/chat/completions", {"model": "mock", "messages": [{"role": "user", "content": f"probe {n} " * 20}],
                                  "max_tokens": 1})
    if sub.poll(300):
        break
    if time.time() > deadline:
        fail("no event batch reached the subscriber")

messages = []


def drain(timeout_ms=300):
    while sub.poll(timeout_ms):
        messages.append(sub.recv_multipart())


drain()
words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
for i in range(40):
    # shared system prompts and distinct tails: hits, new blocks with parents, evictions
    system = " ".join(words[: 4 + i % 5]) * 3
    user = " ".join(words[(i * 7) % len(words):]) + f" question {i}"
    post("/v1/chat/completions", {"model": "mock", "max_tokens": 2,
                                  "messages": [{"role": "system", "content": system},
                                               {"role": "user", "content": user}]})
drain()
blocks_page = json.loads(urllib.request.urlopen(base + "/debug/kv_blocks", timeout=10).read())
post("/reset_prefix_cache", None)
drain()
post("/v1/chat/completions", {"model": "mock", "messages": [{"role": "user", "content": "after the reset " * 8}],
                              "max_tokens": 1})
drain()

# ---- frames and sequences: live, then the whole history through the replay socket ----
live = []
for m in messages:
    if len(m) != 3:
        fail(f"a message has {len(m)} frames, not [topic, seq, payload]")
    t, seqb, payload = m
    if t != topic or len(seqb) != 8:
        fail(f"bad topic {t!r} or sequence frame {seqb!r}")
    seq = int.from_bytes(seqb, "big")
    if live and seq != live[-1][0] + 1:
        fail(f"sequence gap: {live[-1][0]} then {seq}")
    live.append((seq, payload))

dealer = ctx.socket(zmq.DEALER)
dealer.connect(rp_ep)


def replay(start):
    dealer.send_multipart([b"", start.to_bytes(8, "big")])
    got = []
    while True:
        if not dealer.poll(5000):
            fail(f"replay from {start}: no answer")
        f = dealer.recv_multipart()
        if len(f) != 3 or f[0] != b"":
            fail(f"replay frame {f!r} is not ['', seq, payload]")
        s = int.from_bytes(f[1], "big", signed=True)
        if s == -1:
            if f[2] != b"":
                fail("the end marker has a payload")
            return got
        got.append((s, f[2]))


batches = replay(0)
if [s for s, _ in batches] != list(range(len(batches))):
    fail("the history does not run 0, 1, 2, ... from the engine's start")
if batches[-len(live):] != live:
    fail("live batches differ from the replayed ones")
for start in (len(batches) // 2, len(batches) + 5):
    if replay(start) != batches[start:]:
        fail(f"replay from {start} differs")

MAP_FIELDS = {
    "BlockStored": {"type", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
                    "lora_name"},
    "BlockRemoved": {"type", "block_hashes", "medium"},
    "AllBlocksCleared": {"type"},
}


def as_event(e):
    """Field dict of one event, checked against the encoding's layout."""
    if encoding == "array":
        if not isinstance(e, list) or not e or not isinstance(e[0], str):
            fail(f"event {e!r} is not a tagged array")
        names = {"BlockStored": ["block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium"],
                 "BlockRemoved": ["block_hashes", "medium"], "AllBlocksCleared": []}.get(e[0])
        if names is None or len(e) != len(names) + 1:
            fail(f"event {e!r}: unknown tag or wrong arity")
        return dict(zip(["type"] + names, e))
    if not isinstance(e, dict) or set(e) != MAP_FIELDS.get(e.get("type"), set()):
        fail(f"event {e!r} is not a map with vLLM's fields")
    return e


def check_hash(h):
    if int_hashes:
        if not isinstance(h, int) or not 0 <= h < 1 << 64:
            fail(f"block hash {h!r} is not a uint64")
    elif not isinstance(h, bytes) or len(h) != len(NONE_HASH):
        fail(f"block hash {h!r} is not a {len(NONE_HASH)}-byte digest")


digests = {}   # external hash -> full digest, recomputed here
held = set()
counts = {"BlockStored": 0, "BlockRemoved": 0, "AllBlocksCleared": 0}
for seq, payload in batches:
    b = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if not isinstance(b, list) or len(b) != 3 or not isinstance(b[0], float) or not isinstance(b[1], list) \
            or b[2] != 0:
        fail(f"batch {seq} is not [ts, events, data_parallel_rank=0]: {b!r}")
    if abs(b[0] - time.time()) > 120:
        fail(f"batch {seq} ts {b[0]} is not the wall clock")
    for raw in b[1]:
        e = as_event(raw)
        counts[e["type"]] += 1
        if e["type"] == "BlockStored":
            hs, parent, toks, bs = e["block_hashes"], e["parent_block_hash"], e["token_ids"], e["block_size"]
            if e["lora_id"] is not None or e["medium"] != "GPU" or e.get("lora_name", None) is not None:
                fail(f"BlockStored lora/medium fields: {e!r}")
            if not hs or not isinstance(bs, int) or bs <= 0 or len(toks) != len(hs) * bs:
                fail(f"BlockStored sizes: {len(hs)} hashes x {bs} != {len(toks)} tokens")
            if not all(isinstance(t, int) and 0 <= t < 1 << 31 for t in toks):
                fail("token ids are not ints")
            if parent is None:
                prev = NONE_HASH
            else:
                check_hash(parent)
                if parent not in digests:
                    fail(f"parent {parent!r} was never stored")
                prev = digests[parent]
            for i, h in enumerate(hs):
                check_hash(h)
                d = hash_fn((prev, tuple(toks[i * bs:(i + 1) * bs]), None))
                if external(d) != h:
                    fail(f"block hash {h!r} != vLLM's {external(d)!r} ({algo}, seed {seed!r})")
                digests[h] = d
                held.add(h)
                prev = d
        elif e["type"] == "BlockRemoved":
            if e["medium"] != "GPU" or len(e["block_hashes"]) != 1:
                fail(f"BlockRemoved: {e!r}")
            for h in e["block_hashes"]:
                check_hash(h)
                if h not in held:
                    fail(f"removed {h!r}, which was not held")
                held.discard(h)
        else:
            held.clear()
# the page was read before the reset: rebuild the state up to the last batch before it
held_before_reset = set()
for seq, payload in batches:
    b = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    events = [as_event(raw) for raw in b[1]]
    if any(e["type"] == "AllBlocksCleared" for e in events):
        break
    for e in events:
        if e["type"] == "BlockStored":
            held_before_reset.update(e["block_hashes"])
        elif e["type"] == "BlockRemoved":
            held_before_reset.difference_update(e["block_hashes"])
page = set(x["block_hash"] if int_hashes else bytes.fromhex(x["block_hash"]) for x in blocks_page["blocks"])
if page != held_before_reset:
    fail(f"events say {len(held_before_reset)} blocks, the engine holds {len(page)} "
         f"({len(page ^ held_before_reset)} differ)")
if counts["BlockRemoved"] == 0 or counts["AllBlocksCleared"] != 1 or counts["BlockStored"] < 10:
    fail(f"the run did not exercise every event: {counts}")
if len(held) == 0:
    fail("nothing stored after the reset")

print(f"ok: {len(batches)} batches, {counts}, {len(page)} blocks held before the reset match the events; "
      f"hashes are vLLM's {algo} ({'int64' if int_hashes else 'digest'}); replay from 3 starts identical")
