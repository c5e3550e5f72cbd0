#include "agent/mpi_launcher.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <signal.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "agent/worker_process.h"
#include "common/host.h"
#include "spdlog/spdlog.h"

extern char** environ;

namespace dragon::agent {
namespace {

constexpr char kMarkerEnv[] = "DRAGON_MPI_TASK";
constexpr size_t kStdoutChunk = 64u << 10;
constexpr size_t kMaxErrScanPerPass = 4u << 20;
constexpr size_t kLauncherTail = 8u << 10;
constexpr int64_t kExitRecheckUs = 2'000;

void CloseFd(int* fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

std::string RandomTag() {
  unsigned char bytes[8] = {};
  if (getrandom(bytes, sizeof(bytes), 0) != static_cast<ssize_t>(sizeof(bytes))) {
    const uint64_t fallback = static_cast<uint64_t>(getpid()) * 2654435761u ^
                              static_cast<uint64_t>(reinterpret_cast<uintptr_t>(&bytes));
    memcpy(bytes, &fallback, sizeof(bytes));
  }
  static const char kHex[] = "0123456789abcdef";
  std::string tag;
  for (unsigned char b : bytes) {
    tag.push_back(kHex[b >> 4]);
    tag.push_back(kHex[b & 15]);
  }
  return tag;
}

// argv0 resolved like execvp (the agent's PATH); errors name it.
absl::StatusOr<std::string> ResolveProgram(const std::string& argv0) {
  if (argv0.find('/') != std::string::npos) {
    if (access(argv0.c_str(), X_OK) != 0) {
      return absl::NotFoundError(absl::StrCat("cannot execute '", argv0, "': ", strerror(errno)));
    }
    return argv0;
  }
  const char* path = getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", argv0);
    struct stat st {};
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return absl::NotFoundError(
      absl::StrCat("cannot find '", argv0, "' in PATH=", path != nullptr ? path : ""));
}

bool InPath(const std::string& program) { return ResolveProgram(program).ok(); }

// The last `max` bytes of a file (and its size).
std::string ReadTail(const std::string& path, uint64_t max, uint64_t* size) {
  *size = 0;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  struct stat st {};
  fstat(fd, &st);
  *size = static_cast<uint64_t>(st.st_size);
  const uint64_t from = *size > max ? *size - max : 0;
  std::string out(*size - from, '\0');
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(from + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  close(fd);
  return out;
}

// Async-signal-safe child after vfork.
[[noreturn]] void RunLauncher(pid_t parent, int in_fd, int out_fd, int err_fd, const char* cwd,
                              const char* path, char* const* argv, char* const* envp) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(126);
  setpgid(0, 0);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig : {SIGPIPE, SIGTERM, SIGINT, SIGHUP}) signal(sig, SIG_DFL);
  int fds[3] = {in_fd, out_fd, err_fd};
  for (int& fd : fds) {
    fd = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    if (fd < 0) _exit(126);
  }
  if (dup2(fds[0], 0) < 0 || dup2(fds[1], 1) < 0 || dup2(fds[2], 2) < 0) _exit(126);
  if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    for (int fd = 3; fd < 4096; ++fd) fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  if (cwd[0] != '\0' && chdir(cwd) != 0) {
    static const char kMsg[] = "dragon-agent: cannot change to the job's working directory\n";
    (void)!write(2, kMsg, sizeof(kMsg) - 1);
    _exit(126);
  }
  execve(path, argv, envp);
  static const char kMsg[] = "dragon-agent: cannot execute the MPI launcher\n";
  (void)!write(2, kMsg, sizeof(kMsg) - 1);
  _exit(127);
}

std::string RankFile(const std::string& dir, uint32_t rank, const char* ext) {
  return absl::StrCat(dir, "/rank-", rank, ".", ext);
}

}  // namespace

// ---------------------------------------------------------------- configuration

std::string MpiLauncherConfig::Describe() const {
  switch (kind) {
    case MpiLauncherKind::kHydra:
      return absl::StrCat("hydra (", mpiexec, ", bootstrap ",
                          launcher_exec.empty() ? "hydra's default" : launcher_exec, ")");
    case MpiLauncherKind::kSrun:
      return absl::StrCat("srun (", srun, ")");
    case MpiLauncherKind::kCommand:
      return absl::StrCat("command '", absl::StrJoin(command, " "), "'");
  }
  return "?";
}

absl::StatusOr<std::vector<std::string>> SplitCommandLine(const std::string& line) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  char quote = 0;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quote != 0) {
      if (c == quote) {
        quote = 0;
      } else if (c == '\\' && quote == '"' && i + 1 < line.size() &&
                 (line[i + 1] == '"' || line[i + 1] == '\\')) {
        word.push_back(line[++i]);
      } else {
        word.push_back(c);
      }
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n') {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
    } else if (c == '\'' || c == '"') {
      quote = c;
      in_word = true;
    } else if (c == '\\' && i + 1 < line.size()) {
      word.push_back(line[++i]);
      in_word = true;
    } else {
      word.push_back(c);
      in_word = true;
    }
  }
  if (quote != 0) {
    return absl::InvalidArgumentError(absl::StrCat("unclosed ", std::string(1, quote), " in '", line, "'"));
  }
  if (in_word) words.push_back(std::move(word));
  return words;
}

