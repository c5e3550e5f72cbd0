#include "daemon/daemonize.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <iostream>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "spdlog/sinks/basic_file_sink.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

absl::Status SetUpLogging(const std::string& log_file, const std::string& level_name,
                          bool to_stderr) {
  try {
    std::vector<spdlog::sink_ptr> sinks;
    sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file));
    if (to_stderr) {
      auto err = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
      err->set_level(spdlog::level::warn);
      sinks.push_back(err);
    }
    auto logger = std::make_shared<spdlog::logger>("dragond", sinks.begin(), sinks.end());
    auto level = spdlog::level::from_str(level_name);
    if (level == spdlog::level::off && level_name != "off") {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown --log-level '", level_name, "' (use trace, debug, info, warn, error)"));
    }
    logger->set_level(level);
    logger->flush_on(spdlog::level::info);
    spdlog::set_default_logger(logger);
  } catch (const spdlog::spdlog_ex& e) {
    return absl::InternalError(absl::StrCat("cannot open log ", log_file, ": ", e.what()));
  }
  return absl::OkStatus();
}

int Daemonize(const std::string& log_file, const std::string& log_level,
              const std::function<int(int ready_fd)>& serve) {
  // Daemonize: the parent returns once the child listens (or says why not),
  // so that `dragond start && dragonctl status` works in a job script.
  int pipe_fds[2];
  // Close-on-exec: agents started by the daemon must not hold the write end,
  // or the waiting parent would never see it close.
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    std::cerr << "dragond: pipe failed: " << strerror(errno) << std::endl;
    return 1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    std::cerr << "dragond: fork failed: " << strerror(errno) << std::endl;
    return 1;
  }
  if (pid > 0) {
    close(pipe_fds[1]);
    // PROGRESS lines while agents start, then OK or ERROR.
    std::string pending;
    char buf[512];
    ssize_t n;
    while (true) {
      size_t eol;
      while ((eol = pending.find('\n')) != std::string::npos) {
        const std::string line = pending.substr(0, eol);
        pending.erase(0, eol + 1);
        if (absl::StartsWith(line, "PROGRESS ")) {
          std::cerr << "dragond: " << line.substr(9) << std::endl;
        } else if (absl::StartsWith(line, "OK ")) {
          close(pipe_fds[0]);
          std::cout << line.substr(3) << std::endl;
          return 0;
        } else if (absl::StartsWith(line, "ERROR ")) {
          close(pipe_fds[0]);
          std::cerr << "dragond: " << line.substr(6) << std::endl;
          return 1;
        }
      }
      n = read(pipe_fds[0], buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      pending.append(buf, static_cast<size_t>(n));
    }
    close(pipe_fds[0]);
    std::cerr << "dragond: the daemon exited before it was ready; see " << log_file << std::endl;
    return 1;
  }
  close(pipe_fds[0]);
  setsid();
  int null_fd = open("/dev/null", O_RDWR);
  int log_fd = open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  dup2(null_fd, 0);
  dup2(log_fd >= 0 ? log_fd : null_fd, 1);
  dup2(log_fd >= 0 ? log_fd : null_fd, 2);
  if (auto st = SetUpLogging(log_file, log_level, false); !st.ok()) {
    std::string text = absl::StrCat("ERROR ", st.message(), "\n");
    (void)!write(pipe_fds[1], text.data(), text.size());
    return 1;
  }
  return serve(pipe_fds[1]);
}

}  // namespace dragon::daemon
