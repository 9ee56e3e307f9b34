// Fuzz target: vqkv-server's text inputs (service/config.h, service/auth.h):
// the YAML config, the bearer-token file (YAML or lines), and byte sizes.
// The first input byte picks the parser (mod 3), the rest is the text:
//   0: ApplyYamlConfig, then ServerConfig::Validate;
//   1: TokenStore::Parse, then Authenticate with a header from the text;
//   2: ParseBytes.
// Properties: no crash or sanitizer report; a config that applies and
// validates has the bounds Validate promises; a token store that parses is
// enabled; ParseBytes of the decimal rendering of its result gives it back.
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "service/auth.h"
#include "service/config.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vqkv::service;
  if (size == 0) return 0;
  const absl::string_view text(reinterpret_cast<const char*>(data + 1),
                               size - 1);
  switch (data[0] % 3) {
    case 0: {
      ServerConfig config;
      if (ApplyYamlConfig(text, "fuzz.yaml", &config).ok() &&
          config.Validate().ok()) {
        FUZZ_CHECK(config.service.max_lease <=
                   absl::Milliseconds(ServerConfig::kMaxLeaseMsLimit));
      }
      break;
    }
    case 1: {
      absl::StatusOr<TokenStore> tokens = TokenStore::Parse(text, "fuzz");
      if (tokens.ok()) {
        FUZZ_CHECK(tokens->enabled());
        const size_t nl = text.find('\n');
        (void)tokens->Authenticate(true, text.substr(0, nl));
        (void)tokens->Authenticate(false, "");
      }
      break;
    }
    case 2: {
      absl::StatusOr<uint64_t> bytes = ParseBytes(text);
      if (bytes.ok()) {
        absl::StatusOr<uint64_t> again = ParseBytes(absl::StrCat(*bytes));
        FUZZ_CHECK(again.ok() && *again == *bytes);
      }
      break;
    }
  }
  return 0;
}