absl::StatusOr<MpiLauncherConfig> MpiLauncherConfigFromEnv(
    const GetEnv& getenv_fn, const std::string& self_dir,
    const std::function<bool(const std::string&)>& in_path) {
  auto env = [&](const char* name) -> std::string {
    const char* v = getenv_fn(name);
    return v != nullptr ? std::string(absl::StripAsciiWhitespace(v)) : std::string();
  };
  MpiLauncherConfig c;
  const std::string choice = env("DRAGON_MPI_LAUNCHER");
  if (choice.empty() || choice == "auto") {
    const bool in_slurm = !env("SLURM_JOB_ID").empty() && in_path("srun");
    c.kind = in_slurm ? MpiLauncherKind::kSrun : MpiLauncherKind::kHydra;
  } else if (choice == "hydra" || choice == "mpiexec") {
    c.kind = MpiLauncherKind::kHydra;
  } else if (choice == "srun") {
    c.kind = MpiLauncherKind::kSrun;
  } else {
    absl::StatusOr<std::vector<std::string>> words = SplitCommandLine(choice);
    if (!words.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("$DRAGON_MPI_LAUNCHER: ", words.status().message()));
    }
    if (words->empty() || words->size() == 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "$DRAGON_MPI_LAUNCHER is '", choice,
          "': expected hydra, srun, auto, or a command line such as 'mpirun -np {ranks} --host "
          "{hosts}'"));
    }
    c.kind = MpiLauncherKind::kCommand;
    c.command = *std::move(words);
  }
  if (std::string mpiexec = env("DRAGON_MPIEXEC"); !mpiexec.empty()) {
    c.mpiexec = mpiexec;
  } else {
    c.mpiexec = in_path("mpiexec.hydra") || !in_path("mpiexec") ? "mpiexec.hydra" : "mpiexec";
  }
  const std::string wrapper = env("DRAGON_MPI_RANK_WRAPPER");
  if (wrapper == "none") {
    c.rank_wrapper.clear();
  } else if (!wrapper.empty()) {
    c.rank_wrapper = wrapper;
  } else {
    c.rank_wrapper = absl::StrCat(self_dir, "/dragon-mpi-rank");
  }
  c.launcher_exec = env("HYDRA_LAUNCHER_EXEC");
  return c;
}

absl::StatusOr<MpiLauncherConfig> MpiLauncherConfigFromEnv() {
  return MpiLauncherConfigFromEnv([](const char* name) { return ::getenv(name); },
                                  common::SelfDir(), InPath);
}

uint32_t RanksPerNode(const v1::MpiPlacement& placement) {
  if (placement.ranks_per_node() > 0) return placement.ranks_per_node();
  const uint32_t hosts = std::max(1, placement.hosts_size());
  return std::max<uint32_t>(1, (placement.ranks() + hosts - 1) / hosts);
}

