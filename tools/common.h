// Pieces shared by the `vqkv` subcommands: loading a model and texts with
// clear errors, the codec options (one place for calibrate and eval), codec
// construction by name, a progress bar, and the CLI error boundary.
//
// Errors are absl::Status inside; only the subcommand's entry point turns
// one into a single "vqkv: error: ..." line and a non-zero exit (Fail).
#ifndef VQKV_TOOLS_COMMON_H_
#define VQKV_TOOLS_COMMON_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/codec.h"
#include "kernels/model_identity.h"
#include "kernels/vq_codec.h"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"

namespace vqkv::tools {

// Prints "vqkv: error: <message>" on stderr and returns the exit code 1.
int Fail(const absl::Status& status);

struct LoadedModel {
  std::unique_ptr<model::GgufFile> gguf;
  std::unique_ptr<model::Tokenizer> tokenizer;
  std::unique_ptr<model::LlamaModel> model;
  // What codebook files record and are checked against (model/fingerprint.h).
  ModelIdentity identity;
};

// Opens a GGUF model and its tokenizer, and identifies it. Every failure
// names the file.
absl::StatusOr<LoadedModel> LoadModel(const std::string& path);

// Reads a whole text file. kNotFound when unreadable, kInvalidArgument when
// it holds no non-whitespace text.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

// Reads and tokenizes the files in order, concatenated. kInvalidArgument
// when the result has fewer than `min_tokens` tokens.
absl::StatusOr<std::vector<int32_t>> TokenizeFiles(
    const model::Tokenizer& tokenizer, const std::vector<std::string>& paths,
    int64_t min_tokens);

// How `vqkv calibrate` splits the bits between keys and values unless told:
// stages per 128 dimensions, at 10 bits per key code and 9 per value code.
// The paper's split (56 and 16: keys 4.375, values 1.125 bits per element,
// the codec's own default) lost variable tracking on SmolLM2-135M, whose
// copies read the needle through its values (8/20 against fp16's 15/20);
// keys 40 and values 32 (3.125 + 2.25 bits, 2.69 in all) found 14/20 and
// every pass key, at lower perplexity (docs/FIDELITY.md, "Bits between keys
// and values").
inline constexpr int kCalibrateKeyStagesPer128 = 40;
inline constexpr int kCalibrateValueStagesPer128 = 32;

// `config` with calibrate's stage defaults filled in for `head_dim`: a zero
// key_stages (unless key_group_stages set them) or value_stages becomes the
// constant above times head_dim / 128 (at least 1).
VqConfig WithCalibrateStages(VqConfig config, int head_dim);

// The VQ codec options of `vqkv calibrate` (kept here so every subcommand
// that builds a VqConfig spells them the same way).
struct CodecFlags {
  int key_stages = 0;  // 0 = kCalibrateKeyStagesPer128 * head_dim / 128
  int key_bits = 10;
  int value_stages = 0;  // 0 = kCalibrateValueStagesPer128 * head_dim / 128
  int value_bits = 9;
  std::string key_split = "rope";     // ParseKeySplit (kernels/key_split.h)
  std::vector<int> key_group_stages;  // empty = proportional
  bool per_head = false;
  std::string keys = "pre";  // pre | post (RoPE)
  int beam_width = 1;
  // Training: 4 Lloyd iterations on up to 48 points per centroid, i.e. on
  // every key vector of calibrate's default 16384 tokens x 3 KV heads with
  // 1024 codewords. The calibration-size study (docs/FIDELITY.md) chose it:
  // k-means on a sample of 8 per centroid left the held-out key error 2.9x
  // higher at the same 16k tokens, and perplexity at window 256 +2.56% /
  // +1.17% instead of +1.55% / +0.66%; 30 layers take ~15 CPU minutes.
  RvqTraining training = {.kmeans_iterations = 4,
                          .max_points_per_centroid = 48};
  // RvqTraining::fit by name (ParseRvqFit): kmeans | simvq.
  std::string fit = "kmeans";
};
void AddCodecFlags(CLI::App* app, CodecFlags* flags);
absl::StatusOr<VqConfig> ToVqConfig(const CodecFlags& flags);

// A codec for evaluation. `name` is fp16, kivi2, kivi4 or vq; vq loads the
// codebook file `codebooks` (beam width `beam_width`, key sketch of
// `key_sketch_bits` bits on layers `key_sketch_first_layer`.., VqConfig)
// and checks that it was fitted for
// `model`: kFailedPrecondition naming both models when the file records
// another model; a file that records none (format version 1) is checked for
// model.layout only, with one logged warning. keys_pre_rope tells how the
// codec wants its keys.
struct EvalCodec {
  std::string name;
  std::unique_ptr<Codec> codec;
  bool keys_pre_rope = false;
  int64_t codebook_bytes = 0;  // serialized codebook set, 0 without one
  std::string codebooks;       // the file, empty without one
};
absl::StatusOr<EvalCodec> MakeEvalCodec(const std::string& name,
                                        const std::string& codebooks,
                                        const ModelIdentity& model,
                                        int beam_width, int key_sketch_bits = 0,
                                        int key_sketch_first_layer = 0);

// A progress bar with ETA on stderr. On a terminal it redraws one line; to a
// file or pipe it writes a line at most every 10 s, so logs stay readable.
class ProgressBar {
 public:
  ProgressBar(std::string label, double total);
  // `done` in the units of total; `detail` is shown after the bar.
  void Update(double done, std::string_view detail = {});
  // Draws 100% and ends the line.
  void Finish(std::string_view detail = {});
  double elapsed_seconds() const;

 private:
  void Draw(double done, std::string_view detail, bool final);

  std::string label_;
  double total_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  bool drawn_ = false;
};

// "1h02m", "3m05s", "12s".
std::string FormatDuration(double seconds);

// Minimal JSON string escaping (quotes included).
std::string JsonString(std::string_view s);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_COMMON_H_
