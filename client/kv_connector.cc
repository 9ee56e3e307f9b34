#include "client/kv_connector.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/parallel.h"
#include "client/peer/peer_message.h"

namespace vqkv::client {

struct KvConnector::LoadBatch {
  std::vector<LoadSpec> specs;
  absl::Mutex mu;
  int layers_ready ABSL_GUARDED_BY(mu) = 0;  // layers [0, this) are written
  bool done ABSL_GUARDED_BY(mu) = false;
  // Device pages: each layer's copy into the pages (0: none was needed).
  std::vector<KvDevice::Event> layer_events ABSL_GUARDED_BY(mu);
  std::thread thread;
};

struct KvConnector::PendingSave {
  SaveSpec spec;
  std::vector<BlockHash> hashes;
  int64_t first_block = 0;  // blocks [first_block, hashes.size()) are saved
  int64_t reserved = 0;     // staging bytes reserved with the client
  // Indices i of the saved blocks (block first_block + i) whose rows are
  // copied out and encoded on the host, and (encode_on_device) those the
  // device encodes from the pages.
  std::vector<int64_t> host_blocks, device_blocks;
  // [host block][layer][block_tokens][kv_head][head_dim], in host_blocks'
  // order; for device pages, staging of the KvDevice, complete once
  // `gathered` is.
  std::shared_ptr<float[]> keys, values;
  // The device blocks' payloads, EncodedBytes(block_tokens) each in
  // device_blocks' order (KvDevice staging), complete once `gathered` is.
  std::shared_ptr<float[]> codes;
  KvDevice::Event gathered = 0;
  // Layer slices of its device blocks were queued to the peer.
  bool slices_sent = false;
};

namespace {

// Engine pages holding tokens [t0, t1) of a request.
void AppendPages(const std::vector<int32_t>& block_ids, int64_t page_size,
                 int64_t t0, int64_t t1, std::vector<int32_t>* out) {
  if (t1 <= t0) return;
  for (int64_t p = t0 / page_size; p <= (t1 - 1) / page_size; ++p) {
    if (p < static_cast<int64_t>(block_ids.size()))
      out->push_back(block_ids[p]);
  }
}

absl::Status CheckPages(const std::string& id,
                        const std::vector<int32_t>& block_ids,
                        int64_t page_size, int64_t num_blocks, int64_t tokens) {
  if (tokens <= 0) return absl::OkStatus();
  const int64_t need = (tokens + page_size - 1) / page_size;
  if (static_cast<int64_t>(block_ids.size()) < need) {
    return absl::InvalidArgumentError(
        absl::StrCat("request ", id, ": ", tokens, " tokens need ", need,
                     " pages of ", page_size, ", got ", block_ids.size()));
  }
  for (int64_t i = 0; i < need; ++i) {
    if (block_ids[i] < 0 || block_ids[i] >= num_blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", id, ": page id ", block_ids[i],
                       " is outside 0..", num_blocks - 1));
    }
  }
  return absl::OkStatus();
}

}  // namespace

KvConnector::KvConnector(CacheClient* client) : client_(client) {}

// Counts one background save of a connector while it lives.
class KvConnector::PendingGuard {
 public:
  explicit PendingGuard(KvConnector* c) : c_(c) {
    absl::MutexLock lock(&c_->pending_mu_);
    ++c_->pending_saves_;
  }
  ~PendingGuard() {
    absl::MutexLock lock(&c_->pending_mu_);
    --c_->pending_saves_;
  }

 private:
  KvConnector* const c_;
};

KvConnector::~KvConnector() { Shutdown(absl::Seconds(5)); }

absl::Status KvConnector::RegisterKvCaches(PagedKvCaches caches) {
  absl::Status s = caches.Validate(client_->layout());
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (registered_) {
    return absl::FailedPreconditionError("KV caches are already registered");
  }
  if (caches.device == Device::kCuda) {
    absl::StatusOr<std::unique_ptr<KvDevice>> device =
        device_factory_ ? device_factory_(caches) : NewKvDevice(caches);
    if (!device.ok()) return device.status();
    paths_ = DevicePaths{};
    plan_.reset();
    absl::Status chosen = ChooseDevicePaths(device->get());
    if (!chosen.ok()) return chosen;
    device_ = *std::move(device);
  }
  caches_ = std::move(caches);
  registered_ = true;
  return absl::OkStatus();
}

