// Fixed-width integer coding for every on-disk and hashed format.
//
// Little-endian is the project's byte order (docs/DESIGN.md: block headers,
// codebook files, RocksDB records, the hash chain input). The one exception
// is big-endian for keys that must sort in numeric order under bytewise
// comparison (RocksDB's default comparator).
//
// Encode* write exactly sizeof(T), 4 or 8 bytes at `dst`; Decode* read as many
// from `src` (callers check lengths first); Put* append to a string. All are
// pure functions, safe from any thread.
#ifndef VQKV_BASE_CODING_H_
#define VQKV_BASE_CODING_H_

#include <cstdint>
#include <string>
#include <type_traits>

#include "absl/strings/string_view.h"

namespace vqkv::base {

// T is an unsigned integer type (uint8_t .. uint64_t).
template <typename T>
inline void EncodeFixed(char* dst, T v) {
  static_assert(std::is_unsigned_v<T>);
  for (size_t i = 0; i < sizeof(T); ++i) {
    dst[i] = static_cast<char>(static_cast<uint64_t>(v) >> (8 * i));
  }
}

template <typename T>
inline T DecodeFixed(const char* src) {
  static_assert(std::is_unsigned_v<T>);
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) {
    v |= uint64_t{static_cast<uint8_t>(src[i])} << (8 * i);
  }
  return static_cast<T>(v);
}

inline void EncodeFixed32(char* dst, uint32_t v) { EncodeFixed(dst, v); }
inline void EncodeFixed64(char* dst, uint64_t v) { EncodeFixed(dst, v); }
inline uint32_t DecodeFixed32(const char* src) {
  return DecodeFixed<uint32_t>(src);
}
inline uint64_t DecodeFixed64(const char* src) {
  return DecodeFixed<uint64_t>(src);
}

inline void PutFixed32(std::string* dst, uint32_t v) {
  char buf[4];
  EncodeFixed32(buf, v);
  dst->append(buf, 4);
}

inline void PutFixed64(std::string* dst, uint64_t v) {
  char buf[8];
  EncodeFixed64(buf, v);
  dst->append(buf, 8);
}

// A u32 byte count, then the bytes.
inline void PutLengthPrefixed(std::string* dst, absl::string_view s) {
  PutFixed32(dst, static_cast<uint32_t>(s.size()));
  dst->append(s.data(), s.size());
}

// A base-128 varint (protobuf's encoding: 7 bits a byte, low first, high
// bit set on all bytes but the last); at most 10 bytes.
inline void PutVarint64(std::string* dst, uint64_t v) {
  while (v >= 0x80) {
    dst->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  dst->push_back(static_cast<char>(v));
}

// Big-endian, for sortable keys.
inline void EncodeBigEndian64(char* dst, uint64_t v) {
  for (int i = 0; i < 8; ++i) dst[i] = static_cast<char>(v >> (56 - 8 * i));
}

inline uint64_t DecodeBigEndian64(const char* src) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(src[i]);
  return v;
}

}  // namespace vqkv::base

#endif  // VQKV_BASE_CODING_H_
