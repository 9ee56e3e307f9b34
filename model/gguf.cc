#include "model/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/fp16.h"

namespace vqkv::model {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian u32
constexpr int kMaxArrayDepth = 4;
constexpr int kMaxDims = 4;

// Bounds-checked little-endian cursor over the file image. Every read past
// the end yields kDataLoss: in a well-formed header that can only mean the
// file was cut short.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  template <typename T>
  absl::Status Read(T* out) {
    if (remaining() < sizeof(T)) return Truncated();
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  absl::Status ReadString(std::string* out) {
    uint64_t len = 0;
    if (absl::Status s = Read(&len); !s.ok()) return s;
    if (len > remaining()) return Truncated();
    out->assign(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return absl::OkStatus();
  }

 private:
  absl::Status Truncated() const {
    return absl::DataLossError(
        absl::StrCat("GGUF file truncated: needed more bytes at offset ", pos_,
                     " of ", size_));
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Smallest encoded size of one value of `type`, used to reject array
// lengths that could not possibly fit before allocating for them.
size_t MinEncodedSize(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kString:  // u64 length
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    case GgufType::kArray:  // u32 type + u64 count
      return 12;
  }
  return 1;
}

template <typename T>
absl::Status ReadScalar(Cursor& c, GgufValue* out) {
  T v{};
  VQKV_RETURN_IF_ERROR(c.Read(&v));
  out->value = v;
  return absl::OkStatus();
}

absl::Status ReadValue(Cursor& c, GgufType type, int depth, GgufValue* out) {
  switch (type) {
    case GgufType::kUint8:
      return ReadScalar<uint8_t>(c, out);
    case GgufType::kInt8:
      return ReadScalar<int8_t>(c, out);
    case GgufType::kUint16:
      return ReadScalar<uint16_t>(c, out);
    case GgufType::kInt16:
      return ReadScalar<int16_t>(c, out);
    case GgufType::kUint32:
      return ReadScalar<uint32_t>(c, out);
    case GgufType::kInt32:
      return ReadScalar<int32_t>(c, out);
    case GgufType::kFloat32:
      return ReadScalar<float>(c, out);
    case GgufType::kUint64:
      return ReadScalar<uint64_t>(c, out);
    case GgufType::kInt64:
      return ReadScalar<int64_t>(c, out);
    case GgufType::kFloat64:
      return ReadScalar<double>(c, out);
    case GgufType::kBool: {
      uint8_t v = 0;
      VQKV_RETURN_IF_ERROR(c.Read(&v));
      if (v > 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("GGUF bool value ", int{v}, " is not 0 or 1"));
      }
      out->value = v != 0;
      return absl::OkStatus();
    }
    case GgufType::kString: {
      std::string str;
      VQKV_RETURN_IF_ERROR(c.ReadString(&str));
      out->value = std::move(str);
      return absl::OkStatus();
    }
    case GgufType::kArray: {
      if (depth >= kMaxArrayDepth) {
        return absl::InvalidArgumentError("GGUF arrays nested too deeply");
      }
      uint32_t raw_type = 0;
      uint64_t count = 0;
      VQKV_RETURN_IF_ERROR(c.Read(&raw_type));
      VQKV_RETURN_IF_ERROR(c.Read(&count));
      if (raw_type > static_cast<uint32_t>(GgufType::kFloat64)) {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown GGUF array element type ", raw_type));
      }
      const auto elem = static_cast<GgufType>(raw_type);
      if (count > c.remaining() / MinEncodedSize(elem)) {
        return absl::DataLossError(absl::StrCat(
            "GGUF array of ", count, " elements runs past the end of file"));
      }
      GgufArray arr;
      arr.element_type = elem;
      arr.items.resize(count);
      for (uint64_t i = 0; i < count; ++i) {
        VQKV_RETURN_IF_ERROR(ReadValue(c, elem, depth + 1, &arr.items[i]));
      }
      out->value = std::move(arr);
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown GGUF value type ", static_cast<uint32_t>(type)));
}

// Integer value of an integer-typed GgufValue, as a 128-bit-safe pair.
bool AsInteger(const GgufValue& v, bool* negative, uint64_t* magnitude) {
  return std::visit(
      [&](const auto& x) -> bool {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          if constexpr (std::is_signed_v<T>) {
            *negative = x < 0;
            *magnitude = x < 0 ? uint64_t{0} - static_cast<uint64_t>(x)
                               : static_cast<uint64_t>(x);
          } else {
            *negative = false;
            *magnitude = static_cast<uint64_t>(x);
          }
          return true;
        } else {
          return false;
        }
      },
      v.value);
}

float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  float f;
  HalfToFloat(&h, 1, &f);
  return f;
}

}  // namespace

const char* GgmlTypeName(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
      return "F32";
    case GgmlType::kF16:
      return "F16";
    case GgmlType::kQ4_0:
      return "Q4_0";
    case GgmlType::kQ4_1:
      return "Q4_1";
    case GgmlType::kQ8_0:
      return "Q8_0";
  }
  return "unsupported";
}

