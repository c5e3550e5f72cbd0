#include "agent/mpi_launcher_config.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/host.h"

namespace dragon::agent {
namespace {

bool InPath(const std::string& program) { return ResolveProgram(program).ok(); }

}  // namespace

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

}  // namespace dragon::agent
