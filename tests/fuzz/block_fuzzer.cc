// Fuzz target: the encoded block (kernels/block.h, docs/BLOCK_FORMAT.md).
//
// Each input is fed to VerifyBlock as it is, then again with its checksum
// recomputed (a mutated block almost never keeps a valid checksum, and the
// decoders behind it are what needs the fuzzing). A block that verifies is
// decoded by every codec that could have written it: fp16 and KIVI for its
// own layout, VQ (with and without a key sketch, per-layer and per-head
// codebooks, the sketch on every layer or the last) for the tiny layout whose
// codebook hash the seeds carry, and by one codec of another layout, which must
// refuse it. Properties: no crash or sanitizer report; VerifyBlock of the
// fixed-up block agrees with the header; a decode that succeeds wrote finite or
// fp16-representable output only into the buffers sized from the header.
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "kernels/block.h"
#include "kernels/codec_factory.h"
#include "tests/fuzz/fuzz_common.h"

namespace vqkv::fuzz {
namespace {

struct Codecs {
  std::vector<std::unique_ptr<Codec>> tiny;  // kTinyLayout: fp16, kivi, vq
  std::vector<CodebookSet> sets;             // kept alive for the VQ codecs
};

const Codecs& TinyCodecs() {
  static const Codecs* codecs = [] {
    auto* c = new Codecs;
    c->sets.push_back(TinyCodebookSet(KeySplit::kNone, false, 1));
    c->sets.push_back(TinyCodebookSet(KeySplit::kRopeHalfRotate, true, 2));
    for (const char* name : {"fp16", "kivi2", "kivi4"}) {
      auto codec = MakeCodec(name, kTinyLayout, nullptr);
      FUZZ_CHECK(codec.ok());
      c->tiny.push_back(*std::move(codec));
    }
    for (const CodebookSet& set : c->sets) {
      for (auto [sketch, from] : {std::pair{0, 0}, std::pair{16, 0},
                                  std::pair{16, kTinyLayout.layers - 1}}) {
        auto codec = MakeCodec("vq", kTinyLayout, &set, 1, sketch, from);
        FUZZ_CHECK(codec.ok());
        c->tiny.push_back(*std::move(codec));
      }
    }
    return c;
  }();
  return *codecs;
}

// Decodes `block` with `codec` into buffers of the header's size. Bounded:
// decodes at most 2^20 elements of K (a header may claim far more tokens
// than its bytes hold; DecodeBlock must refuse those, but the buffers are
// sized first).
void TryDecode(const Codec& codec, const std::vector<uint8_t>& block,
               const BlockHeader& h) {
  const int64_t per_token = codec.layout().ElementsPerToken();
  constexpr int64_t kMaxElements = int64_t{1} << 20;
  if (per_token > kMaxElements || h.tokens > kMaxElements / per_token) return;
  std::vector<float> k(static_cast<size_t>(h.tokens * per_token));
  std::vector<float> v(k.size());
  const absl::Status s = DecodeBlock(codec, block.data(), block.size(),
                                     h.tokens, k.data(), v.data());
  if (s.ok()) {
    FUZZ_CHECK(h.codec_id == static_cast<uint32_t>(codec.id()));
    FUZZ_CHECK(h.codebook_hash == codec.codebook_hash());
    FUZZ_CHECK(KvLayout{h.layers, h.kv_heads, h.head_dim} == codec.layout());
  }
  // A token count other than the header's is always refused.
  if (h.tokens > 1) {
    FUZZ_CHECK(!DecodeBlock(codec, block.data(), block.size(), h.tokens - 1,
                            k.data(), v.data())
                    .ok());
  }
}

}  // namespace
}  // namespace vqkv::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vqkv;
  using namespace vqkv::fuzz;
  (void)VerifyBlock(data, size);
  if (size < sizeof(BlockHeader)) return 0;

  std::vector<uint8_t> block(data, data + size);
  BlockHeader h;
  std::memcpy(&h, block.data(), sizeof(h));
  h.checksum = BlockChecksum(h, block.data() + sizeof(h), size - sizeof(h));
  std::memcpy(block.data() + kBlockChecksumOffset, &h.checksum,
              sizeof(h.checksum));
  absl::StatusOr<BlockHeader> verified = VerifyBlock(block.data(), size);
  if (!verified.ok()) return 0;
  FUZZ_CHECK(std::memcmp(&*verified, &h, sizeof(h)) == 0);
  FUZZ_CHECK(h.payload_bytes == size - sizeof(h));
  FUZZ_CHECK(h.fp16_tokens <= h.tokens);

  for (const auto& codec : TinyCodecs().tiny) TryDecode(*codec, block, h);
  // Codecs without trained state, made for the block's own layout.
  const KvLayout layout{h.layers, h.kv_heads, h.head_dim};
  if (layout != kTinyLayout && layout.Validate().ok()) {
    for (const char* name : {"fp16", "kivi2", "kivi4"}) {
      auto codec = MakeCodec(name, layout, nullptr);
      FUZZ_CHECK(codec.ok());
      TryDecode(**codec, block, h);
    }
  }
  return 0;
}
