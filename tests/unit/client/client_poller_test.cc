// ScopedClientPoller (client/grpc/client_poller.h) against gRPC itself: a
// gRPC that starts in the scope polls with "poll"; the operator's
// GRPC_POLL_STRATEGY and a gRPC already running are left alone; the
// environment is as before once the scope ends. Its own test binary, so
// nothing else has started gRPC in the process.
#include "client/grpc/client_poller.h"

#include <grpc/grpc.h>
#include <stdlib.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

// gRPC 1.51's name for the poller it started with; core-internal, declared
// here so the test checks the poller itself rather than the variable.
const char* grpc_get_poll_strategy_name();

namespace vqkv::client {
namespace {

const char* Env() { return std::getenv(ScopedClientPoller::kEnvVar); }

TEST(ScopedClientPollerTest, StartsGrpcWithPollUnlessChosenOrRunning) {
  ASSERT_EQ(grpc_is_initialized(), 0) << "gRPC started before the test";
  unsetenv(ScopedClientPoller::kEnvVar);  // whatever the test ran with

  // The operator's choice wins and stays.
  setenv(ScopedClientPoller::kEnvVar, "epoll1", 1);
  {
    ScopedClientPoller scope;
    EXPECT_EQ(scope.poller(), "epoll1 (GRPC_POLL_STRATEGY)");
    EXPECT_FALSE(scope.set_by_scope());
  }
  ASSERT_NE(Env(), nullptr);
  EXPECT_STREQ(Env(), "epoll1");
  unsetenv(ScopedClientPoller::kEnvVar);

  // Neither: gRPC starts with "poll" in the scope, and the variable goes.
  std::shared_ptr<grpc::Channel> channel;
  {
    ScopedClientPoller scope;
    EXPECT_EQ(scope.poller(), "poll");
    EXPECT_TRUE(scope.set_by_scope());
    ASSERT_NE(Env(), nullptr);
    EXPECT_STREQ(Env(), "poll");
    {
      ScopedClientPoller nested;  // takes turns with other threads only
      EXPECT_EQ(nested.poller(), "poll (GRPC_POLL_STRATEGY)");
      EXPECT_FALSE(nested.set_by_scope());
    }
    ASSERT_NE(Env(), nullptr);
    EXPECT_STREQ(Env(), "poll");
    channel =
        grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials());
  }
  EXPECT_EQ(Env(), nullptr);
  ASSERT_NE(grpc_is_initialized(), 0);
  EXPECT_STREQ(grpc_get_poll_strategy_name(), "poll");

  // gRPC running: its poller cannot change, so the scope sets nothing.
  {
    ScopedClientPoller scope;
    EXPECT_EQ(scope.poller(), "gRPC's (already running)");
    EXPECT_FALSE(scope.set_by_scope());
    EXPECT_EQ(Env(), nullptr);
  }
}

}  // namespace
}  // namespace vqkv::client
