// The process's diagnostic log: one line per event, to stderr by default.
//
//   VQKV_LOG(kWarning) << "disk tier fault: " << status;
//
// A line reads "vqkv W 2026-12-01 02:13:01.123 storage/tiered_store.cc:288]
// message", the path relative to the repository root. Libraries log only what
// an operator must see (faults, security warnings, shutdown trouble), never per
// request; their errors travel as absl::Status.
//
// SetLogSink redirects every line (tests capture them; an engine can route
// them into its own logger); SetMinLogSeverity drops the less severe ones.
// Both may be called at any time.
//
// Thread safety: logging, SetLogSink and SetMinLogSeverity are safe from any
// thread; a sink is called under a lock, one line at a time, so it must not
// log itself.
#ifndef VQKV_BASE_LOGGING_H_
#define VQKV_BASE_LOGGING_H_

#include <functional>
#include <sstream>
#include <string>

#include "absl/strings/string_view.h"

namespace vqkv::base {

enum class LogSeverity { kInfo = 0, kWarning = 1, kError = 2 };

// Receives the formatted line (no trailing newline).
using LogSink = std::function<void(LogSeverity, absl::string_view line)>;

// Installs `sink`; an empty function restores stderr. Returns the previous
// sink (empty when it was stderr).
LogSink SetLogSink(LogSink sink);

// Lines below `severity` are dropped. Default kInfo. Returns the old value.
LogSeverity SetMinLogSeverity(LogSeverity severity);

// Collects one line and emits it on destruction; use VQKV_LOG.
class LogMessage {
 public:
  LogMessage(LogSeverity severity, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;

  std::ostream& stream() { return stream_; }

 private:
  LogSeverity severity_;
  std::ostringstream stream_;
};

// Whether a line of `severity` would be emitted; lets VQKV_LOG skip
// formatting entirely.
bool LogEnabled(LogSeverity severity);

}  // namespace vqkv::base

#define VQKV_LOG(severity)                                                  \
  if (!::vqkv::base::LogEnabled(::vqkv::base::LogSeverity::severity))       \
    ;                                                                       \
  else                                                                      \
    ::vqkv::base::LogMessage(::vqkv::base::LogSeverity::severity, __FILE__, \
                             __LINE__)                                      \
        .stream()

#endif  // VQKV_BASE_LOGGING_H_
