// KvConnector: the worker side of an engine integration, one method per
// method of vLLM's KV connector v1 worker interface, so an engine adapter is
// a thin shim (docs/CLIENT.md maps them one by one):
//
//   register_kv_caches          -> RegisterKvCaches
//   start_load_kv               -> StartLoad
//   wait_for_layer_load(layer)  -> WaitForLayerLoad
//   save_kv_layer(layer, ...)   -> SaveLayer
//   wait_for_save               -> WaitForSave
//   get_finished                -> GetFinished
//   get_block_ids_with_load_errors -> TakeLoadErrorBlockIds
//   (request aborted)           -> Cancel;  (engine shutdown) -> Shutdown
//
// One forward pass: StartLoad(loads) -> for each layer: WaitForLayerLoad(l),
// attention, SaveLayer(l, saves) -> WaitForSave(). Loads fetch and verify
// every block on a background thread, then decode and write them into the
// engine's pages one layer at a time, so layer l's attention overlaps the
// decoding of layers after it; saves
// copy the new full blocks out of the pages during SaveLayer (so
// WaitForSave returns as soon as the pages may be reused) and encode and
// send them in the background. When staging is full (max_inflight_bytes) a
// save is dropped and counted, never waited for. A load that fails part
// way reports the engine block ids from the first bad vqkv block on, so the
// engine recomputes from the valid prefix; no unverified byte is written.
//
// Pages in host memory are read and written directly. Pages in CUDA device
// memory (PagedKvCaches::device kCuda, in a build with CUDA) go through a
// KvDevice (client/kv_device.h): copies on a stream of the connector's own,
// ordered with the engine's compute stream by events, between the pages and
// pinned host staging; SaveLayer and WaitForLayerLoad enqueue stream waits
// instead of blocking the host on the GPU. The codec runs on the CPU in both
// cases (docs/CLIENT.md, "CUDA device pages"), unless the client searches
// on the GPU (encode_cuda_device), encodes saves from the pages there
// (encode_on_device: only the codes come back) or decodes loads there
// (decode_on_device: only the codes go to the device).
//
// Thread safety: the engine calls these from its worker thread, one forward
// pass at a time; GetFinished / TakeLoadErrorBlockIds / Cancel may be called
// from another thread.
#ifndef VQKV_CLIENT_KV_CONNECTOR_H_
#define VQKV_CLIENT_KV_CONNECTOR_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/cache_client.h"
#include "client/kv_device.h"
#include "client/paged_kv.h"
#include "client/peer/peer_inbox.h"
#include "client/peer/peer_link.h"

namespace vqkv::client {

// A request's blocks to load: its tokens, salt, the engine pages that hold
// (or will hold) them, and how many leading tokens to load (the scheduler's
// Lookup answer; a multiple of block_tokens).
struct LoadSpec {
  std::string request_id;
  std::vector<int32_t> tokens;
  std::string salt;
  std::vector<int32_t> block_ids;
  int64_t num_tokens = 0;
  // Disaggregated serving (AttachPeer): the blocks come from the handoff a
  // prefill engine sent under this request_id, waiting for it up to
  // PeerOptions::wait; the blocks before the handoff's first one, and all of
  // them if it did not come or was dropped, come from the cache service.
  bool from_peer = false;
};

// A request's KV to save: the full vqkv blocks of tokens
// [skip_tokens, tokens.size()) are saved (skip_tokens: what was loaded or
// is known cached; rounded down to a block).
struct SaveSpec {
  std::string request_id;
  std::vector<int32_t> tokens;
  std::string salt;
  std::vector<int32_t> block_ids;
  int64_t skip_tokens = 0;
  // Disaggregated serving (AttachPeer): the saved blocks are also sent to
  // the peer under request_id, all of them, whether or not the cache
  // already has them: layer by layer as each is encoded when the save is
  // encoded on the device from the pages, else after the last layer.
  bool send_to_peer = false;
};

// The handoff between a prefill and a decode engine (AttachPeer).
struct PeerOptions {
  // How long a load with LoadSpec::from_peer waits for its handoff.
  absl::Duration wait = absl::Seconds(30);
  // Where received handoffs wait for their load.
  PeerInbox::Options inbox;
};

struct FinishedRequests {
  std::vector<std::string> saved;   // background save done (or dropped)
  std::vector<std::string> loaded;  // load done (check the error block ids)
};

struct ConnectorStats {
  int64_t loads_started = 0;
  int64_t loads_failed = 0;  // requests with at least one failed block
  int64_t saves_started = 0;
  int64_t saves_dropped = 0;
  // Blocks a load decoded on the device (CacheClientOptions::
  // decode_on_device); the others of a load were decoded on the host.
  int64_t blocks_decoded_on_device = 0;
  // Blocks a save encoded on the device from the pages (encode_on_device)
  // and handed to the background, stored or found present.
  int64_t blocks_encoded_on_device = 0;
  // AttachPeer: blocks sent to the peer; blocks of from_peer loads that
  // came from a handoff and were verified; from_peer loads whose handoff
  // did not come in time, was dropped or did not match their tokens (they
  // loaded from the cache service instead); messages from the peer that
  // could not be parsed; sends that failed.
  int64_t peer_blocks_sent = 0;
  // Layers of device-encoded saves sent as slices as soon as each was
  // encoded (one per save and layer).
  int64_t peer_layers_sent = 0;
  int64_t peer_blocks_loaded = 0;
  int64_t peer_handoffs_missed = 0;
  int64_t peer_messages_rejected = 0;
  int64_t peer_sends_failed = 0;
};

// Which codec paths run on the GPU of registered CUDA pages (both false for
// host pages), and, for a path left on the host under DeviceUse::kAuto,
// why (the refusal's message; empty when the option was kOff).
struct DevicePaths {
  bool decode_on_device = false;
  bool encode_on_device = false;
  std::string decode_on_host_because;
  std::string encode_on_host_because;
};

class KvConnector {
 public:
  // `client` must outlive the connector.
  explicit KvConnector(CacheClient* client);
  ~KvConnector();

