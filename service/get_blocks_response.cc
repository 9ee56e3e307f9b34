#include "service/get_blocks_response.h"

#include <memory>
#include <utility>

#include "base/coding.h"

namespace vqkv::service {
namespace {

// Field keys of vqkv.v1.GetBlocksResponse and BlockData (proto/vqkv/v1/
// kvcache.proto): (field number << 3) | wire type.
constexpr uint8_t kVarint = 0, kLengthDelimited = 2;
constexpr char Key(int field, uint8_t wire_type) {
  return static_cast<char>((field << 3) | wire_type);
}
constexpr char kBlocksKey = Key(1, kLengthDelimited);  // blocks
constexpr char kFoundKey = Key(2, kVarint);            // found
constexpr char kIndexKey = Key(1, kVarint);            // BlockData.index
constexpr char kCodeKey = Key(2, kVarint);             // BlockData.code
constexpr char kDataKey = Key(3, kLengthDelimited);    // BlockData.data

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// An int32 field's varint: negative values are sign-extended to 64 bits.
uint64_t Int32Varint(int32_t v) {
  return static_cast<uint64_t>(static_cast<int64_t>(v));
}

// The slice's reference to the stored block, dropped when gRPC is done
// with the slice.
void UnrefBlock(void* ref) { delete static_cast<storage::SharedBytes*>(ref); }

}  // namespace

void GetBlocksResponseWriter::AppendEntryHeader(uint32_t index, int32_t code,
                                                uint64_t data_size) {
  size_t body = 0;
  if (index != 0) body += 1 + VarintSize(index);
  if (code != 0) body += 1 + VarintSize(Int32Varint(code));
  if (data_size != 0) body += 1 + VarintSize(data_size) + data_size;
  run_.push_back(kBlocksKey);
  base::PutVarint64(&run_, body);
  if (index != 0) {
    run_.push_back(kIndexKey);
    base::PutVarint64(&run_, index);
  }
  if (code != 0) {
    run_.push_back(kCodeKey);
    base::PutVarint64(&run_, Int32Varint(code));
  }
  if (data_size != 0) {
    run_.push_back(kDataKey);
    base::PutVarint64(&run_, data_size);
  }
  ++entries_;
}

void GetBlocksResponseWriter::AddBlock(uint32_t index,
                                       const storage::SharedBytes& block) {
  AppendEntryHeader(index, 0, block->size());
  ++found_;
  if (block->size() < kCopyBelow) {
    run_.append(*block);
    return;
  }
  FlushRun();
  auto* ref = new storage::SharedBytes(block);
  // gRPC never writes through a slice it sends; the cast only fits its
  // constructor's signature.
  slices_.emplace_back(const_cast<char*>((*ref)->data()), (*ref)->size(),
                       &UnrefBlock, ref);
}

void GetBlocksResponseWriter::AddCode(uint32_t index, int32_t code) {
  AppendEntryHeader(index, code, 0);
}

void GetBlocksResponseWriter::FlushRun() {
  if (run_.empty()) return;
  slices_.emplace_back(run_);  // copies
  run_.clear();
}

void GetBlocksResponseWriter::Finish(grpc::ByteBuffer* out) {
  if (found_ != 0) {
    run_.push_back(kFoundKey);
    base::PutVarint64(&run_, found_);
  }
  FlushRun();
  grpc::ByteBuffer message(slices_.data(), slices_.size());
  out->Swap(&message);
  Clear();
}

void GetBlocksResponseWriter::Clear() {
  run_.clear();
  slices_.clear();
  entries_ = 0;
  found_ = 0;
}

}  // namespace vqkv::service