absl::Status KvConnector::ChooseDevicePaths(KvDevice* device) {
  const CacheClientOptions& o = client_->options();
  // Each path: the outcome of enabling it (the plan's first); a refusal
  // fails registration under kOn and leaves the path on the host under
  // kAuto, with its reason.
  struct Path {
    const char* option;
    DeviceUse use;
    bool* on;
    std::string* because;
  };
  const Path paths[2] = {
      {"decode_on_device", o.decode_on_device, &paths_.decode_on_device,
       &paths_.decode_on_host_because},
      {"encode_on_device", o.encode_on_device, &paths_.encode_on_device,
       &paths_.encode_on_host_because}};
  auto settle = [](const Path& p, const absl::Status& e) {
    if (e.ok()) {
      *p.on = true;
    } else if (p.use == DeviceUse::kOn) {
      return absl::Status(e.code(), absl::StrCat(p.option, ": ", e.message()));
    } else {
      *p.because = std::string(e.message());
    }
    return absl::OkStatus();
  };
  if (o.decode_on_device == DeviceUse::kOff &&
      o.encode_on_device == DeviceUse::kOff) {
    return absl::OkStatus();
  }
  absl::StatusOr<VqDecodePlan> plan = client_->DecodePlan();
  if (plan.ok()) plan_ = *std::move(plan);
  for (int i = 0; i < 2; ++i) {
    if (paths[i].use == DeviceUse::kOff) continue;
    absl::Status e = plan.status();
    if (e.ok() && paths[i].use == DeviceUse::kAuto &&
        plan_->shape.refine_stages > 0) {
      // Checked against the host reference, not yet run on a GPU
      // (KvConnectorCudaTest.LoadsDecodeOnTheGpuAsOnTheHost,
      // SavesEncodeOnTheGpuAsWellAsOnTheHost): opt in only.
      e = absl::UnimplementedError(
          absl::StrCat("the device ", i == 0 ? "decode" : "encode",
                       " of key refinements has not run on a GPU yet; ",
                       paths[i].option, " = kOn uses it"));
    }
    if (e.ok() && i == 0) e = device->EnableDecode(*plan_);
    if (e.ok() && i == 1) {
      // DecodePlan succeeded, so the codec is a VqCodec.
      e = device->EnableEncode(*plan_,
                               dynamic_cast<const VqCodec&>(client_->codec()));
    }
    if (absl::Status s = settle(paths[i], e); !s.ok()) return s;
  }
  return absl::OkStatus();
}

DevicePaths KvConnector::device_paths() const {
  absl::MutexLock lock(&mu_);
  return registered_ ? paths_ : DevicePaths{};
}

absl::Status KvConnector::StartLoad(std::vector<LoadSpec> loads) {
  std::shared_ptr<LoadBatch> previous;
  {
    absl::MutexLock lock(&mu_);
    if (!registered_) {
      return absl::FailedPreconditionError("RegisterKvCaches first");
    }
    previous = load_;
  }
  const int64_t B = client_->block_tokens();
  for (const LoadSpec& l : loads) {
    if (l.num_tokens < 0 || l.num_tokens % B != 0 ||
        l.num_tokens > static_cast<int64_t>(l.tokens.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", l.request_id, ": num_tokens ", l.num_tokens,
                       " must be a multiple of ", B, " within the request's ",
                       l.tokens.size(), " tokens"));
    }
    absl::Status s = CheckPages(l.request_id, l.block_ids, caches_.block_size,
                                caches_.num_blocks, l.num_tokens);
    if (!s.ok()) return s;
  }
  // The engine waited for every layer of the previous pass: join its thread.
  if (previous != nullptr && previous->thread.joinable()) {
    previous->thread.join();
  }
  auto batch = std::make_shared<LoadBatch>();
  batch->specs = std::move(loads);
  if (device_ != nullptr) {
    // The loads' pages may still be read by kernels of earlier passes.
    absl::Status s = device_->OrderAfterCompute();
    if (!s.ok()) return s;
  }
  {
    absl::MutexLock lock(&mu_);
    load_ = batch;
    stats_.loads_started += static_cast<int64_t>(batch->specs.size());
  }
  batch->thread = std::thread([this, batch] { RunLoad(batch); });
  return absl::OkStatus();
}

std::vector<GetItem> KvConnector::FetchFromPeer(
    const LoadSpec& spec, absl::Span<const BlockHash> hashes,
    absl::Time deadline, size_t* peer_first, size_t* peer_n) {
  absl::StatusOr<PeerTransfer> t =
      inbox_ != nullptr
          ? inbox_->Take(spec.request_id, deadline)
          : absl::FailedPreconditionError("no peer is attached (AttachPeer)");
  // The handoff's blocks must be the request's own: the same hashes at the
  // same chain positions. Anything else comes from the cache service.
  size_t first = hashes.size(), n = 0;
  if (t.ok()) {
    first = std::min<size_t>(t->first_block, hashes.size());
    while (first + n < hashes.size() && n < t->blocks.size() &&
           t->blocks[n].hash == hashes[first + n] &&
           !t->blocks[n].data.empty()) {
      ++n;
    }
  }
  if (!t.ok() || n == 0 ||
      (n < t->blocks.size() && first + n < hashes.size())) {
    absl::MutexLock lock(&mu_);
    ++stats_.peer_handoffs_missed;
  }
  *peer_first = first;
  *peer_n = n;
  std::vector<GetItem> got(hashes.size());
  std::vector<BlockHash> rest;
  std::vector<size_t> rest_at;
  for (size_t b = 0; b < hashes.size(); ++b) {
    if (b >= first && b < first + n) {
      got[b] = std::move(t->blocks[b - first].data);
    } else {
      rest.push_back(hashes[b]);
      rest_at.push_back(b);
    }
  }
  if (!rest.empty()) {
    std::vector<GetItem> fetched = client_->GetBlocks(rest);
    for (size_t j = 0; j < rest.size(); ++j) {
      got[rest_at[j]] = std::move(fetched[j]);
    }
  }
  return got;
}