  // Records the engine's page tensors. Errors: kInvalidArgument when they do
  // not match the client's layout; for device memory, kUnimplemented in a
  // build without CUDA and kFailedPrecondition when the GPU cannot be used;
  // with decode_on_device or encode_on_device kOn, kUnimplemented when the
  // codec cannot be run on the device and the device's error when its
  // codebooks cannot be loaded; the message names the option. Under kAuto
  // those refusals leave the path on the host (device_paths()).
  absl::Status RegisterKvCaches(PagedKvCaches caches);
  // What RegisterKvCaches chose; all false before it.
  DevicePaths device_paths() const;

  // Connects this engine to another for disaggregated serving (client/
  // peer/peer_link.h): saves with SaveSpec::send_to_peer send their sealed
  // blocks through `link` in the background after their last layer, and a
  // thread of this connector receives the peer's handoffs into an inbox
  // (PeerInbox) for loads with LoadSpec::from_peer. Every block from the
  // peer is verified as a block from the cache is, and its hash checked
  // against the request's own tokens, before it reaches the pages. Call
  // once, before the first load or save that uses it; Shutdown closes the
  // link. Errors: kInvalidArgument for a null link; kFailedPrecondition
  // when one is attached already.
  absl::Status AttachPeer(std::shared_ptr<KvPeerLink> link,
                          const PeerOptions& options = {});

  // Starts loading each spec's first num_tokens tokens into its pages.
  // Errors: kFailedPrecondition before RegisterKvCaches; kInvalidArgument for
  // a spec whose block_ids do not cover num_tokens or name a page out of
  // range, or num_tokens not a multiple of block_tokens.
  absl::Status StartLoad(std::vector<LoadSpec> loads);
  // Returns once `layer` of every load started by the last StartLoad is in
  // the pages (or has failed), while later layers may still be decoding;
  // the last layer returns once the whole load is done and its failed block
  // ids are recorded. No-op when nothing is loading. Device pages: returns
  // once the layer's copy is enqueued, having made the compute stream wait
  // for it.
  absl::Status WaitForLayerLoad(int layer);

  // Copies `layer` of each spec's new full blocks into staging. Call for
  // layers 0..layers-1 in order with the same specs; after the last layer
  // the blocks are encoded and sent in the background.
  // Errors: kFailedPrecondition before RegisterKvCaches or out of order;
  // kInvalidArgument for bad specs.
  absl::Status SaveLayer(int layer, const std::vector<SaveSpec>& saves);
  // Returns once the pages of this pass's saves may be reused (device
  // pages: by work enqueued on the compute stream from now on).
  absl::Status WaitForSave();

  // Requests whose load or save finished since the last call.
  FinishedRequests GetFinished();
  // Engine block ids whose load failed since the last call.
  std::vector<int32_t> TakeLoadErrorBlockIds();
  // Forgets a request: a save not yet sent is dropped; a load in progress
  // completes (its pages are written) but is not reported.
  void Cancel(const std::string& request_id);
  // Waits up to `timeout` for background work; saves not started by then
  // are dropped, and it returns once no save refers to this object.
  void Shutdown(absl::Duration timeout);

  ConnectorStats stats() const;

