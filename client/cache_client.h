// CacheClient: what a serving engine (or a tool) links to reuse KV across
// requests, processes and machines. It names blocks of a token stream by
// their chain hash (client/hash.h), asks the cache how long a prefix it
// holds, encodes new blocks with a vqkv codec and stores them, and loads
// cached blocks back, verified and decoded, into the caller's buffers.
//
// Contract, in short:
// - Configuration faults (a bad layout, a negative token, buffers of the
//   wrong size, codebooks missing or made for another model) are the only
//   call-level errors. Everything that can go wrong with the cache itself
//   (unreachable, slow, full, evicted, corrupt) is a miss or a dropped save,
//   counted in stats(): a request is never stopped by the cache.
// - A block reaches the caller's buffers only after its checksum and its
//   header (codec, codebook hash, layout, token count) were verified; a bad
//   block ends the loaded prefix there.
// - Every backend call has a deadline (the options' timeouts). A backend
//   that fails `circuit_failures` calls in a row opens the circuit: lookups
//   and loads miss and saves are dropped at once, without a network call,
//   until a probe (one call let through every `circuit_probe`, doubling up
//   to 30 s while it keeps failing) succeeds.
// - Only full blocks are stored; the first block keeps its first
//   `sink_tokens` tokens exact in the block's fp16 section (attention sinks).
// - Keys are post-RoPE, as engines cache them, in the dimension order of
//   options.engine_key_pairs; block n of a chain holds the
//   tokens at positions n * block_tokens .. (n + 1) * block_tokens - 1.
//   With codebooks fitted on pre-RoPE keys (they record the model's RoPE,
//   codebook format version 4) the client un-rotates each key by its
//   position before encoding and rotates decoded keys back, so the codes
//   do not depend on position (docs/CODEC.md, "Key position").
//
// Tensor layout of the simple API (Store / Load): float32 keys and values,
// each contiguous [layer][token][kv_head][head_dim] over tokens.size()
// tokens. The paged, layer-wise API for engines is client/kv_connector.h.
//
// Thread safety: every method may be called concurrently.
#ifndef VQKV_CLIENT_CACHE_CLIENT_H_
#define VQKV_CLIENT_CACHE_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/backend.h"
#include "client/circuit_breaker.h"
#include "client/hash.h"
#include "kernels/block_format.h"
#include "kernels/codec.h"
#include "kernels/rope.h"
#include "kernels/vq_decode_plan.h"
#include "storage/namespace.h"

namespace vqkv::client {

// Whether a codec path runs on the GPU that holds CUDA device pages.
enum class DeviceUse {
  kOff,   // on the host
  kAuto,  // on the GPU where the codec and the GPU allow it, else the host
  kOn,    // on the GPU; registering pages fails where it cannot
};

struct CacheClientOptions {
  // Names the model weights; blocks of different models or revisions never
  // mix. model_id is required.
  std::string model_id;
  std::string weight_revision;
  // Tokens per cached block: a multiple of 16 (vLLM's default block).
  // docs/CLIENT.md gives the measurement behind the default.
  int block_tokens = 64;
  // The element type of the engine's KV cache (part of the namespace).
  storage::KvDtype dtype = storage::KvDtype::kFloat16;
  // Leading tokens of the first block kept exact (fp16), 0..block_tokens.
  int sink_tokens = 4;
  // How the engine's key head dimensions pair under RoPE. Blocks hold keys
  // in the codebooks' order: the pairing of their recorded RoPE, else
  // adjacent pairs (2i, 2i+1), the GGUF / llama.cpp order `vqkv calibrate`
  // fits on. Engines that load Hugging Face checkpoints (vLLM, SGLang:
  // "neox-style" rotary) cache keys in rotate-half order (i, i + rot/2):
  // with kHalf the client moves each key head's pairs into the blocks'
  // order before encoding and back after decoding (a permutation: exact),
  // over the recorded rotary dimensions, else the whole head. Engines of
  // either kind then share codebooks and blocks. Not part of the namespace.
  RopePairs engine_key_pairs = RopePairs::kAdjacent;