void KvConnector::RunLoad(std::shared_ptr<LoadBatch> batch) {
  const KvLayout& l = client_->layout();
  const int64_t B = client_->block_tokens();
  const int64_t row = int64_t{l.kv_heads} * l.head_dim;
  // Fetch and verify every request's blocks first, then decode layer by
  // layer across all of them, so that WaitForLayerLoad(0) returns while the
  // later layers are still decoding (attention of layer 0 overlaps them).
  struct Fetched {
    std::vector<GetItem> got;
    std::vector<BlockHeader> headers;
    int64_t good = 0;  // blocks [0, good) verified and decoded so far
    // from_peer: blocks [peer_first, peer_first + peer_n) came from the
    // peer's handoff.
    size_t peer_first = 0, peer_n = 0;
  };
  std::vector<Fetched> fetched(batch->specs.size());
  struct Job {
    size_t spec;
    int64_t block;
  };
  std::vector<Job> jobs;
  // One wait for every from_peer load of the batch.
  const absl::Time peer_deadline = absl::Now() + peer_options_.wait;
  for (size_t i = 0; i < batch->specs.size(); ++i) {
    const LoadSpec& spec = batch->specs[i];
    if (spec.num_tokens / B == 0) continue;
    absl::StatusOr<std::vector<BlockHash>> hashes = client_->HashTokens(
        absl::MakeConstSpan(spec.tokens)
            .subspan(0, static_cast<size_t>(spec.num_tokens)),
        spec.salt);
    if (!hashes.ok()) continue;
    Fetched& f = fetched[i];
    f.got = spec.from_peer ? FetchFromPeer(spec, *hashes, peer_deadline,
                                           &f.peer_first, &f.peer_n)
                           : client_->GetBlocks(*hashes);
    f.good = client_->VerifyPrefix(f.got, &f.headers);
    for (int64_t b = 0; b < f.good; ++b) jobs.push_back({i, b});
  }
  // With decode_on_device, blocks without an fp16 section go to the device
  // as codes (ScatterCoded); the rest (a chain's first block, with its
  // exact sink tokens) are decoded here.
  std::vector<size_t> host_jobs, device_jobs;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const BlockHeader& h = fetched[jobs[j].spec].headers[jobs[j].block];
    (paths_.decode_on_device && h.fp16_tokens == 0 ? device_jobs : host_jobs)
        .push_back(j);
  }
  // Each layer's host blocks are split among decode_threads threads; a
  // block that fails to decode ends its request's prefix for every later
  // layer.
  const int threads = static_cast<int>(std::min<int64_t>(
      std::max(1, client_->options().decode_threads),
      std::max<int64_t>(1, static_cast<int64_t>(host_jobs.size()))));
  absl::Mutex fail_mu;
  // Any failure of the device fails every block of the batch: the pages
  // may hold part of a copy.
  bool device_failed = false;
  auto fail_all = [&] {
    device_failed = true;
    absl::MutexLock lock(&fail_mu);
    for (Fetched& f : fetched) f.good = 0;
  };
  // Device pages: a layer's host blocks are decoded into staging (two
  // buffers, so layer l + 1 decodes while layer l is copied) and copied in
  // one go.
  const size_t job_floats = static_cast<size_t>(B * row);
  const size_t stage_floats = host_jobs.size() * job_floats;  // keys or values
  std::shared_ptr<float[]> stage[2];
  KvDevice::Event stage_event[2] = {0, 0};
  KvDevice::Event last_event = 0;
  if (device_ != nullptr && !host_jobs.empty()) {
    for (auto& st : stage) {
      st = device_->NewStaging(2 * stage_floats);
      if (st == nullptr) fail_all();
    }
  }
  std::vector<char> decoded(host_jobs.size());
  for (int layer = 0; layer < l.layers; ++layer) {
    float* stage_k = nullptr;
    if (device_ != nullptr && !device_failed && !host_jobs.empty()) {
      const int which = layer % 2;
      if (stage_event[which] != 0 && !device_->Wait(stage_event[which]).ok()) {
        fail_all();
      } else {
        stage_k = stage[which].get();
      }
    }
    auto decode = [&](int t) {
      std::vector<float> own_k, own_v;
      if (stage_k == nullptr) {
        own_k.resize(job_floats);
        own_v.resize(job_floats);
      }
      for (size_t c = t; c < host_jobs.size(); c += threads) {
        decoded[c] = 0;
        const Job& job = jobs[host_jobs[c]];
        const LoadSpec& spec = batch->specs[job.spec];
        Fetched& f = fetched[job.spec];
        const int64_t b = job.block;
        {
          absl::MutexLock lock(&fail_mu);
          if (b >= f.good) continue;
        }
        float* k = stage_k != nullptr ? stage_k + c * job_floats : own_k.data();
        float* v = stage_k != nullptr ? stage_k + stage_floats + c * job_floats
                                      : own_v.data();
        const absl::Status st = client_->DecodeVerifiedLayers(
            *f.got[b], f.headers[b], static_cast<uint32_t>(b), layer, 1, k, v);
        if (!st.ok()) {
          absl::MutexLock lock(&fail_mu);
          f.good = std::min(f.good, b);
          continue;
        }
        decoded[c] = 1;
        if (stage_k == nullptr && device_ == nullptr) {
          ScatterLayer(caches_, layer, spec.block_ids, b * B, B, k, v);
        }
      }
    };
    if (!device_failed && !host_jobs.empty()) base::RunParts(threads, decode);
    KvDevice::Event event = 0;
    if (stage_k != nullptr && !device_failed) {
      std::vector<KvDevice::Rows> rows;
      for (size_t c = 0; c < host_jobs.size(); ++c) {
        if (!decoded[c]) continue;
        const Job& job = jobs[host_jobs[c]];
        rows.push_back({batch->specs[job.spec].block_ids, job.block * B, B,
                        stage_k + c * job_floats,
                        stage_k + stage_floats + c * job_floats});
      }
      absl::StatusOr<KvDevice::Event> e = device_->Scatter(layer, rows);
      if (e.ok()) {
        event = last_event = stage_event[layer % 2] = *e;
      } else {
        fail_all();
      }
    }
    if (!device_jobs.empty() && !device_failed) {
      std::vector<KvDevice::CodedRows> rows;
      const VqDecodePlan::LayerSlices s = plan_->Slices(B, layer);
      for (size_t j : device_jobs) {
        Fetched& f = fetched[jobs[j].spec];
        const int64_t b = jobs[j].block;
        if (b >= f.good) continue;  // only this thread lowers it now
        const BlockHeader& h = f.headers[b];
        const std::string& data = *f.got[b];
        if (h.tokens != B || s.value_offset + s.value_bytes > h.codes_bytes ||
            s.refine_offset + s.refine_bytes > h.codes_bytes ||
            data.size() < sizeof(BlockHeader) + h.codes_bytes) {
          f.good = std::min(f.good, b);
          continue;
        }
        const auto* codes =
            reinterpret_cast<const uint8_t*>(data.data()) + sizeof(BlockHeader);
        rows.push_back(
            {batch->specs[jobs[j].spec].block_ids, b * B, B,
             absl::MakeConstSpan(codes + s.key_offset, s.key_bytes),
             absl::MakeConstSpan(codes + s.value_offset, s.value_bytes),
             absl::MakeConstSpan(codes + s.refine_offset, s.refine_bytes)});
      }
      absl::StatusOr<KvDevice::Event> e = device_->ScatterCoded(layer, rows);
      if (e.ok()) {
        event = last_event = *e;
      } else {
        fail_all();
      }
    }
    {
      absl::MutexLock lock(&batch->mu);
      batch->layer_events.push_back(event);
      batch->layers_ready = layer + 1;
    }
    if (layer_loaded_hook_) layer_loaded_hook_(layer);
  }
  // The staging goes only once the device is done with it.
  if (last_event != 0 && !device_->Wait(last_event).ok()) fail_all();
  int64_t on_device = 0;
  for (size_t j : device_jobs) {
    on_device += jobs[j].block < fetched[jobs[j].spec].good;
  }
  if (on_device > 0) {
    absl::MutexLock lock(&mu_);
    stats_.blocks_decoded_on_device += on_device;
  }
  for (size_t i = 0; i < batch->specs.size(); ++i) {
    const LoadSpec& spec = batch->specs[i];
    const Fetched& f = fetched[i];
    const int64_t blocks = spec.num_tokens / B;
    client_->CountLoad(f.got, f.good);
    if (spec.from_peer) {
      absl::MutexLock lock(&mu_);
      stats_.peer_blocks_loaded += std::max<int64_t>(
          0, std::min<int64_t>(f.good,
                               static_cast<int64_t>(f.peer_first + f.peer_n)) -
                 static_cast<int64_t>(f.peer_first));
    }
    std::vector<int32_t> failed_pages;
    AppendPages(spec.block_ids, caches_.block_size, f.good * B, spec.num_tokens,
                &failed_pages);
    absl::MutexLock lock(&mu_);
    if (f.good < blocks) ++stats_.loads_failed;
    if (cancelled_.erase(spec.request_id) > 0) continue;
    load_errors_.insert(load_errors_.end(), failed_pages.begin(),
                        failed_pages.end());
    finished_.loaded.push_back(spec.request_id);
  }
  absl::MutexLock lock(&batch->mu);
  batch->done = true;
}

