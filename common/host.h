// Facts about this host that several binaries report.
#ifndef DRAGON_COMMON_HOST_H_
#define DRAGON_COMMON_HOST_H_

#include <limits.h>
#include <unistd.h>

#include <string>

namespace dragon::common {

inline std::string Hostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

// The path of this program's executable ("" if /proc is not there).
inline std::string SelfExe() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

// The directory this program's executable is in ("." if unknown).
inline std::string SelfDir() {
  const std::string exe = SelfExe();
  const size_t slash = exe.rfind('/');
  return slash == std::string::npos ? "." : exe.substr(0, slash);
}

}  // namespace dragon::common

#endif  // DRAGON_COMMON_HOST_H_
