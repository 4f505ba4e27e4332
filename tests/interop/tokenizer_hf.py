#!/usr/bin/env python3
"""The second reference: Hugging Face `tokenizers` (the Rust library the peer routers and
vLLM use, pinned in tools/requirements-interop.txt), in the line formats of ib-tokenize.

    tokenizer_hf.py TOKENIZER_JSON hex-lines < hex lines   -> one line of ids per line
    tokenizer_hf.py TOKENIZER_JSON bench FILE... [--seconds S] -> JSON per file: MB/s, tokens/s

Hex lines are decoded with errors='replace' (invalid UTF-8 becomes U+FFFD), as the
JavaScript reference's TextDecoder does. Special tokens are not added, as in ib-tokenize.
bench runs one thread (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false; encode() of one
string does not fan out anyway), re-encoding each file for S seconds after one warm-up
encode, like tokenizer_ref.cjs and `ib-tokenize bench`.
"""
import json
import os
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Tokenizer  # noqa: E402  (after the thread settings)


def main(argv):
    if len(argv) < 3 or argv[2] not in ("hex-lines", "bench"):
        print("usage: tokenizer_hf.py TOKENIZER_JSON hex-lines|bench [FILE...] [--seconds S]", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(argv[1])
    load_ms = (time.perf_counter() - t0) * 1e3

    def encode(s):
        return tok.encode(s, add_special_tokens=False).ids

    if argv[2] == "hex-lines":
        out = []
        for line in sys.stdin.read().splitlines():
            text = bytes.fromhex(line).decode("utf-8", errors="replace")
            out.append(" ".join(map(str, encode(text))))
        sys.stdout.write("".join(x + "\n" for x in out))
        return 0

    seconds, files, rest = 2.0, [], argv[3:]
    i = 0
    while i < len(rest):
        if rest[i] == "--seconds":
            seconds = float(rest[i + 1])
            i += 2
        else:
            files.append(rest[i])
            i += 1
    print(json.dumps({"load_ms": round(load_ms)}), file=sys.stderr)
    for f in files:
        with open(f, "rb") as fh:
            raw = fh.read()
        text = raw.decode("utf-8")
        encode(text)  # warm-up, as the other implementations do
        rounds = tokens = n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            n = len(encode(text))
            tokens += n
            rounds += 1
            if time.perf_counter() >= deadline:
                break
        s = time.perf_counter() - start
        print(json.dumps({"file": f, "bytes": len(raw), "tokens": n, "rounds": rounds,
                          "mb_per_s": round(len(raw) * rounds / s / 1e6, 2), "tokens_per_s": round(tokens / s)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
