// A GetBlocksResponse written straight into gRPC slices, for GetBlocks and
// GetBlocksStream: the hot path of a cache hit.
//
// Why: through the generated message, a block's bytes were copied twice on
// the way out (the stored block into the BlockData's string, that string
// into gRPC's buffer). Here each found block larger than kCopyBelow bytes
// becomes a slice that references the stored block itself (the slice keeps
// a reference to its storage::SharedBytes), so the socket reads the bytes
// the store holds. Smaller blocks and the entries' framing are copied into
// shared runs of bytes, so a response of many small entries is a few slices.
//
// Wire format: exactly what protobuf writes for the same v1::GetBlocksResponse
// (fields in number order, proto3 defaults omitted: index 0, code 0 and
// empty data are not written; `found` last), so clients parse it with the
// generated code; get_blocks_response_test checks the bytes against
// SerializeAsString.
//
// Thread safety: one writer belongs to one response, used by one thread at a
// time. The ByteBuffer it produces may outlive it and the store's entry.
#ifndef VQKV_SERVICE_GET_BLOCKS_RESPONSE_H_
#define VQKV_SERVICE_GET_BLOCKS_RESPONSE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "storage/keys.h"

namespace vqkv::service {

class GetBlocksResponseWriter {
 public:
  // Blocks smaller than this are copied into the framing run rather than
  // referenced: a slice of its own costs an allocation and an iovec entry,
  // more than copying a few hundred bytes.
  static constexpr size_t kCopyBelow = 1024;

  // Appends a BlockData entry {index, code 0, data = *block} and counts it
  // in `found`.
  void AddBlock(uint32_t index, const storage::SharedBytes& block);
  // Appends a BlockData entry {index, code} without data (code != 0).
  void AddCode(uint32_t index, int32_t code);

  // Entries appended since construction or the last Clear.
  size_t entries() const { return entries_; }
  uint32_t found() const { return found_; }

  // Replaces *out with the response (the entries, then `found`) and clears
  // the writer for the next message.
  void Finish(grpc::ByteBuffer* out);
  void Clear();

 private:
  // Appends the varint/tag bytes of one entry's framing to run_.
  void AppendEntryHeader(uint32_t index, int32_t code, uint64_t data_size);
  // Moves run_ into a slice of its own (when not empty).
  void FlushRun();

  std::string run_;  // copied bytes since the last referenced block
  std::vector<grpc::Slice> slices_;
  size_t entries_ = 0;
  uint32_t found_ = 0;
};

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_GET_BLOCKS_RESPONSE_H_
