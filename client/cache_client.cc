#include "client/cache_client.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/parallel.h"
#include "client/gpu_encoder.h"
#include "kernels/block.h"
#include "kernels/codebook_set.h"
#include "kernels/codec_factory.h"
#include "kernels/vq_codec.h"

namespace vqkv::client {
namespace {

// Whether a call-level backend error says the backend is unhealthy (and so
// counts toward opening the circuit), as opposed to a request it rejected.
bool IsBackendFailure(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kCancelled:
      return true;
    default:
      return false;
  }
}

absl::Status CheckOptions(const CacheClientOptions& o) {
  if (o.model_id.empty()) {
    return absl::InvalidArgumentError("model_id is required");
  }
  if (o.block_tokens < 16 || o.block_tokens % 16 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_tokens must be a positive multiple of 16, got ",
                     o.block_tokens));
  }
  if (o.sink_tokens < 0 || o.sink_tokens > o.block_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sink_tokens must be in 0..block_tokens, got ", o.sink_tokens));
  }
  if (o.decode_threads < 1 || o.decode_threads > 64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decode_threads must be in 1..64, got ", o.decode_threads));
  }
  if (o.save_threads < 1) {
    return absl::InvalidArgumentError("save_threads must be >= 1");
  }
  if (o.engine_key_pairs != RopePairs::kAdjacent &&
      o.engine_key_pairs != RopePairs::kHalf) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine_key_pairs must be adjacent (0) or half (1), got ",
                     static_cast<int>(o.engine_key_pairs)));
  }
  return absl::OkStatus();
}

// Calls fn(sequence offset, block offset, count) for each layer's slice of
// one block of B tokens starting at token t0: in a sequence buffer
// [layer][total][kv_head][head_dim] and a block buffer
// [layer][B][kv_head][head_dim].
template <typename Fn>
void ForEachLayerSlice(const KvLayout& l, int64_t B, int64_t total, int64_t t0,
                       Fn fn) {
  const int64_t row = int64_t{l.kv_heads} * l.head_dim;
  for (int layer = 0; layer < l.layers; ++layer) {
    fn(static_cast<size_t>((layer * total + t0) * row),
       static_cast<size_t>(layer * B * row), static_cast<size_t>(B * row));
  }
}

}  // namespace

// A fixed pool of threads running closures in FIFO order, with a way to wait
// until everything queued so far has run.
class CacheClient::Executor {
 public:
  explicit Executor(int threads) {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this] { Loop(); });
    }
  }
  ~Executor() { Stop(absl::ZeroDuration()); }

  bool Submit(std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    queue_.push_back(std::move(fn));
    cv_.notify_one();
    return true;
  }

  bool WaitIdle(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return idle_cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [this] {
      return queue_.empty() && running_ == 0;
    });
  }

  // Runs what is queued for up to `timeout`, then drops the rest. Returns
  // the number of closures dropped.
  int64_t Stop(absl::Duration timeout) {
    if (timeout > absl::ZeroDuration()) WaitIdle(timeout);
    int64_t dropped = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ && threads_.empty()) return 0;
      stopping_ = true;
      dropped = static_cast<int64_t>(queue_.size());
      queue_.clear();
      cv_.notify_all();
    }
    for (std::thread& t : threads_) t.join();
    threads_.clear();
    return dropped;
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
        ++running_;
      }
      fn();
      {
        std::lock_guard<std::mutex> lock(mu_);
        --running_;
        if (queue_.empty() && running_ == 0) idle_cv_.notify_all();
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::function<void()>> queue_;
  int running_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

absl::StatusOr<std::unique_ptr<CacheClient>> CacheClient::Create(
    CacheClientOptions options, std::shared_ptr<const Codec> codec,
    std::string codebook_file, std::unique_ptr<Backend> backend) {
  if (codec == nullptr) return absl::InvalidArgumentError("codec is null");
  if (backend == nullptr) {
    return absl::InvalidArgumentError("backend is null");
  }
  absl::Status s = CheckOptions(options);
  if (!s.ok()) return s;
  s = codec->layout().Validate();
  if (!s.ok()) return s;
  std::optional<RopeSpec> key_rope;
  if (codec->codebook_hash() != 0) {
    if (codebook_file.empty()) {
      return absl::InvalidArgumentError(
          "the codec uses a codebook set: pass its file (or use "
          "CreateFromCodebookHash)");
    }
    absl::StatusOr<CodebookSet> set = CodebookSet::Deserialize(codebook_file);
    if (!set.ok()) return set.status();
    absl::StatusOr<uint64_t> hash = set->Hash();
    if (!hash.ok()) return hash.status();
    if (*hash != codec->codebook_hash()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the codebook file has hash ", absl::Hex(*hash, absl::kZeroPad16),
          " but the codec encodes with ",
          absl::Hex(codec->codebook_hash(), absl::kZeroPad16)));
    }
    if (!set->config().keys_post_rope) {
      if (!set->key_rope()) {
        return absl::FailedPreconditionError(
            "the codebooks were fitted on pre-RoPE keys but do not record "
            "the model's RoPE (codebook format version 4), which the client "
            "needs to code the post-RoPE keys engines cache: rewrite them "
            "with this build's `vqkv calibrate --refit-gains FILE`, or "
            "calibrate again");
      }
      key_rope = *set->key_rope();
    }
  }
  // With a recorded RoPE the pairs span its (validated, even) rotary
  // dimensions; otherwise the whole head, which must then pair up.
  if (!key_rope && options.engine_key_pairs != RopePairs::kAdjacent &&
      codec->layout().head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine_key_pairs asks to reorder key pairs, but head_dim ",
        codec->layout().head_dim, " is odd"));
  }
  auto client = std::unique_ptr<CacheClient>(
      new CacheClient(std::move(options), std::move(codec),
                      std::move(codebook_file), std::move(backend), key_rope));
  s = storage::ValidateNamespaceSpec(client->ns_);
  if (!s.ok()) return s;
  client->EnsureCodebookRegistered();
  return client;
}

