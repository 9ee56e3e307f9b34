#include "base/file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"

namespace vqkv::base {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

absl::Status ReadError(const std::string& path, int err) {
  const std::string msg =
      absl::StrCat("cannot read ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::UnavailableError(msg);
}

}  // namespace

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (f == nullptr) return ReadError(path, errno);
  std::string bytes;
  char buf[1 << 16];
  errno = 0;
  while (true) {
    const size_t n = std::fread(buf, 1, sizeof(buf), f.get());
    bytes.append(buf, n);
    if (n < sizeof(buf)) break;
  }
  // fopen succeeds on a directory; the first read fails with EISDIR.
  if (std::ferror(f.get())) return ReadError(path, errno != 0 ? errno : EIO);
  return bytes;
}

absl::StatusOr<std::string> ReadPemFile(const std::string& path,
                                        absl::string_view what) {
  absl::StatusOr<std::string> pem = ReadFile(path);
  if (!pem.ok()) {
    return absl::NotFoundError(
        absl::StrCat("TLS ", what, ": ", pem.status().message()));
  }
  if (pem->find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS ", what, " '", path, "' is not PEM"));
  }
  return pem;
}

absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view bytes) {
  const std::string tmp = path + ".tmp";
  auto fail = [&](int err) {
    std::remove(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat("cannot write ", path, ": ", std::strerror(err)));
  };
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return fail(errno);
  const bool wrote =
      std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  int err = wrote ? 0 : errno;
  if (std::fclose(f) != 0 && err == 0) err = errno;
  if (!wrote || err != 0) return fail(err != 0 ? err : EIO);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return fail(errno);
  return absl::OkStatus();
}

}  // namespace vqkv::base
