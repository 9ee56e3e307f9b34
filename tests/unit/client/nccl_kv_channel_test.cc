// The NCCL KV channel: its frame checks everywhere; the transfer itself, a
// sender and a receiver on two GPUs of this machine (one thread each, meeting
// through the embedded backend's rendezvous), only where two CUDA devices
// exist. Built only with CUDA and NCCL.
#include "client/nccl/nccl_kv_channel.h"

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "client/embedded_backend.h"
#include "client/nccl/nccl_peer_link.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_device.h"
#include "tests/unit/client/client_test_util.h"

namespace vqkv::client {
namespace {

TEST(NcclLayerFrameTest, ChecksMagicLayerAndSize) {
  NcclLayerFrame f;
  f.layer = 3;
  f.bytes = 100;
  EXPECT_TRUE(CheckNcclLayerFrame(f, 3, 100).ok());
  EXPECT_EQ(CheckNcclLayerFrame(f, 4, 100).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CheckNcclLayerFrame(f, 3, 99).code(),
            absl::StatusCode::kResourceExhausted);
  NcclLayerFrame bad = f;
  bad.magic = 0;
  EXPECT_EQ(CheckNcclLayerFrame(bad, 3, 100).code(),
            absl::StatusCode::kDataLoss);
  bad = f;
  bad.version = 2;
  EXPECT_EQ(CheckNcclLayerFrame(bad, 3, 100).code(),
            absl::StatusCode::kDataLoss);
}

// Layers of several sizes (none, odd, a MiB) go from device 0 to device 1
// byte for byte; the receiver's buffer is larger than each.
TEST(NcclKvChannelTest, LayersCrossBetweenTwoGpus) {
  std::string why_not;
  const int devices = cuda::CudaDeviceCount(&why_not);
  if (devices < 2) {
    GTEST_SKIP() << "needs two CUDA devices, found " << devices
                 << (why_not.empty() ? "" : ": " + why_not)
                 << " (the transfer runs GPU to GPU)";
  }
  std::unique_ptr<storage::TieredStore> store = testing::MemoryStore();
  EmbeddedBackend backend(store.get());
  const std::vector<uint64_t> sizes = {0, 4097, 1 << 20, 12345};
  auto pattern = [](size_t layer, uint64_t i) {
    return static_cast<uint8_t>((i * 131 + layer * 7) & 0xff);
  };

  absl::Status sender_status;
  std::thread sender([&] {
    sender_status = [&]() -> absl::Status {
      auto ch = NcclKvChannel::Open(&backend, "test-channel",
                                    NcclKvChannel::Role::kSender, 0);
      if (!ch.ok()) return ch.status();
      cudaStream_t stream;
      if (cudaStreamCreate(&stream) != cudaSuccess) {
        return absl::InternalError("cudaStreamCreate");
      }
      std::vector<void*> buffers;
      for (size_t l = 0; l < sizes.size(); ++l) {
        std::vector<uint8_t> host(sizes[l]);
        for (uint64_t i = 0; i < sizes[l]; ++i) host[i] = pattern(l, i);
        void* dev = nullptr;
        if (cudaMalloc(&dev, sizes[l] + 1) != cudaSuccess ||
            cudaMemcpy(dev, host.data(), sizes[l], cudaMemcpyHostToDevice) !=
                cudaSuccess) {
          return absl::InternalError("cudaMalloc / cudaMemcpy");
        }
        buffers.push_back(dev);
        absl::Status s =
            (*ch)->SendLayer(static_cast<int>(l), dev, sizes[l], stream);
        if (!s.ok()) return s;
      }
      const cudaError_t e = cudaStreamSynchronize(stream);
      for (void* b : buffers) cudaFree(b);
      cudaStreamDestroy(stream);
      return e == cudaSuccess ? absl::OkStatus()
                              : absl::InternalError("cudaStreamSynchronize");
    }();
  });

  auto ch = NcclKvChannel::Open(&backend, "test-channel",
                                NcclKvChannel::Role::kReceiver, 1);
  ASSERT_TRUE(ch.ok()) << ch.status();
  EXPECT_EQ((*ch)->SendLayer(0, nullptr, 0, nullptr).code(),
            absl::StatusCode::kFailedPrecondition);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  constexpr uint64_t kCapacity = uint64_t{2} << 20;
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, kCapacity), cudaSuccess);
  for (size_t l = 0; l < sizes.size(); ++l) {
    absl::StatusOr<uint64_t> got =
        (*ch)->ReceiveLayer(static_cast<int>(l), dev, kCapacity, stream);
    ASSERT_TRUE(got.ok()) << "layer " << l << ": " << got.status();
    ASSERT_EQ(*got, sizes[l]);
    std::vector<uint8_t> host(sizes[l]);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(host.data(), dev, sizes[l], cudaMemcpyDeviceToHost),
              cudaSuccess);
    for (uint64_t i = 0; i < sizes[l]; ++i) {
      ASSERT_EQ(host[i], pattern(l, i)) << "layer " << l << " byte " << i;
    }
  }
  sender.join();
  EXPECT_TRUE(sender_status.ok()) << sender_status;
  cudaFree(dev);
  cudaStreamDestroy(stream);
}

// The connector's handoff link over NCCL: messages of several sizes from
// GPU 0 to GPU 1 whole and in order; a sender cannot receive; Close wakes a
// receiver blocked on a sender that sends no more.
TEST(NcclPeerLinkTest, MessagesCrossBetweenTwoGpus) {
  std::string why_not;
  const int devices = cuda::CudaDeviceCount(&why_not);
  if (devices < 2) {
    GTEST_SKIP() << "needs two CUDA devices, found " << devices
                 << (why_not.empty() ? "" : ": " + why_not)
                 << " (the handoff runs GPU to GPU)";
  }
  std::unique_ptr<storage::TieredStore> store = testing::MemoryStore();
  EmbeddedBackend backend(store.get());
  const std::vector<std::string> messages = {"", std::string(4097, 'a'),
                                             std::string(1 << 20, 'b'), "last"};
  constexpr uint64_t kMax = uint64_t{2} << 20;
  absl::Status sender_status;
  std::thread sender([&] {
    sender_status = [&]() -> absl::Status {
      auto link = NcclPeerLink::Open(&backend, "peer-link",
                                     NcclKvChannel::Role::kSender, 0, kMax);
      if (!link.ok()) return link.status();
      if ((*link)->Receive(absl::Seconds(1)).status().code() !=
          absl::StatusCode::kFailedPrecondition) {
        return absl::InternalError("a sending link received");
      }
      for (const std::string& m : messages) {
        absl::Status s = (*link)->Send(m);
        if (!s.ok()) return s;
      }
      return absl::OkStatus();
    }();
  });
  auto link = NcclPeerLink::Open(&backend, "peer-link",
                                 NcclKvChannel::Role::kReceiver, 1, kMax);
  ASSERT_TRUE(link.ok()) << link.status();
  for (const std::string& m : messages) {
    absl::StatusOr<std::string> got = (*link)->Receive(absl::Seconds(30));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, m);
  }
  sender.join();
  ASSERT_TRUE(sender_status.ok()) << sender_status;
  std::thread closer([&] {
    absl::SleepFor(absl::Milliseconds(100));
    (*link)->Close();
  });
  EXPECT_EQ((*link)->Receive(absl::Seconds(1)).status().code(),
            absl::StatusCode::kCancelled);
  closer.join();
}

}  // namespace
}  // namespace vqkv::client
