#include "tools/common.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/file.h"
#include "base/logging.h"
#include "base/status_macros.h"
#include "kernels/codebook_set.h"
#include "kernels/codec_factory.h"
#include "kernels/key_split.h"
#include "model/fingerprint.h"

namespace vqkv::tools {

int Fail(const absl::Status& status) {
  // One line, whatever the message holds.
  std::string msg(status.message());
  std::replace(msg.begin(), msg.end(), '\n', ' ');
  if (msg.empty()) msg = absl::StatusCodeToString(status.code());
  std::fprintf(stderr, "vqkv: error: %s\n", msg.c_str());
  return 1;
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& path) {
  // Name the file once: some reader errors name it already.
  auto prefix = [&path](const absl::Status& s) {
    if (absl::StrContains(s.message(), path)) return s;
    return absl::Status(s.code(),
                        absl::StrCat("model ", path, ": ", s.message()));
  };
  LoadedModel out;
  absl::StatusOr<std::unique_ptr<model::GgufFile>> gguf =
      model::GgufFile::Open(path);
  if (!gguf.ok()) return prefix(gguf.status());
  out.gguf = *std::move(gguf);
  // The architecture first: a tokenizer error on a non-LLaMA file would
  // hide the real reason.
  absl::StatusOr<std::unique_ptr<model::LlamaModel>> model =
      model::LlamaModel::FromGguf(*out.gguf);
  if (!model.ok()) return prefix(model.status());
  out.model = *std::move(model);
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tok =
      model::Tokenizer::FromGguf(*out.gguf);
  if (!tok.ok()) return prefix(tok.status());
  out.tokenizer = *std::move(tok);
  absl::StatusOr<ModelIdentity> id =
      model::IdentifyModel(*out.gguf, out.model->config().kv_layout());
  if (!id.ok()) return prefix(id.status());
  out.identity = *std::move(id);
  return out;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  VQKV_ASSIGN_OR_RETURN(std::string text, base::ReadFile(path));
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("text ", path, " is empty"));
  }
  return text;
}

absl::StatusOr<std::vector<int32_t>> TokenizeFiles(
    const model::Tokenizer& tokenizer, const std::vector<std::string>& paths,
    int64_t min_tokens) {
  if (paths.empty()) return absl::InvalidArgumentError("no --text given");
  std::vector<int32_t> ids;
  for (const std::string& p : paths) {
    absl::StatusOr<std::string> text = ReadTextFile(p);
    if (!text.ok()) return text.status();
    std::vector<int32_t> part = tokenizer.Encode(*text);
    ids.insert(ids.end(), part.begin(), part.end());
  }
  if (static_cast<int64_t>(ids.size()) < min_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("the text has ", ids.size(),
                                                   " tokens; at least ",
                                                   min_tokens, " are needed"));
  }
  return ids;
}

