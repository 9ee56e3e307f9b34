#include "model/gguf.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/fp16.h"
#include "tests/unit/model/gguf_writer.h"

namespace vqkv::model {
namespace {

using testing::GgufWriter;

std::string Half(float f) {
  std::string s;
  GgufWriter::Put<uint16_t>(&s, FloatToHalfRef(f));
  return s;
}

// Q4_1 block: d = 0.25, m = -1; element j < 16 has nibble j (low half of
// byte j), element 16 + j has nibble 15 - j (high half).
std::string Q41Block(float d, float m) {
  std::string s = Half(d) + Half(m);
  for (int j = 0; j < 16; ++j) {
    s.push_back(static_cast<char>(j | ((15 - j) << 4)));
  }
  return s;
}
float Q41Expected(float d, float m, int i) {
  const int q = i < 16 ? i : 15 - (i - 16);
  return d * q + m;
}

std::string Q80Block(float d) {
  std::string s = Half(d);
  for (int j = 0; j < 32; ++j) s.push_back(static_cast<char>(j - 16));
  return s;
}

std::string Q40Block(float d) {
  std::string s = Half(d);
  for (int j = 0; j < 16; ++j) {
    s.push_back(static_cast<char>(j | ((15 - j) << 4)));
  }
  return s;
}

// A file with one metadata key of every type and one tensor of every
// supported element type.
std::string BuildFull(uint64_t alignment) {
  GgufWriter w;
  w.AddScalar<uint8_t>("t.u8", 0, 200);
  w.AddScalar<int8_t>("t.i8", 1, -5);
  w.AddScalar<uint16_t>("t.u16", 2, 60000);
  w.AddScalar<int16_t>("t.i16", 3, -300);
  w.AddScalar<uint32_t>("t.u32", 4, 4000000000u);
  w.AddScalar<int32_t>("t.i32", 5, -7);
  w.AddScalar<float>("t.f32", 6, 1.5f);
  w.AddScalar<uint8_t>("t.bool", 7, 1);
  w.AddString("t.str", "h\xc3\xa9llo");
  w.AddScalar<uint64_t>("t.u64", 10, uint64_t{1} << 40);
  w.AddScalar<int64_t>("t.i64", 11, -(int64_t{1} << 40));
  w.AddScalar<double>("t.f64", 12, 2.25);
  w.AddArray<int32_t>("t.arr_i32", 5, {3, -1, 4});
  w.AddStringArray("t.arr_str", {"a", "", "c d"});
  {  // array of two arrays of u8
    std::string val;
    GgufWriter::Put<uint32_t>(&val, 9);
    GgufWriter::Put<uint64_t>(&val, 2);
    for (int i = 0; i < 2; ++i) {
      GgufWriter::Put<uint32_t>(&val, 0);
      GgufWriter::Put<uint64_t>(&val, 1);
      GgufWriter::Put<uint8_t>(&val, static_cast<uint8_t>(10 + i));
    }
    w.AddRaw("t.nested", 9, val);
  }
  w.AddScalar<uint32_t>("general.alignment", 4,
                        static_cast<uint32_t>(alignment));

  std::string f32;
  for (int i = 0; i < 6; ++i) GgufWriter::Put<float>(&f32, 0.5f * i - 1.0f);
  w.AddTensor("f32", {3, 2}, 0, f32);
  w.AddTensor("f16", {4}, 1,
              Half(1.0f) + Half(-2.0f) + Half(0.5f) + Half(65504.0f));
  w.AddTensor("q8_0", {32}, 8, Q80Block(0.5f));
  w.AddTensor("q4_1", {32, 2}, 3,
              Q41Block(0.25f, -1.0f) + Q41Block(2.0f, 3.0f));
  w.AddTensor("q4_0", {32}, 2, Q40Block(0.5f));
  return w.Build(alignment);
}

TEST(GgufTest, ReadsEveryMetadataType) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f =
      GgufFile::FromBytes(BuildFull(64));
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 64u);
  EXPECT_EQ(g.data_offset() % 64, 0u);
  EXPECT_EQ(*g.GetUint("t.u8"), 200u);
  EXPECT_EQ(*g.GetInt("t.i8"), -5);
  EXPECT_EQ(*g.GetUint("t.u16"), 60000u);
  EXPECT_EQ(*g.GetInt("t.i16"), -300);
  EXPECT_EQ(*g.GetUint("t.u32"), 4000000000u);
  EXPECT_EQ(*g.GetInt("t.i32"), -7);
  EXPECT_EQ(*g.GetFloat("t.f32"), 1.5);
  EXPECT_EQ(*g.GetBool("t.bool"), true);
  EXPECT_EQ(*g.GetString("t.str"), "h\xc3\xa9llo");
  EXPECT_EQ(*g.GetUint("t.u64"), uint64_t{1} << 40);
  EXPECT_EQ(*g.GetInt("t.i64"), -(int64_t{1} << 40));
  EXPECT_EQ(*g.GetFloat("t.f64"), 2.25);
  EXPECT_EQ(*g.GetIntArray("t.arr_i32"), (std::vector<int64_t>{3, -1, 4}));
  EXPECT_EQ(*g.GetStringArray("t.arr_str"),
            (std::vector<std::string>{"a", "", "c d"}));
  const GgufValue* nested = g.Find("t.nested");
  ASSERT_NE(nested, nullptr);
  const auto& outer = std::get<GgufArray>(nested->value);
  ASSERT_EQ(outer.items.size(), 2u);
  EXPECT_EQ(std::get<uint8_t>(
                std::get<GgufArray>(outer.items[1].value).items[0].value),
            11);