absl::StatusOr<std::unique_ptr<CacheClient>>
CacheClient::CreateFromCodebookHash(CacheClientOptions options,
                                    uint64_t codebook_hash,
                                    const KvLayout& layout,
                                    std::unique_ptr<Backend> backend,
                                    int key_sketch_bits,
                                    int key_sketch_first_layer) {
  if (backend == nullptr) {
    return absl::InvalidArgumentError("backend is null");
  }
  absl::StatusOr<std::string> file = backend->GetCodebook(
      codebook_hash, absl::Now() + options.codebook_timeout);
  if (!file.ok()) return file.status();
  absl::StatusOr<CodebookSet> set = CodebookSet::Deserialize(*file);
  if (!set.ok()) {
    return absl::DataLossError(
        absl::StrCat("the codebook set fetched from ", backend->Describe(),
                     " does not parse: ", set.status().message()));
  }
  absl::StatusOr<uint64_t> hash = set->Hash();
  if (!hash.ok()) return hash.status();
  if (*hash != codebook_hash) {
    return absl::DataLossError(
        absl::StrCat("the codebook set fetched from ", backend->Describe(),
                     " hashes to ", absl::Hex(*hash, absl::kZeroPad16),
                     ", not ", absl::Hex(codebook_hash, absl::kZeroPad16)));
  }
  absl::StatusOr<std::unique_ptr<Codec>> codec =
      MakeCodec("vq", layout, &*set, /*beam_width=*/1, key_sketch_bits,
                key_sketch_first_layer);
  if (!codec.ok()) return codec.status();
  if (absl::Status st =
          AttachCudaEncoder(options.encode_cuda_device, codec->get());
      !st.ok()) {
    return st;
  }
  return Create(std::move(options),
                std::shared_ptr<const Codec>(*std::move(codec)),
                *std::move(file), std::move(backend));
}