std::vector<std::string> RankHosts(const v1::MpiPlacement& placement) {
  std::vector<std::string> out;
  if (placement.hosts_size() == 0) return std::vector<std::string>(placement.ranks());
  const uint32_t ppn = RanksPerNode(placement);
  for (uint32_t r = 0; r < placement.ranks(); ++r) {
    out.push_back(placement.hosts(static_cast<int>((r / ppn) % placement.hosts_size())));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> MpiLaunchPrefix(const MpiLauncherConfig& config,
                                                         const v1::MpiPlacement& placement,
                                                         const std::string& hostfile) {
  if (placement.ranks() == 0) return absl::InvalidArgumentError("an MPI placement of 0 ranks");
  const std::string hosts = absl::StrJoin(placement.hosts(), ",");
  const uint32_t ppn = RanksPerNode(placement);
  std::vector<std::string> argv;
  switch (config.kind) {
    case MpiLauncherKind::kHydra:
      argv = {config.mpiexec, "-n", absl::StrCat(placement.ranks()), "-ppn", absl::StrCat(ppn)};
      if (!hosts.empty()) argv.insert(argv.end(), {"-hosts", hosts});
      if (!config.launcher_exec.empty()) {
        argv.insert(argv.end(), {"-launcher-exec", config.launcher_exec});
      }
      break;
    case MpiLauncherKind::kSrun:
      argv = {config.srun, absl::StrCat("--ntasks=", placement.ranks()),
              absl::StrCat("--ntasks-per-node=", ppn), "--distribution=block",
              "--kill-on-bad-exit=1"};
      if (!hosts.empty()) {
        argv.push_back(absl::StrCat("--nodes=", placement.hosts_size()));
        argv.push_back(absl::StrCat("--nodelist=", hosts));
      }
      break;
    case MpiLauncherKind::kCommand:
      for (const std::string& word : config.command) {
        if (word.find("{hostfile}") != std::string::npos && hostfile.empty()) {
          return absl::InvalidArgumentError(
              "the MPI launcher's command line uses {hostfile}, which is not available here");
        }
        argv.push_back(absl::StrReplaceAll(
            word, {{"{ranks}", absl::StrCat(placement.ranks())},
                   {"{ranks_per_node}", absl::StrCat(ppn)},
                   {"{nodes}", absl::StrCat(std::max(1, placement.hosts_size()))},
                   {"{hosts}", hosts},
                   {"{hostfile}", hostfile}}));
      }
      break;
  }
  return argv;
}

absl::StatusOr<std::vector<std::string>> MpiJobArgv(const MpiLauncherConfig& config,
                                                    const v1::MpiPlacement& placement,
                                                    const std::string& dir, const std::string& tag,
                                                    const std::vector<std::string>& program) {
  if (program.empty() || program[0].empty()) return absl::InvalidArgumentError("an empty program");
  absl::StatusOr<std::vector<std::string>> argv =
      MpiLaunchPrefix(config, placement, absl::StrCat(dir, "/hostfile"));
  if (!argv.ok()) return argv.status();
  switch (config.kind) {
    case MpiLauncherKind::kHydra:
      argv->insert(argv->end(), {"-outfile-pattern", absl::StrCat(dir, "/rank-%r.out"),
                                 "-errfile-pattern", absl::StrCat(dir, "/rank-%r.err")});
      break;
    case MpiLauncherKind::kSrun:
      argv->insert(argv->end(), {absl::StrCat("--output=", dir, "/rank-%t.out"),
                                 absl::StrCat("--error=", dir, "/rank-%t.err"), "--input=0"});
      break;
    case MpiLauncherKind::kCommand:
      break;
  }
  if (!placement.launcher_options().empty()) {
    absl::StatusOr<std::vector<std::string>> options =
        SplitCommandLine(placement.launcher_options());
    if (!options.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("launcher_options: ", options.status().message()));
    }
    argv->insert(argv->end(), options->begin(), options->end());
  }
  if (!config.rank_wrapper.empty()) {
    argv->insert(argv->end(), {config.rank_wrapper, absl::StrCat("--tag=", tag), "--"});
  }
  argv->insert(argv->end(), program.begin(), program.end());
  return argv;
}

std::vector<RankReport> ParseRankReports(const std::string& text, const std::string& tag) {
  std::vector<RankReport> out;
  const std::string key = absl::StrCat("dragon-mpi-rank[", tag, "]: rank ");
  size_t pos = 0;
  while ((pos = text.find(key, pos)) != std::string::npos) {
    const size_t end = text.find('\n', pos);
    if (end == std::string::npos) break;  // incomplete line
    absl::string_view line(text.data() + pos + key.size(), end - pos - key.size());
    pos = end + 1;
    RankReport r;
    r.text = absl::StrCat("rank ", line);
    // "R on HOST (pid P) exited with code C", "R on HOST could not start 'X': why"
    const size_t on = line.find(" on ");
    if (on == absl::string_view::npos || !absl::SimpleAtoi(line.substr(0, on), &r.rank)) continue;
    absl::string_view rest = line.substr(on + 4);
    const size_t space = rest.find(' ');
    if (space == absl::string_view::npos) continue;
    r.host = std::string(rest.substr(0, space));
    rest.remove_prefix(space + 1);
    if (absl::ConsumePrefix(&rest, "(pid ")) {
      const size_t close = rest.find(") ");
      if (close == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(0, close), &r.pid)) {
        continue;
      }
      rest.remove_prefix(close + 2);
    }
    int value = 0;
    if (absl::ConsumePrefix(&rest, "exited with code ") && absl::SimpleAtoi(rest, &value)) {
      r.state = "exited";
      r.exit_code = value;
    } else if (absl::ConsumePrefix(&rest, "was killed by signal ")) {
      r.state = "signaled";
      (void)absl::SimpleAtoi(rest.substr(0, rest.find(' ')), &r.signal);
      r.exit_code = -1;
    } else if (absl::ConsumePrefix(&rest, "was stopped by signal ")) {
      r.state = "stopped";
      (void)absl::SimpleAtoi(rest.substr(0, rest.find(' ')), &r.signal);
      r.exit_code = -1;
    } else if (absl::StartsWith(rest, "could not start ")) {
      r.state = "unstarted";
      r.exit_code = 127;
    } else {
      continue;
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::string MpiTaskMarker(const std::string& run_id, uint64_t task_id) {
  return absl::StrCat(run_id.empty() ? "run" : run_id, "/", task_id);
}

std::vector<int> KillMarkedProcesses(const std::string& marker, const std::string& proc_dir) {
  std::vector<int> killed;
  const std::string want = absl::StrCat(kMarkerEnv, "=", marker);
  DIR* d = opendir(proc_dir.c_str());
  if (d == nullptr) return killed;
  const pid_t self = getpid();
  std::string buf;
  while (dirent* e = readdir(d)) {
    int pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid) || pid <= 1 || pid == self) continue;
    const std::string path = absl::StrCat(proc_dir, "/", e->d_name, "/environ");
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;  // gone, or not ours to read
    buf.clear();
    char chunk[16384];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof(chunk))) > 0) buf.append(chunk, static_cast<size_t>(n));
    close(fd);
    size_t start = 0;
    bool found = false;
    while (start < buf.size()) {
      size_t end = buf.find('\0', start);
      if (end == std::string::npos) end = buf.size();
      if (end - start == want.size() && buf.compare(start, want.size(), want) == 0) {
        found = true;
        break;
      }
      start = end + 1;
    }
    if (found && kill(pid, SIGKILL) == 0) killed.push_back(pid);
  }
  closedir(d);
  return killed;
}

// ---------------------------------------------------------------- the launcher

struct MpiLauncher::Job {
  uint64_t task_id = 0;
  pid_t pid = 0;
  int pid_fd = -1;
  int stdin_fd = -1;
  int out_fd = -1;  // rank 0's stdout, read for TaskIO
  int wd = -1;
  std::string dir, tag, marker, program;
  std::vector<std::string> launcher_argv;
  v1::MpiPlacement placement;
  std::vector<std::string> rank_hosts;
  MpiLauncherKind kind = MpiLauncherKind::kHydra;
  std::string stdout_path;   // followed for TaskIO
  std::string stdout_name;   // its name in dir
  std::string launcher_log;  // the launcher's own output
  int64_t start_us = 0;
  int64_t end_us = 0;
  int64_t deadline_us = 0;
  uint32_t timeout_s = 0;
  // Ending.
  bool cancelled = false;
  bool timed_out = false;
  bool stopping = false;     // SIGTERM sent (cancel, timeout)
  int64_t kill_at_us = 0;    // SIGKILL the group then; 0 = not planned
  bool group_killed = false;
  std::optional<RankReport> failure;  // the first rank that failed
  std::map<uint32_t, RankReport> reports;
  std::map<std::string, uint64_t> err_read;    // error file name -> bytes scanned
  std::map<std::string, std::string> err_carry;  // its unfinished last line
  bool ended = false;
  int wait_status = 0;
  v1::MpiJobResult result;
  // TaskIO.
  uint64_t channel = 0;
  uint64_t out_sent = 0, out_acked = 0;
  bool out_eof_sent = false;
  std::string stdin_buf;
  uint64_t stdin_taken = 0;   // bytes written to rank 0 (or dropped after it closed stdin)
  uint64_t stdin_acked = 0;   // last count told to the client
  bool stdin_eof = false;

