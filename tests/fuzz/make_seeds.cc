// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/)
// from the real encoders, so every seed is a valid input that reaches deep
// into its parser. Usage: fuzz_make_seeds <tests/fuzz/corpus>. Deterministic:
// rerunning it rewrites the same bytes (the checked-in corpora are its
// output plus what libFuzzer runs added).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "client/peer/peer_message.h"
#include "kernels/block.h"
#include "kernels/codec_factory.h"
#include "storage/keys.h"
#include "tests/fuzz/fuzz_common.h"
#include "vqkv/v1/kvcache.pb.h"

namespace vqkv::fuzz {
namespace {

std::filesystem::path root;

void Write(const std::string& target, const std::string& name,
           const std::string& bytes) {
  const std::filesystem::path dir = root / target;
  std::filesystem::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  FUZZ_CHECK(out.good());
}

// Keys/values of `tokens` tokens of kTinyLayout, deterministic.
std::vector<float> Kv(int64_t tokens, uint64_t seed) {
  std::vector<float> x(static_cast<size_t>(tokens) *
                       kTinyLayout.ElementsPerToken());
  uint64_t s = seed;
  for (float& f : x) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    f = static_cast<float>((s >> 40) % 2001) / 500.0f - 2.0f;
  }
  return x;
}

std::string Block(const Codec& codec, int64_t tokens, int64_t fp16_tokens,
                  uint64_t seed) {
  const std::vector<float> k = Kv(tokens, seed), v = Kv(tokens, seed + 1);
  BlockOptions o;
  o.fp16_tokens = fp16_tokens;
  o.keys_post_rope = true;
  auto block = EncodeBlock(codec, k.data(), v.data(), tokens, o);
  FUZZ_CHECK(block.ok());
  return std::string(block->begin(), block->end());
}

v1::Namespace Ns(const Codec& codec, int block_tokens) {
  v1::Namespace ns;
  ns.set_model_id("fuzz-model");
  ns.set_weight_revision("r1");
  ns.set_codec(codec.Descriptor());
  ns.set_codec_id(static_cast<uint32_t>(codec.id()));
  ns.set_codebook_hash(codec.codebook_hash());
  ns.set_block_tokens(static_cast<uint32_t>(block_tokens));
  ns.set_layers(kTinyLayout.layers);
  ns.set_kv_heads(kTinyLayout.kv_heads);
  ns.set_head_dim(kTinyLayout.head_dim);
  ns.set_dtype(v1::DTYPE_FLOAT16);
  return ns;
}

std::string Hash(uint64_t i) {
  return storage::BlockHash::FromPair(0xf022, i).ToString();
}

// A grpc_service_fuzzer input: method index, caller, request bytes.
std::string Call(int method, int caller, const std::string& request) {
  return std::string(1, static_cast<char>(method)) +
         std::string(1, static_cast<char>(caller)) + request;
}

// A fitted 2-stage key refinement for a kTinyLayout set (key bits 4).
ResidualQuantizer TinyRefinement(uint64_t seed) {
  RvqParams p;
  p.dim = kTinyLayout.head_dim;
  p.stages = 2;
  p.bits = 4;
  p.seed = seed;
  p.training.kmeans_iterations = 2;
  const std::vector<float> x = testing::KeyLikeVectors(64, p.dim, seed);
  ResidualQuantizer q;
  FUZZ_CHECK(q.Fit(p, x.data(), 64).ok());
  return q;
}

void Run() {
  const CodebookSet set1 = TinyCodebookSet(KeySplit::kNone, false, 1);
  const CodebookSet set2 = TinyCodebookSet(KeySplit::kRopeHalfRotate, true, 2);
  auto fp16 = MakeCodec("fp16", kTinyLayout, nullptr);
  auto kivi2 = MakeCodec("kivi2", kTinyLayout, nullptr);
  auto kivi4 = MakeCodec("kivi4", kTinyLayout, nullptr);
  auto vq1 = MakeCodec("vq", kTinyLayout, &set1, 1, 0);
  auto vq1s = MakeCodec("vq", kTinyLayout, &set1, 1, 16);
  auto vq1s1 = MakeCodec("vq", kTinyLayout, &set1, 1, 16, 1);
  auto vq2 = MakeCodec("vq", kTinyLayout, &set2, 1, 0);
  FUZZ_CHECK(fp16.ok() && kivi2.ok() && kivi4.ok() && vq1.ok() && vq1s.ok() &&
             vq1s1.ok() && vq2.ok());

  // block_fuzzer
  Write("block", "fp16-4tok", Block(**fp16, 4, 0, 1));
  Write("block", "kivi2-4tok-fp16sink", Block(**kivi2, 4, 1, 2));
  Write("block", "kivi4-3tok", Block(**kivi4, 3, 0, 3));
  Write("block", "vq-4tok", Block(**vq1, 4, 0, 4));
  Write("block", "vq-sketch-4tok-fp16sink", Block(**vq1s, 4, 2, 5));
  Write("block", "vq-perhead-split-2tok", Block(**vq2, 2, 0, 6));
  Write("block", "vq-sketch-last-layer-3tok", Block(**vq1s1, 3, 0, 7));

  // codebook_set_fuzzer
  Write("codebook_set", "none-per-layer", *set1.Serialize());
  Write("codebook_set", "rope-per-head", *set2.Serialize());
  CodebookSet set3 = set2;  // version 3: key gains
  FUZZ_CHECK(set3.SetKeyGain(1, 0, 1.25f,
                             std::vector<float>(kTinyLayout.head_dim, 0.5f))
                 .ok());
  Write("codebook_set", "key-gains", *set3.Serialize());
  // Version 4: pre-RoPE keys with the model's RoPE, with and without gains.
  CodebookSet set4 = TinyCodebookSet(KeySplit::kRopeHalfRotate, true, 3, false);
  FUZZ_CHECK(set4.SetKeyRope(RopeSpec{10000.0, 6, RopePairs::kHalf}).ok());
  Write("codebook_set", "key-rope", *set4.Serialize());
  FUZZ_CHECK(set4.SetKeyGain(0, 1, 1.5f,
                             std::vector<float>(kTinyLayout.head_dim, -0.25f))
                 .ok());
  Write("codebook_set", "key-rope-gains", *set4.Serialize());
  // Version 5: a key refinement of layer 1 (2 stages), with and without a
  // key RoPE.
  CodebookSet set5 = set1;
  FUZZ_CHECK(set5.SetKeyRefinement(1, 0, TinyRefinement(5)).ok());
  Write("codebook_set", "key-refine", *set5.Serialize());
  for (int s = 0; s < set4.config().slots_per_layer(); ++s) {
    FUZZ_CHECK(set4.SetKeyRefinement(0, s, TinyRefinement(6 + s)).ok());
  }
  Write("codebook_set", "key-rope-gains-refine", *set4.Serialize());
  auto vq5 = MakeCodec("vq", kTinyLayout, &set5, 1, 16);
  FUZZ_CHECK(vq5.ok());
  Write("block", "vq-sketch-refine-3tok", Block(**vq5, 3, 0, 8));

  // gguf_fuzzer
  Write("gguf", "tokenizer-smollm", TokenizerGguf("smollm"));
  Write("gguf", "tokenizer-gpt2", TokenizerGguf("gpt2"));
  Write("gguf", "tiny-llama", TinyLlamaGguf());

  // tokenizer_fuzzer: mode byte, then text.
  Write("tokenizer", "plain",
        std::string("\x00", 1) + "Hello world's 123  end\n\nx they'RE ...'ll ");
  Write("tokenizer", "special",
        "\x01<|im_start|>user\nthe answer<|im_end|>\n<|endoftext|>");
  Write("tokenizer", "utf8-gpt2",
        "\x02"
        "caf\xc3\xa9 \xce\xb1\xce\xb2!? \t x \xe2\x80\x94 \xf0\x9f\x98\x80");
  Write("tokenizer", "invalid-utf8", "\x00\xff\xfe\xc3 \x80\x80 12\r\n");

  // config_fuzzer: parser byte, then text.
  Write("config", "yaml-full",
        std::string("\x00", 1) +
            "listen: 127.0.0.1:50051\n"
            "data_dir: /tmp/vqkv-data\n"
            "memory_bytes: 64MiB\n"
            "disk_bytes: 1GiB\n"
            "durability: sync\n"
            "write_policy: write_through\n"
            "metrics_listen: 127.0.0.1:9090\n"
            "max_message_bytes: 16MiB\n"
            "ttl_seconds: 3600\n"
            "workers: 4\n"
            "shutdown_grace_seconds: 2.5\n"
            "max_lease_ms: 5000\n"
            "admin_tenant: ops\n"
            "max_stream_blocks: 1024\n"
            "max_queued_work: 128\n"
            "max_concurrent_streams: 50\n"
            "grpc_memory_bytes: 1GB\n"
            "tenants:\n"
            "  default_quota_bytes: 10MiB\n"
            "  quotas:\n"
            "    alpha: 1.5GiB\n"
            "    beta: 1000\n");
  Write("config", "yaml-bad-key", std::string("\x00", 1) + "memory: 1\n");
  Write("config", "tokens-lines",
        "\x01# comment\nBearer token-alpha-123 alpha\n"
        "token-alpha-123 alpha\ntoken-beta-4567 beta\n");
  Write("config", "tokens-yaml",
        "\x01tenants:\n  alpha: token-alpha-123\n  beta: [token-b1-0000, "
        "token-b2-0000]\n");
  Write("config", "bytes",
        "\x02"
        "1.5GiB");
  Write("config", "bytes-plain",
        "\x02"
        "18446744073709551615");

  // grpc_service_fuzzer: one input per method, in kMethods order (file names
  // sort in that order, so the replay stores before it reads).
  const v1::Namespace ns = Ns(**fp16, 4);
  const int kAlpha = 1, kOps = 2;
  {
    v1::LookupRequest r;
    *r.mutable_namespace_() = ns;
    r.add_hashes(Hash(0));
    r.add_hashes(Hash(1));
    r.set_lease_ms(100);
    Write("grpc_service", "00-lookup", Call(0, kAlpha, r.SerializeAsString()));
  }
  {
    v1::PutBlocksRequest r;
    *r.mutable_namespace_() = ns;
    for (int i = 0; i < 2; ++i) {
      v1::Block* b = r.add_blocks();
      b->set_hash(Hash(i));
      b->set_data(Block(**fp16, 4, 0, 10 + i));
      b->set_chain_position(i);
    }
    Write("grpc_service", "01-put-blocks",
          Call(1, kAlpha, r.SerializeAsString()));
  }
  {
    v1::GetBlocksRequest r;
    *r.mutable_namespace_() = ns;
    r.add_hashes(Hash(0));
    r.add_hashes(Hash(7));
    Write("grpc_service", "02-get-blocks",
          Call(2, kAlpha, r.SerializeAsString()));
    // The same request twice, then one for an absent block, over one
    // GetBlocksSession (method 2 with the caller byte's top bit set).
    v1::GetBlocksRequest absent = r;
    absent.clear_hashes();
    absent.add_hashes(Hash(999));
    Write("grpc_service", "14-get-blocks-session",
          Call(2, 0x80 | kAlpha,
               r.SerializeAsString() + "|MSG|" + r.SerializeAsString() +
                   "|MSG|" + absent.SerializeAsString()));
  }
  {
    const v1::Namespace vns = Ns(**vq1, 4);
    std::string stream;
    for (int i = 0; i < 2; ++i) {
      v1::PutBlocksRequest r;
      *r.mutable_namespace_() = vns;
      v1::Block* b = r.add_blocks();
      b->set_hash(Hash(100 + i));
      b->set_data(Block(**vq1, 4, 0, 20 + i));
      b->set_chain_position(i);
      if (i > 0) stream += "|MSG|";
      stream += r.SerializeAsString();
    }
    Write("grpc_service", "03-put-blocks-stream", Call(3, kAlpha, stream));
    // Again once 05 registered the codebook set: now the blocks are stored.
    Write("grpc_service", "13-put-blocks-stream-registered",
          Call(3, kAlpha, stream));
  }
  {
    v1::GetBlocksRequest r;
    *r.mutable_namespace_() = ns;
    r.add_hashes(Hash(0));
    r.add_hashes(Hash(1));
    r.set_max_response_bytes(1024);
    Write("grpc_service", "04-get-blocks-stream",
          Call(4, kAlpha, r.SerializeAsString()));
  }
  const std::string cb = *set1.Serialize();
  const uint64_t cb_hash = *set1.Hash();
  {
    v1::PutCodebooksRequest r;
    v1::Codebook* c = r.add_codebooks();
    c->set_hash(cb_hash);
    c->set_data(cb);
    Write("grpc_service", "05-put-codebooks",
          Call(5, kAlpha, r.SerializeAsString()));
  }
  {
    v1::GetCodebooksRequest r;
    r.add_hashes(cb_hash);
    r.add_hashes(12345);
    Write("grpc_service", "06-get-codebooks",
          Call(6, kAlpha, r.SerializeAsString()));
  }
  {
    const std::string cb2 = *set2.Serialize();
    const uint64_t h2 = *set2.Hash();
    std::string stream;
    const size_t half = cb2.size() / 2;
    for (int i = 0; i < 2; ++i) {
      v1::CodebookChunk c;
      c.set_hash(h2);
      c.set_total_bytes(cb2.size());
      c.set_offset(i == 0 ? 0 : half);
      c.set_data(i == 0 ? cb2.substr(0, half) : cb2.substr(half));
      if (i > 0) stream += "|MSG|";
      stream += c.SerializeAsString();
    }
    Write("grpc_service", "07-put-codebook-stream", Call(7, kOps, stream));
  }
  {
    v1::GetCodebookStreamRequest r;
    r.set_hash(cb_hash);
    Write("grpc_service", "08-get-codebook-stream",
          Call(8, kAlpha, r.SerializeAsString()));
  }
  {
    v1::DeleteRequest r;
    *r.mutable_namespace_() = ns;
    r.add_hashes(Hash(1));
    Write("grpc_service", "09-delete", Call(9, kAlpha, r.SerializeAsString()));
  }
  Write("grpc_service", "10-stats", Call(10, kOps, ""));
  {
    v1::PutRendezvousRequest r;
    r.set_key("nccl-id/job-1");
    r.set_value(std::string(128, '\x5a'));
    r.set_ttl_ms(60000);
    Write("grpc_service", "11-put-rendezvous",
          Call(11, kAlpha, r.SerializeAsString()));
  }
  {
    v1::GetRendezvousRequest r;
    r.set_key("nccl-id/job-1");
    Write("grpc_service", "12-get-rendezvous",
          Call(12, kAlpha, r.SerializeAsString()));
  }

  // peer_message_fuzzer: the handoff's messages (client/peer/).
  {
    std::vector<client::EncodedBlock> blocks(2);
    for (int i = 0; i < 2; ++i) {
      blocks[i].hash = storage::BlockHash::FromPair(0, 10 + i);
      blocks[i].data = std::string(96 + i, static_cast<char>('a' + i));
    }
    auto sealed = client::EncodePeerMessages("req-1", 0, blocks, 1 << 20);
    FUZZ_CHECK(sealed.ok() && sealed->size() == 1);
    Write("peer_message", "blocks", (*sealed)[0]);
    auto empty = client::EncodePeerMessages("req-1", 3, {}, 1 << 20);
    FUZZ_CHECK(empty.ok() && empty->size() == 1);
    Write("peer_message", "empty-last", (*empty)[0]);
    for (auto& b : blocks) b.data.resize(64);
    auto headers =
        client::EncodePeerMessages("req-2", 1, blocks, 1 << 20, {true, false});
    FUZZ_CHECK(headers.ok() && headers->size() == 1);
    Write("peer_message", "header-only", (*headers)[0]);
    std::vector<client::PeerSlice> slices(2);
    for (int i = 0; i < 2; ++i) {
      slices[i].hash = storage::BlockHash::FromPair(0, 20 + i);
      slices[i].chain_position = static_cast<uint32_t>(1 + i);
      slices[i].payload_bytes = 16;
      slices[i].key_offset = 4;
      slices[i].key = "kkkk";
      slices[i].value_offset = 12;
      slices[i].value = "vvvv";
    }
    auto layer = client::EncodePeerLayerMessages("req-2", 1, slices, 1 << 20);
    FUZZ_CHECK(layer.ok() && layer->size() == 1);
    Write("peer_message", "layer", (*layer)[0]);
  }
}

}  // namespace
}  // namespace vqkv::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  vqkv::fuzz::root = argv[1];
  vqkv::fuzz::Run();
  return 0;
}