CacheClient::CacheClient(CacheClientOptions options,
                         std::shared_ptr<const Codec> codec,
                         std::string codebook_file,
                         std::unique_ptr<Backend> backend,
                         const std::optional<RopeSpec>& key_rope)
    : options_(std::move(options)),
      codec_(std::move(codec)),
      codebook_file_(std::move(codebook_file)),
      backend_(std::move(backend)),
      circuit_(options_.circuit),
      executor_(std::make_unique<Executor>(options_.save_threads)),
      lookup_executor_(std::make_unique<Executor>(2)) {
  const KvLayout& l = codec_->layout();
  if (key_rope) key_rope_.emplace(l.head_dim, *key_rope);
  block_key_pairs_ = key_rope ? key_rope->pairs : RopePairs::kAdjacent;
  key_rot_dims_ = key_rope ? key_rope->rot_dims : l.head_dim;
  reorder_keys_ = options_.engine_key_pairs != block_key_pairs_;
  ns_.model_id = options_.model_id;
  ns_.weight_revision = options_.weight_revision;
  ns_.codec = codec_->Descriptor();
  ns_.codec_id = static_cast<uint32_t>(codec_->id());
  ns_.codebook_hash = codec_->codebook_hash();
  ns_.block_tokens = static_cast<uint32_t>(options_.block_tokens);
  ns_.layers = static_cast<uint32_t>(l.layers);
  ns_.kv_heads = static_cast<uint32_t>(l.kv_heads);
  ns_.head_dim = static_cast<uint32_t>(l.head_dim);
  ns_.dtype = options_.dtype;
  ns_digest_ = storage::ComputeNamespaceId("", ns_);
  if (codebook_file_.empty()) codebook_registered_ = true;
}

CacheClient::~CacheClient() { Shutdown(absl::Seconds(5)); }

bool CacheClient::EnsureCodebookRegistered() {
  if (codebook_registered_.load()) return true;
  if (!circuit_.Allow()) return false;
  absl::Status s =
      backend_->PutCodebook(codec_->codebook_hash(), codebook_file_,
                            Deadline(options_.codebook_timeout));
  circuit_.Record(s.ok() || !IsBackendFailure(s));
  if (s.ok()) codebook_registered_ = true;
  return s.ok();
}

absl::StatusOr<std::vector<BlockHash>> CacheClient::HashTokens(
    absl::Span<const int32_t> tokens, absl::string_view salt) const {
  return HashChain(tokens, options_.block_tokens, salt, ns_digest_);
}

std::vector<bool> CacheClient::Present(absl::Span<const BlockHash> hashes,
                                       uint32_t lease_ms) {
  std::vector<bool> none(hashes.size(), false);
  if (hashes.empty()) return none;
  if (!circuit_.Allow()) return none;
  absl::StatusOr<std::vector<bool>> r = backend_->Lookup(
      ns_, hashes, lease_ms, Deadline(options_.lookup_timeout));
  circuit_.Record(r.ok() || !IsBackendFailure(r.status()));
  if (!r.ok() || r->size() != hashes.size()) return none;
  return *std::move(r);
}

absl::StatusOr<int64_t> CacheClient::Lookup(absl::Span<const int32_t> tokens,
                                            absl::string_view salt,
                                            bool lease) {
  absl::StatusOr<std::vector<BlockHash>> hashes = HashTokens(tokens, salt);
  if (!hashes.ok()) return hashes.status();
  lookups_.fetch_add(1);
  if (hashes->empty()) return 0;
  if (!circuit_.Allow()) {
    lookup_errors_.fetch_add(1);
    return 0;
  }
  absl::StatusOr<std::vector<bool>> r =
      backend_->Lookup(ns_, *hashes, lease ? options_.lease_ms : 0,
                       Deadline(options_.lookup_timeout));
  circuit_.Record(r.ok() || !IsBackendFailure(r.status()));
  if (!r.ok() || r->size() != hashes->size()) {
    lookup_errors_.fetch_add(1);
    return 0;
  }
  int64_t prefix = 0;
  while (prefix < static_cast<int64_t>(r->size()) && (*r)[prefix]) ++prefix;
  return prefix * options_.block_tokens;
}

void CacheClient::LookupAsync(
    absl::Span<const int32_t> tokens, absl::string_view salt,
    std::function<void(absl::StatusOr<int64_t>)> done) {
  std::vector<int32_t> t(tokens.begin(), tokens.end());
  std::string s(salt);
  auto run = [this, t = std::move(t), s = std::move(s), done]() {
    done(Lookup(t, s));
  };
  // Lookups have their own threads so they never queue behind saves.
  if (!lookup_executor_->Submit(run)) done(int64_t{0});
}

