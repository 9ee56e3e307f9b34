#include "service/get_blocks_response.h"

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "vqkv/v1/kvcache.pb.h"

namespace vqkv::service {
namespace {

storage::SharedBytes Bytes(size_t size, uint8_t seed) {
  std::string s(size, '\0');
  for (size_t i = 0; i < size; ++i) s[i] = static_cast<char>(seed + i * 7);
  return std::make_shared<const std::string>(std::move(s));
}

std::vector<grpc::Slice> Slices(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  return slices;
}

std::string Concat(const grpc::ByteBuffer& buffer) {
  std::string out;
  for (const grpc::Slice& s : Slices(buffer)) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

// Random responses (misses, small and large blocks, index 0, large indices
// and codes, a negative code) come out byte for byte as protobuf writes
// them, and parse back to the same message.
TEST(GetBlocksResponseWriterTest, BytesAreProtobufs) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    GetBlocksResponseWriter writer;
    v1::GetBlocksResponse expected;
    const int n = static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) {
      const uint32_t index = rng() % 4 == 0 ? 0 : rng() % 100000;
      v1::BlockData* d = expected.add_blocks();
      d->set_index(index);
      switch (rng() % 4) {
        case 0: {
          const int32_t code = rng() % 8 == 0 ? -3 : 1 + rng() % 300;
          writer.AddCode(index, code);
          d->set_code(code);
          break;
        }
        case 1: {  // below kCopyBelow: copied into the run
          auto block = Bytes(1 + rng() % 900, static_cast<uint8_t>(i));
          writer.AddBlock(index, block);
          d->set_data(*block);
          expected.set_found(expected.found() + 1);
          break;
        }
        default: {  // referenced
          auto block = Bytes(1024 + rng() % 70000, static_cast<uint8_t>(i));
          writer.AddBlock(index, block);
          d->set_data(*block);
          expected.set_found(expected.found() + 1);
        }
      }
    }
    EXPECT_EQ(writer.entries(), static_cast<size_t>(n));
    grpc::ByteBuffer out;
    writer.Finish(&out);
    const std::string bytes = Concat(out);
    ASSERT_EQ(bytes, expected.SerializeAsString()) << "trial " << trial;
    v1::GetBlocksResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(bytes));
    EXPECT_EQ(parsed.blocks_size(), n);
    EXPECT_EQ(parsed.found(), expected.found());
    EXPECT_EQ(writer.entries(), 0u);  // Finish cleared it
  }
}

// A large block is sent from the stored bytes themselves, and the buffer
// keeps them alive after the store (and the writer) dropped theirs.
TEST(GetBlocksResponseWriterTest, LargeBlocksAreReferencedNotCopied) {
  grpc::ByteBuffer out;
  const void* stored_data = nullptr;
  std::string stored_copy;
  {
    storage::SharedBytes block = Bytes(64 << 10, 3);
    stored_data = block->data();
    stored_copy = *block;
    GetBlocksResponseWriter writer;
    writer.AddCode(0, 5);
    writer.AddBlock(1, block);
    writer.AddBlock(2, Bytes(100, 9));  // small: copied
    writer.Finish(&out);
    EXPECT_EQ(block.use_count(), 2);  // the store's and the slice's
  }
  const std::vector<grpc::Slice> slices = Slices(out);
  ASSERT_EQ(slices.size(), 3u);  // framing, the block, framing + small block
  EXPECT_EQ(static_cast<const void*>(slices[1].begin()), stored_data);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(slices[1].begin()),
                        slices[1].size()),
            stored_copy);
  v1::GetBlocksResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(Concat(out)));
  ASSERT_EQ(parsed.blocks_size(), 3);
  EXPECT_EQ(parsed.blocks(0).code(), 5);
  EXPECT_EQ(parsed.blocks(1).data(), stored_copy);
  EXPECT_EQ(parsed.blocks(2).data().size(), 100u);
  EXPECT_EQ(parsed.found(), 2u);
}

// An empty response (a stream's writer reused, or no entries) is a valid
// empty message.
TEST(GetBlocksResponseWriterTest, EmptyIsAnEmptyMessage) {
  GetBlocksResponseWriter writer;
  grpc::ByteBuffer out;
  writer.Finish(&out);
  EXPECT_EQ(out.Length(), 0u);
  writer.AddCode(4, 8);
  writer.Clear();
  writer.Finish(&out);
  EXPECT_EQ(out.Length(), 0u);
}

}  // namespace
}  // namespace vqkv::service
