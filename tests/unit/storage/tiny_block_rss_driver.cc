// Drives a running vqkv-server with many header-sized blocks, for the
// whole-server memory measurement in docs/RELIABILITY.md (not a test):
//
//   tiny_block_rss_driver <host:port> <blocks> [batch]
//
// Puts <blocks> distinct fp16 blocks of one token (layout 1 layer, 1 KV
// head, head_dim 8: a 64-byte header + 32 bytes of payload = 96 bytes) into
// one namespace, <batch> blocks per PutBlocks (default 2000), as the
// anonymous tenant (start the server without --tokens-file). Prints the
// number stored. Read the server's VmRSS from /proc/<pid>/status afterwards.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/coding.h"
#include "grpcpp/grpcpp.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/block.h"
#include "kernels/codec.h"
#include "vqkv/v1/kvcache.grpc.pb.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s <host:port> <blocks> [batch]\n", argv[0]);
    return 2;
  }
  const std::string address = argv[1];
  const int64_t blocks = std::atoll(argv[2]);
  const int64_t batch = argc > 3 ? std::atoll(argv[3]) : 2000;
  constexpr vqkv::KvLayout kLayout{1, 1, 8};
  auto codec = vqkv::Fp16Codec::Create(kLayout);
  if (!codec.ok()) {
    std::fprintf(stderr, "codec: %s\n", codec.status().ToString().c_str());
    return 1;
  }
  std::vector<float> k(kLayout.ElementsPerToken(), 0.5f), v(k.size(), -0.5f);
  auto encoded = vqkv::EncodeBlock(**codec, k.data(), v.data(), /*tokens=*/1,
                                   vqkv::BlockOptions{});
  if (!encoded.ok()) {
    std::fprintf(stderr, "encode: %s\n", encoded.status().ToString().c_str());
    return 1;
  }
  const std::string block(encoded->begin(), encoded->end());

  vqkv::v1::Namespace ns;
  ns.set_model_id("tiny-block-rss");
  ns.set_weight_revision("r1");
  ns.set_codec("fp16");
  ns.set_codec_id(static_cast<uint32_t>(vqkv::CodecId::kFp16));
  ns.set_block_tokens(1);
  ns.set_layers(kLayout.layers);
  ns.set_kv_heads(kLayout.kv_heads);
  ns.set_head_dim(kLayout.head_dim);
  ns.set_dtype(vqkv::v1::DTYPE_FLOAT16);

  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(256 << 20);
  args.SetMaxReceiveMessageSize(256 << 20);
  auto stub = vqkv::v1::KVCache::NewStub(grpc::CreateCustomChannel(
      address, grpc::InsecureChannelCredentials(), args));
  int64_t stored = 0;
  for (int64_t first = 0; first < blocks; first += batch) {
    vqkv::v1::PutBlocksRequest req;
    *req.mutable_namespace_() = ns;
    for (int64_t i = first; i < std::min(blocks, first + batch); ++i) {
      vqkv::v1::Block* b = req.add_blocks();
      std::string hash(16, '\0');
      vqkv::base::EncodeBigEndian64(hash.data(), 0x5eed);
      vqkv::base::EncodeBigEndian64(hash.data() + 8, static_cast<uint64_t>(i));
      b->set_hash(hash);
      b->set_data(block);
    }
    vqkv::v1::PutBlocksResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status s = stub->PutBlocks(&ctx, req, &resp);
    if (!s.ok()) {
      std::fprintf(stderr, "PutBlocks at %lld: %s\n",
                   static_cast<long long>(first), s.error_message().c_str());
      return 1;
    }
    stored += resp.stored();
  }
  std::printf("stored %lld of %lld blocks of %zu bytes\n",
              static_cast<long long>(stored), static_cast<long long>(blocks),
              block.size());
  return 0;
}