  // Deadlines of backend calls. A lookup is on the scheduler's critical
  // path, so it is short; a late answer is a miss.
  absl::Duration lookup_timeout = absl::Milliseconds(500);
  absl::Duration io_timeout = absl::Seconds(10);
  absl::Duration codebook_timeout = absl::Seconds(30);
  // Lease asked for on lookups that precede a load (0: none).
  uint32_t lease_ms = 5000;

  // Bytes of blocks staged for background saves (float copies of the KV
  // waiting to be encoded, then encoded bytes waiting for the network). A
  // save that would exceed it is dropped and counted, never waited for.
  uint64_t max_inflight_bytes = uint64_t{256} << 20;
  // Threads that encode and send background saves.
  int save_threads = 1;
  // Threads that verify and decode the blocks of one load in parallel.
  int decode_threads = 2;
  // The CUDA device whose tensor cores run the RVQ searches of every save
  // (client/gpu_encoder.h): an engine on a GPU passes its own, so saving
  // does not load the host's cores; -1 (default): the CPU. Each pick is the
  // CPU's or within bf16 rounding of it (kernels/cuda/rvq_cuda.cuh), and
  // blocks are shared either way. Needs a build with CUDA.
  int encode_cuda_device = -1;
  // Loads into CUDA device pages decode on that GPU
  // (kernels/cuda/paged_decode.cuh): the codes cross PCIe instead of
  // float32 rows, and the host's cores do not decode. A chain's first block
  // (its exact sink tokens) still decodes on the CPU. Needs a vq codec
  // without a key sketch and the codebooks' size in GPU memory (float32:
  // 1.07 GB for LLaMA-3.1-8B at the paper's rate, 0.14 GB for SmolLM2-135M
  // with the default calibration). Ignored for host pages. kAuto: where
  // the codec and the GPU allow it (KvConnector::device_paths says which
  // path was taken and why); kOn: RegisterKvCaches fails, naming the
  // option, where they do not. Checked on an H200 2026-12-04
  // (docs/CLIENT.md, "Decoding loads on the GPU").
  DeviceUse decode_on_device = DeviceUse::kAuto;
  // Saves from CUDA device pages encode on that GPU straight from the pages
  // (kernels/cuda/paged_encode.cuh and the tensor cores): no float32 copy
  // of the rows to the host and back, the host only seals and sends the
  // codes. A chain's first block (its exact sink tokens) is still gathered
  // and encoded as before. The same needs as decode_on_device, and a GPU of
  // compute capability 8.0 or later and at most 128 dimensions per
  // quantizer; the codebooks take 1.5x their float32 size with the tensor
  // cores' copy. Ignored for host pages; kAuto and kOn as above. Checked
  // on an H200 2026-12-04 (docs/CLIENT.md, "Encoding saves from the
  // pages").
  DeviceUse encode_on_device = DeviceUse::kAuto;

