#include "kernels/rope.h"

#include <algorithm>
#include <cmath>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"

namespace vqkv {

absl::Status RopeSpec::Validate(int head_dim) const {
  if (!std::isfinite(theta) || theta <= 1.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RoPE theta must be finite and > 1, got ", theta));
  }
  if (rot_dims < 2 || rot_dims % 2 != 0 || rot_dims > head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("RoPE rotary dimensions must be even and in 2..", head_dim,
                     " (head_dim), got ", rot_dims));
  }
  if (pairs != RopePairs::kAdjacent && pairs != RopePairs::kHalf) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown RoPE pair layout ", static_cast<int>(pairs)));
  }
  return absl::OkStatus();
}

std::string RopeSpec::ToString() const {
  return absl::StrCat("theta ", theta, ", ", rot_dims, " dims, ",
                      pairs == RopePairs::kAdjacent ? "adjacent" : "half",
                      " pairs");
}

Rope::Rope(int head_dim, const RopeSpec& spec)
    : head_dim_(head_dim), spec_(spec) {
  inv_freq_.resize(static_cast<size_t>(spec_.rot_dims / 2));
  for (int i = 0; i < spec_.rot_dims / 2; ++i) {
    inv_freq_[i] = std::pow(spec_.theta, -2.0 * i / spec_.rot_dims);
  }
}

void Rope::Angles(int64_t pos, float sign, float* cs) const {
  // Angles in double: positions reach tens of thousands, where float angle
  // products lose the low bits that matter for the fast-rotating pairs.
  for (size_t i = 0; i < inv_freq_.size(); ++i) {
    const double angle = static_cast<double>(pos) * inv_freq_[i];
    cs[2 * i] = static_cast<float>(std::cos(angle));
    cs[2 * i + 1] = sign * static_cast<float>(std::sin(angle));
  }
}

void Rope::RotateToken(float* x, int heads, const float* cs) const {
  const int pairs = spec_.rot_dims / 2;
  // Dimensions of pair i: (stride_a * i, stride_a * i + offset_b).
  const int stride = spec_.pairs == RopePairs::kAdjacent ? 2 : 1;
  const int offset = spec_.pairs == RopePairs::kAdjacent ? 1 : pairs;
  for (int h = 0; h < heads; ++h) {
    float* v = x + static_cast<int64_t>(h) * head_dim_;
    for (int i = 0; i < pairs; ++i) {
      const float c = cs[2 * i];
      const float s = cs[2 * i + 1];
      float* p = v + stride * i;
      const float a = p[0];
      const float b = p[offset];
      p[0] = a * c - b * s;
      p[offset] = a * s + b * c;
    }
  }
}

void Rope::Apply(float* x, int heads, int64_t pos) const {
  absl::InlinedVector<float, 256> cs(inv_freq_.size() * 2);
  Angles(pos, 1.0f, cs.data());
  RotateToken(x, heads, cs.data());
}

void Rope::Invert(float* x, int heads, int64_t pos) const {
  absl::InlinedVector<float, 256> cs(inv_freq_.size() * 2);
  Angles(pos, -1.0f, cs.data());
  RotateToken(x, heads, cs.data());
}

void Rope::RotateBlock(float* x, int layers, int64_t tokens, int heads,
                       int64_t first_pos, float sign) const {
  const size_t pairs = inv_freq_.size();
  const size_t per_token = pairs * 2;
  std::vector<float> cs(static_cast<size_t>(tokens) * per_token);
  // The first token's angles directly, the next ones by adding one
  // position's angle in double (cos/sin of a sum): a connector decodes a
  // block one layer at a time, and a sin and a cos per pair and token cost
  // more than the rotation itself. Over a block the recurrence's error stays
  // near double rounding, far below float's.
  for (size_t i = 0; i < pairs; ++i) {
    const double step = inv_freq_[i];
    const double cos_step = std::cos(step), sin_step = std::sin(step);
    double c = std::cos(static_cast<double>(first_pos) * step);
    double s = std::sin(static_cast<double>(first_pos) * step);
    for (int64_t t = 0; t < tokens; ++t) {
      cs[t * per_token + 2 * i] = static_cast<float>(c);
      cs[t * per_token + 2 * i + 1] = sign * static_cast<float>(s);
      const double next_c = c * cos_step - s * sin_step;
      s = s * cos_step + c * sin_step;
      c = next_c;
    }
  }
  const int64_t row = static_cast<int64_t>(heads) * head_dim_;
  for (int l = 0; l < layers; ++l) {
    for (int64_t t = 0; t < tokens; ++t) {
      RotateToken(x + (l * tokens + t) * row, heads, cs.data() + t * per_token);
    }
  }
}

void Rope::ApplyBlock(float* x, int layers, int64_t tokens, int heads,
                      int64_t first_pos) const {
  RotateBlock(x, layers, tokens, heads, first_pos, 1.0f);
}

void Rope::InvertBlock(float* x, int layers, int64_t tokens, int heads,
                       int64_t first_pos) const {
  RotateBlock(x, layers, tokens, heads, first_pos, -1.0f);
}

void ReorderRopePairs(float* x, int64_t vectors, int head_dim, int rot_dims,
                      RopePairs from, RopePairs to) {
  if (from == to) return;
  const int pairs = rot_dims / 2;
  absl::InlinedVector<float, 256> tmp(static_cast<size_t>(rot_dims));
  for (int64_t v = 0; v < vectors; ++v) {
    float* h = x + v * head_dim;
    std::copy(h, h + rot_dims, tmp.begin());
    if (from == RopePairs::kAdjacent) {  // to kHalf
      for (int i = 0; i < pairs; ++i) {
        h[i] = tmp[2 * i];
        h[i + pairs] = tmp[2 * i + 1];
      }
    } else {  // kHalf to kAdjacent
      for (int i = 0; i < pairs; ++i) {
        h[2 * i] = tmp[i];
        h[2 * i + 1] = tmp[i + pairs];
      }
    }
  }
}

}  // namespace vqkv
