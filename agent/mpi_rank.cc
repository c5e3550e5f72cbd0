// dragon-mpi-rank: what the MPI launcher (mpiexec, srun) starts for each rank
// of an MPI job the agent launches (agent/mpi_launcher.h):
//
//   dragon-mpi-rank --tag=TAG -- EXE ARGS...
//
// It runs EXE ARGS as its child and waits for it. Why a wrapper:
// - A rank that fails is known at once, whatever the launcher does next: the
//   wrapper writes one line to its stderr, which the launcher forwards to the
//   rank's error file on the leader, where the agent watches for it:
//     dragon-mpi-rank[TAG]: rank R on HOST (pid P) exited with code C
//     dragon-mpi-rank[TAG]: rank R on HOST (pid P) was killed by signal S (NAME)
//     dragon-mpi-rank[TAG]: rank R on HOST (pid P) was stopped by signal S (forwarded)
//     dragon-mpi-rank[TAG]: rank R on HOST could not start 'EXE': REASON
//   (hydra alone reports one exit code OR-ed over all ranks, and over ssh can
//   hang instead of ending the job when one rank exits early.) A rank that
//   exits 0 writes nothing.
// - No rank outlives its launcher: the wrapper dies with its parent (the
//   launcher's proxy) and the rank with the wrapper (PR_SET_PDEATHSIG), so
//   killing the launcher ends every rank on every host.
// Termination signals it receives are passed on to the rank. It exits with
// the rank's code, or dies of the rank's signal.
//
// The rank number is read from PMI_RANK (hydra), PMIX_RANK, SLURM_PROCID
// (srun) or OMPI_COMM_WORLD_RANK. No dependencies: it starts once per rank.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <initializer_list>

namespace {

volatile sig_atomic_t g_child = 0;
volatile sig_atomic_t g_forwarded = 0;

void Forward(int sig) {
  g_forwarded = sig;
  if (g_child > 0) kill(g_child, sig);
}

const char* RankText() {
  for (const char* name : {"PMI_RANK", "PMIX_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"}) {
    const char* v = getenv(name);
    if (v != nullptr && *v != '\0') return v;
  }
  return "?";
}

// One write, so that the line is not split among other output.
void Report(const char* tag, const char* what) {
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  char line[1024];
  const int n = snprintf(line, sizeof(line), "dragon-mpi-rank[%s]: rank %s on %s %s\n", tag,
                         RankText(), host, what);
  if (n > 0) (void)!write(2, line, static_cast<size_t>(n < (int)sizeof(line) ? n : sizeof(line) - 1));
}

int Usage() {
  fprintf(stderr, "usage: dragon-mpi-rank --tag=TAG -- EXE [ARGS...]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const char* tag = nullptr;
  int i = 1;
  for (; i < argc; ++i) {
    if (strncmp(argv[i], "--tag=", 6) == 0) {
      tag = argv[i] + 6;
    } else if (strcmp(argv[i], "--") == 0) {
      ++i;
      break;
    } else {
      return Usage();
    }
  }
  if (tag == nullptr || i >= argc) return Usage();
  char** exe_argv = argv + i;

  // Dies with the launcher's proxy, whatever killed it.
  const pid_t launcher = getppid();
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != launcher) return 1;

  struct sigaction sa {};
  sa.sa_handler = Forward;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) sigaction(sig, &sa, nullptr);

  const pid_t self = getpid();
  int exec_pipe[2];  // closed by a successful exec; an errno otherwise
  if (pipe2(exec_pipe, O_CLOEXEC) != 0) {
    char what[512];
    snprintf(what, sizeof(what), "could not start '%s': pipe: %s", exe_argv[0], strerror(errno));
    Report(tag, what);
    return 127;
  }
  const pid_t child = fork();
  if (child < 0) {
    char what[512];
    snprintf(what, sizeof(what), "could not start '%s': fork: %s", exe_argv[0], strerror(errno));
    Report(tag, what);
    return 127;
  }
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != self) _exit(1);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) sigaction(sig, &dfl, nullptr);
    close(exec_pipe[0]);
    execvp(exe_argv[0], exe_argv);
    const int err = errno;
    (void)!write(exec_pipe[1], &err, sizeof(err));
    _exit(127);
  }
  g_child = child;
  close(exec_pipe[1]);
  int exec_errno = 0;
  ssize_t got;
  do {
    got = read(exec_pipe[0], &exec_errno, sizeof(exec_errno));
  } while (got < 0 && errno == EINTR);
  close(exec_pipe[0]);
  if (g_forwarded != 0) kill(child, g_forwarded);  // a signal that came before g_child was set

  int status = 0;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) return 1;
  }
  char what[1024];
  if (WIFEXITED(status)) {
    const int code = WEXITSTATUS(status);
    if (got == static_cast<ssize_t>(sizeof(exec_errno))) {
      snprintf(what, sizeof(what), "could not start '%s': %s", exe_argv[0], strerror(exec_errno));
      Report(tag, what);
      return 127;
    }
    if (code == 0) return 0;
    snprintf(what, sizeof(what), "(pid %d) exited with code %d", static_cast<int>(child), code);
    Report(tag, what);
    return code;
  }
  const int sig = WIFSIGNALED(status) ? WTERMSIG(status) : SIGKILL;
  const char* name = sigabbrev_np(sig);
  if (g_forwarded == sig) {
    snprintf(what, sizeof(what), "(pid %d) was stopped by signal %d (SIG%s, forwarded)",
             static_cast<int>(child), sig, name != nullptr ? name : "?");
  } else {
    snprintf(what, sizeof(what), "(pid %d) was killed by signal %d (SIG%s)", static_cast<int>(child),
             sig, name != nullptr ? name : "?");
  }
  Report(tag, what);
  // Die the same way, so the launcher sees what the rank did; no core of our own.
  struct rlimit no_core {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  signal(sig, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  sigprocmask(SIG_UNBLOCK, &set, nullptr);
  kill(getpid(), sig);
  return 128 + sig;
}