  CircuitBreakerOptions circuit;
};

// Counters since Create.
struct CacheClientStats {
  int64_t lookups = 0;
  int64_t lookup_errors = 0;  // lookups answered 0 because of an error
  int64_t blocks_stored = 0;
  int64_t blocks_already_present = 0;
  int64_t blocks_store_failed = 0;  // rejected (quota, capacity, fault)
  int64_t saves_dropped = 0;        // background saves dropped (staging full)
  int64_t blocks_loaded = 0;
  int64_t blocks_load_failed = 0;     // looked up but missing, corrupt or late
  int64_t bytes_sent = 0;             // encoded block bytes put
  int64_t bytes_received = 0;         // encoded block bytes fetched
  int64_t fp16_equivalent_bytes = 0;  // fp16 K+V of the blocks put or fetched
  bool circuit_open = false;
};

struct StoreResult {
  int64_t blocks = 0;           // full blocks of the tokens
  int64_t stored = 0;           // newly stored
  int64_t already_present = 0;  // present before the call
  int64_t failed = 0;           // not stored (quota, capacity, unreachable)
  int64_t bytes_sent = 0;
};

struct LoadResult {
  int64_t tokens = 0;  // leading tokens written to the buffers
  int64_t blocks = 0;
  int64_t bytes_received = 0;
};

// An encoded block ready to put, with its chain hash and position.
struct EncodedBlock {
  BlockHash hash;
  uint32_t chain_position = 0;
  std::string data;  // sealed block (kernels/block.h)
};

class CacheClient {
 public:
  // A client that encodes with `codec`. `codebook_file` is the serialized
  // codebook set the codec was built from (docs/CODEBOOK_FORMAT.md), empty
  // for codecs without one; it is registered with the backend now
  // (already registered is fine; a failure is logged in stats as an error
  // and retried on the first save).
  // Errors: kInvalidArgument for bad options (block_tokens not a positive
  // multiple of 16, sink_tokens out of range, empty model_id) or a codebook
  // file whose hash is not codec->codebook_hash(); kFailedPrecondition for a
  // VQ codec whose codebooks were fitted on pre-RoPE keys without recording
  // the model's RoPE (older codebook files).
  static absl::StatusOr<std::unique_ptr<CacheClient>> Create(
      CacheClientOptions options, std::shared_ptr<const Codec> codec,
      std::string codebook_file, std::unique_ptr<Backend> backend);

  // A client for a model whose VQ codebook set is known only by hash: fetches
  // the set from the backend, checks its content hash and layout, and builds
  // the codec (beam width 1, a key sketch of key_sketch_bits on layers
  // key_sketch_first_layer.., VqConfig; 0 bits = none).
  // Errors: kNotFound when the backend has no such set; kDataLoss when the
  // fetched bytes do not hash to `codebook_hash`; kInvalidArgument for a set
  // made for another layout; kUnavailable / kDeadlineExceeded when the
  // backend cannot be reached.
  static absl::StatusOr<std::unique_ptr<CacheClient>> CreateFromCodebookHash(
      CacheClientOptions options, uint64_t codebook_hash,
      const KvLayout& layout, std::unique_ptr<Backend> backend,
      int key_sketch_bits = 0, int key_sketch_first_layer = 0);

  ~CacheClient();
  CacheClient(const CacheClient&) = delete;
  CacheClient& operator=(const CacheClient&) = delete;

  const CacheClientOptions& options() const { return options_; }
  const storage::NamespaceSpec& namespace_spec() const { return ns_; }
  const Codec& codec() const { return *codec_; }
  const KvLayout& layout() const { return codec_->layout(); }
  int64_t block_tokens() const { return options_.block_tokens; }
  Backend& backend() { return *backend_; }

  // The chain hashes of the full blocks of `tokens` under this client's
  // namespace and `salt`. Errors: kInvalidArgument for a negative token.
  absl::StatusOr<std::vector<BlockHash>> HashTokens(
      absl::Span<const int32_t> tokens, absl::string_view salt = "") const;

  // --- Scheduler side -----------------------------------------------------

  // How many leading tokens of `tokens` are cached (a multiple of
  // block_tokens). With lease, the found blocks are leased for
  // options().lease_ms. Any backend error, the lookup deadline, or an open
  // circuit gives 0. Errors: kInvalidArgument for a negative token only.
  absl::StatusOr<int64_t> Lookup(absl::Span<const int32_t> tokens,
                                 absl::string_view salt = "",
                                 bool lease = true);
  // Lookup on a background thread; `done` gets the same result. `tokens`
  // and `salt` are copied.
  void LookupAsync(absl::Span<const int32_t> tokens, absl::string_view salt,
                   std::function<void(absl::StatusOr<int64_t>)> done);

  // --- Simple API ---------------------------------------------------------