absl::StatusOr<EncodedBlock> CacheClient::EncodeBlock(
    const BlockHash& hash, uint32_t chain_position, const float* keys,
    const float* values) const {
  const BlockToEncode block{hash, chain_position, keys, values};
  absl::StatusOr<std::vector<EncodedBlock>> out =
      EncodeBlocks(absl::MakeConstSpan(&block, 1));
  if (!out.ok()) return out.status();
  return std::move((*out)[0]);
}

absl::StatusOr<std::vector<EncodedBlock>> CacheClient::EncodeBlocks(
    absl::Span<const BlockToEncode> blocks) const {
  const KvLayout& l = layout();
  const int64_t B = options_.block_tokens;
  // The keys as blocks hold them: in the codebooks' dimension order, and
  // without their rotation for pre-RoPE codebooks.
  std::vector<std::vector<float>> block_keys(blocks.size());
  std::vector<BlockInput> inputs;
  inputs.reserve(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockToEncode& b = blocks[i];
    BlockInput in{b.keys, b.values, {}};
    in.options.fp16_tokens = b.chain_position == 0 ? options_.sink_tokens : 0;
    in.options.keys_post_rope = !key_rope_.has_value();
    if (key_rope_ || reorder_keys_) {
      block_keys[i].assign(b.keys,
                           b.keys + l.layers * B * l.kv_heads * l.head_dim);
      if (reorder_keys_) {
        ReorderRopePairs(block_keys[i].data(), l.layers * B * l.kv_heads,
                         l.head_dim, key_rot_dims_, options_.engine_key_pairs,
                         block_key_pairs_);
      }
      if (key_rope_) {
        key_rope_->InvertBlock(block_keys[i].data(), l.layers, B, l.kv_heads,
                               FirstPosition(b.chain_position));
      }
      in.keys = block_keys[i].data();
    }
    inputs.push_back(in);
  }
  absl::StatusOr<std::vector<std::vector<uint8_t>>> sealed =
      vqkv::EncodeBlocks(*codec_, inputs, B);
  if (!sealed.ok()) return sealed.status();
  std::vector<EncodedBlock> out(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    out[i].hash = blocks[i].hash;
    out[i].chain_position = blocks[i].chain_position;
    out[i].data.assign(reinterpret_cast<const char*>((*sealed)[i].data()),
                       (*sealed)[i].size());
  }
  return out;
}

