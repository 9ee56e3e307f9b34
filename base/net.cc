#include "base/net.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace vqkv::base {
namespace {

// One host:port or [v6]:port.
bool IsLoopbackHostPort(absl::string_view host_port) {
  const size_t colon = host_port.rfind(':');
  absl::string_view host =
      colon == absl::string_view::npos ? host_port : host_port.substr(0, colon);
  if (absl::ConsumePrefix(&host, "[")) {
    if (!absl::ConsumeSuffix(&host, "]")) return false;
  }
  if (absl::AsciiStrToLower(host) == "localhost" || host == "::1") return true;
  // 127.0.0.0/8 as a dotted quad.
  std::vector<absl::string_view> parts = absl::StrSplit(host, '.');
  if (parts.size() != 4 || parts[0] != "127") return false;
  for (absl::string_view p : parts) {
    int v = 0;
    if (p.empty() || !absl::SimpleAtoi(p, &v) || v < 0 || v > 255) {
      return false;
    }
  }
  return true;
}

}  // namespace

bool IsLoopbackAddress(absl::string_view address) {
  if (absl::StartsWith(address, "unix:") ||
      absl::StartsWith(address, "unix-abstract:")) {
    return true;
  }
  if (absl::ConsumePrefix(&address, "ipv4:") ||
      absl::ConsumePrefix(&address, "ipv6:")) {
    for (absl::string_view one : absl::StrSplit(address, ',')) {
      if (!IsLoopbackHostPort(one)) return false;
    }
    return true;
  }
  if (absl::ConsumePrefix(&address, "dns:")) {
    // dns:[//authority/]host:port; an authority names a DNS server.
    if (absl::ConsumePrefix(&address, "//")) {
      const size_t slash = address.find('/');
      if (slash == absl::string_view::npos) return false;
      address.remove_prefix(slash + 1);
    }
  }
  return IsLoopbackHostPort(address);
}

}  // namespace vqkv::base