int64_t GgufTensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

void DequantizeQ4_0(const uint8_t* in, int64_t n, float* out) {
  for (int64_t b = 0; b < n / 32; ++b, in += 18, out += 32) {
    const float d = Half(in);
    const uint8_t* q = in + 2;
    for (int j = 0; j < 16; ++j) {
      out[j] = d * static_cast<float>((q[j] & 0x0F) - 8);
      out[j + 16] = d * static_cast<float>((q[j] >> 4) - 8);
    }
  }
}

void DequantizeQ4_1(const uint8_t* in, int64_t n, float* out) {
  for (int64_t b = 0; b < n / 32; ++b, in += 20, out += 32) {
    const float d = Half(in);
    const float m = Half(in + 2);
    const uint8_t* q = in + 4;
    for (int j = 0; j < 16; ++j) {
      out[j] = d * static_cast<float>(q[j] & 0x0F) + m;
      out[j + 16] = d * static_cast<float>(q[j] >> 4) + m;
    }
  }
}

void DequantizeQ8_0(const uint8_t* in, int64_t n, float* out) {
  for (int64_t b = 0; b < n / 32; ++b, in += 34, out += 32) {
    const float d = Half(in);
    const auto* q = reinterpret_cast<const int8_t*>(in + 2);
    for (int j = 0; j < 32; ++j) out[j] = d * static_cast<float>(q[j]);
  }
}

absl::StatusOr<uint64_t> GgufFile::TensorBytes(const GgufTensorInfo& info) {
  const uint64_t n = static_cast<uint64_t>(info.elements());
  const auto blocks = [&](uint64_t block_bytes) -> absl::StatusOr<uint64_t> {
    if (info.ne.empty() || info.ne[0] % 32 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", info.name, " of type ", GgmlTypeName(info.type),
          " has a row length that is not a multiple of 32"));
    }
    return n / 32 * block_bytes;
  };
  switch (static_cast<GgmlType>(info.type)) {
    case GgmlType::kF32:
      return n * 4;
    case GgmlType::kF16:
      return n * 2;
    case GgmlType::kQ4_0:
      return blocks(18);
    case GgmlType::kQ4_1:
      return blocks(20);
    case GgmlType::kQ8_0:
      return blocks(34);
  }
  return absl::UnimplementedError(
      absl::StrCat("tensor ", info.name, " has unsupported ggml type ",
                   info.type, " (supported: F32, F16, Q4_0, Q4_1, Q8_0)"));
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat("no such file: ", path));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a regular file"));
  }
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->size_ = static_cast<size_t>(st.st_size);
  if (file->size_ > 0) {
    void* map = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(
          absl::StrCat("mmap of ", path, " failed: ", std::strerror(err)));
    }
    file->data_ = static_cast<const uint8_t*>(map);
    file->mapped_ = true;
  }
  ::close(fd);
  if (absl::Status s = file->Parse(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  }
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBytes(
    std::string_view bytes) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->owned_.assign(bytes.data(), bytes.size());
  file->data_ = reinterpret_cast<const uint8_t*>(file->owned_.data());
  file->size_ = file->owned_.size();
  VQKV_RETURN_IF_ERROR(file->Parse());
  return file;
}

