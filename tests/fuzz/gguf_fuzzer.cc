// Fuzz target: the GGUF reader (model/gguf.h) and what reads a model out of
// it: the metadata getters, every tensor's data and dequantization, the
// tokenizer (model/tokenizer.h), the model fingerprint (model/fingerprint.h)
// and the LLaMA loader (model/llama_model.h), as `vqkv eval --model` would
// run them on a file it was handed.
//
// Properties: no crash, sanitizer report or allocation beyond libFuzzer's
// -rss_limit_mb/-malloc_limit_mb; a tensor whose data the reader returns
// lies inside the image; a tokenizer that loads round-trips a short text.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "model/fingerprint.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vqkv::model;
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::FromBytes(
      std::string_view(reinterpret_cast<const char*>(data), size));
  if (!gguf.ok()) return 0;
  const GgufFile& f = **gguf;
  // data_offset() may lie past the end of a file without tensor data (the
  // header's padding cut off): every read checks it (gguf.h), so it is not
  // asserted here. regressions/gguf/no-tensors-data-offset-past-end.

  for (const auto& [key, value] : f.metadata()) {
    (void)f.GetUint(key);
    (void)f.GetInt(key);
    (void)f.GetFloat(key);
    (void)f.GetBool(key);
    (void)f.GetString(key);
    (void)f.GetStringArray(key);
    (void)f.GetIntArray(key);
  }
  int64_t total_elements = 0;
  for (const GgufTensorInfo& t : f.tensors()) {
    absl::StatusOr<std::string_view> bytes = f.TensorData(t.name);
    if (bytes.ok()) FUZZ_CHECK(bytes->size() <= size - f.data_offset());
    const int64_t n = t.elements();
    if (n >= 0 && n <= (int64_t{1} << 20)) {
      total_elements += n;
      absl::StatusOr<std::vector<float>> values = f.ReadTensorF32(t.name);
      if (values.ok()) FUZZ_CHECK(static_cast<int64_t>(values->size()) == n);
    }
  }

  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromGguf(f);
  if (tok.ok()) {
    const std::vector<int32_t> ids = (*tok)->Encode("the quick 12 <|im_end|>");
    for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < (*tok)->vocab_size());
    (void)(*tok)->Decode(ids);
  }
  (void)ModelFingerprint(f);
  // Loading a model dequantizes every weight; only for small images.
  if (total_elements <= (int64_t{1} << 18)) {
    absl::StatusOr<std::unique_ptr<LlamaModel>> m = LlamaModel::FromGguf(f);
    if (m.ok()) (void)IdentifyModel(f, (*m)->config().kv_layout());
    if (std::getenv("VQKV_FUZZ_VERBOSE") != nullptr) {
      std::fprintf(stderr, "tokenizer: %s; model: %s\n",
                   tok.status().ToString().c_str(),
                   m.status().ToString().c_str());
    }
  }
  return 0;
}
