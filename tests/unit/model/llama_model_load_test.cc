#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "tests/unit/model/gguf_writer.h"

namespace vqkv::model {
namespace {

using testing::GgufWriter;

constexpr uint32_t kU32 = 4;
constexpr uint32_t kGgmlF32 = 0;

std::string Zeros(int n) { return std::string(static_cast<size_t>(n) * 4, 0); }

// A llama header with embd 4, one head, and the three global tensors; the
// layers' tensors are added by the caller.
GgufWriter Header(uint32_t block_count) {
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddScalar<uint32_t>("llama.block_count", kU32, block_count);
  w.AddScalar<uint32_t>("llama.embedding_length", kU32, 4);
  w.AddScalar<uint32_t>("llama.feed_forward_length", kU32, 4);
  w.AddScalar<uint32_t>("llama.attention.head_count", kU32, 1);
  w.AddTensor("token_embd.weight", {4, 8}, kGgmlF32, Zeros(32));
  w.AddTensor("output_norm.weight", {4}, kGgmlF32, Zeros(4));
  return w;
}

void AddLayer(GgufWriter* w, int l) {
  const std::string p = "blk." + std::to_string(l) + ".";
  for (const char* norm : {"attn_norm.weight", "ffn_norm.weight"}) {
    w->AddTensor(p + norm, {4}, kGgmlF32, Zeros(4));
  }
  for (const char* mat :
       {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
        "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"}) {
    w->AddTensor(p + mat, {4, 4}, kGgmlF32, Zeros(16));
  }
}

absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const GgufWriter& w) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(w.Build());
  if (!f.ok()) return f.status();
  return LlamaModel::FromGguf(**f);
}

TEST(LlamaModelLoadTest, LoadsATinyModel) {
  GgufWriter w = Header(2);
  AddLayer(&w, 0);
  AddLayer(&w, 1);
  absl::StatusOr<std::unique_ptr<LlamaModel>> m = Load(w);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->config().layers, 2);
  EXPECT_EQ((*m)->config().vocab, 8);
}

// Found by gguf_fuzzer: a block count the file's tensors cannot back used
// to size the layer table first (16M layers: 2.3 GB) and fail afterwards.
TEST(LlamaModelLoadTest, BlockCountBeyondTheTensorsFailsBeforeAllocating) {
  for (uint32_t layers : {21u, 16000000u}) {  // the file has 20 tensors
    GgufWriter w = Header(layers);
    AddLayer(&w, 0);
    AddLayer(&w, 1);
    absl::StatusOr<std::unique_ptr<LlamaModel>> m = Load(w);
    ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(m.status().message().find("llama.block_count"), std::string::npos)
        << m.status();
  }
  // Within that bound, the first missing tensor is named.
  GgufWriter w = Header(3);
  AddLayer(&w, 0);
  AddLayer(&w, 1);
  absl::StatusOr<std::unique_ptr<LlamaModel>> m = Load(w);
  ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("blk.2.attn_norm.weight"),
            std::string::npos)
      << m.status();
}

TEST(LlamaModelLoadTest, AMissingLayerTensorIsNamed) {
  GgufWriter w = Header(1);
  AddLayer(&w, 0);
  w.AddTensor("spare.weight", {4}, kGgmlF32, Zeros(4));
  absl::StatusOr<std::unique_ptr<LlamaModel>> ok = Load(w);
  ASSERT_TRUE(ok.ok()) << ok.status();
  GgufWriter broken = Header(1);
  // Nine tensors, but not blk.0's attn_q.
  for (int i = 0; i < 9; ++i) {
    // StrCat: GCC 12 at -O3 warns (-Wrestrict, a false positive) on
    // "x" + std::to_string(i).
    broken.AddTensor(absl::StrCat("x", i), {4}, kGgmlF32, Zeros(4));
  }
  absl::StatusOr<std::unique_ptr<LlamaModel>> m = Load(broken);
  ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("blk.0."), std::string::npos)
      << m.status();
}

}  // namespace
}  // namespace vqkv::model