  // Test seam: called on the load thread each time a layer of a load is in
  // the pages (WaitForLayerLoad(layer) may return from then on); the load
  // goes on when it returns. Set before StartLoad.
  void SetLayerLoadedHookForTesting(std::function<void(int layer)> hook) {
    layer_loaded_hook_ = std::move(hook);
  }
  // Test seam: makes the KvDevice for device caches (default NewKvDevice).
  // Set before RegisterKvCaches.
  using KvDeviceFactory =
      std::function<absl::StatusOr<std::unique_ptr<KvDevice>>(
          const PagedKvCaches&)>;
  void SetKvDeviceFactoryForTesting(KvDeviceFactory factory) {
    device_factory_ = std::move(factory);
  }

 private:
  struct LoadBatch;
  struct PendingSave;
  class PendingGuard;
  void RunLoad(std::shared_ptr<LoadBatch> batch);
  // A from_peer load's blocks: its handoff's (blocks [*peer_first,
  // *peer_first + *peer_n), those whose hashes are the request's), the rest
  // from the cache service.
  std::vector<GetItem> FetchFromPeer(const LoadSpec& spec,
                                     absl::Span<const BlockHash> hashes,
                                     absl::Time deadline, size_t* peer_first,
                                     size_t* peer_n);
  // AttachPeer's receiver thread: the link's messages into inbox_.
  void ReceiveFromPeer();
  // The final message(s) of a save's handoff: its blocks (every chain
  // position from first_block, sorted here), those whose layers went as
  // slices (header_only_positions) as their headers alone; queued to the
  // peer sender.
  void QueuePeerBlocks(std::shared_ptr<KvPeerLink> peer,
                       const std::string& request_id, uint32_t first_block,
                       std::vector<EncodedBlock> blocks,
                       const std::vector<int64_t>& header_only_positions);
  // An empty final message: the peer's load stops waiting for a handoff
  // that will not come.
  void QueuePeerEnd(std::shared_ptr<KvPeerLink> peer,
                    const std::string& request_id, uint32_t first_block);
  // SaveLayer: queues `layer`'s slices of the device-encoded blocks of the
  // pass's send_to_peer saves, to go once `event` (their encode) is done.
  void QueuePeerLayerLocked(int layer, KvDevice::Event event,
                            const VqDecodePlan::LayerSlices& slices)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The peer sender thread: runs peer_jobs_ in order, so a request's layer
  // messages leave before its final one.
  void SendPeerJobs();
  void QueuePeerJob(std::function<void()> job);
  // Drops the saves of this pass that are not yet handed to the background
  // (released, counted, reported finished).
  void DropSavingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Enables the device's decode and encode as the options ask (plan_,
  // paths_); RegisterKvCaches' errors for them.
  absl::Status ChooseDevicePaths(KvDevice* device)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  CacheClient* const client_;
  mutable absl::Mutex mu_;
  bool registered_ ABSL_GUARDED_BY(mu_) = false;
  PagedKvCaches caches_;  // written once by RegisterKvCaches
  // The codec's device plan when loads decode (decode_on_device) or saves
  // encode (encode_on_device) on the device; ditto. Declared before
  // device_, which may refer to it until it goes.
  std::optional<VqDecodePlan> plan_;
  DevicePaths paths_;                 // ditto
  std::unique_ptr<KvDevice> device_;  // device caches only; ditto
  KvDeviceFactory device_factory_;
  KvDevice::Event last_gather_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<void(int)> layer_loaded_hook_;  // set before StartLoad
  std::shared_ptr<LoadBatch> load_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<PendingSave>> saving_ ABSL_GUARDED_BY(mu_);
  int next_save_layer_ ABSL_GUARDED_BY(mu_) = 0;
  FinishedRequests finished_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> load_errors_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> cancelled_ ABSL_GUARDED_BY(mu_);
  ConnectorStats stats_ ABSL_GUARDED_BY(mu_);
  // Background saves that may still touch this object. pending_mu_ is a
  // leaf lock: nothing is called while holding it.
  absl::Mutex pending_mu_;
  int pending_saves_ ABSL_GUARDED_BY(pending_mu_) = 0;
  std::atomic<bool> stopping_{false};
  // AttachPeer: written once, before use.
  std::shared_ptr<KvPeerLink> peer_;
  PeerOptions peer_options_;
  std::unique_ptr<PeerInbox> inbox_;
  std::thread peer_receiver_;
  absl::Mutex peer_mu_;
  std::deque<std::function<void()>> peer_jobs_ ABSL_GUARDED_BY(peer_mu_);
  bool peer_busy_ ABSL_GUARDED_BY(peer_mu_) = false;
  bool peer_stop_ ABSL_GUARDED_BY(peer_mu_) = false;
  std::thread peer_sender_;
};

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_KV_CONNECTOR_H_