  // Type mismatches and absent keys are errors, not crashes.
  EXPECT_EQ(g.GetUint("t.i8").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(g.GetString("t.u8").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(g.GetStringArray("t.arr_i32").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(g.GetUint("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(GgufTest, DequantizesEveryTensorType) {
  for (uint64_t alignment : {32u, 64u}) {
    absl::StatusOr<std::unique_ptr<GgufFile>> f =
        GgufFile::FromBytes(BuildFull(alignment));
    ASSERT_TRUE(f.ok()) << f.status();
    const GgufFile& g = **f;
    ASSERT_EQ(g.tensors().size(), 5u);
    EXPECT_EQ(g.FindTensor("q4_1")->ne, (std::vector<int64_t>{32, 2}));

    std::vector<float> v = *g.ReadTensorF32("f32");
    ASSERT_EQ(v.size(), 6u);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(v[i], 0.5f * i - 1.0f);

    v = *g.ReadTensorF32("f16");
    EXPECT_EQ(v, (std::vector<float>{1.0f, -2.0f, 0.5f, 65504.0f}));

    v = *g.ReadTensorF32("q8_0");
    ASSERT_EQ(v.size(), 32u);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(v[i], 0.5f * (i - 16)) << i;

    v = *g.ReadTensorF32("q4_1");
    ASSERT_EQ(v.size(), 64u);
    for (int i = 0; i < 32; ++i) {
      EXPECT_EQ(v[i], Q41Expected(0.25f, -1.0f, i)) << i;
      EXPECT_EQ(v[32 + i], Q41Expected(2.0f, 3.0f, i)) << i;
    }

    v = *g.ReadTensorF32("q4_0");
    for (int i = 0; i < 32; ++i) {
      const int q = i < 16 ? i : 15 - (i - 16);
      EXPECT_EQ(v[i], 0.5f * (q - 8)) << i;
    }
    EXPECT_EQ(g.ReadTensorF32("missing").status().code(),
              absl::StatusCode::kNotFound);
  }
}

TEST(GgufTest, UnsupportedTensorTypeIsUnimplemented) {
  GgufWriter w;
  w.AddTensor("q4_k", {256}, 12, std::string(144, '\0'));
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(w.Build());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->ReadTensorF32("q4_k").status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST(GgufTest, BadMagicAndVersion) {
  std::string bytes = BuildFull(32);
  std::string bad = bytes;
  bad[0] = 'X';
  EXPECT_EQ(GgufFile::FromBytes(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GgufFile::FromBytes("GG").status().code(),
            absl::StatusCode::kInvalidArgument);
  GgufWriter w;
  EXPECT_EQ(GgufFile::FromBytes(w.Build(32, 4)).status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(GgufFile::FromBytes(w.Build(32, 1)).status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST(GgufTest, EveryTruncationIsDataLoss) {
  const std::string bytes = BuildFull(32);
  for (size_t len = 4; len < bytes.size(); ++len) {
    absl::StatusOr<std::unique_ptr<GgufFile>> f =
        GgufFile::FromBytes(std::string_view(bytes).substr(0, len));
    ASSERT_FALSE(f.ok()) << "prefix of " << len << " bytes parsed";
    EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss)
        << len << ": " << f.status();
  }
}

TEST(GgufTest, CorruptBytesNeverCrash) {
  const std::string bytes = BuildFull(32);
  // Overwrite each header byte with values that make huge counts, lengths,
  // types and dimensions; every result must be a status, not a crash or a
  // huge allocation.
  for (size_t i = 4; i < bytes.size(); ++i) {
    for (char c : {'\xff', '\x7f', '\x09'}) {
      std::string bad = bytes;
      bad[i] = c;
      absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(bad);
      if (f.ok()) {
        for (const GgufTensorInfo& t : (*f)->tensors()) {
          (void)(*f)->ReadTensorF32(t.name);
        }
      }
    }
  }
}

TEST(GgufTest, OpenFromDisk) {
  EXPECT_EQ(
      GgufFile::Open(::testing::TempDir() + "/no_such.gguf").status().code(),
      absl::StatusCode::kNotFound);
  const std::string path = ::testing::TempDir() + "/gguf_test_full.gguf";
  const std::string bytes = BuildFull(32);
  {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->ReadTensorF32("f16"),
            (std::vector<float>{1.0f, -2.0f, 0.5f, 65504.0f}));
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() - 7));
  }
  EXPECT_EQ(GgufFile::Open(path).status().code(), absl::StatusCode::kDataLoss);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace vqkv::model
