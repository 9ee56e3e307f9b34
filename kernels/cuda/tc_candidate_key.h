// Candidate keys of the tensor-core encoder (rvq_encode_tc.cu, variants
// TcEncodeVariant::kPackedKeys and kPackedKeysWide): a score and a codeword
// index in one 32-bit unsigned integer, so that a lane keeps the two best
// codewords of a vector with three integer min/max instructions per score
// rather than a compare-and-swap list, and the choice among the candidates of a
// vector's four lanes. Header only, compiled by nvcc into the kernel and by the
// host compiler for tests/unit/kernels/tc_candidate_key_test.cc, which checks
// this arithmetic without a GPU.
//
// Key layout: the bits of |s|, with the low `code_bits` bits replaced by the
// code, where s = ||c||^2 - 2 <r, c> + ||r||^2, the squared distance of the
// residual r to the codeword c up to rounding (the kernel starts each
// accumulator at -||r||^2 / 2). For floats >= 0 the order of the bit
// patterns as unsigned integers is the numeric order, so the smallest key
// holds the smallest truncated score, ties to the lowest code. Truncation
// lowers a score by less than 2^(code_bits - 23) of it. The sign bit of a
// key is always 0 (a distance that rounding took below 0 is read as its
// magnitude), so kTcNoKey, all ones, is greater than every key. A NaN score
// stays NaN after truncation (the device's NaN sets every mantissa bit) and
// is never picked.
#ifndef VQKV_KERNELS_CUDA_TC_CANDIDATE_KEY_H_
#define VQKV_KERNELS_CUDA_TC_CANDIDATE_KEY_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/host_device.h"

namespace vqkv::cuda {

// An empty slot of a candidate list: greater than every key.
inline constexpr uint32_t kTcNoKey = 0xffffffffu;

// Bound on |bf16-product score - float32 score| per unit of ||r|| ||c||:
// rounding r and c to bf16 (relative error u = 2^-8 each) moves each
// product r_i c_i by at most (2u + u^2) |r_i c_i|, so 2 <r, c> by at most
// 2 (2u + u^2) ||r|| ||c||; 1% more covers the float32 accumulation of up
// to 128 terms on either side.
inline constexpr float kTcScoreErrorPerNorm =
    2.0f * (2.0f / 256 + 1.0f / 65536) * 1.01f;

// Bits that hold every code below `codes` (the codebook padded to whole
// 8-codeword tiles): at least 1, at most 16 for the encoder's 65536.
VQKV_HD inline int TcKeyCodeBits(int codes) {
  int bits = 1;
  while (bits < 31 && (1 << bits) < codes) ++bits;
  return bits;
}

VQKV_HD inline uint32_t TcKeyCodeMask(int code_bits) {
  return (1u << code_bits) - 1u;
}

// The bits of a key that hold the score: all but the sign and the code.
VQKV_HD inline uint32_t TcKeyScoreMask(int code_bits) {
  return 0x7fffffffu & ~TcKeyCodeMask(code_bits);
}

VQKV_HD inline uint32_t TcFloatBits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

VQKV_HD inline float TcBitsFloat(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// The key of score s (a squared distance, see above) and `code` (below
// 2^code_bits); one bitwise instruction on the device.
VQKV_HD inline uint32_t TcMakeKey(float s, uint32_t score_mask, uint32_t code) {
  return (TcFloatBits(s) & score_mask) | code;
}

// Keeps the two smallest keys seen: first <= second, both kTcNoKey at the
// start. Keys of one lane and vector differ in their codes, so none is
// seen twice.
VQKV_HD inline void TcPushKey(uint32_t key, uint32_t& first, uint32_t& second) {
  const uint32_t larger = key > first ? key : first;
  first = key < first ? key : first;
  second = larger < second ? larger : second;
}

VQKV_HD inline float TcKeyScore(uint32_t key, int code_bits) {
  return TcBitsFloat(key & TcKeyScoreMask(code_bits));
}

VQKV_HD inline int TcKeyCode(uint32_t key, int code_bits) {
  return static_cast<int>(key & TcKeyCodeMask(code_bits));
}

// The largest truncated score a candidate can have and still be the float32
// nearest, given the lowest truncated score among the vector's candidates,
// ||r||^2 and the largest ||c||^2 among them. The float32 score of the
// nearest codeword is within E of its key's score and the lowest key's
// codeword within E of its own (E = kTcScoreErrorPerNorm ||r|| ||c|| for
// the bf16 product, plus 2^-16 ||r||^2 for rounding the product's sum with
// ||r||^2 / 2 in float32), and truncation moves a score by less than
// 2^(code_bits - 23) of it: so twice E above the lowest score before
// truncation.
VQKV_HD inline float TcRescoreCutoff(float lowest, int code_bits, float rr,
                                     float max_norm) {
  const float e =
      kTcScoreErrorPerNorm * sqrtf(rr * max_norm) + rr * (1.0f / 65536.0f);
  const float lowest_before_truncation =
      lowest * (1.0f + ldexpf(1.0f, code_bits - 23));
  return lowest_before_truncation + 2.0f * e;
}

// The code of one vector at one stage from its candidates' keys (`count`
// of them, kTcNoKey for empty slots), as the sorted-list variant decides:
// the candidates whose truncated score is within TcRescoreCutoff of the
// lowest are the only ones that can be the float32 nearest; one is taken as
// it is, several are rescored with `rescore(k)` (the float32 score ||c_k||^2
// - 2 <r, c_k> of the reference), ties to the lowest code. `norm(k)` gives
// ||c_k||^2. Codes >= K (the padding of the last tile) and NaN scores are
// never picked; a vector without any candidate (a NaN residual) gets 0, as
// in the reference.
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <typename Norm, typename Rescore>
VQKV_HD inline int TcPickFromKeys(const uint32_t* keys, int count, int K,
                                  int code_bits, float rr, Norm norm,
                                  Rescore rescore) {
  float lowest = INFINITY, max_norm = 0.0f;
  for (int i = 0; i < count; ++i) {
    const int k = TcKeyCode(keys[i], code_bits);
    const float s = TcKeyScore(keys[i], code_bits);
    if (keys[i] == kTcNoKey || k >= K || !(s < INFINITY)) continue;
    lowest = fminf(lowest, s);
    max_norm = fmaxf(max_norm, norm(k));
  }
  if (!(lowest < INFINITY)) return 0;
  const float cutoff = TcRescoreCutoff(lowest, code_bits, rr, max_norm);
  int contenders = 0, contender = 0;
  for (int i = 0; i < count; ++i) {
    const int k = TcKeyCode(keys[i], code_bits);
    if (keys[i] != kTcNoKey && k < K &&
        TcKeyScore(keys[i], code_bits) <= cutoff) {
      ++contenders;
      contender = k;
    }
  }
  if (contenders <= 1) return contender;
  float best = INFINITY;
  int best_code = -1;
  for (int i = 0; i < count; ++i) {
    const int k = TcKeyCode(keys[i], code_bits);
    if (keys[i] == kTcNoKey || k >= K ||
        !(TcKeyScore(keys[i], code_bits) <= cutoff)) {
      continue;
    }
    const float score = rescore(k);
    if (score < best || (score == best && k < best_code)) {
      best = score;
      best_code = k;
    }
  }
  return best_code < 0 ? contender : best_code;  // scores overflowed
}

}  // namespace vqkv::cuda

#endif  // VQKV_KERNELS_CUDA_TC_CANDIDATE_KEY_H_
