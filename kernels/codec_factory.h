// Building a codec by name: the one place that maps "fp16", "kivi2",
// "kivi4" and "vq" (with a codebook set) to a vqkv::Codec, for the command
// line, the benchmarks and the client library.
//
// Thread safety: pure functions.
#ifndef VQKV_KERNELS_CODEC_FACTORY_H_
#define VQKV_KERNELS_CODEC_FACTORY_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/codebook_set.h"
#include "kernels/codec.h"

namespace vqkv {

// The names MakeCodec accepts, for help texts: "fp16, kivi2, kivi4, vq".
const char* CodecNames();

// A codec named `name` for `layout`. "vq" needs `codebooks` (a complete set
// made for `layout`), encoding with beam width `beam_width` and a key sketch
// of `key_sketch_bits` on layers `key_sketch_first_layer`.. (VqConfig); the
// others ignore all four.
// Errors: kInvalidArgument for an unknown name, a missing set, or a set made
// for another layout (the message gives both shapes); the codecs' Create
// errors.
absl::StatusOr<std::unique_ptr<Codec>> MakeCodec(
    std::string_view name, const KvLayout& layout, const CodebookSet* codebooks,
    int beam_width = 1, int key_sketch_bits = 0,
    int key_sketch_first_layer = 0);

}  // namespace vqkv

#endif  // VQKV_KERNELS_CODEC_FACTORY_H_
