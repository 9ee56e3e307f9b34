// Test-only GGUF v3 writer: builds small model files byte by byte so the
// reader can be checked against known contents.
#ifndef VQKV_TESTS_UNIT_EVAL_GGUF_WRITER_H_
#define VQKV_TESTS_UNIT_EVAL_GGUF_WRITER_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace vqkv::model::testing {

class GgufWriter {
 public:
  template <typename T>
  static void Put(std::string* out, T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out->append(b, sizeof(T));
  }
  static void PutString(std::string* out, const std::string& s) {
    Put<uint64_t>(out, s.size());
    out->append(s);
  }

  // A key with a raw pre-encoded value (type tag + payload).
  void AddRaw(const std::string& key, uint32_t type, const std::string& value) {
    PutString(&kv_, key);
    Put<uint32_t>(&kv_, type);
    kv_ += value;
    ++n_kv_;
  }
  template <typename T>
  void AddScalar(const std::string& key, uint32_t type, T v) {
    std::string val;
    Put<T>(&val, v);
    AddRaw(key, type, val);
  }
  void AddString(const std::string& key, const std::string& s) {
    std::string val;
    PutString(&val, s);
    AddRaw(key, 8, val);
  }
  void AddStringArray(const std::string& key,
                      const std::vector<std::string>& items) {
    std::string val;
    Put<uint32_t>(&val, 8);
    Put<uint64_t>(&val, items.size());
    for (const std::string& s : items) PutString(&val, s);
    AddRaw(key, 9, val);
  }
  template <typename T>
  void AddArray(const std::string& key, uint32_t elem_type,
                const std::vector<T>& items) {
    std::string val;
    Put<uint32_t>(&val, elem_type);
    Put<uint64_t>(&val, items.size());
    for (T v : items) Put<T>(&val, v);
    AddRaw(key, 9, val);
  }

  // A tensor with raw data bytes; offsets are assigned with 32-byte
  // alignment (or `alignment` when set before Build).
  void AddTensor(const std::string& name, std::vector<uint64_t> ne,
                 uint32_t type, const std::string& data) {
    tensors_.push_back({name, std::move(ne), type, data});
  }

  std::string Build(uint64_t alignment = 32, uint32_t version = 3) const {
    std::string out = "GGUF";
    Put<uint32_t>(&out, version);
    Put<uint64_t>(&out, tensors_.size());
    Put<uint64_t>(&out, n_kv_);
    out += kv_;
    std::string data;
    for (const Tensor& t : tensors_) {
      while (data.size() % alignment != 0) data.push_back('\0');
      PutString(&out, t.name);
      Put<uint32_t>(&out, static_cast<uint32_t>(t.ne.size()));
      for (uint64_t d : t.ne) Put<uint64_t>(&out, d);
      Put<uint32_t>(&out, t.type);
      Put<uint64_t>(&out, data.size());
      data += t.data;
    }
    while (out.size() % alignment != 0) out.push_back('\0');
    return out + data;
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    std::string data;
  };
  std::string kv_;
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

}  // namespace vqkv::model::testing

#endif  // VQKV_TESTS_UNIT_EVAL_GGUF_WRITER_H_
