// grpc_floor_server: the gRPC floor under vqkv-server's read path. A stand-in
// KVCache server that keeps blocks in a plain hash map and answers
// PutBlocks, GetBlocks and Delete with the same raw (ByteBuffer) handlers and
// the same zero-copy response writer as vqkv-server, under one of three gRPC
// threading models:
//
//   --threading callback  the callback API, as vqkv-server is served
//                         (gRPC 1.51 runs the handlers on its own threads);
//   --threading cq        the completion-queue API: --cq-threads threads,
//                         each with its own queue, run the handlers on the
//                         thread that polled the event (an event loop);
//   --threading hybrid    GetBlocks on the queues, PutBlocks and Delete on
//                         callbacks (what converting one method would give).
//
// What it leaves out (auth, admission, metrics, validation, tiers) is what
// separates vqkv-server from this floor; what the two models differ by is
// the cost of gRPC's threading alone. Run it through kv_service_bench, which
// measures it next to Redis:
//
//   kv_service_bench --quick --server build/bench/grpc_floor_server
//       --server-arg=--threading=cq      (one line)
//
// It accepts and ignores vqkv-server's storage flags, prints "listening on
// HOST:PORT" like it, and stops on SIGTERM/SIGINT. Not a product: no auth, no
// limits, no persistence; only the three methods (others: UNIMPLEMENTED in
// callback mode, never answered in cq mode).
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "service/get_blocks_response.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace {

using vqkv::storage::SharedBytes;

// The blocks, per namespace (model_id), by hash. Thread-safe.
class BlockMap {
 public:
  // A PutBlocks request -> its response (every block stored).
  grpc::Status Put(const grpc::ByteBuffer& request,
                   grpc::ByteBuffer* response) {
    vqkv::v1::PutBlocksRequest req;
    if (!Parse(request, &req)) return BadRequest();
    vqkv::v1::PutBlocksResponse resp;
    {
      absl::MutexLock lock(&mu_);
      auto& blocks = namespaces_[req.namespace_().model_id()];
      for (auto& b : *req.mutable_blocks()) {
        blocks[b.hash()] =
            std::make_shared<const std::string>(std::move(*b.mutable_data()));
        resp.add_results();
      }
    }
    resp.set_stored(static_cast<uint32_t>(req.blocks_size()));
    return Serialize(resp, response);
  }

  // A GetBlocks request -> its response: found blocks referenced, not copied
  // (vqkv::service::GetBlocksResponseWriter), the rest NOT_FOUND.
  grpc::Status Get(const grpc::ByteBuffer& request,
                   grpc::ByteBuffer* response) {
    vqkv::v1::GetBlocksRequest req;
    if (!Parse(request, &req)) return BadRequest();
    vqkv::service::GetBlocksResponseWriter writer;
    {
      absl::MutexLock lock(&mu_);
      const auto ns = namespaces_.find(req.namespace_().model_id());
      for (int i = 0; i < req.hashes_size(); ++i) {
        if (ns != namespaces_.end()) {
          const auto it = ns->second.find(req.hashes(i));
          if (it != ns->second.end()) {
            writer.AddBlock(static_cast<uint32_t>(i), it->second);
            continue;
          }
        }
        writer.AddCode(static_cast<uint32_t>(i),
                       static_cast<int32_t>(grpc::StatusCode::NOT_FOUND));
      }
    }
    writer.Finish(response);
    return grpc::Status::OK;
  }

  // A Delete request: drops the request's whole namespace.
  grpc::Status Delete(const grpc::ByteBuffer& request,
                      grpc::ByteBuffer* response) {
    vqkv::v1::DeleteRequest req;
    if (!Parse(request, &req)) return BadRequest();
    {
      absl::MutexLock lock(&mu_);
      namespaces_.erase(req.namespace_().model_id());
    }
    return Serialize(vqkv::v1::DeleteResponse(), response);
  }

