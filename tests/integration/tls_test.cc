// TLS of the real vqkv-server process with the client library's TLS
// options (client/grpc/grpc_backend.h TlsClientOptions): client
// certificates (--tls-client-ca), the server's name check, and certificates
// rotated on disk while the server and the client run (--tls-reload-seconds,
// TlsClientOptions::reload_seconds).
//
// Certificates are made with the openssl CLI (P-256 keys: fast), each by
// its own CA so a client that trusts one CA tells which certificate a
// server presents.
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/logging.h"
#include "client/grpc/grpc_backend.h"
#include "gtest/gtest.h"
#include "tests/integration/server_process.h"

namespace vqkv::testing {
namespace {

using client::Backend;
using client::GrpcBackendOptions;
using client::TlsClientOptions;

// The name every server certificate carries (no IP address: a client that
// dials 127.0.0.1 must be told the name, TlsClientOptions::server_name).
constexpr char kServerName[] = "vqkv.test";
constexpr char kToken[] = "engine-token-123";

bool HaveOpenssl() {
  return std::system("command -v openssl >/dev/null 2>&1") == 0;
}

bool RunQuiet(const std::string& cmd) {
  return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0;
}

// A certificate and its key, as files.
struct Pem {
  std::string cert;
  std::string key;
};

// A self-signed CA named `name` in dir/name.{crt,key}.
Pem MakeCa(const std::string& dir, const std::string& name) {
  Pem ca{absl::StrCat(dir, "/", name, ".crt"),
         absl::StrCat(dir, "/", name, ".key")};
  EXPECT_TRUE(RunQuiet(absl::StrCat(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
      "-nodes -days 1 -subj /CN=",
      name, " -keyout ", ca.key, " -out ", ca.cert)))
      << name;
  return ca;
}

// A leaf certificate for `name` signed by `ca`, in dir/name.{crt,key}; with
// `server`, it names kServerName (subjectAltName).
Pem MakeLeaf(const TempDir& tmp, const std::string& dir, const Pem& ca,
             const std::string& name, bool server) {
  Pem leaf{absl::StrCat(dir, "/", name, ".crt"),
           absl::StrCat(dir, "/", name, ".key")};
  const std::string csr = absl::StrCat(dir, "/", name, ".csr");
  const std::string ext = tmp.WriteFile(
      name + ".ext",
      absl::StrCat("basicConstraints=CA:FALSE\n",
                   server ? absl::StrCat("subjectAltName=DNS:", kServerName,
                                         "\nextendedKeyUsage=serverAuth\n")
                          : "extendedKeyUsage=clientAuth\n"));
  EXPECT_TRUE(RunQuiet(absl::StrCat(
      "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
      "-nodes -subj /CN=",
      name, " -keyout ", leaf.key, " -out ", csr)))
      << name;
  EXPECT_TRUE(RunQuiet(absl::StrCat(
      "openssl x509 -req -days 1 -set_serial 1 -in ", csr, " -CA ", ca.cert,
      " -CAkey ", ca.key, " -extfile ", ext, " -out ", leaf.cert)))
      << name;
  return leaf;
}

// Points the symlink `link` at `target` in one step (rename over it), as a
// Kubernetes Secret volume swaps its ..data link: a reader sees the old
// files or the new ones, never a mix.
void SwapLink(const std::string& target, const std::string& link) {
  const std::string tmp = link + ".tmp";
  ::unlink(tmp.c_str());
  ASSERT_EQ(::symlink(target.c_str(), tmp.c_str()), 0) << tmp;
  ASSERT_EQ(std::rename(tmp.c_str(), link.c_str()), 0) << link;
}

// A client of `server` that trusts `ca` and presents `cert` (when given).
std::unique_ptr<Backend> Connect(const ServerProcess& server,
                                 const std::string& ca, const Pem* cert,
                                 const std::string& server_name = kServerName,
                                 unsigned reload_seconds = 60) {
  GrpcBackendOptions options;
  options.target = server.address();
  // One connection, so "the connection made before a rotation" is one.
  options.connections = 1;
  options.auth_token = kToken;
  options.tls.ca_file = ca;
  options.tls.server_name = server_name;
  options.tls.reload_seconds = reload_seconds;
  if (cert != nullptr) {
    options.tls.cert_file = cert->cert;
    options.tls.key_file = cert->key;
  }
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      client::NewGrpcBackend(options);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? *std::move(backend) : nullptr;
}

// One authenticated call through `backend` (a rendezvous put and get).
absl::Status Call(Backend* backend) {
  if (backend == nullptr) return absl::InternalError("no backend");
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  if (absl::Status s =
          backend->PutRendezvous("tls-test", "v", absl::Seconds(60), deadline);
      !s.ok()) {
    return s;
  }
  return backend->GetRendezvous("tls-test", deadline).status();
}

// The CAs of a rotation: the server's certificate moves from one of CA a
// to one of CA b, the client certificates it accepts from CA c1's to c2's.
struct RotationCas {
  Pem a, b, c1, c2;
};
RotationCas MakeRotationCas(const std::string& dir) {
  return {MakeCa(dir, "a"), MakeCa(dir, "b"), MakeCa(dir, "c1"),
          MakeCa(dir, "c2")};
}

// dir/v1 and dir/v2, the two versions of the files a link swaps between.
void MakeVersionDirs(const std::string& dir) {
  for (const char* sub : {"/v1", "/v2"}) {
    ASSERT_EQ(::mkdir((dir + sub).c_str(), 0700), 0) << sub;
  }
}

// Calls `call` every 200 ms until it succeeds, for at most 15 s (a reload
// takes up to its interval, plus the new connection). Returns its last
// status; *took is how long it took.
absl::Status RetryUntilOk(const std::function<absl::Status()>& call,
                          absl::Duration* took = nullptr) {
  const absl::Time start = absl::Now();
  absl::Status status = absl::UnknownError("not tried");
  while (absl::Now() - start < absl::Seconds(15)) {
    status = call();
    if (status.ok()) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  if (took != nullptr) *took = absl::Now() - start;
  return status;
}

TEST(TlsTest, ClientCertificatesAreRequiredAndVerified) {
  if (!HaveOpenssl()) GTEST_SKIP() << "openssl CLI not installed";
  TempDir tmp;
  const std::string& d = tmp.path();
  const Pem server_ca = MakeCa(d, "server-ca");
  const Pem client_ca = MakeCa(d, "client-ca");
  const Pem rogue_ca = MakeCa(d, "rogue-ca");
  const Pem server_cert = MakeLeaf(tmp, d, server_ca, "server", true);
  const Pem engine = MakeLeaf(tmp, d, client_ca, "engine", false);
  const Pem intruder = MakeLeaf(tmp, d, rogue_ca, "intruder", false);
  const std::string tokens =
      tmp.WriteFile("tokens", absl::StrCat(kToken, " engine\n"));
  ASSERT_FALSE(HasFailure());

  auto server = ServerProcess::Start(
      {"--data-dir", d + "/data", "--tokens-file", tokens, "--tls-cert",
       server_cert.cert, "--tls-key", server_cert.key, "--tls-client-ca",
       client_ca.cert});
  ASSERT_TRUE(server.ok()) << server.status();

  // A certificate of the client CA, and the token: served.
  auto good = Connect(**server, server_ca.cert, &engine);
  const absl::Status served = Call(good.get());
  EXPECT_TRUE(served.ok()) << served;

  // No client certificate: the handshake fails, nothing is served.
  auto anonymous = Connect(**server, server_ca.cert, nullptr);
  const absl::Status no_cert = Call(anonymous.get());
  EXPECT_EQ(no_cert.code(), absl::StatusCode::kUnavailable) << no_cert;

  // A certificate signed by another CA: refused the same way.
  auto rogue = Connect(**server, server_ca.cert, &intruder);
  const absl::Status bad_cert = Call(rogue.get());
  EXPECT_EQ(bad_cert.code(), absl::StatusCode::kUnavailable) << bad_cert;

  // The client checks the server's name: the certificate names kServerName,
  // not the address dialled.
  auto unnamed = Connect(**server, server_ca.cert, &engine, /*server_name=*/"");
  const absl::Status wrong_name = Call(unnamed.get());
  EXPECT_EQ(wrong_name.code(), absl::StatusCode::kUnavailable) << wrong_name;

  // A valid certificate does not replace the token: the tenant still comes
  // from the token.
  GrpcBackendOptions no_token;
  no_token.target = (*server)->address();
  no_token.tls = {server_ca.cert, engine.cert, engine.key, kServerName, 60};
  auto tokenless = client::NewGrpcBackend(no_token);
  ASSERT_TRUE(tokenless.ok()) << tokenless.status();
  EXPECT_EQ(Call(tokenless->get()).code(), absl::StatusCode::kUnauthenticated);

  // Plaintext cannot talk to the port.
  GrpcBackendOptions plain;
  plain.target = (*server)->address();
  plain.auth_token = kToken;
  auto plaintext = client::NewGrpcBackend(plain);
  ASSERT_TRUE(plaintext.ok()) << plaintext.status();
  EXPECT_FALSE(Call(plaintext->get()).ok());

  // The served client still is.
  EXPECT_TRUE(Call(good.get()).ok());
  EXPECT_EQ((*server)->StopWith(SIGTERM), 0);
}

TEST(TlsTest, BadTlsSettingsFailFast) {
  if (!HaveOpenssl()) GTEST_SKIP() << "openssl CLI not installed";
  TempDir tmp;
  const std::string& d = tmp.path();
  const Pem ca = MakeCa(d, "ca");
  const Pem cert = MakeLeaf(tmp, d, ca, "server", true);
  const std::string not_pem = tmp.WriteFile("not.pem", "hello\n");
  ASSERT_FALSE(HasFailure());
  // The server refuses to start on a missing or non-PEM client CA, mTLS
  // without a certificate of its own, and a reload interval of 0.
  EXPECT_FALSE(ServerProcess::Start({"--data-dir", d + "/data", "--tls-cert",
                                     cert.cert, "--tls-key", cert.key,
                                     "--tls-client-ca", d + "/missing.pem"})
                   .ok());
  EXPECT_FALSE(
      ServerProcess::Start({"--data-dir", d + "/data", "--tls-cert", cert.cert,
                            "--tls-key", cert.key, "--tls-client-ca", not_pem})
          .ok());
  EXPECT_FALSE(ServerProcess::Start(
                   {"--data-dir", d + "/data", "--tls-client-ca", ca.cert})
                   .ok());
  EXPECT_FALSE(
      ServerProcess::Start({"--data-dir", d + "/data", "--tls-cert", cert.cert,
                            "--tls-key", cert.key, "--tls-reload-seconds", "0"})
          .ok());
  // The client checks its files before it dials.
  GrpcBackendOptions o;
  o.target = "127.0.0.1:1";
  o.tls = {d + "/missing.pem", "", "", "", 60};
  EXPECT_EQ(client::NewGrpcBackend(o).status().code(),
            absl::StatusCode::kNotFound);
  o.tls = {not_pem, "", "", "", 60};
  EXPECT_EQ(client::NewGrpcBackend(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.tls = {ca.cert, cert.cert, "", "", 60};  // a certificate without its key
  EXPECT_EQ(client::NewGrpcBackend(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.tls = {"", cert.cert, cert.key, "", 60};  // a certificate without TLS
  EXPECT_EQ(client::NewGrpcBackend(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.tls = {ca.cert, "", "", "", 0};
  EXPECT_EQ(client::NewGrpcBackend(o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The client warns when it would send a bearer token in plaintext to
// another machine (the server warns at its start too, but only the client
// knows where its token goes). Creating a backend dials nothing.
TEST(TlsTest, PlaintextTokenToAnotherHostIsWarnedAbout) {
  std::vector<std::string> lines;
  base::LogSink previous =
      base::SetLogSink([&lines](base::LogSeverity, absl::string_view line) {
        lines.emplace_back(line);
      });
  auto warned = [&lines](const GrpcBackendOptions& o) {
    lines.clear();
    EXPECT_TRUE(client::NewGrpcBackend(o).ok());
    for (const std::string& l : lines) {
      if (absl::StrContains(l, "PLAINTEXT")) return true;
    }
    return false;
  };
  GrpcBackendOptions o;
  o.auth_token = kToken;
  o.target = "10.255.0.1:50051";
  EXPECT_TRUE(warned(o));
  o.target = "dns:///vqkv-headless.vqkv.svc.cluster.local:50051";
  EXPECT_TRUE(warned(o));
  o.target = "127.0.0.1:50051";  // this machine
  EXPECT_FALSE(warned(o));
  o.target = "10.255.0.1:50051";
  o.auth_token.clear();  // nothing secret to send
  EXPECT_FALSE(warned(o));
  if (HaveOpenssl()) {
    TempDir tmp;
    o.auth_token = kToken;
    o.tls.ca_file = MakeCa(tmp.path(), "ca").cert;
    EXPECT_FALSE(warned(o));
  }
  base::SetLogSink(previous);
}

// The server's certificate, key and client CA are replaced on disk (one
// atomic symlink swap) while it runs: within about a reload interval new
// connections get the new certificate and need a client certificate of the
// new CA; a connection made before keeps working.
TEST(TlsTest, ServerPicksUpRotatedCertificatesWithoutRestart) {
  if (!HaveOpenssl()) GTEST_SKIP() << "openssl CLI not installed";
  TempDir tmp;
  const std::string& d = tmp.path();
  MakeVersionDirs(d);
  // v1: server certificate A of CA "a", client CA "c1"; v2: B of "b", "c2".
  const auto [ca_a, ca_b, ca_c1, ca_c2] = MakeRotationCas(d);
  MakeLeaf(tmp, d + "/v1", ca_a, "server", true);
  MakeLeaf(tmp, d + "/v2", ca_b, "server", true);
  ASSERT_TRUE(RunQuiet(absl::StrCat("cp ", ca_c1.cert, " ", d,
                                    "/v1/client-ca.crt", " && cp ", ca_c2.cert,
                                    " ", d, "/v2/client-ca.crt")));
  const Pem engine1 = MakeLeaf(tmp, d, ca_c1, "engine1", false);
  const Pem engine2 = MakeLeaf(tmp, d, ca_c2, "engine2", false);
  ASSERT_FALSE(HasFailure());
  const std::string current = d + "/current";
  SwapLink("v1", current);

  auto server = ServerProcess::Start(
      {"--data-dir", d + "/data", "--tls-cert", current + "/server.crt",
       "--tls-key", current + "/server.key", "--tls-client-ca",
       current + "/client-ca.crt", "--tls-reload-seconds", "1"});
  ASSERT_TRUE(server.ok()) << server.status();

  // Before: certificate A, client CA c1.
  auto old_connection = Connect(**server, ca_a.cert, &engine1);
  ASSERT_TRUE(Call(old_connection.get()).ok());
  EXPECT_FALSE(Call(Connect(**server, ca_b.cert, &engine2).get()).ok());

  SwapLink("v2", current);
  absl::Duration took;
  const absl::Status status = RetryUntilOk(
      [&] { return Call(Connect(**server, ca_b.cert, &engine2).get()); },
      &took);
  ASSERT_TRUE(status.ok()) << "certificate B never served: " << status;
  std::printf("certificate B served %.2f s after the swap (reload 1 s)\n",
              absl::ToDoubleSeconds(took));

  // After: new connections get B (a client trusting only A fails) and need
  // a certificate of c2 (one of c1 fails).
  EXPECT_FALSE(Call(Connect(**server, ca_a.cert, &engine1).get()).ok());
  EXPECT_FALSE(Call(Connect(**server, ca_b.cert, &engine1).get()).ok());
  // The connection made before the swap keeps its session.
  EXPECT_TRUE(Call(old_connection.get()).ok());
  EXPECT_EQ((*server)->StopWith(SIGTERM), 0);
}

// A reload that finds the files missing (here: the link swapped to an empty
// directory) keeps the certificate the server had: new connections still
// get it. Files that come back later are picked up as usual.
TEST(TlsTest, ServerKeepsItsCertificateWhileTheFilesAreMissing) {
  if (!HaveOpenssl()) GTEST_SKIP() << "openssl CLI not installed";
  TempDir tmp;
  const std::string& d = tmp.path();
  MakeVersionDirs(d);
  ASSERT_EQ(::mkdir((d + "/empty").c_str(), 0700), 0);
  const Pem ca_a = MakeCa(d, "a");
  const Pem ca_b = MakeCa(d, "b");
  MakeLeaf(tmp, d + "/v1", ca_a, "server", true);
  MakeLeaf(tmp, d + "/v2", ca_b, "server", true);
  ASSERT_FALSE(HasFailure());
  const std::string current = d + "/current";
  SwapLink("v1", current);
  auto server = ServerProcess::Start(
      {"--data-dir", d + "/data", "--tls-cert", current + "/server.crt",
       "--tls-key", current + "/server.key", "--tls-reload-seconds", "1"});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE(Call(Connect(**server, ca_a.cert, nullptr).get()).ok());

  SwapLink("empty", current);
  absl::SleepFor(absl::Milliseconds(2500));  // two reloads without files
  const absl::Status kept = Call(Connect(**server, ca_a.cert, nullptr).get());
  EXPECT_TRUE(kept.ok()) << kept;

  SwapLink("v2", current);
  const absl::Status status = RetryUntilOk(
      [&] { return Call(Connect(**server, ca_b.cert, nullptr).get()); });
  EXPECT_TRUE(status.ok()) << "certificate B never served: " << status;
  EXPECT_EQ((*server)->StopWith(SIGTERM), 0);
}

// The client re-reads its own files too: after both sides rotate (the
// server restarted on the same port with B and c2, the client's files
// swapped under it), the same client reconnects with the new CA bundle and
// certificate, without being reopened.
TEST(TlsTest, ClientPicksUpRotatedCertificatesWithoutReopening) {
  if (!HaveOpenssl()) GTEST_SKIP() << "openssl CLI not installed";
  TempDir tmp;
  const std::string& d = tmp.path();
  MakeVersionDirs(d);
  const auto [ca_a, ca_b, ca_c1, ca_c2] = MakeRotationCas(d);
  const Pem server_a = MakeLeaf(tmp, d, ca_a, "server-a", true);
  const Pem server_b = MakeLeaf(tmp, d, ca_b, "server-b", true);
  // The client's files: v1 trusts a and holds a certificate of c1, v2
  // trusts b and holds one of c2.
  MakeLeaf(tmp, d + "/v1", ca_c1, "engine", false);
  MakeLeaf(tmp, d + "/v2", ca_c2, "engine", false);
  ASSERT_TRUE(
      RunQuiet(absl::StrCat("cp ", ca_a.cert, " ", d, "/v1/ca.crt && cp ",
                            ca_b.cert, " ", d, "/v2/ca.crt")));
  ASSERT_FALSE(HasFailure());
  const std::string current = d + "/current";
  SwapLink("v1", current);
  const Pem client_files{current + "/engine.crt", current + "/engine.key"};

  auto server_v1 = ServerProcess::Start(
      {"--data-dir", d + "/data", "--tls-cert", server_a.cert, "--tls-key",
       server_a.key, "--tls-client-ca", ca_c1.cert});
  ASSERT_TRUE(server_v1.ok()) << server_v1.status();
  auto client = Connect(**server_v1, current + "/ca.crt", &client_files,
                        kServerName, /*reload_seconds=*/1);
  ASSERT_TRUE(Call(client.get()).ok());
  const std::string listen = (*server_v1)->address();
  EXPECT_EQ((*server_v1)->StopWith(SIGTERM), 0);

  SwapLink("v2", current);
  auto server_v2 = ServerProcess::StartOn(
      listen, {"--data-dir", d + "/data", "--tls-cert", server_b.cert,
               "--tls-key", server_b.key, "--tls-client-ca", ca_c2.cert});
  ASSERT_TRUE(server_v2.ok()) << server_v2.status();
  const absl::Status status = RetryUntilOk([&] { return Call(client.get()); });
  EXPECT_TRUE(status.ok()) << "the client never used its new files: " << status;
  EXPECT_EQ((*server_v2)->StopWith(SIGTERM), 0);
}

}  // namespace
}  // namespace vqkv::testing
