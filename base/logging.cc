#include "base/logging.h"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <utility>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace vqkv::base {
namespace {

std::atomic<int> g_min_severity{static_cast<int>(LogSeverity::kInfo)};

std::mutex& SinkMutex() {
  static std::mutex mu;
  return mu;
}

LogSink& Sink() {
  static LogSink* sink = new LogSink();
  return *sink;
}

char SeverityLetter(LogSeverity s) {
  switch (s) {
    case LogSeverity::kInfo:
      return 'I';
    case LogSeverity::kWarning:
      return 'W';
    case LogSeverity::kError:
      return 'E';
  }
  return '?';
}

}  // namespace

LogSink SetLogSink(LogSink sink) {
  std::lock_guard<std::mutex> lock(SinkMutex());
  return std::exchange(Sink(), std::move(sink));
}

LogSeverity SetMinLogSeverity(LogSeverity severity) {
  return static_cast<LogSeverity>(
      g_min_severity.exchange(static_cast<int>(severity)));
}

bool LogEnabled(LogSeverity severity) {
  return static_cast<int>(severity) >=
         g_min_severity.load(std::memory_order_relaxed);
}

LogMessage::LogMessage(LogSeverity severity, const char* file, int line)
    : severity_(severity) {
  stream_ << "vqkv " << SeverityLetter(severity) << ' '
          << absl::FormatTime("%Y-%m-%d %H:%M:%E3S", absl::Now(),
                              absl::UTCTimeZone())
          << ' ' << file << ':' << line << "] ";
}

LogMessage::~LogMessage() {
  const std::string line = stream_.str();
  std::lock_guard<std::mutex> lock(SinkMutex());
  if (Sink()) {
    Sink()(severity_, line);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

}  // namespace vqkv::base
