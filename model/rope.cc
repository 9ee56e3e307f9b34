#include "model/rope.h"

#include <cmath>

namespace vqkv::model {

Rope::Rope(int head_dim, int rot_dims, double theta)
    : head_dim_(head_dim), rot_dims_(rot_dims) {
  inv_freq_.resize(static_cast<size_t>(rot_dims_ / 2));
  for (int i = 0; i < rot_dims_ / 2; ++i) {
    inv_freq_[i] = std::pow(theta, -2.0 * i / rot_dims_);
  }
}

void Rope::Rotate(float* x, int heads, int64_t pos, float sign) const {
  // Angles in double: positions reach tens of thousands, where float angle
  // products lose the low bits that matter for the fast-rotating pairs.
  for (int i = 0; i < rot_dims_ / 2; ++i) {
    const double angle = static_cast<double>(pos) * inv_freq_[i];
    const float c = static_cast<float>(std::cos(angle));
    const float s = sign * static_cast<float>(std::sin(angle));
    for (int h = 0; h < heads; ++h) {
      float* p = x + static_cast<int64_t>(h) * head_dim_ + 2 * i;
      const float a = p[0];
      const float b = p[1];
      p[0] = a * c - b * s;
      p[1] = a * s + b * c;
    }
  }
}

void Rope::Apply(float* x, int heads, int64_t pos) const {
  Rotate(x, heads, pos, 1.0f);
}

void Rope::Invert(float* x, int heads, int64_t pos) const {
  Rotate(x, heads, pos, -1.0f);
}

}  // namespace vqkv::model