 private:
  // Parsing consumes a buffer, so it reads a copy (which shares the
  // request's slices).
  template <typename Msg>
  static bool Parse(const grpc::ByteBuffer& buffer, Msg* msg) {
    grpc::ByteBuffer copy(buffer);
    return grpc::SerializationTraits<Msg>::Deserialize(&copy, msg).ok();
  }
  template <typename Msg>
  static grpc::Status Serialize(const Msg& msg, grpc::ByteBuffer* out) {
    bool own = false;
    return grpc::SerializationTraits<Msg>::Serialize(msg, out, &own);
  }
  static grpc::Status BadRequest() {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad request");
  }

  absl::Mutex mu_;
  absl::flat_hash_map<std::string,
                      absl::flat_hash_map<std::string, SharedBytes>>
      namespaces_ ABSL_GUARDED_BY(mu_);
};

// Finishes a callback-API call with `status` (the response is written).
grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* ctx,
                                 grpc::Status status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(std::move(status));
  return reactor;
}

// PutBlocks and Delete answered inline on the thread gRPC calls them on,
// over a `Base` that declares both as raw callback methods.
template <typename Base>
class CallbackPutDelete : public Base {
 public:
  explicit CallbackPutDelete(BlockMap* map) : map_(map) {}
  grpc::ServerUnaryReactor* PutBlocks(grpc::CallbackServerContext* ctx,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override {
    return Answer(ctx, map_->Put(*request, response));
  }
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override {
    return Answer(ctx, map_->Delete(*request, response));
  }

 protected:
  BlockMap* const map_;
};

// The callback model: all three methods on callbacks.
class CallbackFloor final
    : public CallbackPutDelete<
          vqkv::v1::KVCache::WithRawCallbackMethod_PutBlocks<
              vqkv::v1::KVCache::WithRawCallbackMethod_GetBlocks<
                  vqkv::v1::KVCache::WithRawCallbackMethod_Delete<
                      vqkv::v1::KVCache::CallbackService>>>> {
 public:
  using CallbackPutDelete::CallbackPutDelete;
  grpc::ServerUnaryReactor* GetBlocks(grpc::CallbackServerContext* ctx,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override {
    return Answer(ctx, map_->Get(*request, response));
  }
};

// The completion-queue model: the three methods raw, every other method
// async and never requested.
using CqService = vqkv::v1::KVCache::WithRawMethod_PutBlocks<
    vqkv::v1::KVCache::WithRawMethod_GetBlocks<
        vqkv::v1::KVCache::WithRawMethod_Delete<
            vqkv::v1::KVCache::AsyncService>>>;

// The hybrid: GetBlocks raw on the queues, PutBlocks and Delete on
// callbacks, the rest async and never requested. (Built up from
// AsyncService: gRPC 1.51 does not turn a callback method back into an
// async one, so GetBlocks must never have been a callback method.)
using HybridFloor =
    CallbackPutDelete<vqkv::v1::KVCache::WithRawCallbackMethod_PutBlocks<
        vqkv::v1::KVCache::WithRawCallbackMethod_Delete<
            vqkv::v1::KVCache::WithRawMethod_GetBlocks<
                vqkv::v1::KVCache::AsyncService>>>>;

enum class Method { kPut, kGet, kDelete };

// One call of one method on one queue: requested, then answered, then freed.
// Each completed call requests its successor, so every queue always has one
// call of each method it serves waiting. Service: CqService or HybridFloor
// (GetBlocks only).
template <typename Service>
class CqCall {
 public:
  CqCall(Service* service, grpc::ServerCompletionQueue* cq, BlockMap* map,
         Method method)
      : service_(service), cq_(cq), map_(map), method_(method) {
    switch (method_) {
      case Method::kPut:
        if constexpr (requires {
                        service->RequestPutBlocks(&ctx_, &request_, &writer_,
                                                  cq, cq, this);
                      }) {
          service_->RequestPutBlocks(&ctx_, &request_, &writer_, cq_, cq_,
                                     this);
        }
        break;
      case Method::kGet:
        service_->RequestGetBlocks(&ctx_, &request_, &writer_, cq_, cq_, this);
        break;
      case Method::kDelete:
        if constexpr (requires {
                        service->RequestDelete(&ctx_, &request_, &writer_, cq,
                                               cq, this);
                      }) {
          service_->RequestDelete(&ctx_, &request_, &writer_, cq_, cq_, this);
        }
        break;
    }
  }

  // The queue returned this call's tag: a new call arrived (answer it), or
  // the answer was sent, or the queue is shutting down (`ok` false).
  void Proceed(bool ok) {
    if (answered_ || !ok) {
      delete this;
      return;
    }
    new CqCall(service_, cq_, map_, method_);  // the next call of the method
    answered_ = true;
    grpc::ByteBuffer response;
    grpc::Status status;
    switch (method_) {
      case Method::kPut:
        status = map_->Put(request_, &response);
        break;
      case Method::kGet:
        status = map_->Get(request_, &response);
        break;
      case Method::kDelete:
        status = map_->Delete(request_, &response);
        break;
    }
    if (status.ok()) {
      writer_.Finish(response, status, this);
    } else {
      writer_.FinishWithError(status, this);
    }
  }

 private:
  Service* const service_;
  grpc::ServerCompletionQueue* const cq_;
  BlockMap* const map_;
  const Method method_;
  bool answered_ = false;
  grpc::ServerContext ctx_;
  grpc::ByteBuffer request_;
  grpc::ServerAsyncResponseWriter<grpc::ByteBuffer> writer_{&ctx_};
};

// Runs one queue: requests the first call of each of `methods`, then answers
// calls until the queue is shut down.
template <typename Service>
void ServeQueue(Service* service, grpc::ServerCompletionQueue* cq,
                BlockMap* map, std::vector<Method> methods) {
  for (Method m : methods) new CqCall<Service>(service, cq, map, m);
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) static_cast<CqCall<Service>*>(tag)->Proceed(ok);
}

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop = true; }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"the gRPC floor under vqkv-server's read path (bench only)"};
  app.allow_extras();  // vqkv-server's storage flags, passed by the bench
  std::string listen = "127.0.0.1:0";
  std::string threading = "callback";
  int cq_threads = 1;
  app.add_option("--listen", listen, "HOST:PORT (port 0: any free port)");
  app.add_option("--threading", threading, "callback, cq or hybrid")
      ->check(CLI::IsMember({"callback", "cq", "hybrid"}));
  app.add_option("--cq-threads", cq_threads,
                 "cq, hybrid: threads, each with its own completion queue")
      ->check(CLI::Range(1, 64));
  CLI11_PARSE(app, argc, argv);

  BlockMap map;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  // vqkv-server's limit under kv_service_bench (--max-message-bytes 128MiB).
  builder.SetMaxReceiveMessageSize(128 << 20);
  builder.SetMaxSendMessageSize(128 << 20);
  CallbackFloor callback_service(&map);
  CqService cq_service;
  HybridFloor hybrid_service(&map);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  if (threading == "callback") {
    builder.RegisterService(&callback_service);
  } else {
    if (threading == "cq") {
      builder.RegisterService(&cq_service);
    } else {
      builder.RegisterService(&hybrid_service);
    }
    for (int i = 0; i < cq_threads; ++i) {
      cqs.push_back(builder.AddCompletionQueue());
    }
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "grpc_floor_server: cannot listen on %s\n",
                 listen.c_str());
    return 1;
  }
  std::vector<std::thread> loops;
  for (auto& cq : cqs) {
    if (threading == "cq") {
      loops.emplace_back(
          ServeQueue<CqService>, &cq_service, cq.get(), &map,
          std::vector<Method>{Method::kPut, Method::kGet, Method::kDelete});
    } else {
      loops.emplace_back(ServeQueue<HybridFloor>, &hybrid_service, cq.get(),
                         &map, std::vector<Method>{Method::kGet});
    }
  }
  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  std::printf("grpc_floor_server (%s) listening on %s:%d\n", threading.c_str(),
              listen.substr(0, listen.rfind(':')).c_str(), port);
  std::fflush(stdout);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  for (auto& cq : cqs) cq->Shutdown();
  for (auto& t : loops) t.join();
  return 0;
}
