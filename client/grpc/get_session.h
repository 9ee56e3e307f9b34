// One GetBlocksSession stream (proto/vqkv/v1/kvcache.proto): many GetBlocks
// requests over one long-lived call, a request and its answer per round
// trip, so a cache read pays for a message, not for a new RPC. Each session
// has its own completion queue, which gives every round trip the deadline a
// stream's messages lack.
//
// Errors: a failed round trip leaves the session broken (broken() is true)
// and must not be retried on it: open a new one or fall back to the unary
// GetBlocks. The status is the server's when it ended the call (e.g.
// UNIMPLEMENTED from a server that predates sessions, UNAVAILABLE when it
// shuts down), DEADLINE_EXCEEDED when the answer did not come in time.
//
// Thread safety: none; one round trip at a time. GrpcBackend keeps a pool
// of idle sessions and lends each to one caller.
#ifndef VQKV_CLIENT_GRPC_GET_SESSION_H_
#define VQKV_CLIENT_GRPC_GET_SESSION_H_

#include <memory>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace vqkv::client {

class GetSession {
 public:
  // Starts the call with the metadata `prepare` puts on its context (the
  // caller's credentials, which the server checks once); the first round
  // trip waits for the start (with its deadline).
  GetSession(v1::KVCache::Stub* stub,
             absl::FunctionRef<void(grpc::ClientContext*)> prepare);
  // Ends the call: closes the client's side and waits for the server's
  // status when healthy, cancels it when broken.
  ~GetSession();

  GetSession(const GetSession&) = delete;
  GetSession& operator=(const GetSession&) = delete;

  // Sends `req` and waits until `deadline` for its answer.
  absl::Status RoundTrip(const v1::GetBlocksRequest& req,
                         v1::GetBlocksResponse* resp, absl::Time deadline);

  bool broken() const { return broken_; }

 private:
  // Waits for `n` of this session's operations to complete, until
  // `deadline`; false when one failed or the deadline passed.
  bool Await(int n, absl::Time deadline, bool* timed_out);
  // The call's final status (after a failed operation), waited for.
  absl::Status FinishStatus();

  grpc::ClientContext ctx_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<v1::GetBlocksRequest,
                                                v1::GetBlocksResponse>>
      stream_;
  int pending_ = 0;       // operations started and not yet taken from cq_
  bool started_ = false;  // the call's start has completed
  bool broken_ = false;
  bool finished_ = false;  // Finish's result taken
  grpc::Status final_status_;
};

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_GRPC_GET_SESSION_H_