GgufFile::~GgufFile() {
  if (mapped_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

absl::Status GgufFile::Parse() {
  Cursor c(data_, size_);
  uint32_t magic = 0;
  if (size_ < 4) {
    return absl::InvalidArgumentError("not a GGUF file (shorter than magic)");
  }
  VQKV_RETURN_IF_ERROR(c.Read(&magic));
  if (magic != kMagic) {
    return absl::InvalidArgumentError("not a GGUF file (bad magic)");
  }
  VQKV_RETURN_IF_ERROR(c.Read(&version_));
  if (version_ != 2 && version_ != 3) {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported GGUF version ", version_, " (supported: 2, 3)"));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  VQKV_RETURN_IF_ERROR(c.Read(&n_tensors));
  VQKV_RETURN_IF_ERROR(c.Read(&n_kv));
  // Each key/value pair takes at least 12 bytes, each tensor info 24.
  if (n_kv > c.remaining() / 12 || n_tensors > c.remaining() / 24) {
    return absl::DataLossError(
        "GGUF header counts exceed the file size (truncated or corrupt)");
  }
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    uint32_t raw_type = 0;
    VQKV_RETURN_IF_ERROR(c.ReadString(&key));
    VQKV_RETURN_IF_ERROR(c.Read(&raw_type));
    if (raw_type > static_cast<uint32_t>(GgufType::kFloat64)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metadata key '", key, "' has unknown value type ", raw_type));
    }
    GgufValue value;
    VQKV_RETURN_IF_ERROR(
        ReadValue(c, static_cast<GgufType>(raw_type), 0, &value));
    metadata_[key] = std::move(value);
  }
  if (const GgufValue* a = Find("general.alignment"); a != nullptr) {
    bool neg = false;
    uint64_t align = 0;
    if (!AsInteger(*a, &neg, &align) || neg || align == 0 ||
        (align & (align - 1)) != 0) {
      return absl::InvalidArgumentError(
          "general.alignment must be a positive power of two");
    }
    alignment_ = align;
  }
  tensors_.resize(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo& t = tensors_[i];
    uint32_t n_dims = 0;
    VQKV_RETURN_IF_ERROR(c.ReadString(&t.name));
    VQKV_RETURN_IF_ERROR(c.Read(&n_dims));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", t.name, "' has ", n_dims, " dimensions (1..4 allowed)"));
    }
    t.ne.resize(n_dims);
    int64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = 0;
      VQKV_RETURN_IF_ERROR(c.Read(&ne));
      if (ne == 0 || ne > (uint64_t{1} << 40) ||
          static_cast<uint64_t>(elements) > (uint64_t{1} << 44) / ne) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", t.name, "' has an invalid dimension ", ne));
      }
      t.ne[d] = static_cast<int64_t>(ne);
      elements *= t.ne[d];
    }
    VQKV_RETURN_IF_ERROR(c.Read(&t.type));
    VQKV_RETURN_IF_ERROR(c.Read(&t.offset));
    if (t.offset % alignment_ != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' offset ", t.offset,
                       " is not aligned to ", alignment_));
    }
    if (!tensor_index_.emplace(t.name, i).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate tensor name '", t.name, "'"));
    }
  }
  data_offset_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  // Every tensor of a known type must lie inside the file. Tensors of
  // unknown types are checked when (if) they are read.
  for (const GgufTensorInfo& t : tensors_) {
    absl::StatusOr<uint64_t> bytes = TensorBytes(t);
    if (absl::IsUnimplemented(bytes.status())) continue;
    if (!bytes.ok()) return bytes.status();
    if (data_offset_ > size_ || t.offset > size_ - data_offset_ ||
        *bytes > size_ - data_offset_ - t.offset) {
      return absl::DataLossError(
          absl::StrCat("GGUF file truncated: tensor '", t.name, "' (", *bytes,
                       " bytes at data offset ", t.offset,
                       ") runs past the end of the ", size_, "-byte file"));
    }
  }
  return absl::OkStatus();
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_.find(std::string(key));
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {
absl::Status Missing(std::string_view key) {
  return absl::NotFoundError(
      absl::StrCat("missing GGUF metadata key '", std::string(key), "'"));
}
absl::Status WrongType(std::string_view key, std::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat(
      "GGUF metadata key '", std::string(key), "' is not ", std::string(want)));
}
}  // namespace

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  bool neg = false;
  uint64_t mag = 0;
  if (!AsInteger(*v, &neg, &mag) || (neg && mag != 0)) {
    return WrongType(key, "a non-negative integer");
  }
  return mag;
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  bool neg = false;
  uint64_t mag = 0;
  if (!AsInteger(*v, &neg, &mag)) return WrongType(key, "an integer");
  const uint64_t limit =
      static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) +
      (neg ? 1 : 0);
  if (mag > limit) return WrongType(key, "an integer that fits in int64");
  return neg ? static_cast<int64_t>(uint64_t{0} - mag)
             : static_cast<int64_t>(mag);
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  if (const float* f = std::get_if<float>(&v->value)) return *f;
  if (const double* d = std::get_if<double>(&v->value)) return *d;
  return WrongType(key, "a float");
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  if (const bool* b = std::get_if<bool>(&v->value)) return *b;
  return WrongType(key, "a bool");
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  if (const std::string* s = std::get_if<std::string>(&v->value)) return *s;
  return WrongType(key, "a string");
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(
    std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  const GgufArray* a = std::get_if<GgufArray>(&v->value);
  if (a == nullptr || a->element_type != GgufType::kString) {
    return WrongType(key, "an array of strings");
  }
  std::vector<std::string> out;
  out.reserve(a->items.size());
  for (const GgufValue& item : a->items) {
    out.push_back(std::get<std::string>(item.value));
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(
    std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  const GgufArray* a = std::get_if<GgufArray>(&v->value);
  if (a == nullptr) return WrongType(key, "an array of integers");
  std::vector<int64_t> out;
  out.reserve(a->items.size());
  for (const GgufValue& item : a->items) {
    bool neg = false;
    uint64_t mag = 0;
    if (!AsInteger(item, &neg, &mag) ||
        mag > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return WrongType(key, "an array of integers");
    }
    out.push_back(neg ? -static_cast<int64_t>(mag) : static_cast<int64_t>(mag));
  }
  return out;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::string_view> GgufFile::TensorData(
    std::string_view name) const {
  const GgufTensorInfo* t = FindTensor(name);
  if (t == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("no tensor named '", std::string(name), "'"));
  }
  absl::StatusOr<uint64_t> bytes = TensorBytes(*t);
  if (!bytes.ok()) return bytes.status();
  if (data_offset_ > size_ || t->offset > size_ - data_offset_ ||
      *bytes > size_ - data_offset_ - t->offset) {
    return absl::DataLossError(absl::StrCat("tensor '", std::string(name),
                                            "' runs past the end of the file"));
  }
  return std::string_view(
      reinterpret_cast<const char*>(data_ + data_offset_ + t->offset),
      static_cast<size_t>(*bytes));
}

absl::StatusOr<std::vector<float>> GgufFile::ReadTensorF32(
    std::string_view name) const {
  absl::StatusOr<std::string_view> data = TensorData(name);
  if (!data.ok()) return data.status();
  const GgufTensorInfo* t = FindTensor(name);
  const auto* src = reinterpret_cast<const uint8_t*>(data->data());
  const int64_t n = t->elements();
  std::vector<float> out(static_cast<size_t>(n));
  switch (static_cast<GgmlType>(t->type)) {
    case GgmlType::kF32:
      std::memcpy(out.data(), src, static_cast<size_t>(n) * 4);
      break;
    case GgmlType::kF16: {
      // Copy to aligned storage first: the source may be unaligned for u16.
      std::vector<uint16_t> h(static_cast<size_t>(n));
      std::memcpy(h.data(), src, static_cast<size_t>(n) * 2);
      HalfToFloat(h.data(), static_cast<size_t>(n), out.data());
      break;
    }
    case GgmlType::kQ4_0:
      DequantizeQ4_0(src, n, out.data());
      break;
    case GgmlType::kQ4_1:
      DequantizeQ4_1(src, n, out.data());
      break;
    case GgmlType::kQ8_0:
      DequantizeQ8_0(src, n, out.data());
      break;
  }
  return out;
}

}  // namespace vqkv::model
