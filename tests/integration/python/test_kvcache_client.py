#!/usr/bin/python3
"""A Python client of vqkv-server, written against the .proto only.

The message classes and gRPC stubs are generated from
proto/vqkv/v1/kvcache.proto at test time (protoc --python_out plus
grpc_python_plugin). The test starts vqkv-server on a free loopback port with
bearer-token auth and checks the contract from Python: blocks round-trip
bit-exact, Lookup reports the cached prefix, another tenant sees nothing,
streams split large answers, and bad input gets the documented status codes.

Run with Debian's /usr/bin/python3 (python3-grpcio, python3-protobuf).
Encoded blocks are built from docs/BLOCK_FORMAT.md by hand: a 64-byte
little-endian header and an fp16 payload, sealed with XXH3-64, which is taken
from the system libxxhash through ctypes (or the xxhash module if present).
"""
import argparse
import ctypes
import ctypes.util
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

ARGS = None
STUBS = None  # (kvcache_pb2, kvcache_pb2_grpc)
SERVER = None  # (process, port)

LAYERS, KV_HEADS, HEAD_DIM, BLOCK_TOKENS = 2, 2, 8, 16
BLOCK_MAGIC = 0x424B5156
CODEC_FP16 = 1
TOKENS = {"alice": "alice-token-0001", "bob": "bob-token-00002"}


def _xxh3_64():
    try:
        import xxhash  # python3-xxhash, when installed
        return lambda data: xxhash.xxh3_64_intdigest(data)
    except ImportError:
        pass
    name = ctypes.util.find_library("xxhash") or "libxxhash.so.0"
    lib = ctypes.CDLL(name)
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return lambda data: lib.XXH3_64bits(data, len(data))


XXH3_64 = _xxh3_64()


def make_block(seed, tokens=BLOCK_TOKENS, layers=LAYERS, codebook_hash=0):
    """An fp16 block: header (docs/BLOCK_FORMAT.md) + K then V as binary16."""
    rng = random.Random(seed)
    n = tokens * layers * KV_HEADS * HEAD_DIM
    payload = struct.pack("<%de" % (2 * n),
                          *[rng.uniform(-4, 4) for _ in range(2 * n)])
    head = struct.pack("<IHHIIQIIHHHHQQ", BLOCK_MAGIC, 1, 64, CODEC_FP16, 0,
                       codebook_hash, tokens, 0, layers, KV_HEADS, HEAD_DIM,
                       0, len(payload), len(payload))
    assert len(head) == 56
    checksum = XXH3_64(head + payload)
    return head + struct.pack("<Q", checksum) + payload


def block_hash(i, chain=1):
    return struct.pack(">QQ", chain, i)


