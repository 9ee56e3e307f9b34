#include "kernels/bitpack.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace vqkv {
namespace {

absl::Status CheckBits(int bits) {
  if (bits < 1 || bits > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("code width must be 1..16 bits, got ", bits));
  }
  return absl::OkStatus();
}

}  // namespace

void PackBitsRef(const uint16_t* indices, int64_t n, int bits, uint8_t* out) {
  std::memset(out, 0, PackedBytes(n, bits));
  int64_t pos = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int b = 0; b < bits; ++b, ++pos) {
      if ((indices[i] >> b) & 1) out[pos >> 3] |= uint8_t(1u << (pos & 7));
    }
  }
}

void UnpackBitsRef(const uint8_t* in, int64_t n, int bits, uint16_t* indices) {
  int64_t pos = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t v = 0;
    for (int b = 0; b < bits; ++b, ++pos) {
      v |= uint32_t((in[pos >> 3] >> (pos & 7)) & 1) << b;
    }
    indices[i] = static_cast<uint16_t>(v);
  }
}

absl::Status PackBits(const uint16_t* indices, int64_t n, int bits,
                      uint8_t* out, size_t out_bytes) {
  if (absl::Status s = CheckBits(bits); !s.ok()) return s;
  const size_t need = PackedBytes(n, bits);
  if (n < 0 || out_bytes < need) {
    return absl::InvalidArgumentError(
        absl::StrCat("pack output too small: ", out_bytes, " bytes for ", n,
                     " x ", bits, "-bit codes (", need, " needed)"));
  }
  const uint32_t limit = 1u << bits;
  // A 64-bit accumulator flushed a byte at a time: at most 16 + 7 bits are
  // pending before a flush, so it never overflows.
  uint64_t acc = 0;
  int pending = 0;
  size_t o = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (indices[i] >= limit) {
      return absl::InvalidArgumentError(
          absl::StrCat("code ", indices[i], " at position ", i,
                       " does not fit in ", bits, " bits"));
    }
    acc |= uint64_t{indices[i]} << pending;
    pending += bits;
    while (pending >= 8) {
      out[o++] = static_cast<uint8_t>(acc);
      acc >>= 8;
      pending -= 8;
    }
  }
  if (pending > 0) out[o++] = static_cast<uint8_t>(acc);
  return absl::OkStatus();
}

absl::Status UnpackBits(const uint8_t* in, size_t in_bytes, int64_t n, int bits,
                        uint16_t* indices) {
  if (absl::Status s = CheckBits(bits); !s.ok()) return s;
  const size_t need = PackedBytes(n, bits);
  if (n < 0 || in_bytes < need) {
    return absl::InvalidArgumentError(
        absl::StrCat("packed input truncated: ", in_bytes, " bytes for ", n,
                     " x ", bits, "-bit codes (", need, " needed)"));
  }
  const uint32_t mask = (1u << bits) - 1;
  uint64_t acc = 0;
  int avail = 0;
  size_t p = 0;
  for (int64_t i = 0; i < n; ++i) {
    while (avail < bits) {
      acc |= uint64_t{in[p++]} << avail;
      avail += 8;
    }
    indices[i] = static_cast<uint16_t>(acc & mask);
    acc >>= bits;
    avail -= bits;
  }
  return absl::OkStatus();
}

}  // namespace vqkv
