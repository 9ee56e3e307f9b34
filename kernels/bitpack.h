// Bit-packing of code indices of any width 1..16.
//
// Packed layout: index i occupies bits [i*bits, (i+1)*bits) of the output
// viewed as one little-endian bit string: bit b lives in byte b/8 at position
// b%8 (LSB first). The last byte is zero-padded. This is the layout of the
// K and V code sections of an encoded block (docs/BLOCK_FORMAT.md).
#ifndef VQKV_KERNELS_BITPACK_H_
#define VQKV_KERNELS_BITPACK_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace vqkv {

// Bytes needed for n indices of `bits` bits each.
constexpr size_t PackedBytes(int64_t n, int bits) {
  return static_cast<size_t>((n * bits + 7) / 8);
}

// Packs n indices, each < 2^bits, into out[0, PackedBytes(n, bits)).
// Errors: kInvalidArgument for bits outside 1..16, a too-small output, or an
// index that does not fit in `bits` bits.
absl::Status PackBits(const uint16_t* indices, int64_t n, int bits,
                      uint8_t* out, size_t out_bytes);

// Inverse of PackBits. Errors: kInvalidArgument for bits outside 1..16 or a
// too-small input.
absl::Status UnpackBits(const uint8_t* in, size_t in_bytes, int64_t n, int bits,
                        uint16_t* indices);

// Scalar reference versions (no validation), one bit at a time; the fast
// versions above are tested against them.
void PackBitsRef(const uint16_t* indices, int64_t n, int bits, uint8_t* out);
void UnpackBitsRef(const uint8_t* in, int64_t n, int bits, uint16_t* indices);

}  // namespace vqkv

#endif  // VQKV_KERNELS_BITPACK_H_