def generate_stubs(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run([
        ARGS.protoc, "-I", ARGS.proto_dir, "--python_out=" + out_dir,
        "--grpc_python_out=" + out_dir,
        "--plugin=protoc-gen-grpc_python=" + ARGS.grpc_python_plugin,
        "vqkv/v1/kvcache.proto"
    ], check=True)
    sys.path.insert(0, out_dir)
    from vqkv.v1 import kvcache_pb2, kvcache_pb2_grpc
    return kvcache_pb2, kvcache_pb2_grpc


def start_server(work_dir):
    tokens = os.path.join(work_dir, "tokens.txt")
    with open(tokens, "w") as f:
        for tenant, token in TOKENS.items():
            f.write("%s %s\n" % (token, tenant))
    proc = subprocess.Popen([
        ARGS.server, "--listen", "127.0.0.1:0", "--data-dir",
        os.path.join(work_dir, "data"), "--tokens-file", tokens
    ], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if "listening on " in line:
                return proc, int(line.strip().rsplit(":", 1)[1])
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("vqkv-server did not start")


class KVCacheClientTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        import grpc
        cls.grpc = grpc
        cls.pb, cls.pb_grpc = STUBS
        cls.channel = grpc.insecure_channel(
            "127.0.0.1:%d" % SERVER[1],
            options=[("grpc.max_receive_message_length", 256 << 20),
                     ("grpc.max_send_message_length", 256 << 20)])
        grpc.channel_ready_future(cls.channel).result(timeout=30)
        cls.stub = cls.pb_grpc.KVCacheStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()

    def md(self, tenant="alice"):
        return [("authorization", "Bearer " + TOKENS[tenant])]

    def namespace(self, model="py-model", codebook_hash=0):
        return self.pb.Namespace(model_id=model, weight_revision="r1",
                                 codec="fp16", codec_id=CODEC_FP16,
                                 codebook_hash=codebook_hash,
                                 block_tokens=BLOCK_TOKENS, layers=LAYERS,
                                 kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                                 dtype=self.pb.DTYPE_FLOAT16)

    def put(self, ns, blocks, tenant="alice"):
        req = self.pb.PutBlocksRequest(namespace=ns)
        for pos, (h, data) in enumerate(blocks):
            req.blocks.add(hash=h, data=data, chain_position=pos)
        return self.stub.PutBlocks(req, metadata=self.md(tenant), timeout=30)

    def assert_code(self, fn, code, substring=""):
        with self.assertRaises(self.grpc.RpcError) as cm:
            fn()
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        self.assertIn(substring, cm.exception.details())

    def test_round_trip_and_prefix(self):
        ns = self.namespace()
        blocks = [(block_hash(i), make_block(i)) for i in range(6)]
        stored = [blocks[i] for i in (0, 1, 2, 4)]
        resp = self.put(ns, stored)
        self.assertEqual(resp.stored, 4)
        self.assertEqual([r.code for r in resp.results], [0, 0, 0, 0])
        look = self.stub.Lookup(
            self.pb.LookupRequest(namespace=ns,
                                  hashes=[h for h, _ in blocks]),
            metadata=self.md(), timeout=30)
        self.assertEqual(look.prefix_blocks, 3)
        self.assertEqual(list(look.present),
                         [True, True, True, False, True, False])
        got = self.stub.GetBlocks(
            self.pb.GetBlocksRequest(namespace=ns,
                                     hashes=[h for h, _ in blocks]),
            metadata=self.md(), timeout=30)
        self.assertEqual(got.found, 4)
        for i, entry in enumerate(got.blocks):
            self.assertEqual(entry.index, i)
            if i in (0, 1, 2, 4):
                self.assertEqual(entry.code, 0)
                self.assertEqual(entry.data, blocks[i][1])  # bit-exact
            else:
                self.assertEqual(entry.code,
                                 self.grpc.StatusCode.NOT_FOUND.value[0])
        # A duplicate put is reported per block, not as an error.
        again = self.put(ns, stored[:1])
        self.assertEqual(again.results[0].code,
                         self.grpc.StatusCode.ALREADY_EXISTS.value[0])

    def test_stream_get(self):
        ns = self.namespace(model="py-stream")
        blocks = [(block_hash(i, 9), make_block(100 + i)) for i in range(10)]
        self.assertEqual(self.put(ns, blocks).stored, 10)
        req = self.pb.GetBlocksRequest(
            namespace=ns, hashes=[h for h, _ in blocks],
            max_response_bytes=2 * len(blocks[0][1]) + 100)
        seen = []
        messages = 0
        for msg in self.stub.GetBlocksStream(req, metadata=self.md(),
                                             timeout=30):
            messages += 1
            for entry in msg.blocks:
                seen.append(entry.index)
                self.assertEqual(entry.data, blocks[entry.index][1])
        self.assertEqual(seen, list(range(10)))
        self.assertGreaterEqual(messages, 5)

    def test_tenants_are_isolated(self):
        ns = self.namespace(model="py-tenants")
        blocks = [(block_hash(i, 3), make_block(200 + i)) for i in range(3)]
        self.assertEqual(self.put(ns, blocks, tenant="alice").stored, 3)
        look = self.stub.Lookup(
            self.pb.LookupRequest(namespace=ns,
                                  hashes=[h for h, _ in blocks]),
            metadata=self.md("bob"), timeout=30)
        self.assertEqual(look.prefix_blocks, 0)
        got = self.stub.GetBlocks(
            self.pb.GetBlocksRequest(namespace=ns,
                                     hashes=[h for h, _ in blocks]),
            metadata=self.md("bob"), timeout=30)
        self.assertEqual(got.found, 0)
        stats = self.stub.Stats(self.pb.StatsRequest(),
                                metadata=self.md("bob"), timeout=30)
        self.assertEqual(stats.tenant, "bob")

    def test_unauthenticated(self):
        req = self.pb.StatsRequest()
        self.assert_code(lambda: self.stub.Stats(req, timeout=30),
                         self.grpc.StatusCode.UNAUTHENTICATED)
        self.assert_code(
            lambda: self.stub.Stats(
                req, metadata=[("authorization", "Bearer not-a-token")],
                timeout=30), self.grpc.StatusCode.UNAUTHENTICATED)

    def test_bad_input(self):
        ns = self.namespace(model="py-bad")
        good = make_block(300)
        bad_sum = bytearray(good)
        bad_sum[-1] ^= 0xFF
        self.assert_code(lambda: self.put(ns, [(block_hash(0), bytes(bad_sum))]),
                         self.grpc.StatusCode.DATA_LOSS, "checksum")
        self.assert_code(
            lambda: self.put(ns, [(block_hash(0), make_block(1, layers=3))]),
            self.grpc.StatusCode.INVALID_ARGUMENT, "layers")
        self.assert_code(lambda: self.put(ns, [(b"short", good)]),
                         self.grpc.StatusCode.INVALID_ARGUMENT, "16 bytes")
        self.assert_code(lambda: self.put(ns, []),
                         self.grpc.StatusCode.INVALID_ARGUMENT, "empty")
        self.assert_code(
            lambda: self.put(self.namespace(model="py-vq", codebook_hash=77),
                             [(block_hash(0),
                               make_block(2, codebook_hash=77))]),
            self.grpc.StatusCode.FAILED_PRECONDITION, "not registered")
        no_dtype = self.namespace()
        no_dtype.dtype = self.pb.DTYPE_UNSPECIFIED
        self.assert_code(lambda: self.put(no_dtype, [(block_hash(0), good)]),
                         self.grpc.StatusCode.INVALID_ARGUMENT,
                         "namespace.dtype")


def main():
    global ARGS, STUBS, SERVER
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--proto-dir", required=True)
    parser.add_argument("--protoc", default="protoc")
    parser.add_argument("--grpc-python-plugin",
                        default=shutil.which("grpc_python_plugin"))
    ARGS, rest = parser.parse_known_args()
    work = tempfile.mkdtemp(prefix="vqkv-py-")
    try:
        STUBS = generate_stubs(os.path.join(work, "gen"))
        proc, port = start_server(work)
        SERVER = (proc, port)
        try:
            result = unittest.main(argv=[sys.argv[0]] + rest, exit=False)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        ok = result.result.wasSuccessful()
        if code != 0:
            print("vqkv-server exited with %d after SIGTERM" % code)
            ok = False
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
