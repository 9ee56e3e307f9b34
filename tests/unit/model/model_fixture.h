// Loads the real SmolLM2-135M model once per test binary; tests skip with a
// message when it has not been fetched (bash scripts/get-model.sh).
#ifndef VQKV_TESTS_UNIT_MODEL_MODEL_FIXTURE_H_
#define VQKV_TESTS_UNIT_MODEL_MODEL_FIXTURE_H_

#include <cblas.h>

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"

namespace vqkv::model::testing {

class RealModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // ctest runs test processes in parallel; OpenBLAS threads on top of
    // that oversubscribe the cores and spin.
    openblas_set_num_threads(1);
    absl::StatusOr<std::unique_ptr<model::GgufFile>> g =
        model::GgufFile::Open(VQKV_MODEL_PATH);
    if (!g.ok()) {
      load_error_ = new std::string(g.status().ToString());
      return;
    }
    gguf_ = g->release();
    absl::StatusOr<std::unique_ptr<model::Tokenizer>> t =
        model::Tokenizer::FromGguf(*gguf_);
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = t->release();
    if (load_model_) {
      absl::StatusOr<std::unique_ptr<model::LlamaModel>> m =
          model::LlamaModel::FromGguf(*gguf_);
      ASSERT_TRUE(m.ok()) << m.status();
      model_ = m->release();
    }
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tokenizer_;
    delete gguf_;
    delete load_error_;
    model_ = nullptr;
    tokenizer_ = nullptr;
    gguf_ = nullptr;
    load_error_ = nullptr;
  }
  void SetUp() override {
    if (gguf_ == nullptr) {
      GTEST_SKIP() << "model not available at " VQKV_MODEL_PATH " ("
                   << (load_error_ ? *load_error_ : "?")
                   << "); run: bash scripts/get-model.sh";
    }
  }

  static inline bool load_model_ = true;
  static inline model::GgufFile* gguf_ = nullptr;
  static inline model::Tokenizer* tokenizer_ = nullptr;
  static inline model::LlamaModel* model_ = nullptr;
  static inline std::string* load_error_ = nullptr;
};

}  // namespace vqkv::model::testing

#endif  // VQKV_TESTS_UNIT_MODEL_MODEL_FIXTURE_H_