absl::Status KvConnector::WaitForLayerLoad(int layer) {
  std::shared_ptr<LoadBatch> batch;
  {
    absl::MutexLock lock(&mu_);
    batch = load_;
  }
  if (layer < 0 || layer >= client_->layout().layers) {
    return absl::InvalidArgumentError(absl::StrCat("no layer ", layer));
  }
  if (batch == nullptr) return absl::OkStatus();
  // The last layer waits for the whole load, so that the failed block ids
  // and finished requests are recorded once the forward pass is over.
  const bool last = layer == client_->layout().layers - 1;
  KvDevice::Event event = 0;
  {
    absl::MutexLock lock(&batch->mu);
    auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(batch->mu) {
      return batch->done || (!last && batch->layers_ready > layer);
    };
    batch->mu.Await(absl::Condition(&ready));
    if (layer < static_cast<int>(batch->layer_events.size())) {
      event = batch->layer_events[layer];
    }
  }
  // Device pages: the layer's copy is enqueued; the engine's kernels wait
  // for it on the GPU, not the host.
  if (event != 0) return device_->ComputeStreamWaitFor(event);
  return absl::OkStatus();
}

absl::Status KvConnector::SaveLayer(int layer,
                                    const std::vector<SaveSpec>& saves) {
  const KvLayout& l = client_->layout();
  const int64_t B = client_->block_tokens();
  const int64_t row = int64_t{l.kv_heads} * l.head_dim;
  absl::MutexLock lock(&mu_);
  if (!registered_) {
    return absl::FailedPreconditionError("RegisterKvCaches first");
  }
  if (layer != next_save_layer_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "SaveLayer(", layer, ") called, expected layer ", next_save_layer_));
  }
  if (layer == 0) {
    saving_.clear();
    for (const SaveSpec& spec : saves) {
      const int64_t full = static_cast<int64_t>(spec.tokens.size()) / B * B;
      absl::Status s = CheckPages(spec.request_id, spec.block_ids,
                                  caches_.block_size, caches_.num_blocks, full);
      if (!s.ok()) return s;
      absl::StatusOr<std::vector<BlockHash>> hashes =
          client_->HashTokens(spec.tokens, spec.salt);
      if (!hashes.ok()) return hashes.status();
      auto p = std::make_shared<PendingSave>();
      p->spec = spec;
      p->hashes = *std::move(hashes);
      p->first_block = std::max<int64_t>(0, spec.skip_tokens) / B;
      const int64_t n = static_cast<int64_t>(p->hashes.size()) - p->first_block;
      if (n <= 0) {
        finished_.saved.push_back(spec.request_id);
        continue;
      }
      for (int64_t i = 0; i < n; ++i) {
        // A chain's first block keeps its sink tokens exact: the host
        // encodes it.
        const bool sinks =
            p->first_block + i == 0 && client_->options().sink_tokens > 0;
        (paths_.encode_on_device && !sinks ? p->device_blocks : p->host_blocks)
            .push_back(i);
      }
      const int64_t floats =
          static_cast<int64_t>(p->host_blocks.size()) * l.layers * B * row;
      const int64_t code_bytes =
          static_cast<int64_t>(p->device_blocks.size()) *
          static_cast<int64_t>(client_->codec().EncodedBytes(B));
      p->reserved =
          2 * floats * static_cast<int64_t>(sizeof(float)) + code_bytes;
      ++stats_.saves_started;
      // A save dropped here is counted, reported finished, and ended for
      // the peer.
      auto drop = [&] {
        ++stats_.saves_dropped;
        client_->CountDroppedSave();
        finished_.saved.push_back(spec.request_id);
        if (spec.send_to_peer && peer_ != nullptr) {
          QueuePeerEnd(peer_, spec.request_id,
                       static_cast<uint32_t>(p->first_block));
        }
      };
      if (!client_->TryReserve(static_cast<uint64_t>(p->reserved))) {
        drop();
        continue;
      }
      bool staged = true;
      if (floats > 0 && device_ != nullptr) {
        p->keys = device_->NewStaging(static_cast<size_t>(floats));
        p->values = device_->NewStaging(static_cast<size_t>(floats));
        staged = p->keys != nullptr && p->values != nullptr;
      } else if (floats > 0) {
        p->keys = std::make_shared_for_overwrite<float[]>(floats);
        p->values = std::make_shared_for_overwrite<float[]>(floats);
      }
      if (code_bytes > 0) {
        p->codes = device_->NewStaging(static_cast<size_t>(code_bytes + 3) / 4);
        staged = staged && p->codes != nullptr;
      }
      if (!staged) {
        client_->Release(static_cast<uint64_t>(p->reserved));
        drop();
        continue;
      }
      saving_.push_back(std::move(p));
    }
  } else if (saves.size() < saving_.size()) {
    return absl::InvalidArgumentError(
        "SaveLayer must get the same requests for every layer");
  }
  std::vector<KvDevice::Rows> rows;
  std::vector<KvDevice::EncodeRows> encode;
  const size_t payload = client_->codec().EncodedBytes(B);
  const VqDecodePlan::LayerSlices slices = paths_.encode_on_device
                                               ? plan_->Slices(B, layer)
                                               : VqDecodePlan::LayerSlices{};
  for (const std::shared_ptr<PendingSave>& p : saving_) {
    for (size_t h = 0; h < p->host_blocks.size(); ++h) {
      const size_t off =
          static_cast<size_t>(((h * l.layers) + layer) * B * row);
      const int64_t t0 = (p->first_block + p->host_blocks[h]) * B;
      if (device_ != nullptr) {
        rows.push_back({p->spec.block_ids, t0, B, p->keys.get() + off,
                        p->values.get() + off});
      } else {
        GatherLayer(caches_, layer, p->spec.block_ids, t0, B,
                    p->keys.get() + off, p->values.get() + off);
      }
    }
    auto* codes = reinterpret_cast<uint8_t*>(p->codes.get());
    for (size_t d = 0; d < p->device_blocks.size(); ++d) {
      uint8_t* block = codes + d * payload;
      encode.push_back(
          {p->spec.block_ids, (p->first_block + p->device_blocks[d]) * B, B,
           block + slices.key_offset, block + slices.value_offset,
           slices.refine_bytes > 0 ? block + slices.refine_offset : nullptr});
    }
  }
  if (!rows.empty() || !encode.empty()) {
    // After the layer's computation, which the engine has enqueued by now.
    // last_gather_ follows every submission at once: a failure drops the
    // pass's staging only after what was submitted is done with it.
    absl::Status s = device_->OrderAfterCompute();
    if (s.ok() && !rows.empty()) {
      absl::StatusOr<KvDevice::Event> e = device_->Gather(layer, rows);
      s = e.status();
      if (e.ok()) last_gather_ = *e;
    }
    if (s.ok() && !encode.empty()) {
      absl::StatusOr<KvDevice::Event> e = device_->EncodeLayer(layer, encode);
      s = e.status();
      if (e.ok()) {
        last_gather_ = *e;
        if (peer_ != nullptr) QueuePeerLayerLocked(layer, *e, slices);
      }
    }
    if (!s.ok()) {
      DropSavingLocked();
      return s;
    }
    for (const std::shared_ptr<PendingSave>& p : saving_) {
      p->gathered = last_gather_;
    }
  }
  next_save_layer_ = layer + 1;
  if (next_save_layer_ < l.layers) return absl::OkStatus();
  next_save_layer_ = 0;
  for (std::shared_ptr<PendingSave>& p : saving_) {
    // The guard counts the job as pending until the closure is destroyed,
    // whether it ran or was dropped by a client shutdown, so Shutdown can
    // wait for every job that still refers to this connector.
    auto guard = std::make_shared<PendingGuard>(this);
    auto job = [this, p, guard]() {
      bool cancelled;
      std::shared_ptr<KvPeerLink> peer;
      {
        absl::MutexLock lock(&mu_);
        cancelled = cancelled_.erase(p->spec.request_id) > 0;
        if (p->spec.send_to_peer) peer = peer_;
      }
      if (!cancelled && stopping_.load()) {
        client_->CountDroppedSave();  // shutting down: drop, and count it
        cancelled = true;
      }
      const KvLayout& lay = client_->layout();
      const int64_t bt = client_->block_tokens();
      const int64_t r = int64_t{lay.kv_heads} * lay.head_dim;
      if (!cancelled && p->gathered != 0 && !device_->Wait(p->gathered).ok()) {
        client_->CountDroppedSave();  // the copy out of the pages failed
        cancelled = true;
      }
      if (!cancelled) {
        const std::vector<bool> present = client_->Present(
            absl::MakeConstSpan(p->hashes).subspan(p->first_block), 0);
        // Every missing host block in one EncodeBlocks: with
        // encode_cuda_device, one GPU launch for the whole save.
        std::vector<CacheClient::BlockToEncode> to_encode;
        for (size_t h = 0; h < p->host_blocks.size(); ++h) {
          const int64_t i = p->host_blocks[h];
          if (present[i] && peer == nullptr) continue;
          const size_t off = static_cast<size_t>(h * lay.layers * bt * r);
          to_encode.push_back({p->hashes[p->first_block + i],
                               static_cast<uint32_t>(p->first_block + i),
                               p->keys.get() + off, p->values.get() + off});
        }
        absl::StatusOr<std::vector<EncodedBlock>> encoded =
            client_->EncodeBlocks(to_encode);
        // The device's payloads, sealed.
        const size_t bytes = client_->codec().EncodedBytes(bt);
        const auto* codes = reinterpret_cast<const uint8_t*>(p->codes.get());
        for (size_t d = 0; d < p->device_blocks.size() && encoded.ok(); ++d) {
          const int64_t i = p->device_blocks[d];
          if (present[i] && peer == nullptr) continue;
          absl::StatusOr<EncodedBlock> b = client_->SealPayload(
              p->hashes[p->first_block + i],
              static_cast<uint32_t>(p->first_block + i),
              absl::MakeConstSpan(codes + d * bytes, bytes));
          if (!b.ok()) {
            encoded = b.status();
            break;
          }
          encoded->push_back(*std::move(b));
        }
        p->keys = nullptr;
        p->values = nullptr;
        p->codes = nullptr;
        if (encoded.ok() && peer != nullptr) {
          // Every block goes to the peer (those whose layers went as slices
          // as headers); the cache gets those it lacks.
          std::vector<int64_t> header_only;
          if (p->slices_sent) {
            for (int64_t i : p->device_blocks) {
              header_only.push_back(p->first_block + i);
            }
          }
          QueuePeerBlocks(peer, p->spec.request_id,
                          static_cast<uint32_t>(p->first_block), *encoded,
                          header_only);
          peer = nullptr;  // handed off: no empty final message below
          std::erase_if(*encoded, [&](const EncodedBlock& b) {
            return present[b.chain_position - p->first_block];
          });
        }
        if (encoded.ok()) {
          client_->PutBlocks(*encoded);
          absl::MutexLock lock(&mu_);
          stats_.blocks_encoded_on_device +=
              static_cast<int64_t>(p->device_blocks.size());
        } else {
          client_->CountDroppedSave();  // the encoder failed: drop, count
        }
      }
      // Cancelled, or the encode failed: the peer stops waiting.
      if (peer != nullptr) {
        QueuePeerEnd(peer, p->spec.request_id,
                     static_cast<uint32_t>(p->first_block));
      }
      client_->Release(static_cast<uint64_t>(p->reserved));
      absl::MutexLock lock(&mu_);
      if (!cancelled) finished_.saved.push_back(p->spec.request_id);
    };
    if (!client_->RunInBackground(job)) {
      client_->Release(static_cast<uint64_t>(p->reserved));
      ++stats_.saves_dropped;
      client_->CountDroppedSave();
      if (p->spec.send_to_peer && peer_ != nullptr) {
        QueuePeerEnd(peer_, p->spec.request_id,
                     static_cast<uint32_t>(p->first_block));
      }
    }
  }
  saving_.clear();
  return absl::OkStatus();
}