  std::vector<std::string> ErrFiles() const {
    std::vector<std::string> names;
    if (kind == MpiLauncherKind::kCommand) return {"launcher.err"};
    for (uint32_t r = 0; r < placement.ranks(); ++r) names.push_back(absl::StrCat("rank-", r, ".err"));
    return names;
  }
};

MpiLauncher::MpiLauncher(MpiLauncherOptions options, Clock now_us)
    : options_(std::move(options)), now_us_(now_us) {
  inotify_fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd_ < 0) {
    spdlog::warn("MPI launcher: inotify_init1 failed ({}); job output is polled", strerror(errno));
  }
}

MpiLauncher::~MpiLauncher() {
  for (auto& [id, job] : jobs_) {
    if (!job->ended) {
      killpg(job->pid, SIGKILL);
      kill(job->pid, SIGKILL);
      int status;
      while (waitpid(job->pid, &status, 0) < 0 && errno == EINTR) {
      }
      std::vector<int> killed = KillMarkedProcesses(job->marker);
      spdlog::info("task {}: MPI job killed at shutdown ({} more process(es) of it killed)", id,
                   killed.size());
    }
    CloseFd(&job->pid_fd);
    CloseFd(&job->stdin_fd);
    CloseFd(&job->out_fd);
  }
  for (auto& [id, job] : finished_) CloseFd(&job->out_fd);
  CloseFd(&inotify_fd_);
}

