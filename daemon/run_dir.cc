#include "daemon/run_dir.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

namespace dragon::daemon {

std::string NewRunId() {
  time_t now = time(nullptr);
  struct tm tm_now;
  localtime_r(&now, &tm_now);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y%m%d-%H%M%S", &tm_now);
  return absl::StrCat(buf, "-", getpid());
}

absl::Status MakeDirs(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("empty directory path");
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    partial = path.substr(0, pos);
    if (partial.empty()) continue;
    if (mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::InternalError(
          absl::StrCat("cannot create directory ", partial, ": ", strerror(errno)));
    }
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InternalError(absl::StrCat(path, " exists and is not a directory"));
  }
  return absl::OkStatus();
}

absl::Status WriteRunInfo(const dragon::v1::RunInfo& info) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  options.add_whitespace = true;
  std::string json;
  auto st = google::protobuf::util::MessageToJsonString(info, &json, options);
  if (!st.ok()) return absl::InternalError(absl::StrCat("cannot encode head.json: ", st.ToString()));
  const std::string path = absl::StrCat(info.run_dir(), "/head.json");
  const std::string tmp = absl::StrCat(path, ".tmp");
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", strerror(errno)));
  size_t done = 0;
  while (done < json.size()) {
    ssize_t n = write(fd, json.data() + done, json.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      unlink(tmp.c_str());
      return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0 || close(fd) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", strerror(err)));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status UpdateCurrentLink(const std::string& home, const std::string& run_dir) {
  const std::string link = absl::StrCat(home, "/current");
  const std::string tmp = absl::StrCat(link, ".", getpid());
  unlink(tmp.c_str());
  if (symlink(run_dir.c_str(), tmp.c_str()) != 0 || rename(tmp.c_str(), link.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot point ", link, " at ", run_dir, ": ", strerror(err)));
  }
  return absl::OkStatus();
}

std::optional<dragon::v1::RunInfo> RemoveRunInfo(const std::string& home,
                                                 const std::string& run_dir,
                                                 const common::HeadAlive& alive) {
  unlink(absl::StrCat(run_dir, "/head.json").c_str());
  const std::string link = absl::StrCat(home, "/current");
  char target[PATH_MAX];
  ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
  if (n <= 0) return std::nullopt;
  target[n] = '\0';
  if (run_dir != target) return std::nullopt;
  // This run's head.json is gone: LiveRuns cannot name it.
  for (const auto& run : common::LiveRuns(home, alive)) {
    if (run.run_dir().empty() || !UpdateCurrentLink(home, run.run_dir()).ok()) continue;
    return run;
  }
  unlink(link.c_str());
  return std::nullopt;
}

}  // namespace dragon::daemon