namespace {

// Sends messages in order; false at the first that fails.
bool SendAll(KvPeerLink* peer, const std::vector<std::string>& messages) {
  for (const std::string& m : messages) {
    if (!peer->Send(m).ok()) return false;
  }
  return true;
}

}  // namespace

void KvConnector::QueuePeerJob(std::function<void()> job) {
  absl::MutexLock lock(&peer_mu_);
  peer_jobs_.push_back(std::move(job));
}

void KvConnector::SendPeerJobs() {
  while (true) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&peer_mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(peer_mu_) {
        return peer_stop_ || !peer_jobs_.empty();
      };
      peer_mu_.Await(absl::Condition(&ready));
      if (peer_jobs_.empty()) return;  // stopping, and nothing left
      job = std::move(peer_jobs_.front());
      peer_jobs_.pop_front();
      peer_busy_ = true;
    }
    job();
    absl::MutexLock lock(&peer_mu_);
    peer_busy_ = false;
  }
}

void KvConnector::QueuePeerLayerLocked(
    int layer, KvDevice::Event event, const VqDecodePlan::LayerSlices& slices) {
  const size_t payload = client_->codec().EncodedBytes(client_->block_tokens());
  for (const std::shared_ptr<PendingSave>& p : saving_) {
    if (!p->spec.send_to_peer || p->device_blocks.empty()) continue;
    p->slices_sent = true;
    // The job holds the staging (the save may release its own reference
    // first) and reads it once the device's encode of the layer is done.
    QueuePeerJob([this, p, codes = p->codes, peer = peer_, layer, event, slices,
                  payload] {
      bool ok = device_->Wait(event).ok();
      if (ok) {
        const auto* base = reinterpret_cast<const char*>(codes.get());
        std::vector<PeerSlice> out(p->device_blocks.size());
        for (size_t d = 0; d < out.size(); ++d) {
          const int64_t index = p->first_block + p->device_blocks[d];
          const char* block = base + d * payload;
          PeerSlice& sl = out[d];
          sl.hash = p->hashes[index];
          sl.chain_position = static_cast<uint32_t>(index);
          sl.payload_bytes = static_cast<uint32_t>(payload);
          sl.key_offset = static_cast<uint32_t>(slices.key_offset);
          sl.key.assign(block + slices.key_offset, slices.key_bytes);
          sl.value_offset = static_cast<uint32_t>(slices.value_offset);
          sl.value.assign(block + slices.value_offset, slices.value_bytes);
          sl.refine_offset = static_cast<uint32_t>(slices.refine_offset);
          sl.refine.assign(block + slices.refine_offset, slices.refine_bytes);
        }
        absl::StatusOr<std::vector<std::string>> messages =
            EncodePeerLayerMessages(p->spec.request_id, layer, out,
                                    peer->max_message_bytes());
        ok = messages.ok() && SendAll(peer.get(), *messages);
      }
      absl::MutexLock lock(&mu_);
      ++(ok ? stats_.peer_layers_sent : stats_.peer_sends_failed);
    });
  }
}