absl::StatusOr<int> MpiLauncher::Start(const v1::TaskAssignment& task) {
  v1::ExecutableSpec spec;
  if (!spec.ParseFromString(task.payload())) {
    return absl::InvalidArgumentError("the payload is not a serialized ExecutableSpec");
  }
  if (spec.argv_size() == 0 || spec.argv(0).empty()) {
    return absl::InvalidArgumentError("ExecutableSpec has an empty argv");
  }
  v1::MpiPlacement placement = task.grant().mpi();
  if (placement.ranks() == 0) {
    return absl::InvalidArgumentError("its MPI placement has 0 ranks");
  }
  if (placement.hosts_size() == 0) placement.add_hosts(options_.host);
  const uint64_t id = task.task_id();
  if (jobs_.count(id) != 0) return absl::AlreadyExistsError("this MPI job is already running");

  auto job = std::make_unique<Job>();
  job->task_id = id;
  job->kind = options_.config.kind;
  job->placement = placement;
  job->rank_hosts = RankHosts(placement);
  job->program = spec.argv(0);
  job->tag = RandomTag();
  job->marker = MpiTaskMarker(options_.run_id, id);
  job->dir = absl::StrCat(options_.run_dir, "/tasks/", id);
  job->launcher_log = absl::StrCat(job->dir, "/launcher.log");
  // A job dir left by an earlier run of this task (a rerun on this node) would
  // mix with this one's output: the launcher overwrites without truncating.
  std::error_code ec;
  std::filesystem::remove_all(job->dir, ec);
  std::filesystem::create_directories(job->dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create ", job->dir, ": ", ec.message()));
  }
  // Every rank's files exist from the start, so that their paths can be handed out.
  std::vector<std::string> create;
  if (job->kind == MpiLauncherKind::kCommand) {
    job->stdout_name = "launcher.out";
    create = {"launcher.out", "launcher.err"};
  } else {
    job->stdout_name = "rank-0.out";
    create = {"launcher.log"};
    for (uint32_t r = 0; r < placement.ranks(); ++r) {
      create.push_back(absl::StrCat("rank-", r, ".out"));
      create.push_back(absl::StrCat("rank-", r, ".err"));
    }
  }
  for (const std::string& name : create) {
    const int fd = open(absl::StrCat(job->dir, "/", name).c_str(),
                        O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
      return absl::InternalError(
          absl::StrCat("cannot create ", job->dir, "/", name, ": ", strerror(errno)));
    }
    close(fd);
  }
  job->stdout_path = absl::StrCat(job->dir, "/", job->stdout_name);
  if (job->kind == MpiLauncherKind::kCommand) {
    std::string hostfile;
    for (const std::string& h : job->rank_hosts) absl::StrAppend(&hostfile, h, "\n");
    const std::string path = absl::StrCat(job->dir, "/hostfile");
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      (void)!write(fd, hostfile.data(), hostfile.size());
      close(fd);
    }
  }
  absl::StatusOr<std::vector<std::string>> argv = MpiJobArgv(
      options_.config, placement, job->dir, job->tag,
      std::vector<std::string>(spec.argv().begin(), spec.argv().end()));
  if (!argv.ok()) return argv.status();
  if (!options_.config.rank_wrapper.empty() && access(options_.config.rank_wrapper.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the rank wrapper ", options_.config.rank_wrapper, " cannot be run (", strerror(errno),
        "); install dragon-mpi-rank next to dragon-agent, or set DRAGON_MPI_RANK_WRAPPER"));
  }
  absl::StatusOr<std::string> path = ResolveProgram((*argv)[0]);
  if (!path.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the MPI launcher ", options_.config.Describe(), " cannot be started: ",
        path.status().message(), " (set DRAGON_MPI_LAUNCHER / DRAGON_MPIEXEC for the agent)"));
  }
  job->launcher_argv = *argv;

  // Prepared before vfork: the child may not allocate.
  std::vector<std::string> env_strings;
  auto replaced = [&spec](absl::string_view name) {
    return spec.env().count(std::string(name)) != 0 || name == kMarkerEnv;
  };
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view entry(*e);
    const size_t eq = entry.find('=');
    if (eq != absl::string_view::npos && replaced(entry.substr(0, eq))) continue;
    env_strings.emplace_back(entry);
  }
  for (const auto& [key, value] : spec.env()) env_strings.push_back(absl::StrCat(key, "=", value));
  env_strings.push_back(absl::StrCat(kMarkerEnv, "=", job->marker));
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<char*> cargv;
  for (auto& s : job->launcher_argv) cargv.push_back(s.data());
  cargv.push_back(nullptr);
  const std::string cwd = spec.cwd().empty() ? task.cwd() : spec.cwd();

  int in_pipe[2] = {-1, -1};
  int out_fd = -1, err_fd = -1;
  auto cleanup = [&] {
    CloseFd(&in_pipe[0]);
    CloseFd(&in_pipe[1]);
    CloseFd(&out_fd);
    CloseFd(&err_fd);
  };
  if (pipe2(in_pipe, O_CLOEXEC) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("pipe: ", strerror(errno)));
  }
  fcntl(in_pipe[1], F_SETFL, O_NONBLOCK);
  if (job->kind == MpiLauncherKind::kCommand) {
    out_fd = open(job->stdout_path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    err_fd = open(absl::StrCat(job->dir, "/launcher.err").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  } else {
    out_fd = open(job->launcher_log.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    err_fd = out_fd >= 0 ? fcntl(out_fd, F_DUPFD_CLOEXEC, 0) : -1;
  }
  if (out_fd < 0 || err_fd < 0) {
    const int err = errno;
    cleanup();
    return absl::InternalError(absl::StrCat("cannot open the job's output files in ", job->dir,
                                            ": ", strerror(err)));
  }
  const pid_t parent = getpid();
  const pid_t pid = vfork();
  if (pid < 0) {
    const int err = errno;
    cleanup();
    return absl::ResourceExhaustedError(absl::StrCat("fork: ", strerror(err)));
  }
  if (pid == 0) {
    RunLauncher(parent, in_pipe[0], out_fd, err_fd, cwd.c_str(), path->c_str(), cargv.data(),
                envp.data());
  }
  setpgid(pid, pid);
  job->pid = pid;
  job->stdin_fd = in_pipe[1];
  in_pipe[1] = -1;
  cleanup();
  job->pid_fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  job->out_fd = open(job->stdout_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (inotify_fd_ >= 0) {
    job->wd = inotify_add_watch(inotify_fd_, job->dir.c_str(), IN_MODIFY);
    if (job->wd >= 0) watches_[job->wd] = id;
  }
  job->start_us = now_us_();
  uint32_t timeout = spec.timeout_s();
  if (task.grant().walltime_s() > 0 && (timeout == 0 || task.grant().walltime_s() < timeout)) {
    timeout = task.grant().walltime_s();
  }
  job->timeout_s = timeout;
  if (timeout > 0) job->deadline_us = job->start_us + int64_t{timeout} * 1'000'000;
  spdlog::info("task {}: MPI job started: {} ranks on {} ({} per node), launcher pid {}: {}", id,
               placement.ranks(), absl::StrJoin(placement.hosts(), ","), RanksPerNode(placement),
               pid, absl::StrJoin(job->launcher_argv, " "));
  jobs_[id] = std::move(job);
  return pid;
}

void MpiLauncher::BeginStop(Job* job, int64_t now, const char* why) {
  if (job->stopping || job->ended) return;
  job->stopping = true;
  spdlog::info("task {}: ending MPI job (launcher pid {}): {}", job->task_id, job->pid, why);
  // The launcher first, so that it ends its ranks on every host itself.
  kill(job->pid, SIGTERM);
  const int64_t at = now + options_.kill_grace_us;
  if (job->kill_at_us == 0 || at < job->kill_at_us) job->kill_at_us = at;
}

void MpiLauncher::Kill(uint64_t task_id) {
  auto it = jobs_.find(task_id);
  if (it == jobs_.end()) return;
  it->second->cancelled = true;
  BeginStop(it->second.get(), now_us_(), "cancelled");
}

void MpiLauncher::Escalate(Job* job, int64_t now) {
  if (job->ended) return;
  if (job->deadline_us != 0 && now >= job->deadline_us && !job->timed_out) {
    job->timed_out = true;
    BeginStop(job, now, "its time limit passed");
  }
  if (job->kill_at_us != 0 && now >= job->kill_at_us && !job->group_killed) {
    job->group_killed = true;
    spdlog::warn("task {}: the MPI launcher (pid {}) did not end the job in time; killing its "
                 "process group",
                 job->task_id, job->pid);
    killpg(job->pid, SIGKILL);
    KillMarkedProcesses(job->marker);
  }
}

void MpiLauncher::AppendPollFds(std::vector<pollfd>* fds) const {
  if (inotify_fd_ >= 0 && !jobs_.empty()) fds->push_back({inotify_fd_, POLLIN, 0});
  for (const auto& [id, job] : jobs_) {
    if (job->pid_fd >= 0) fds->push_back({job->pid_fd, POLLIN, 0});
    if (job->stdin_fd >= 0 && !job->stdin_buf.empty()) fds->push_back({job->stdin_fd, POLLOUT, 0});
  }
}

void MpiLauncher::ReadInotify() {
  if (inotify_fd_ < 0) return;
  alignas(inotify_event) char buf[16384];
  std::map<uint64_t, std::vector<std::string>> changed;
  while (true) {
    const ssize_t n = read(inotify_fd_, buf, sizeof(buf));
    if (n <= 0) break;
    for (char* p = buf; p < buf + n;) {
      auto* ev = reinterpret_cast<inotify_event*>(p);
      p += sizeof(inotify_event) + ev->len;
      auto w = watches_.find(ev->wd);
      if (w == watches_.end() || ev->len == 0) continue;
      auto& names = changed[w->second];
      std::string name(ev->name);
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
    }
  }
  for (auto& [id, names] : changed) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    Job* job = it->second.get();
    bool errors = false;
    for (const std::string& name : names) {
      if (name == job->stdout_name) SendStdout(job);
      if (absl::EndsWith(name, ".err")) errors = true;
    }
    if (errors) ScanErrors(job, 0);
  }
}

void MpiLauncher::ScanErrors(Job* job, int /*unused*/) {
  // Scans every error file that grew (cheap: a stat per file, reads only the new bytes).
  if (options_.config.rank_wrapper.empty()) return;
  size_t budget = kMaxErrScanPerPass;
  for (const std::string& name : job->ErrFiles()) {
    const std::string path = absl::StrCat(job->dir, "/", name);
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) continue;
    uint64_t& done = job->err_read[name];
    if (static_cast<uint64_t>(st.st_size) <= done || budget == 0) continue;
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    std::string& carry = job->err_carry[name];
    const size_t want = std::min<uint64_t>(budget, static_cast<uint64_t>(st.st_size) - done);
    std::string chunk(want, '\0');
    const ssize_t n = pread(fd, chunk.data(), want, static_cast<off_t>(done));
    close(fd);
    if (n <= 0) continue;
    chunk.resize(static_cast<size_t>(n));
    done += static_cast<uint64_t>(n);
    budget -= static_cast<size_t>(n);
    carry += chunk;
    const size_t last_nl = carry.rfind('\n');
    if (last_nl == std::string::npos) {
      if (carry.size() > 4096) carry.erase(0, carry.size() - 4096);
      continue;
    }
    for (RankReport& r : ParseRankReports(carry.substr(0, last_nl + 1), job->tag)) {
      const bool failed = r.state != "stopped";
      spdlog::info("task {}: {}", job->task_id, r.text);
      if (failed && !job->failure && !job->stopping) {
        job->failure = r;
        // The launcher normally ends the other ranks at once; if it does not
        // (hydra over ssh can hang), its group is killed after the grace.
        const int64_t at = now_us_() + options_.failure_grace_us;
        if (job->kill_at_us == 0 || at < job->kill_at_us) job->kill_at_us = at;
      }
      job->reports[r.rank] = std::move(r);
    }
    carry.erase(0, last_nl + 1);
  }
}

void MpiLauncher::WriteStdin(Job* job) {
  while (job->stdin_fd >= 0 && !job->stdin_buf.empty()) {
    const ssize_t n = write(job->stdin_fd, job->stdin_buf.data(), job->stdin_buf.size());
    if (n > 0) {
      job->stdin_buf.erase(0, static_cast<size_t>(n));
      job->stdin_taken += static_cast<uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    // EPIPE: rank 0 (or the launcher) closed its stdin; what is left is dropped.
    job->stdin_taken += job->stdin_buf.size();
    job->stdin_buf.clear();
    CloseFd(&job->stdin_fd);
  }
  if (job->stdin_fd >= 0 && job->stdin_eof && job->stdin_buf.empty()) CloseFd(&job->stdin_fd);
  if (job->channel != 0 && job->stdin_taken != job->stdin_acked) {
    v1::TaskIOFrame ack;
    ack.set_task_id(job->task_id);
    ack.set_channel(job->channel);
    ack.set_ack(job->stdin_taken);
    io_out_.push_back(std::move(ack));
    job->stdin_acked = job->stdin_taken;
  }
}

void MpiLauncher::SendStdout(Job* job) {
  if (job->channel == 0 || job->out_eof_sent) return;
  if (job->out_fd < 0) job->out_fd = open(job->stdout_path.c_str(), O_RDONLY | O_CLOEXEC);
  std::string chunk;
  while (true) {
    const uint64_t in_flight = job->out_sent - std::min(job->out_sent, job->out_acked);
    if (in_flight >= options_.io_window) return;
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kStdoutChunk, options_.io_window - in_flight));
    chunk.resize(want);
    ssize_t n = job->out_fd >= 0 ? pread(job->out_fd, chunk.data(), want, static_cast<off_t>(job->out_sent)) : 0;
    if (n < 0) n = 0;
    if (n == 0) {
      if (job->ended) {
        v1::TaskIOFrame eof;
        eof.set_task_id(job->task_id);
        eof.set_channel(job->channel);
        eof.set_eof(true);
        eof.set_data_offset(job->out_sent);
        io_out_.push_back(std::move(eof));
        job->out_eof_sent = true;
      }
      return;
    }
    size_t send = static_cast<size_t>(n);
    // Whole lines only while the job runs, unless one line fills the window.
    if (!job->ended) {
      const size_t last_nl = chunk.rfind('\n', static_cast<size_t>(n) - 1);
      if (last_nl == std::string::npos) {
        // A line longer than the window goes in pieces; otherwise wait for its end.
        if (in_flight > 0 || static_cast<size_t>(n) < want) return;
      } else {
        send = last_nl + 1;
      }
    }
    v1::TaskIOFrame frame;
    frame.set_task_id(job->task_id);
    frame.set_channel(job->channel);
    frame.set_data_offset(job->out_sent);
    frame.set_data(chunk.data(), send);
    io_out_.push_back(std::move(frame));
    job->out_sent += send;
  }
}

