// Server reflection, as a client sees it: the real vqkv-server process,
// asked over the grpc.reflection.v1alpha protocol (what grpcurl uses). This
// binary does not link grpc++_reflection, whose generated messages would
// clash with the client stubs built from tests/integration/reflection/.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "gtest/gtest.h"
#include "reflection.grpc.pb.h"
#include "tests/integration/server_process.h"

namespace vqkv::testing {
namespace {

namespace refl = ::grpc::reflection::v1alpha;

// One request/response exchange on a reflection stream.
refl::ServerReflectionResponse Ask(
    grpc::ClientReaderWriter<refl::ServerReflectionRequest,
                             refl::ServerReflectionResponse>* stream,
    const refl::ServerReflectionRequest& req) {
  refl::ServerReflectionResponse resp;
  EXPECT_TRUE(stream->Write(req));
  EXPECT_TRUE(stream->Read(&resp));
  return resp;
}

TEST(ReflectionTest, ListsAndDescribesTheKvCacheService) {
  TempDir dir;
  auto server = ServerProcess::Start({"--data-dir", dir.path() + "/data"});
  ASSERT_TRUE(server.ok()) << server.status();

  auto stub = refl::ServerReflection::NewStub((*server)->Channel());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(60));
  auto* ctx = &context;
  auto stream = stub->ServerReflectionInfo(ctx);

  refl::ServerReflectionRequest list;
  list.set_list_services("");
  refl::ServerReflectionResponse listed = Ask(stream.get(), list);
  ASSERT_TRUE(listed.has_list_services_response())
      << listed.error_response().error_message();
  std::vector<std::string> names;
  for (const auto& s : listed.list_services_response().service()) {
    names.push_back(s.name());
  }
  EXPECT_NE(std::find(names.begin(), names.end(), "vqkv.v1.KVCache"),
            names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "grpc.health.v1.Health"),
            names.end());

  // The service's file descriptor, enough for a generic client (grpcurl)
  // to build requests: every RPC of the contract is there.
  refl::ServerReflectionRequest sym;
  sym.set_file_containing_symbol("vqkv.v1.KVCache");
  refl::ServerReflectionResponse described = Ask(stream.get(), sym);
  ASSERT_TRUE(described.has_file_descriptor_response())
      << described.error_response().error_message();
  google::protobuf::DescriptorPool pool;
  // The response lists the file and its dependencies; add them until all
  // resolve (dependencies may come after their users).
  std::vector<google::protobuf::FileDescriptorProto> files;
  for (const std::string& bytes :
       described.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto f;
    ASSERT_TRUE(f.ParseFromString(bytes));
    files.push_back(f);
  }
  for (size_t round = 0; round < files.size(); ++round) {
    for (const auto& f : files) {
      if (pool.FindFileByName(f.name()) != nullptr) continue;
      bool deps_ready = true;
      for (const std::string& dep : f.dependency()) {
        deps_ready = deps_ready && pool.FindFileByName(dep) != nullptr;
      }
      if (deps_ready) pool.BuildFile(f);
    }
  }
  const google::protobuf::ServiceDescriptor* svc =
      pool.FindServiceByName("vqkv.v1.KVCache");
  ASSERT_NE(svc, nullptr);
  for (const char* method :
       {"Lookup", "PutBlocks", "GetBlocks", "PutBlocksStream",
        "GetBlocksStream", "PutCodebooks", "GetCodebooks", "Delete", "Stats"}) {
    EXPECT_NE(svc->FindMethodByName(method), nullptr) << method;
  }
  EXPECT_TRUE(svc->FindMethodByName("PutBlocksStream")->client_streaming());
  EXPECT_EQ(svc->FindMethodByName("GetBlocks")->input_type()->full_name(),
            "vqkv.v1.GetBlocksRequest");

  // An unknown symbol is an error response, not a broken stream.
  sym.set_file_containing_symbol("vqkv.v1.NoSuchService");
  refl::ServerReflectionResponse unknown = Ask(stream.get(), sym);
  EXPECT_TRUE(unknown.has_error_response());
  EXPECT_EQ(unknown.error_response().error_code(),
            static_cast<int>(grpc::StatusCode::NOT_FOUND));

  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ((*server)->StopWith(SIGTERM), 0);
}

}  // namespace
}  // namespace vqkv::testing