void KvConnector::QueuePeerBlocks(
    std::shared_ptr<KvPeerLink> peer, const std::string& request_id,
    uint32_t first_block, std::vector<EncodedBlock> blocks,
    const std::vector<int64_t>& header_only_positions) {
  std::sort(blocks.begin(), blocks.end(),
            [](const EncodedBlock& a, const EncodedBlock& b) {
              return a.chain_position < b.chain_position;
            });
  std::vector<bool> header_only(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    header_only[i] =
        std::find(header_only_positions.begin(), header_only_positions.end(),
                  blocks[i].chain_position) != header_only_positions.end();
    if (header_only[i]) blocks[i].data.resize(sizeof(BlockHeader));
  }
  absl::StatusOr<std::vector<std::string>> messages = EncodePeerMessages(
      request_id, first_block, blocks, peer->max_message_bytes(), header_only);
  if (!messages.ok()) {
    absl::MutexLock lock(&mu_);
    ++stats_.peer_sends_failed;
    return;
  }
  QueuePeerJob([this, peer, messages = *std::move(messages),
                n = static_cast<int64_t>(blocks.size())] {
    const bool ok = SendAll(peer.get(), messages);
    absl::MutexLock lock(&mu_);
    if (ok) {
      stats_.peer_blocks_sent += n;
    } else {
      ++stats_.peer_sends_failed;
    }
  });
}

