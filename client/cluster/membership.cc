#include "client/cluster/membership.h"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace vqkv::client::cluster {
namespace {

constexpr absl::string_view kDnsScheme = "dns:///";

void SortUnique(std::vector<std::string>* v) {
  std::sort(v->begin(), v->end());
  v->erase(std::unique(v->begin(), v->end()), v->end());
}

// "host:port" or "[v6]:port" -> host, port.
absl::Status SplitHostPort(absl::string_view entry, std::string* host,
                           int* port) {
  const size_t colon = entry.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "server entry \"", entry, "\" is not host:port (e.g. 10.0.0.1:50051)"));
  }
  absl::string_view h = entry.substr(0, colon);
  if (absl::StartsWith(h, "[") != absl::EndsWith(h, "]")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "server entry \"", entry, "\": an IPv6 host needs both brackets"));
  }
  int p = 0;
  if (!absl::SimpleAtoi(entry.substr(colon + 1), &p) || p < 1 || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("server entry \"", entry, "\": port \"",
                     entry.substr(colon + 1), "\" is not 1..65535"));
  }
  if (h.empty() || h == "[]") {
    return absl::InvalidArgumentError(
        absl::StrCat("server entry \"", entry, "\" has no host"));
  }
  *host = std::string(h);
  *port = p;
  return absl::OkStatus();
}

}  // namespace

bool IsClusterSpec(const std::string& server) {
  return absl::StrContains(server, ',') || absl::StartsWith(server, kDnsScheme);
}

absl::StatusOr<MembershipSpec> ParseMembership(const std::string& server) {
  MembershipSpec spec;
  absl::string_view s = absl::StripAsciiWhitespace(server);
  if (s.empty()) {
    return absl::InvalidArgumentError(
        "server list is empty: give host:port[,host:port...] or "
        "dns:///name:port");
  }
  std::string host;
  int port = 0;
  if (absl::ConsumePrefix(&s, kDnsScheme)) {
    if (absl::StrContains(s, ',')) {
      return absl::InvalidArgumentError(absl::StrCat(
          "server \"", server, "\": dns:/// takes one name:port, not a list"));
    }
    if (absl::Status st = SplitHostPort(s, &host, &port); !st.ok()) return st;
    spec.dns_host = std::move(host);
    spec.dns_port = port;
    return spec;
  }
  for (absl::string_view entry : absl::StrSplit(s, ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("server list \"", server, "\" has an empty entry"));
    }
    if (absl::Status st = SplitHostPort(entry, &host, &port); !st.ok()) {
      return st;
    }
    spec.endpoints.push_back(absl::StrCat(host, ":", port));
  }
  SortUnique(&spec.endpoints);
  return spec;
}

Resolver SystemResolver() {
  return [](const std::string& host,
            int port) -> absl::StatusOr<std::vector<std::string>> {
    std::string name = host;
    if (absl::StartsWith(name, "[") && absl::EndsWith(name, "]")) {
      name = name.substr(1, name.size() - 2);
    }
    addrinfo hints;
    std::memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const int rc = getaddrinfo(name.c_str(), nullptr, &hints, &res);
    if (rc != 0) {
      return absl::UnavailableError(
          absl::StrCat("resolving ", host, ": ", gai_strerror(rc)));
    }
    std::vector<std::string> out;
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
      char buf[NI_MAXHOST];
      if (getnameinfo(a->ai_addr, a->ai_addrlen, buf, sizeof(buf), nullptr, 0,
                      NI_NUMERICHOST) != 0) {
        continue;
      }
      out.push_back(a->ai_family == AF_INET6
                        ? absl::StrCat("[", buf, "]:", port)
                        : absl::StrCat(buf, ":", port));
    }
    freeaddrinfo(res);
    return out;
  };
}

Membership::Membership(MembershipSpec spec, Resolver resolver)
    : spec_(std::move(spec)),
      resolver_(resolver ? std::move(resolver) : SystemResolver()) {
  if (!is_dns()) {
    current_ = spec_.endpoints;
    version_ = 1;
  }
}

absl::StatusOr<bool> Membership::Refresh() {
  if (!is_dns()) return false;
  absl::StatusOr<std::vector<std::string>> got =
      resolver_(spec_.dns_host, spec_.dns_port);
  if (!got.ok()) return got.status();
  SortUnique(&*got);
  if (got->empty()) {
    return absl::UnavailableError(
        absl::StrCat("resolving ", spec_.dns_host, ": no address"));
  }
  absl::MutexLock lock(&mu_);
  if (*got == current_) return false;
  current_ = *std::move(got);
  ++version_;
  return true;
}

std::vector<std::string> Membership::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

uint64_t Membership::version() const {
  absl::MutexLock lock(&mu_);
  return version_;
}

std::string Membership::Describe() const {
  if (is_dns()) {
    return absl::StrCat(kDnsScheme, spec_.dns_host, ":", spec_.dns_port);
  }
  return absl::StrJoin(spec_.endpoints, ",");
}

}  // namespace vqkv::client::cluster
