"""Publishes bad KV-event messages (pyzmq, msgpack) on ENDPOINT for SECONDS, as a broken or
hostile publisher would: wrong frame counts, a foreign topic, bad sequence frames, bytes
that are not msgpack, truncated and absurdly large msgpack, batches that are not batches,
unknown event types, token counts that do not match, and well-formed events whose block
size is not the workload's.

usage: kv_garbage.py ENDPOINT TOPIC SECONDS
"""
import sys
import time

import msgpack
import zmq

ep, topic, seconds = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
pub = zmq.Context().socket(zmq.PUB)
pub.bind(ep)
seq = 0


def send(frames):
    pub.send_multipart(frames)


def batch(events):
    global seq
    send([topic, seq.to_bytes(8, "big"), msgpack.packb([time.time(), events, 0])])
    seq += 1


good = msgpack.packb([time.time(), [["AllBlocksCleared"]], 0])
end = time.time() + seconds
while time.time() < end:
    send([topic, (0).to_bytes(8, "big")])                                  # two frames
    send([topic, (0).to_bytes(8, "big"), good, b"extra"])                  # four frames
    send([b"other-topic", (0).to_bytes(8, "big"), good])                   # foreign topic
    send([topic, b"\x01", good])                                           # sequence frame of 1 byte
    send([topic, seq.to_bytes(8, "big"), b"\xc1\xc1 not msgpack"])         # garbage
    send([topic, seq.to_bytes(8, "big"), good[:-3]])                       # truncated
    send([topic, seq.to_bytes(8, "big"), b"\xdd\xff\xff\xff\xff"])         # 4 G elements claimed
    send([topic, seq.to_bytes(8, "big"), msgpack.packb({"not": "a batch"})])
    send([topic, seq.to_bytes(8, "big"), msgpack.packb([time.time(), [None] * 70000, 0])])  # too many events
    batch([["BlockTeleported", [1]], ["BlockStored", [1, 2], None, [1, 2, 3], 2, None, "GPU"]])
    batch([["BlockStored", [7], None, list(range(32)), 32, None, "GPU"]])  # the workload's blocks are 16
    time.sleep(0.02)