void MpiLauncher::Pump(Job* job) {
  WriteStdin(job);
  SendStdout(job);
}

v1::TaskIOStarted MpiLauncher::StartedOf(const Job& job) const {
  v1::TaskIOStarted s;
  s.set_output_dir(job.dir);
  s.set_leader_node(options_.node_id);
  s.set_leader_host(options_.host);
  s.set_launcher_pid(job.pid);
  s.set_ended(job.ended);
  s.set_start_us(job.start_us);
  if (job.ended) {
    *s.mutable_ranks() = job.result.ranks();
    return s;
  }
  for (uint32_t r = 0; r < job.placement.ranks(); ++r) {
    v1::MpiRankInfo* info = s.add_ranks();
    info->set_rank(r);
    info->set_host(r < job.rank_hosts.size() ? job.rank_hosts[r] : "");
    info->set_state("running");
    if (job.kind != MpiLauncherKind::kCommand) {
      info->set_stdout_path(RankFile(job.dir, r, "out"));
      info->set_stderr_path(RankFile(job.dir, r, "err"));
    }
  }
  return s;
}

void MpiLauncher::Error(uint64_t task_id, uint64_t channel, const std::string& error) {
  v1::TaskIOFrame frame;
  frame.set_task_id(task_id);
  frame.set_channel(channel);
  frame.set_error(error);
  io_out_.push_back(std::move(frame));
}

