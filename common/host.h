// Facts about this host that several binaries report.
#ifndef DRAGON_COMMON_HOST_H_
#define DRAGON_COMMON_HOST_H_

#include <unistd.h>

#include <string>

namespace dragon::common {

inline std::string Hostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

}  // namespace dragon::common

#endif  // DRAGON_COMMON_HOST_H_
