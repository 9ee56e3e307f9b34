// Streamed codebook transfer (PutCodebookStream / GetCodebookStream) against
// a real vqkv-server process whose message limit is smaller than the
// codebook set: registration through CacheClient::Create, a second client
// that fetches the set by hash and loads the first one's blocks, and the
// stream's error cases on the raw RPC.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "client/cache_client.h"
#include "client/grpc/grpc_backend.h"
#include "gtest/gtest.h"
#include "kernels/vq_codec.h"
#include "tests/integration/server_process.h"
#include "tests/unit/client/client_test_util.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

namespace vqkv::client {
namespace {

using testing::ExactKv;
using testing::SmallLayout;
using testing::Tokens;
using ::vqkv::testing::ServerProcess;
using ::vqkv::testing::TempDir;

constexpr uint64_t kLimit = uint64_t{1} << 20;  // 1 MiB on both ends

std::unique_ptr<Backend> Grpc(const std::string& target) {
  auto b = NewGrpcBackend({.target = target, .max_message_bytes = kLimit});
  EXPECT_TRUE(b.ok()) << b.status();
  return *std::move(b);
}

// A fresh server (its own data directory, so no set is registered) with a
// 1 MiB message limit. `dir` must outlive it.
absl::StatusOr<std::unique_ptr<ServerProcess>> SmallLimitServer(
    const TempDir& dir) {
  return ServerProcess::Start({"--data-dir", dir.path(), "--memory-bytes",
                               "64MiB", "--max-message-bytes", "1MiB"});
}

// A fitted VQ codec whose codebook file is several times kLimit: 16 stages
// of 1024 centroids for keys and for values, per layer.
testing::FittedVq LargeVq() {
  const KvLayout layout = SmallLayout();
  VqConfig cfg;
  cfg.key_stages = 16;
  cfg.key_bits = 10;
  cfg.value_stages = 16;
  cfg.value_bits = 10;
  cfg.training.kmeans_iterations = 1;
  auto c = VqCodec::Create(layout, cfg);
  EXPECT_TRUE(c.ok()) << c.status();
  const int64_t tokens = 1024;
  std::vector<float> k = ExactKv(tokens * layout.ElementsPerToken(), 7);
  std::vector<float> v = ExactKv(tokens * layout.ElementsPerToken(), 8);
  FitOptions fo;
  fo.seed = 3;
  EXPECT_TRUE((*c)->Fit(k.data(), v.data(), tokens, fo).ok());
  auto file = (*c)->codebooks().Serialize();
  EXPECT_TRUE(file.ok()) << file.status();
  return {std::shared_ptr<const VqCodec>(*std::move(c)), *file};
}

const testing::FittedVq& SharedLargeVq() {
  static const testing::FittedVq* vq = new testing::FittedVq(LargeVq());
  return *vq;
}

// Sends `chunks` on PutCodebookStream and returns the call's status.
grpc::Status PutChunks(v1::KVCache::Stub* stub,
                       const std::vector<v1::CodebookChunk>& chunks,
                       v1::PutCodebooksResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
  auto writer = stub->PutCodebookStream(&ctx, resp);
  for (const v1::CodebookChunk& c : chunks) {
    if (!writer->Write(c)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

v1::CodebookChunk Chunk(uint64_t hash, uint64_t total, uint64_t offset,
                        std::string data) {
  v1::CodebookChunk c;
  c.set_hash(hash);
  c.set_total_bytes(total);
  c.set_offset(offset);
  c.set_data(std::move(data));
  return c;
}

// The file in chunks of `size` bytes; hash and total in the first.
std::vector<v1::CodebookChunk> Split(uint64_t hash, const std::string& file,
                                     size_t size) {
  std::vector<v1::CodebookChunk> out;
  for (size_t off = 0; off < file.size(); off += size) {
    out.push_back(Chunk(off == 0 ? hash : 0, off == 0 ? file.size() : 0, off,
                        file.substr(off, size)));
  }
  return out;
}

TEST(CodebookStreamTest, SetLargerThanTheMessageLimitRegistersAndLoads) {
  const testing::FittedVq& vq = SharedLargeVq();
  ASSERT_GT(vq.file.size(), 3 * kLimit) << "the set must not fit a message";
  TempDir dir;
  auto server = SmallLimitServer(dir);
  ASSERT_TRUE(server.ok()) << server.status();

  // The unary RPC cannot carry it: this is what the stream is for.
  {
    auto stub = (*server)->Stub();
    v1::PutCodebooksRequest req;
    v1::Codebook* c = req.add_codebooks();
    c->set_hash(vq.codec->codebook_hash());
    c->set_data(vq.file);
    v1::PutCodebooksResponse resp;
    grpc::ClientContext ctx;
    EXPECT_EQ(stub->PutCodebooks(&ctx, req, &resp).error_code(),
              grpc::StatusCode::RESOURCE_EXHAUSTED);
  }

  auto first = CacheClient::Create(testing::Options(32), vq.codec, vq.file,
                                   Grpc((*server)->address()));
  ASSERT_TRUE(first.ok()) << first.status();
  testing::ExpectSecondClientSharesBlocks(
      first->get(), vq.codec->codebook_hash(), Grpc((*server)->address()));
}

TEST(CodebookStreamTest, BackendRoundTripIsBitExactAndIdempotent) {
  const testing::FittedVq& vq = SharedLargeVq();
  TempDir dir;
  auto server = SmallLimitServer(dir);
  ASSERT_TRUE(server.ok()) << server.status();
  std::unique_ptr<Backend> b = Grpc((*server)->address());
  const uint64_t hash = vq.codec->codebook_hash();
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  EXPECT_EQ(b->GetCodebook(hash, deadline).status().code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(b->PutCodebook(hash, vq.file, deadline).ok());
  // Registered before: ALREADY_EXISTS on the wire, OK to the caller.
  ASSERT_TRUE(b->PutCodebook(hash, vq.file, deadline).ok());
  auto got = b->GetCodebook(hash, deadline);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(*got == vq.file);

  // The raw stream says ALREADY_EXISTS in its one result.
  auto stub = (*server)->Stub();
  v1::PutCodebooksResponse resp;
  ASSERT_TRUE(
      PutChunks(stub.get(), Split(hash, vq.file, kLimit / 4), &resp).ok());
  ASSERT_EQ(resp.results_size(), 1);
  EXPECT_EQ(resp.results(0).code(),
            static_cast<int>(absl::StatusCode::kAlreadyExists));

  // GetCodebookStream: chunks of at most a quarter of the server's limit.
  grpc::ClientContext ctx;
  v1::GetCodebookStreamRequest req;
  req.set_hash(hash);
  auto reader = stub->GetCodebookStream(&ctx, req);
  v1::CodebookChunk c;
  std::string assembled;
  int chunks = 0;
  while (reader->Read(&c)) {
    EXPECT_LE(c.data().size(), kLimit / 4);
    EXPECT_EQ(c.offset(), assembled.size());
    if (chunks == 0) {
      EXPECT_EQ(c.hash(), hash);
      EXPECT_EQ(c.total_bytes(), vq.file.size());
    }
    assembled += c.data();
    ++chunks;
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_GT(chunks, 4);
  EXPECT_TRUE(assembled == vq.file);
}

TEST(CodebookStreamTest, RawStreamErrors) {
  const testing::FittedVq& vq = SharedLargeVq();
  TempDir dir;
  auto server = SmallLimitServer(dir);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = (*server)->Stub();
  const uint64_t hash = vq.codec->codebook_hash();
  const std::string& f = vq.file;
  const size_t q = kLimit / 4;

  {  // A chunk out of order.
    std::vector<v1::CodebookChunk> chunks = Split(hash, f, q);
    std::swap(chunks[1], chunks[2]);
    v1::PutCodebooksResponse resp;
    const grpc::Status s = PutChunks(stub.get(), chunks, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "offset"))
        << s.error_message();
  }
  {  // A gap between chunks.
    std::vector<v1::CodebookChunk> chunks = Split(hash, f, q);
    chunks.erase(chunks.begin() + 1);
    v1::PutCodebooksResponse resp;
    const grpc::Status s = PutChunks(stub.get(), chunks, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "offset"))
        << s.error_message();
  }
  {  // Data past the declared total.
    std::vector<v1::CodebookChunk> chunks = Split(hash, f, q);
    chunks[0].set_total_bytes(f.size() - 1);
    v1::PutCodebooksResponse resp;
    const grpc::Status s = PutChunks(stub.get(), chunks, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "total_bytes"))
        << s.error_message();
  }
  {  // The stream ends short of the declared total.
    std::vector<v1::CodebookChunk> chunks = Split(hash, f, q);
    chunks.pop_back();
    v1::PutCodebooksResponse resp;
    const grpc::Status s = PutChunks(stub.get(), chunks, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "total_bytes"))
        << s.error_message();
  }
  {  // A declared total above the server's bound (4 GiB): refused at once.
    v1::PutCodebooksResponse resp;
    const grpc::Status s = PutChunks(
        stub.get(), {Chunk(hash, uint64_t{5} << 30, 0, f.substr(0, q))}, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << s.error_message();
  }
  {  // Hash 0, total 0, a later chunk with another hash.
    v1::PutCodebooksResponse resp;
    EXPECT_EQ(
        PutChunks(stub.get(), {Chunk(0, f.size(), 0, f.substr(0, q))}, &resp)
            .error_code(),
        grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(PutChunks(stub.get(), {Chunk(hash, 0, 0, f.substr(0, q))}, &resp)
                  .error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
    std::vector<v1::CodebookChunk> chunks = Split(hash, f, q);
    chunks[1].set_hash(hash + 1);
    const grpc::Status s = PutChunks(stub.get(), chunks, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "hash"))
        << s.error_message();
    EXPECT_EQ(PutChunks(stub.get(), {}, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {  // A complete file whose declared hash is not its content hash.
    v1::PutCodebooksResponse resp;
    const grpc::Status s = PutChunks(stub.get(), Split(hash + 1, f, q), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << s.error_message();
  }
  {  // A corrupted byte in the body: the file fails its trailer hash.
    std::string bad = f;
    bad[bad.size() / 2] ^= 0x5a;
    v1::PutCodebooksResponse resp;
    const grpc::Status s = PutChunks(stub.get(), Split(hash, bad, q), &resp);
    EXPECT_NE(s.error_code(), grpc::StatusCode::OK);
  }
  // None of these registered anything.
  {
    grpc::ClientContext ctx;
    v1::GetCodebookStreamRequest req;
    req.set_hash(hash);
    auto reader = stub->GetCodebookStream(&ctx, req);
    v1::CodebookChunk c;
    const bool read = reader->Read(&c);
    EXPECT_FALSE(read);
    if (read) ctx.TryCancel();
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::GetCodebookStreamRequest req;
    auto reader = stub->GetCodebookStream(&ctx, req);
    v1::CodebookChunk c;
    EXPECT_FALSE(reader->Read(&c));
    EXPECT_EQ(reader->Finish().error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
}

}  // namespace
}  // namespace vqkv::client