namespace {

absl::StatusOr<BlockHeader> VerifyForLoad(const Codec& codec,
                                          absl::string_view data,
                                          int64_t block_tokens,
                                          bool keys_post_rope) {
  absl::StatusOr<BlockHeader> h =
      VerifyBlock(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  if (!h.ok()) return h.status();
  if (((h->flags & kBlockKeysPostRope) != 0) != keys_post_rope) {
    return absl::InvalidArgumentError(
        absl::StrCat("block holds ", keys_post_rope ? "pre" : "post",
                     "-RoPE keys; this client codes ",
                     keys_post_rope ? "post" : "pre", "-RoPE keys"));
  }
  // Codec id, codebook hash, payload flags, layout and token count.
  if (absl::Status s = CheckBlockForCodec(codec, *h, block_tokens); !s.ok()) {
    return s;
  }
  return h;
}

}  // namespace

absl::Status CacheClient::VerifyAndDecode(absl::string_view data,
                                          uint32_t chain_position, float* keys,
                                          float* values) const {
  absl::StatusOr<BlockHeader> h = VerifyForLoad(
      *codec_, data, options_.block_tokens, !key_rope_.has_value());
  if (!h.ok()) return h.status();
  return DecodeVerifiedLayers(data, *h, chain_position, 0, layout().layers,
                              keys, values);
}

int64_t CacheClient::VerifyPrefix(absl::Span<const GetItem> blocks,
                                  std::vector<BlockHeader>* headers) const {
  headers->clear();
  for (const GetItem& item : blocks) {
    if (!item.ok()) break;
    absl::StatusOr<BlockHeader> h = VerifyForLoad(
        *codec_, *item, options_.block_tokens, !key_rope_.has_value());
    if (!h.ok()) break;
    headers->push_back(*h);
  }
  return static_cast<int64_t>(headers->size());
}

absl::Status CacheClient::DecodeVerifiedLayers(
    absl::string_view data, const BlockHeader& header, uint32_t chain_position,
    int first_layer, int num_layers, float* keys, float* values) const {
  absl::Status s = DecodeVerifiedBlockLayers(
      *codec_, header, reinterpret_cast<const uint8_t*>(data.data()),
      data.size(), options_.block_tokens, first_layer, num_layers, keys,
      values);
  if (!s.ok()) return s;
  const KvLayout& l = layout();
  if (key_rope_) {
    key_rope_->ApplyBlock(keys, num_layers, options_.block_tokens, l.kv_heads,
                          FirstPosition(chain_position));
  }
  if (reorder_keys_) {
    ReorderRopePairs(
        keys, int64_t{num_layers} * options_.block_tokens * l.kv_heads,
        l.head_dim, key_rot_dims_, block_key_pairs_, options_.engine_key_pairs);
  }
  return s;
}

absl::StatusOr<EncodedBlock> CacheClient::SealPayload(
    const BlockHash& hash, uint32_t chain_position,
    absl::Span<const uint8_t> payload) const {
  BlockOptions options;
  options.keys_post_rope = !key_rope_.has_value();
  absl::StatusOr<std::vector<uint8_t>> sealed =
      SealBlock(*codec_, payload, options_.block_tokens, options);
  if (!sealed.ok()) return sealed.status();
  EncodedBlock out;
  out.hash = hash;
  out.chain_position = chain_position;
  out.data.assign(reinterpret_cast<const char*>(sealed->data()),
                  sealed->size());
  return out;
}

absl::StatusOr<VqDecodePlan> CacheClient::DecodePlan() const {
  const auto* vq = dynamic_cast<const VqCodec*>(codec_.get());
  if (vq == nullptr) {
    return absl::UnimplementedError(absl::StrCat(
        "only vq blocks decode on a device, not ", codec_->Descriptor()));
  }
  std::optional<RopeSpec> rope;
  if (key_rope_) rope = key_rope_->spec();
  return MakeVqDecodePlan(*vq, rope, options_.engine_key_pairs);
}

void CacheClient::CountLoad(absl::Span<const GetItem> blocks, int64_t loaded) {
  const int64_t n = static_cast<int64_t>(blocks.size());
  const int64_t fp16_bytes =
      int64_t{4} * options_.block_tokens * layout().ElementsPerToken();
  for (int64_t b = 0; b < loaded; ++b) {
    bytes_received_.fetch_add(static_cast<int64_t>(blocks[b]->size()));
  }
  blocks_loaded_.fetch_add(loaded);
  fp16_equivalent_bytes_.fetch_add(fp16_bytes * loaded);
  if (loaded < n) blocks_load_failed_.fetch_add(n - loaded);
}

std::vector<absl::Status> CacheClient::PutBlocks(
    absl::Span<const EncodedBlock> blocks) {
  std::vector<absl::Status> out;
  if (blocks.empty()) return out;
  auto fail_all = [&](const absl::Status& s) {
    out.assign(blocks.size(), s);
    blocks_store_failed_.fetch_add(static_cast<int64_t>(blocks.size()));
    return out;
  };
  if (!EnsureCodebookRegistered()) {
    return fail_all(absl::UnavailableError(absl::StrCat(
        backend_->Describe(), ": the codebook set is not registered yet")));
  }
  if (!circuit_.Allow()) {
    return fail_all(absl::UnavailableError("circuit open"));
  }
  std::vector<PutItem> items;
  items.reserve(blocks.size());
  for (const EncodedBlock& b : blocks) {
    items.push_back(PutItem{b.hash, b.data, b.chain_position});
  }
  absl::StatusOr<std::vector<absl::Status>> r =
      backend_->Put(ns_, items, Deadline(options_.io_timeout));
  circuit_.Record(r.ok() || !IsBackendFailure(r.status()));
  if (!r.ok()) return fail_all(r.status());
  const KvLayout& l = layout();
  const int64_t fp16_bytes =
      int64_t{4} * options_.block_tokens * l.ElementsPerToken();
  for (size_t i = 0; i < r->size() && i < blocks.size(); ++i) {
    const absl::Status& s = (*r)[i];
    if (s.ok()) {
      blocks_stored_.fetch_add(1);
      bytes_sent_.fetch_add(static_cast<int64_t>(blocks[i].data.size()));
      fp16_equivalent_bytes_.fetch_add(fp16_bytes);
    } else if (absl::IsAlreadyExists(s)) {
      blocks_already_present_.fetch_add(1);
    } else {
      blocks_store_failed_.fetch_add(1);
    }
  }
  return *std::move(r);
}

std::vector<GetItem> CacheClient::GetBlocks(
    absl::Span<const BlockHash> hashes) {
  if (hashes.empty()) return {};
  if (!circuit_.Allow()) {
    return std::vector<GetItem>(hashes.size(),
                                absl::UnavailableError("circuit open"));
  }
  absl::StatusOr<std::vector<GetItem>> r =
      backend_->Get(ns_, hashes, Deadline(options_.io_timeout));
  circuit_.Record(r.ok() || !IsBackendFailure(r.status()));
  if (!r.ok() || r->size() != hashes.size()) {
    const absl::Status s =
        r.ok() ? absl::InternalError("wrong number of results") : r.status();
    return std::vector<GetItem>(hashes.size(), s);
  }
  return *std::move(r);
}

absl::StatusOr<StoreResult> CacheClient::Store(absl::Span<const int32_t> tokens,
                                               absl::string_view salt,
                                               const float* keys,
                                               const float* values) {
  absl::StatusOr<std::vector<BlockHash>> hashes = HashTokens(tokens, salt);
  if (!hashes.ok()) return hashes.status();
  if (!hashes->empty() && (keys == nullptr || values == nullptr)) {
    return absl::InvalidArgumentError("keys and values must not be null");
  }
  StoreResult result;
  result.blocks = static_cast<int64_t>(hashes->size());
  if (hashes->empty()) return result;
  const std::vector<bool> present = Present(*hashes, 0);
  const KvLayout& l = layout();
  const int64_t total = static_cast<int64_t>(tokens.size());
  const int64_t B = options_.block_tokens;
  const int64_t row = int64_t{l.kv_heads} * l.head_dim;
  // Missing blocks' KV in block layout, then one EncodeBlocks per group of
  // up to kEncodeGroup blocks (one GPU launch for each group with
  // encode_cuda_device; the group bounds the staging).
  constexpr size_t kEncodeGroup = 64;
  const size_t block_floats = static_cast<size_t>(l.layers * B * row);
  std::vector<size_t> missing;
  for (size_t b = 0; b < hashes->size(); ++b) {
    if (present[b]) {
      ++result.already_present;
    } else {
      missing.push_back(b);
    }
  }
  std::vector<EncodedBlock> encoded;
  std::vector<float> bk, bv;
  for (size_t first = 0; first < missing.size(); first += kEncodeGroup) {
    const size_t n = std::min(kEncodeGroup, missing.size() - first);
    bk.resize(n * block_floats);
    bv.resize(bk.size());
    std::vector<BlockToEncode> group;
    for (size_t m = 0; m < n; ++m) {
      const size_t b = missing[first + m];
      float* k = bk.data() + m * block_floats;
      float* v = bv.data() + m * block_floats;
      ForEachLayerSlice(l, B, total, b * B,
                        [&](size_t seq, size_t blk, size_t len) {
                          std::copy_n(keys + seq, len, k + blk);
                          std::copy_n(values + seq, len, v + blk);
                        });
      group.push_back({(*hashes)[b], static_cast<uint32_t>(b), k, v});
    }
    absl::StatusOr<std::vector<EncodedBlock>> e = EncodeBlocks(group);
    if (!e.ok()) return e.status();  // codec errors are configuration faults
    for (EncodedBlock& block : *e) encoded.push_back(std::move(block));
  }
  const std::vector<absl::Status> put = PutBlocks(encoded);
  for (size_t i = 0; i < put.size(); ++i) {
    if (put[i].ok()) {
      ++result.stored;
      result.bytes_sent += static_cast<int64_t>(encoded[i].data.size());
    } else if (absl::IsAlreadyExists(put[i])) {
      ++result.already_present;
    } else {
      ++result.failed;
    }
  }
  return result;
}

absl::StatusOr<LoadResult> CacheClient::Load(absl::Span<const int32_t> tokens,
                                             absl::string_view salt,
                                             float* keys, float* values) {
  absl::StatusOr<std::vector<BlockHash>> hashes = HashTokens(tokens, salt);
  if (!hashes.ok()) return hashes.status();
  LoadResult result;
  if (hashes->empty()) return result;
  if (keys == nullptr || values == nullptr) {
    return absl::InvalidArgumentError("keys and values must not be null");
  }
  const std::vector<bool> present = Present(*hashes, options_.lease_ms);
  size_t prefix = 0;
  while (prefix < present.size() && present[prefix]) ++prefix;
  if (prefix == 0) return result;
  std::vector<GetItem> got =
      GetBlocks(absl::MakeConstSpan(hashes->data(), prefix));
  const KvLayout& l = layout();
  const int64_t total = static_cast<int64_t>(tokens.size());
  const int64_t B = options_.block_tokens;
  result.blocks =
      DecodePrefix(got, [&](int64_t b, const float* bk, const float* bv) {
        ForEachLayerSlice(l, B, total, b * B,
                          [&](size_t seq, size_t blk, size_t n) {
                            std::copy_n(bk + blk, n, keys + seq);
                            std::copy_n(bv + blk, n, values + seq);
                          });
        result.bytes_received += static_cast<int64_t>(got[b]->size());
      });
  result.tokens = result.blocks * B;
  return result;
}

int64_t CacheClient::DecodePrefix(
    absl::Span<const GetItem> blocks,
    const std::function<void(int64_t, const float*, const float*)>& deliver) {
  const KvLayout& l = layout();
  std::vector<BlockHeader> headers;
  const int64_t n = VerifyPrefix(blocks, &headers);
  const size_t floats = static_cast<size_t>(l.layers) * options_.block_tokens *
                        l.kv_heads * l.head_dim;
  const int threads = std::max(1, options_.decode_threads);
  // Scratch for one round of `threads` blocks: decoded in parallel, then
  // delivered in order, so memory stays bounded and nothing past a bad
  // block reaches the caller.
  std::vector<std::vector<float>> keys(threads), values(threads);
  std::vector<absl::Status> status(threads);
  int64_t delivered = 0;
  for (int64_t first = 0; first < n; first += threads) {
    const int count = static_cast<int>(std::min<int64_t>(threads, n - first));
    auto decode = [&](int j) {
      keys[j].resize(floats);
      values[j].resize(floats);
      status[j] =
          DecodeVerifiedLayers(*blocks[first + j], headers[first + j],
                               static_cast<uint32_t>(first + j), 0, l.layers,
                               keys[j].data(), values[j].data());
    };
    base::RunParts(count, decode);
    for (int j = 0; j < count; ++j) {
      if (!status[j].ok()) {
        CountLoad(blocks, delivered);
        return delivered;
      }
      deliver(first + j, keys[j].data(), values[j].data());
      ++delivered;
    }
  }
  CountLoad(blocks, delivered);
  return delivered;
}

bool CacheClient::TryReserve(uint64_t bytes) {
  uint64_t cur = inflight_bytes_.load();
  do {
    if (cur + bytes > options_.max_inflight_bytes) return false;
  } while (!inflight_bytes_.compare_exchange_weak(cur, cur + bytes));
  return true;
}

void CacheClient::Release(uint64_t bytes) { inflight_bytes_.fetch_sub(bytes); }

bool CacheClient::RunInBackground(std::function<void()> fn) {
  return executor_->Submit(std::move(fn));
}

bool CacheClient::WaitIdle(absl::Duration timeout) {
  return executor_->WaitIdle(timeout);
}

void CacheClient::Shutdown(absl::Duration timeout) {
  lookup_executor_->Stop(timeout);
  saves_dropped_.fetch_add(executor_->Stop(timeout));
}

CacheClientStats CacheClient::stats() const {
  CacheClientStats s;
  s.lookups = lookups_.load();
  s.lookup_errors = lookup_errors_.load();
  s.blocks_stored = blocks_stored_.load();
  s.blocks_already_present = blocks_already_present_.load();
  s.blocks_store_failed = blocks_store_failed_.load();
  s.saves_dropped = saves_dropped_.load();
  s.blocks_loaded = blocks_loaded_.load();
  s.blocks_load_failed = blocks_load_failed_.load();
  s.bytes_sent = bytes_sent_.load();
  s.bytes_received = bytes_received_.load();
  s.fp16_equivalent_bytes = fp16_equivalent_bytes_.load();
  s.circuit_open = circuit_.open();
  return s;
}

}  // namespace vqkv::client
