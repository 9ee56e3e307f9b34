// Reader for GGUF v3 model files (the llama.cpp format): metadata of every
// value type, tensor infos, and tensor data dequantized to float32.
//
// File layout (little-endian): magic "GGUF", u32 version, u64 tensor count,
// u64 metadata count, the metadata key/value pairs, the tensor infos
// (name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset), padding to
// `general.alignment` (default 32), then the tensor data; each tensor's
// offset is relative to the start of the data section.
//
// Dimension order follows ggml: ne[0] varies fastest, so a 2-D weight with
// ne = {in, out} is a row-major [out][in] matrix.
//
// Thread safety: a GgufFile is immutable after Open; all const methods may be
// called concurrently.
#ifndef VQKV_MODEL_GGUF_H_
#define VQKV_MODEL_GGUF_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vqkv::model {

// Metadata value types, numbered as in the GGUF specification.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// Tensor element types (ggml_type numbering). Only the ones this reader can
// dequantize are named; others are kept as their raw number.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 8,
};
const char* GgmlTypeName(uint32_t type);

struct GgufValue;
struct GgufArray {
  GgufType element_type = GgufType::kUint8;
  std::vector<GgufValue> items;
};
struct GgufValue {
  std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float,
               bool, std::string, GgufArray, uint64_t, int64_t, double>
      value;
  GgufType type() const { return static_cast<GgufType>(value.index()); }
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ne[0] is the fastest-varying dimension
  uint32_t type = 0;        // a GgmlType value, or an unsupported number
  uint64_t offset = 0;      // relative to the data section
  int64_t elements() const;
};

class GgufFile {
 public:
  // Opens and parses a GGUF file (memory-mapped; the mapping lives as long
  // as the GgufFile). Errors: kNotFound (no such file), kInvalidArgument
  // (bad magic, malformed header), kUnimplemented (GGUF version other than
  // 2 or 3), kDataLoss (file truncated: header, metadata or a tensor's data
  // runs past the end of the file).
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(
      const std::string& path);
  // Same, over a copy of an in-memory image (for tests).
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBytes(
      std::string_view bytes);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  // Where the tensor data section starts: the end of the tensor infos,
  // rounded up to alignment(). May exceed the file size when the file holds
  // no tensor data and its final padding is missing (Open accepts that;
  // TensorData and ReadTensorF32 check every tensor against the file end).
  uint64_t data_offset() const { return data_offset_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  // Metadata lookups. kNotFound when the key is absent, kInvalidArgument
  // when it has another type. GetUint/GetInt accept any integer type whose
  // value fits; GetFloat accepts float32 and float64.
  const GgufValue* Find(std::string_view key) const;
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(
      std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;

  // nullptr when there is no tensor of that name.
  const GgufTensorInfo* FindTensor(std::string_view name) const;

  // Dequantizes a tensor to float32 in ggml order (ne[0] fastest).
  // Errors: kNotFound (no such tensor), kUnimplemented (element type other
  // than F32, F16, Q4_0, Q4_1, Q8_0).
  absl::StatusOr<std::vector<float>> ReadTensorF32(std::string_view name) const;

  // A tensor's data exactly as stored (quantized blocks as they are), a view
  // into the file image valid as long as the GgufFile. Errors: kNotFound (no
  // such tensor), kUnimplemented (element type of unknown size), kDataLoss
  // (the data runs past the end of the file).
  absl::StatusOr<std::string_view> TensorData(std::string_view name) const;

  // Bytes one tensor occupies in the file; kUnimplemented for unknown types.
  static absl::StatusOr<uint64_t> TensorBytes(const GgufTensorInfo& info);

 private:
  GgufFile() = default;
  absl::Status Parse();

  // [data_, data_ + size_) is the whole file image: either a mapping
  // (mapped_ true) or owned_'s buffer.
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::string owned_;

  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// Dequantization kernels, exposed for tests. `n` is the element count and
// must be a multiple of 32 for the block types.
void DequantizeQ4_0(const uint8_t* in, int64_t n, float* out);
void DequantizeQ4_1(const uint8_t* in, int64_t n, float* out);
void DequantizeQ8_0(const uint8_t* in, int64_t n, float* out);

}  // namespace vqkv::model

#endif  // VQKV_MODEL_GGUF_H_