void MpiLauncher::OnTaskIO(v1::TaskIOFrame frame) {
  const uint64_t id = frame.task_id();
  Job* job = nullptr;
  if (auto it = jobs_.find(id); it != jobs_.end()) job = it->second.get();
  if (auto it = finished_.find(id); job == nullptr && it != finished_.end()) job = it->second.get();
  if (job == nullptr) {
    if (frame.open()) {
      Error(id, frame.channel(),
            absl::StrCat("task ", id, " is not an MPI job led by node ", options_.node_id,
                         " (or it ended long ago and was forgotten)"));
    }
    return;
  }
  if (frame.open()) {
    job->channel = frame.channel();
    job->out_sent = job->out_acked = frame.stdout_offset();
    job->out_eof_sent = false;
    job->stdin_acked = 0;
    v1::TaskIOFrame started;
    started.set_task_id(id);
    started.set_channel(job->channel);
    *started.mutable_started() = StartedOf(*job);
    io_out_.push_back(std::move(started));
  } else if (frame.channel() != job->channel) {
    return;  // from a client that has been replaced or went away
  }
  if (frame.close()) {
    job->channel = 0;
    return;
  }
  if (!frame.data().empty()) {
    if (job->ended || job->stdin_fd < 0 || job->stdin_eof) {
      job->stdin_taken += frame.data().size();  // nobody reads it any more: acked, dropped
    } else if (job->stdin_buf.size() + frame.data().size() > 2 * options_.io_window) {
      Error(id, job->channel,
            absl::StrCat("task ", id, ": the client sent more than ", options_.io_window,
                         " bytes of stdin without waiting for them to be acknowledged"));
      job->channel = 0;
      return;
    } else {
      job->stdin_buf += frame.data();
    }
  }
  if (frame.eof()) job->stdin_eof = true;
  if (frame.ack() > job->out_acked) job->out_acked = frame.ack();
  Pump(job);
}

std::vector<v1::TaskIOFrame> MpiLauncher::TakeTaskIO() {
  std::vector<v1::TaskIOFrame> out;
  out.swap(io_out_);
  return out;
}

std::vector<ExecutableOutcome> MpiLauncher::Collect() {
  std::vector<ExecutableOutcome> done;
  if (jobs_.empty()) return done;
  ReadInotify();
  const int64_t now = now_us_();
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    Job* job = it->second.get();
    if (inotify_fd_ < 0) {  // no inotify: look at every file each pass
      ScanErrors(job, 0);
      SendStdout(job);
    }
    WriteStdin(job);
    Escalate(job, now);
    int status = 0;
    pid_t r;
    do {
      r = waitpid(job->pid, &status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0) {
      ++it;
      continue;
    }
    done.push_back(Finish(job, r == job->pid ? status : -1, now));
    std::unique_ptr<Job> ended = std::move(it->second);
    it = jobs_.erase(it);
    Remember(std::move(ended));
  }
  return done;
}

ExecutableOutcome MpiLauncher::Finish(Job* job, int wait_status, int64_t now) {
  job->ended = true;
  job->end_us = now;
  job->wait_status = wait_status;
  // Whatever of the job is still around on this node goes: the launcher's
  // group (a local proxy, ranks, ssh clients) and anything else it marked.
  killpg(job->pid, SIGKILL);
  std::vector<int> leftovers = KillMarkedProcesses(job->marker);
  if (!leftovers.empty()) {
    spdlog::warn("task {}: killed {} process(es) the MPI job left on this node", job->task_id,
                 leftovers.size());
  }
  CloseFd(&job->pid_fd);
  CloseFd(&job->stdin_fd);
  job->stdin_buf.clear();
  if (job->wd >= 0) {
    inotify_rm_watch(inotify_fd_, job->wd);
    watches_.erase(job->wd);
    job->wd = -1;
  }
  ScanErrors(job, 0);  // reports written just before the end

  v1::MpiJobResult& res = job->result;
  res.set_output_dir(job->dir);
  res.set_leader_node(options_.node_id);
  res.set_wall_us(now - job->start_us);
  res.set_timed_out(job->timed_out);
  for (const std::string& a : job->launcher_argv) res.add_launcher_argv(a);
  uint64_t size = 0;
  res.set_launcher_output_tail(ReadTail(
      job->kind == MpiLauncherKind::kCommand ? absl::StrCat(job->dir, "/launcher.err") : job->launcher_log,
      kLauncherTail, &size));
  const bool launcher_ok = wait_status != -1 && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
  const bool ok = launcher_ok && !job->failure && !job->timed_out && !job->cancelled;
  for (uint32_t r = 0; r < job->placement.ranks(); ++r) {
    v1::MpiRankInfo* info = res.add_ranks();
    info->set_rank(r);
    info->set_host(r < job->rank_hosts.size() ? job->rank_hosts[r] : "");
    if (job->kind != MpiLauncherKind::kCommand) {
      info->set_stdout_path(RankFile(job->dir, r, "out"));
      info->set_stderr_path(RankFile(job->dir, r, "err"));
    }
    auto rep = job->reports.find(r);
    if (rep != job->reports.end()) {
      info->set_pid(rep->second.pid);
      if (!rep->second.host.empty()) info->set_host(rep->second.host);
      info->set_state(rep->second.state == "unstarted" ? "exited" : rep->second.state);
      info->set_exit_code(rep->second.exit_code);
      info->set_signal(rep->second.signal);
    } else if (ok) {
      info->set_state("exited");
    } else if (launcher_ok && !options_.config.rank_wrapper.empty()) {
      info->set_state("exited");  // the wrapper reports every rank that does not exit 0
    } else {
      info->set_state(options_.config.rank_wrapper.empty() ? "unknown" : "stopped");
    }
  }
  const std::string what =
      absl::StrCat("MPI job of ", job->placement.ranks(), " rank(s) on ",
                   absl::StrJoin(job->placement.hosts(), ","), " (", job->program, ")");
  ExecutableOutcome o;
  o.task_id = job->task_id;
  o.pid = job->pid;
  o.start_us = job->start_us;
  o.end_us = now;
  o.killed_by_request = job->cancelled;
  if (job->failure) {
    const RankReport& f = *job->failure;
    res.set_failed_rank(static_cast<int32_t>(f.rank));
    res.set_exit_code(f.state == "signaled" ? -1 : f.exit_code);
    res.set_signal(f.signal);
    res.set_error(absl::StrCat(what, " failed: ", f.text,
                               "; the other ranks were ended (output: ", job->dir, ")"));
  } else {
    res.set_failed_rank(-1);
    if (job->timed_out) {
      res.set_exit_code(-1);
      res.set_signal(SIGKILL);
      res.set_error(absl::StrCat(what, " timed out after ", job->timeout_s,
                                 " s; every rank was ended"));
    } else if (job->cancelled) {
      res.set_exit_code(-1);
      res.set_signal(SIGTERM);
      res.set_error(absl::StrCat(what, " was cancelled; every rank was ended"));
    } else if (wait_status != -1 && WIFEXITED(wait_status)) {
      res.set_exit_code(WEXITSTATUS(wait_status));
      if (!ok) {
        std::string tail(res.launcher_output_tail());
        if (tail.size() > 2000) tail = "..." + tail.substr(tail.size() - 2000);
        res.set_error(absl::StrCat(what, ": the launcher exited with code ",
                                   WEXITSTATUS(wait_status), " and no rank reported a failure",
                                   tail.empty() ? std::string() : absl::StrCat("; it said: ", tail)));
      }
    } else {
      res.set_exit_code(-1);
      res.set_signal(wait_status != -1 && WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : 0);
      res.set_error(absl::StrCat(what, ": the launcher (pid ", job->pid, ") ",
                                 DescribeExit(wait_status)));
    }
  }
  o.outcome = ok ? v1::OK : v1::APP_EXCEPTION;
  if (!ok) o.error = res.error();
  o.data = res.SerializeAsString();
  spdlog::info("task {}: {} ended after {:.3f} s: exit code {}{}", job->task_id, what,
               (now - job->start_us) / 1e6, res.exit_code(),
               ok ? "" : absl::StrCat(" (", res.error(), ")"));
  // Anything rank 0 wrote is still to be streamed; then the end of it.
  SendStdout(job);
  return o;
}