  // Stores the full blocks of `tokens` whose KV is in keys/values (layout
  // above, tokens.size() tokens) and that the cache does not hold yet.
  // Synchronous. Errors: configuration faults only.
  absl::StatusOr<StoreResult> Store(absl::Span<const int32_t> tokens,
                                    absl::string_view salt, const float* keys,
                                    const float* values);

  // Loads the longest cached prefix of `tokens` into keys/values (layout
  // above, room for tokens.size() tokens): result.tokens leading tokens are
  // written, the rest of the buffers is untouched. Errors: configuration
  // faults only.
  absl::StatusOr<LoadResult> Load(absl::Span<const int32_t> tokens,
                                  absl::string_view salt, float* keys,
                                  float* values);

  // --- Blocks (the layer under both APIs) ---------------------------------

  // Encodes one block: keys/values float32 [layer][block_tokens][kv_head]
  // [head_dim], block `chain_position` of its chain (it places the keys for
  // pre-RoPE codebooks); chain_position 0 keeps the sink tokens exact.
  absl::StatusOr<EncodedBlock> EncodeBlock(const BlockHash& hash,
                                           uint32_t chain_position,
                                           const float* keys,
                                           const float* values) const;
  // EncodeBlock for many blocks at once: with encode_cuda_device, all of
  // their RVQ searches go to the GPU in one launch. Errors: EncodeBlock's,
  // for the first failing block; none is returned then.
  struct BlockToEncode {
    BlockHash hash;
    uint32_t chain_position = 0;
    const float* keys = nullptr;
    const float* values = nullptr;
  };
  absl::StatusOr<std::vector<EncodedBlock>> EncodeBlocks(
      absl::Span<const BlockToEncode> blocks) const;
  // Verifies `data`, block `chain_position` of its chain, against this
  // client's namespace and decodes it into keys/values (layout of
  // EncodeBlock). kDataLoss / kInvalidArgument / kFailedPrecondition for a
  // block that must not be used.
  absl::Status VerifyAndDecode(absl::string_view data, uint32_t chain_position,
                               float* keys, float* values) const;
  // Verifies and decodes fetched blocks (a chain prefix), decode_threads at
  // a time, and calls deliver(i, keys, values) in chain order for blocks
  // 0, 1, ... while every block before them decoded: the first missing or
  // bad block ends the prefix, and nothing after it is delivered. keys and
  // values are the layout of EncodeBlock, valid during the call. Counts
  // loaded and failed blocks in stats(). Returns the blocks delivered.
  int64_t DecodePrefix(
      absl::Span<const GetItem> blocks,
      const std::function<void(int64_t, const float*, const float*)>& deliver);
  // The two halves of VerifyAndDecode, for a loader that decodes a layer at
  // a time. VerifyPrefix checks fetched blocks 0, 1, ... (checksum, header
  // against this client's codec and namespace) without decoding, fills one
  // header per accepted block and returns how many blocks that is: the
  // first missing or bad block ends the prefix.
  int64_t VerifyPrefix(absl::Span<const GetItem> blocks,
                       std::vector<BlockHeader>* headers) const;
  // Decodes layers [first_layer, first_layer + num_layers) of a block
  // VerifyPrefix accepted (with its header), block `chain_position` of its
  // chain, into keys/values [num_layers][block_tokens][kv_head][head_dim].
  absl::Status DecodeVerifiedLayers(absl::string_view data,
                                    const BlockHeader& header,
                                    uint32_t chain_position, int first_layer,
                                    int num_layers, float* keys,
                                    float* values) const;
  // Seals a payload coded elsewhere (a device, from the pages) as the
  // block `chain_position` of its chain with hash `hash`, as EncodeBlocks
  // would for a block without sink tokens. Errors: SealBlock's.
  absl::StatusOr<EncodedBlock> SealPayload(
      const BlockHash& hash, uint32_t chain_position,
      absl::Span<const uint8_t> payload) const;
  // What a device needs to decode this client's blocks as
  // DecodeVerifiedLayers does (rotation and pair order included), and to
  // encode them as EncodeBlocks does, for blocks without an fp16 section.
  // The plan refers to the codec's codebooks, valid while the client lives.
  // Errors: kUnimplemented for a codec other than vq, or one with a key
  // sketch (MakeVqDecodePlan).
  absl::StatusOr<VqDecodePlan> DecodePlan() const;
  // Counts a load in stats(): blocks [0, loaded) of `blocks` reached the
  // caller, the rest failed.
  void CountLoad(absl::Span<const GetItem> blocks, int64_t loaded);
  // Puts encoded blocks; one status per block. Respects the circuit.
  std::vector<absl::Status> PutBlocks(absl::Span<const EncodedBlock> blocks);
  // Fetches blocks; one result per hash (a miss is kNotFound; an open
  // circuit or backend error gives kUnavailable for all).
  std::vector<GetItem> GetBlocks(absl::Span<const BlockHash> hashes);
  // Presence of each hash (all false on any error or open circuit).
  std::vector<bool> Present(absl::Span<const BlockHash> hashes,
                            uint32_t lease_ms);

