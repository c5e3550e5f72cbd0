#include "common/perftest_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace dragon::common {
namespace {

// Starts `argv` (stderr to /dev/null, stdout to a pipe whose read end is
// returned in *out_fd, or to /dev/null when out_fd is null).
absl::StatusOr<pid_t> Spawn(std::vector<std::string> argv, int* out_fd) {
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  int out[2] = {-1, -1};
  if (out_fd != nullptr && pipe2(out, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", strerror(errno)));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (out_fd != nullptr) {
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  } else {
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  }
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  const int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (out_fd != nullptr) {
    close(out[1]);
    if (rc != 0) close(out[0]);
    else *out_fd = out[0];
  }
  if (rc != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot run '", absl::StrJoin(argv, " "), "': ", strerror(rc)));
  }
  return pid;
}

// The server ends with its client's run; one that does not (the client
// failed to connect) is killed, so nothing is left running.
void Reap(pid_t server) {
  for (int i = 0; i < 50 && waitpid(server, nullptr, WNOHANG) == 0; ++i) usleep(100 * 1000);
  if (waitpid(server, nullptr, WNOHANG) == 0) {
    kill(server, SIGKILL);
    waitpid(server, nullptr, 0);
  }
}

bool ParseFinal(const std::string& out, PerftestFinal* final_line) {
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("Final:", 0) != 0) continue;
    std::vector<double> v;
    for (absl::string_view field : absl::StrSplit(line.substr(6), ' ', absl::SkipEmpty())) {
      v.push_back(std::atof(std::string(field).c_str()));
    }
    if (v.size() < 6) continue;
    *final_line = {v[0], v[1], v[2], v[3], v[4], v[5]};
    return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<PerftestFinal> RunPerftest(const PerftestSetup& setup,
                                          const std::vector<std::string>& test_args) {
  const std::string port = std::to_string(setup.port);
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::vector<std::string> server_argv = setup.server_prefix;
    server_argv.insert(server_argv.end(), {"ucx_perftest", "-p", port});
    absl::StatusOr<pid_t> server = Spawn(server_argv, nullptr);
    if (!server.ok()) return server.status();
    usleep(300 * 1000);  // until it listens (a failed connect is retried below)
    std::vector<std::string> client_argv = {"ucx_perftest", "-p", port};
    client_argv.insert(client_argv.end(), test_args.begin(), test_args.end());
    client_argv.push_back(setup.host);
    int out_fd = -1;
    absl::StatusOr<pid_t> client = Spawn(client_argv, &out_fd);
    if (!client.ok()) {
      Reap(*server);
      return client.status();
    }
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(out_fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
    close(out_fd);
    int status = 0;
    waitpid(*client, &status, 0);
    Reap(*server);
    PerftestFinal final_line;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && ParseFinal(out, &final_line)) {
      return final_line;
    }
  }
  return absl::UnavailableError(absl::StrCat("ucx_perftest ", absl::StrJoin(test_args, " "), " ",
                                             setup.host, ":", port, " gave no result in 3 attempts"));
}

}  // namespace dragon::common