void MpiLauncher::Remember(std::unique_ptr<Job> job) {
  const uint64_t id = job->task_id;
  finished_[id] = std::move(job);
  finished_order_.push_back(id);
  while (finished_order_.size() > options_.keep_finished) {
    auto it = finished_.find(finished_order_.front());
    if (it != finished_.end()) {
      CloseFd(&it->second->out_fd);
      finished_.erase(it);
    }
    finished_order_.pop_front();
  }
}

std::optional<int64_t> MpiLauncher::NextWakeUs() const {
  std::optional<int64_t> next;
  auto consider = [&next](int64_t t) {
    if (!next || t < *next) next = t;
  };
  const int64_t now = jobs_.empty() ? 0 : now_us_();
  for (const auto& [id, job] : jobs_) {
    if (job->deadline_us != 0 && !job->timed_out) consider(job->deadline_us);
    if (job->kill_at_us != 0 && !job->group_killed) consider(job->kill_at_us);
    if (job->pid_fd < 0) consider(now + kExitRecheckUs);
    if (inotify_fd_ < 0) consider(now + 20'000);
  }
  return next;
}

std::optional<v1::TaskLogsAnswer> MpiLauncher::Logs(uint64_t task_id, std::optional<int32_t> rank,
                                                    uint64_t max_bytes) const {
  const Job* job = nullptr;
  if (auto it = jobs_.find(task_id); it != jobs_.end()) job = it->second.get();
  if (auto it = finished_.find(task_id); job == nullptr && it != finished_.end()) {
    job = it->second.get();
  }
  if (job == nullptr) return std::nullopt;
  if (max_bytes == 0) max_bytes = 1u << 20;
  v1::TaskLogsAnswer answer;
  auto add = [&](int32_t r, const char* stream, const std::string& path) {
    v1::TaskLogFile* f = answer.add_files();
    f->set_rank(r);
    f->set_stream(stream);
    f->set_path(path);
    f->set_host(options_.host);
    uint64_t size = 0;
    f->set_data(ReadTail(path, max_bytes, &size));
    f->set_size(size);
    f->set_truncated(size > f->data().size());
  };
  const uint32_t ranks = job->placement.ranks();
  if (rank && (*rank < 0 || static_cast<uint32_t>(*rank) >= ranks)) {
    answer.set_note(absl::StrCat("task ", task_id, " has ranks 0..", ranks - 1, ", no rank ", *rank));
    return answer;
  }
  if (job->kind == MpiLauncherKind::kCommand) {
    add(-1, "stdout", job->stdout_path);
    add(-1, "stderr", absl::StrCat(job->dir, "/launcher.err"));
    answer.set_note(absl::StrCat("the launcher (", options_.config.Describe(),
                                 ") does not split output by rank: all ranks' output is shown"));
    return answer;
  }
  for (uint32_t r = 0; r < ranks; ++r) {
    if (rank && static_cast<uint32_t>(*rank) != r) continue;
    add(static_cast<int32_t>(r), "stdout", RankFile(job->dir, r, "out"));
    add(static_cast<int32_t>(r), "stderr", RankFile(job->dir, r, "err"));
  }
  if (!rank) add(-1, "launcher", job->launcher_log);
  return answer;
}

}  // namespace dragon::agent