void KvConnector::QueuePeerEnd(std::shared_ptr<KvPeerLink> peer,
                               const std::string& request_id,
                               uint32_t first_block) {
  absl::StatusOr<std::vector<std::string>> messages = EncodePeerMessages(
      request_id, first_block, {}, peer->max_message_bytes());
  if (!messages.ok()) return;  // only a request id over 1 KiB
  QueuePeerJob([this, peer, messages = *std::move(messages)] {
    if (!SendAll(peer.get(), messages)) {
      absl::MutexLock lock(&mu_);
      ++stats_.peer_sends_failed;
    }
  });
}

void KvConnector::ReceiveFromPeer() {
  while (!stopping_.load()) {
    absl::StatusOr<std::string> m = peer_->Receive(absl::Milliseconds(200));
    if (absl::IsDeadlineExceeded(m.status())) continue;
    if (!m.ok()) return;  // closed, send-only, or a broken transport
    absl::StatusOr<PeerMessage> parsed = ParsePeerMessage(*m);
    if (!parsed.ok()) {
      absl::MutexLock lock(&mu_);
      ++stats_.peer_messages_rejected;
      continue;
    }
    inbox_->Add(*std::move(parsed));
  }
}

absl::Status KvConnector::AttachPeer(std::shared_ptr<KvPeerLink> link,
                                     const PeerOptions& options) {
  if (link == nullptr) return absl::InvalidArgumentError("null peer link");
  absl::MutexLock lock(&mu_);
  if (peer_ != nullptr) {
    return absl::FailedPreconditionError("a peer is already attached");
  }
  peer_ = std::move(link);
  peer_options_ = options;
  inbox_ = std::make_unique<PeerInbox>(options.inbox);
  peer_receiver_ = std::thread([this] { ReceiveFromPeer(); });
  peer_sender_ = std::thread([this] { SendPeerJobs(); });
  return absl::OkStatus();
}

