#!/usr/bin/env python3
"""An independent implementation of vqkv's block hash chain (client/hash.h,
docs/DESIGN.md "Block hash chain") with python3-xxhash, checked against the
golden vectors in hash_golden.txt, which the C++ test (hash_test.cc) checks
too. Exit status 0 when every vector matches.

Usage: hash_reference.py GOLDEN_FILE        (verify)
       hash_reference.py GOLDEN_FILE --write (regenerate; review the diff!)
"""
import struct
import sys

import xxhash

SEED = 0x766B7176  # "vqkv" as a little-endian u32


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def text(s):
    b = s.encode()
    return u32(len(b)) + b


def namespace_id(tenant, ns):
    canonical = (b"vqkv.ns.v1" + text(tenant) + text(ns["model_id"]) +
                 text(ns["weight_revision"]) + text(ns["codec"]) +
                 u32(ns["codec_id"]) + u64(ns["codebook_hash"]) +
                 u32(ns["block_tokens"]) + u32(ns["layers"]) +
                 u32(ns["kv_heads"]) + u32(ns["head_dim"]) + u32(ns["dtype"]))
    return xxhash.xxh3_128(canonical, seed=0).digest()  # big-endian hi, lo


def hash_chain(tokens, salt, ns):
    b = ns["block_tokens"]
    prev = xxhash.xxh3_128(
        b"vqkv.chain.v1" + namespace_id("", ns) + text(salt),
        seed=SEED).digest()
    out = []
    for i in range(len(tokens) // b):
        data = prev + u32(b) + b"".join(u32(t) for t in tokens[i * b:(i + 1) * b])
        prev = xxhash.xxh3_128(data, seed=SEED).digest()
        out.append(prev.hex())
    return out


# The namespace every golden vector uses (SmolLM2-135M's KV layout).
NAMESPACE = dict(model_id="HuggingFaceTB/SmolLM2-135M", weight_revision="q4_1",
                 codec="fp16", codec_id=1, codebook_hash=0, block_tokens=16,
                 layers=30, kv_heads=3, head_dim=64, dtype=1)

# name -> (tokens, salt). Keep in sync with hash_test.cc.
VECTORS = {
    "ramp48": (list(range(48)), ""),
    "ramp48_salted": (list(range(48)), "tenant-a"),
    "ramp40_partial": (list(range(40)), ""),
    "large_ids": ([2**31 - 1, 0, 49151, 1] * 8, ""),
}


def main():
    path = sys.argv[1]
    lines = []
    lines.append("namespace_id " + namespace_id("", NAMESPACE).hex())
    for name, (tokens, salt) in VECTORS.items():
        lines.append(name + " " + ",".join(hash_chain(tokens, salt, NAMESPACE)))
    if "--write" in sys.argv:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return 0
    with open(path) as f:
        golden = f.read().split("\n")
    ok = True
    for line in lines:
        if line not in golden:
            print("MISMATCH:", line)
            ok = False
    print("hash_reference: %d vectors %s" % (len(lines), "match" if ok else "DIFFER"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
