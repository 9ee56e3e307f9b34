#include "base/net.h"

#include "gtest/gtest.h"

namespace vqkv::base {
namespace {

TEST(NetTest, ListenAddresses) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackAddress("127.10.0.3:0"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:50051"));
  EXPECT_TRUE(IsLoopbackAddress("LocalHost:50051"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:50051"));
  EXPECT_TRUE(IsLoopbackAddress("unix:/run/vqkv.sock"));
  EXPECT_TRUE(IsLoopbackAddress("unix-abstract:vqkv"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("[::1:50051"));
  EXPECT_FALSE(IsLoopbackAddress(":50051"));
  EXPECT_FALSE(IsLoopbackAddress("10.1.2.3:50051"));
  EXPECT_FALSE(IsLoopbackAddress("128.0.0.1:50051"));
  EXPECT_FALSE(IsLoopbackAddress("127.0.0.256:50051"));
  EXPECT_FALSE(IsLoopbackAddress("127.0.0.1.example.com:50051"));
  EXPECT_FALSE(IsLoopbackAddress("cache.example.com:50051"));
}

TEST(NetTest, GrpcTargetSchemes) {
  EXPECT_TRUE(IsLoopbackAddress("dns:localhost:50051"));
  EXPECT_TRUE(IsLoopbackAddress("dns:///localhost:50051"));
  EXPECT_TRUE(IsLoopbackAddress("dns://8.8.8.8/127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackAddress("ipv4:127.0.0.1:1,127.0.0.2:2"));
  EXPECT_TRUE(IsLoopbackAddress("ipv6:[::1]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("dns:///vqkv-headless.vqkv.svc:50051"));
  EXPECT_FALSE(IsLoopbackAddress("dns://8.8.8.8"));
  EXPECT_FALSE(IsLoopbackAddress("ipv4:127.0.0.1:1,10.0.0.2:2"));
  EXPECT_FALSE(IsLoopbackAddress("ipv6:[2001:db8::1]:50051"));
}

}  // namespace
}  // namespace vqkv::base