void AddCodecFlags(CLI::App* app, CodecFlags* f) {
  app->add_option("--key-stages", f->key_stages,
                  absl::StrCat("RVQ stages for keys (0 = head_dim*",
                               kCalibrateKeyStagesPer128,
                               "/128; the paper's split is 56)"));
  app->add_option("--key-bits", f->key_bits, "bits per key code (log2 K)");
  app->add_option("--value-stages", f->value_stages,
                  absl::StrCat("RVQ stages for values (0 = head_dim*",
                               kCalibrateValueStagesPer128,
                               "/128; the paper's split is 16)"));
  app->add_option("--value-bits", f->value_bits, "bits per value code");
  app->add_option("--key-split", f->key_split,
                  absl::StrCat("key dimension groups: ", KeySplitNames()))
      ->capture_default_str();
  app->add_option("--key-group-stages", f->key_group_stages,
                  "stages of the high- and low-frequency key groups "
                  "(default: proportional)")
      ->expected(2)
      ->delimiter(',');
  app->add_flag("--per-head", f->per_head, "one codebook per KV head");
  app->add_option("--keys", f->keys,
                  "code keys pre or post RoPE (pre: codes without position, "
                  "flat error at every context length; the client library "
                  "un-rotates an engine's post-RoPE keys for them; post: "
                  "needed by eval --attend-codes; docs/CODEC.md \"Key "
                  "position\")")
      ->capture_default_str();
  app->add_option("--kmeans-iters", f->training.kmeans_iterations,
                  "Lloyd iterations")
      ->capture_default_str();
  app->add_option("--max-points-per-centroid",
                  f->training.max_points_per_centroid,
                  "k-means training sample per centroid")
      ->capture_default_str();
  app->add_option("--max-training-points", f->training.max_training_points,
                  "cap on training vectors per quantizer (0 = all)");
  app->add_option("--fit", f->fit,
                  "codebook update per stage: kmeans (Lloyd) or simvq "
                  "(seeds x a learned linear map, docs/CODEC.md)")
      ->capture_default_str();
  app->add_option("--simvq-iters", f->training.simvq_iterations,
                  "SimVQ map updates per stage (--fit simvq)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  app->add_option("--simvq-lloyd-iters", f->training.simvq_lloyd_iterations,
                  "Lloyd iterations after the SimVQ updates (--fit simvq)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
}

VqConfig WithCalibrateStages(VqConfig config, int head_dim) {
  // Explicit group stages fix the key stages themselves.
  const bool groups_set =
      config.key_group_stages[0] != 0 || config.key_group_stages[1] != 0;
  if (config.key_stages == 0 && !groups_set) {
    config.key_stages = std::max(1, kCalibrateKeyStagesPer128 * head_dim / 128);
  }
  if (config.value_stages == 0) {
    config.value_stages =
        std::max(1, kCalibrateValueStagesPer128 * head_dim / 128);
  }
  return config;
}

absl::StatusOr<VqConfig> ToVqConfig(const CodecFlags& f) {
  VqConfig c;
  c.key_stages = f.key_stages;
  c.key_bits = f.key_bits;
  c.value_stages = f.value_stages;
  c.value_bits = f.value_bits;
  absl::StatusOr<KeySplit> split = ParseKeySplit(f.key_split);
  if (!split.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--key-split: ", split.status().message()));
  }
  c.key_split = *split;
  if (f.key_group_stages.size() == 2) {
    c.key_group_stages[0] = f.key_group_stages[0];
    c.key_group_stages[1] = f.key_group_stages[1];
  }
  c.per_head = f.per_head;
  if (f.keys != "pre" && f.keys != "post") {
    return absl::InvalidArgumentError(
        absl::StrCat("--keys must be pre or post, not '", f.keys, "'"));
  }
  c.keys_post_rope = f.keys == "post";
  c.beam_width = f.beam_width;
  c.training = f.training;
  absl::StatusOr<RvqFit> fit = ParseRvqFit(f.fit);
  if (!fit.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--fit: ", fit.status().message()));
  }
  c.training.fit = *fit;
  return c;
}

absl::StatusOr<EvalCodec> MakeEvalCodec(const std::string& name,
                                        const std::string& codebooks,
                                        const ModelIdentity& model,
                                        int beam_width, int key_sketch_bits,
                                        int key_sketch_first_layer) {
  const KvLayout& layout = model.layout;
  const std::string label = absl::StrCat("codebooks ", codebooks);
  EvalCodec out;
  out.name = name;
  std::optional<CodebookSet> set;
  if (name == "vq") {
    if (codebooks.empty()) {
      return absl::InvalidArgumentError("--codec vq needs --codebooks FILE");
    }
    absl::StatusOr<CodebookSet> loaded = CodebookSet::Load(codebooks);
    if (!loaded.ok()) {
      return absl::Status(loaded.status().code(),
                          absl::StrCat("codebooks ", codebooks, ": ",
                                       loaded.status().message()));
    }
    set = *std::move(loaded);
    // Before the layout check: a recorded identity names both models.
    VQKV_RETURN_IF_ERROR(set->CheckModel(model, label));
    out.keys_pre_rope = !set->config().keys_post_rope;
    absl::StatusOr<std::string> bytes = set->Serialize();
    if (!bytes.ok()) return bytes.status();
    out.codebook_bytes = static_cast<int64_t>(bytes->size());
    out.codebooks = codebooks;
  }
  absl::StatusOr<std::unique_ptr<Codec>> c =
      MakeCodec(name, layout, set ? &*set : nullptr, beam_width,
                key_sketch_bits, key_sketch_first_layer);
  if (!c.ok()) {
    if (name == "vq") {
      return absl::Status(
          c.status().code(),
          absl::StrCat("codebooks ", codebooks, ": ", c.status().message()));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "--codec must be fp16, vq, kivi2 or kivi4, not '", name, "'"));
  }
  out.codec = *std::move(c);
  if (set && !set->identity()) {
    // Layout matched; a version-1 file cannot say more. Not an error, so
    // codebooks fitted before identities existed keep working.
    VQKV_LOG(kWarning) << label
                       << " do not record the model they were fitted for "
                          "(codebook format version 1); only their layout "
                          "was checked against "
                       << model.ToString();
  }
  return out;
}

ProgressBar::ProgressBar(std::string label, double total)
    : label_(std::move(label)),
      total_(total > 0 ? total : 1),
      tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

double ProgressBar::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                       start_)
      .count();
}

void ProgressBar::Update(double done, std::string_view detail) {
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (drawn_ && since < (tty_ ? 0.2 : 10.0)) return;
  last_draw_ = now;
  Draw(done, detail, false);
}

void ProgressBar::Finish(std::string_view detail) {
  Draw(total_, detail, true);
}

void ProgressBar::Draw(double done, std::string_view detail, bool final) {
  drawn_ = true;
  const double frac = std::clamp(done / total_, 0.0, 1.0);
  const double elapsed = elapsed_seconds();
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(filled, '#');
  bar.append(kWidth - filled, '.');
  std::string eta = final ? "done in " + FormatDuration(elapsed)
                    : frac > 0.001
                        ? "ETA " + FormatDuration(elapsed * (1 - frac) / frac)
                        : "ETA ?";
  std::string line =
      absl::StrFormat("%s [%s] %5.1f%%  %s elapsed, %s  %s", label_, bar,
                      100 * frac, FormatDuration(elapsed), eta, detail);
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

std::string FormatDuration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, s % 3600 / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace vqkv::tools