absl::Status KvConnector::WaitForSave() {
  absl::MutexLock lock(&mu_);
  if (next_save_layer_ != 0) {
    const int stopped_at = next_save_layer_;
    DropSavingLocked();
    return absl::FailedPreconditionError(absl::StrCat(
        "WaitForSave after ", stopped_at, " of ", client_->layout().layers,
        " layers were saved; those saves were dropped"));
  }
  // Host pages were copied by SaveLayer itself; device pages are free for
  // the kernels that wait for the last copy out of them.
  if (last_gather_ != 0) {
    const KvDevice::Event e = last_gather_;
    last_gather_ = 0;
    return device_->ComputeStreamWaitFor(e);
  }
  return absl::OkStatus();
}

void KvConnector::DropSavingLocked() {
  // Copies into the staging may still be in flight: let them finish before
  // the staging goes back (an error here changes nothing: all are dropped).
  if (last_gather_ != 0) device_->Wait(last_gather_).IgnoreError();
  last_gather_ = 0;
  for (const auto& p : saving_) {
    client_->Release(static_cast<uint64_t>(p->reserved));
    finished_.saved.push_back(p->spec.request_id);
    if (p->spec.send_to_peer && peer_ != nullptr) {
      QueuePeerEnd(peer_, p->spec.request_id,
                   static_cast<uint32_t>(p->first_block));
    }
    ++stats_.saves_dropped;
    client_->CountDroppedSave();
  }
  saving_.clear();
  next_save_layer_ = 0;
}

FinishedRequests KvConnector::GetFinished() {
  absl::MutexLock lock(&mu_);
  FinishedRequests out = std::move(finished_);
  finished_ = {};
  return out;
}

std::vector<int32_t> KvConnector::TakeLoadErrorBlockIds() {
  absl::MutexLock lock(&mu_);
  std::vector<int32_t> out = std::move(load_errors_);
  load_errors_.clear();
  return out;
}

void KvConnector::Cancel(const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  cancelled_.insert(request_id);
}

void KvConnector::Shutdown(absl::Duration timeout) {
  std::shared_ptr<LoadBatch> batch;
  {
    absl::MutexLock lock(&mu_);
    batch = load_;
  }
  if (batch != nullptr && batch->thread.joinable()) batch->thread.join();
  client_->WaitIdle(timeout);
  std::shared_ptr<KvPeerLink> peer;
  {
    absl::MutexLock lock(&mu_);
    peer = peer_;
  }
  if (peer != nullptr) {
    // What is queued for the peer goes first (within the timeout); then the
    // link closes, which ends a send or receive blocked on the peer.
    {
      absl::MutexLock lock(&peer_mu_);
      auto drained = [this]() ABSL_SHARED_LOCKS_REQUIRED(peer_mu_) {
        return peer_jobs_.empty() && !peer_busy_;
      };
      peer_mu_.AwaitWithTimeout(absl::Condition(&drained), timeout);
      peer_stop_ = true;
    }
    peer->Close();
    inbox_->Close();
    if (peer_sender_.joinable()) peer_sender_.join();
    if (peer_receiver_.joinable()) peer_receiver_.join();
  }
  // Saves that have not started skip their work now; wait for the ones that
  // run (bounded by the client's io_timeout) before this object can go.
  stopping_ = true;
  absl::MutexLock lock(&pending_mu_);
  pending_mu_.Await(absl::Condition(
      +[](int* pending) { return *pending == 0; }, &pending_saves_));
}

ConnectorStats KvConnector::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace vqkv::client