  // Staging budget for background saves: TryReserve(bytes) succeeds while
  // the total reserved stays within max_inflight_bytes; Release gives back.
  bool TryReserve(uint64_t bytes);
  void Release(uint64_t bytes);
  void CountDroppedSave() { saves_dropped_.fetch_add(1); }
  // Runs `fn` on a save thread (FIFO). Returns false after Shutdown.
  bool RunInBackground(std::function<void()> fn);
  // Waits until background work queued so far has run, or `timeout` passed.
  // Returns true when idle.
  bool WaitIdle(absl::Duration timeout);
  // Stops the background threads after the queued work ran or `timeout`
  // passed (then the rest is dropped and counted). Idempotent.
  void Shutdown(absl::Duration timeout);

  CacheClientStats stats() const;
  const CircuitBreaker& circuit() const { return circuit_; }

 private:
  class Executor;
  CacheClient(CacheClientOptions options, std::shared_ptr<const Codec> codec,
              std::string codebook_file, std::unique_ptr<Backend> backend,
              const std::optional<RopeSpec>& key_rope);
  int64_t FirstPosition(uint32_t chain_position) const {
    return int64_t{chain_position} * options_.block_tokens;
  }
  // Registers the codebook file once; true when registered.
  bool EnsureCodebookRegistered();
  absl::Time Deadline(absl::Duration timeout) const {
    return absl::Now() + timeout;
  }

  const CacheClientOptions options_;
  const std::shared_ptr<const Codec> codec_;
  const std::string codebook_file_;
  const std::unique_ptr<Backend> backend_;
  // Set for pre-RoPE codebooks: keys are un-rotated before encoding.
  std::optional<Rope> key_rope_;
  // The key order of blocks (options_.engine_key_pairs) and the dimensions
  // it covers; reorder_keys_ when it is not the engine's.
  RopePairs block_key_pairs_ = RopePairs::kAdjacent;
  int key_rot_dims_ = 0;
  bool reorder_keys_ = false;
  storage::NamespaceSpec ns_;
  NamespaceId ns_digest_;
  CircuitBreaker circuit_;
  std::unique_ptr<Executor> executor_;         // background saves
  std::unique_ptr<Executor> lookup_executor_;  // LookupAsync
  std::atomic<bool> codebook_registered_{false};
  std::atomic<uint64_t> inflight_bytes_{0};

  std::atomic<int64_t> lookups_{0}, lookup_errors_{0}, blocks_stored_{0},
      blocks_already_present_{0}, blocks_store_failed_{0}, saves_dropped_{0},
      blocks_loaded_{0}, blocks_load_failed_{0}, bytes_sent_{0},
      bytes_received_{0}, fp16_equivalent_bytes_{0};
};

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_CACHE_CLIENT_H_
