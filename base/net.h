// Classifying network addresses, for the security checks of the server
// (auth off on a public address) and the client (a bearer token sent in
// plaintext to another machine).
//
// Thread safety: pure functions.
#ifndef VQKV_BASE_NET_H_
#define VQKV_BASE_NET_H_

#include "absl/strings/string_view.h"

namespace vqkv::base {

// Whether `address` only reaches this machine. Accepted forms: host:port or
// [v6]:port whose host is localhost, in 127.0.0.0/8 or ::1; a Unix socket
// (unix:PATH, unix-abstract:NAME); and the gRPC target schemes dns:host:port,
// dns:///host:port and ipv4: / ipv6: address lists (every address of a list
// must be loopback). Wildcards (0.0.0.0, [::]), an empty host and every other
// host are not loopback; names other than localhost are never resolved.
bool IsLoopbackAddress(absl::string_view address);

}  // namespace vqkv::base

#endif  // VQKV_BASE_NET_H_
