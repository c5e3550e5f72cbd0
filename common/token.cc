#include "common/token.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace dragon::common {
namespace {

std::string Octal(unsigned mode) {
  char buf[8];
  snprintf(buf, sizeof(buf), "%04o", mode);
  return buf;
}

}  // namespace

absl::StatusOr<std::string> NewToken() {
  unsigned char bytes[32];
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open /dev/urandom: ", strerror(errno)));
  size_t done = 0;
  while (done < sizeof(bytes)) {
    ssize_t n = read(fd, bytes + done, sizeof(bytes) - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      return absl::InternalError(absl::StrCat("cannot read /dev/urandom: ", strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

absl::Status WriteTokenFile(const std::string& path, const std::string& token) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  unlink(tmp.c_str());
  // O_EXCL with mode 0600: the secret is never, even briefly, in a file
  // someone else could have opened first or could read.
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", strerror(errno)));
  const std::string text = token + "\n";
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string err = strerror(errno);
      close(fd);
      unlink(tmp.c_str());
      return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", err));
    }
    done += static_cast<size_t>(n);
  }
  if (fchmod(fd, 0600) != 0 || close(fd) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = strerror(errno);
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", err));
  }
  return absl::OkStatus();
}

absl::Status ValidateToken(const std::string& token, const std::string& origin) {
  if (token.size() < 8 || token.size() > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("the token in ", origin, " is ", token.size(),
                     " characters long; a dragond token has 64"));
  }
  for (char c : token) {
    if (!absl::ascii_isgraph(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(
          absl::StrCat("the token in ", origin, " holds a space or control character"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no token file ", path));
    return absl::PermissionDeniedError(absl::StrCat("cannot read the token file ", path, ": ",
                                                    strerror(errno)));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "the token file ", path, " is accessible to other users (mode ", Octal(st.st_mode & 0777),
        "); it must be 0600 (chmod 600 ", path, ")"));
  }
  std::ifstream in(path);
  if (!in) {
    return absl::PermissionDeniedError(absl::StrCat("cannot read the token file ", path, ": ",
                                                    strerror(errno)));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(buffer.str()));
  if (absl::Status s = ValidateToken(token, path); !s.ok()) return s;
  return token;
}

}  // namespace dragon::common
