// The ssh launcher against a fake ssh (a script that runs the remote command
// locally through sh, as sshd would): the command line, the token on stdin,
// failures reported with the ssh's output, and the agent ended at Stop.
#include "daemon/launchers/ssh_launcher.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <map>
#include <mutex>

#include "daemon/launchers/launcher_test_util.h"

namespace dragon::daemon {
namespace {

// A fake ssh: ignores options, takes the host, runs the command through sh
// (with the host in FAKE_SSH_HOST), or fails like an unreachable host for "down".
std::string WriteFakeSsh(const std::string& dir) {
  const std::string path = dir + "/fake-ssh";
  std::ofstream out(path);
  out << "#!/bin/sh\n"
         "while [ \"$1\" = -o ]; do shift 2; done\n"
         "host=$1; shift\n"
         "if [ \"$host\" = down ]; then echo \"ssh: connect to host down port 22: Connection "
         "refused\" >&2; exit 255; fi\n"
         "export SSH_CLIENT='10.0.0.1 40000 22' SSH_CONNECTION='10.0.0.1 40000 10.0.0.2 22'\n"
         "FAKE_SSH_HOST=$host exec sh -c \"$1\"\n";
  out.close();
  chmod(path.c_str(), 0755);
  return path;
}

TEST_CASE("the remote command reads the token from stdin and carries no secret") {
  SshLauncherOptions options;
  options.hosts = {"h1"};
  SshLauncher launcher(options);
  // RemoteCommand needs the spec: launch against a fake ssh that runs nothing.
  const std::string dir = testutil::MakeTempDir("ssh_launcher");
  AgentLaunchSpec spec;
  spec.agent_binary = dir + "/agent";
  spec.head_address = "10.0.0.1:4000";
  spec.run_dir = dir;
  spec.token = "0123456789abcdef0123456789abcdef";
  spec.forwarded_env = {{"PYTHONPATH", "/a b/c"}};
  {
    std::ofstream agent(spec.agent_binary);
    agent << "#!/bin/sh\necho \"agent $* token=$DRAGON_TOKEN py=$PYTHONPATH "
             "ssh=[$SSH_CLIENT$SSH2_CLIENT$SSH_CONNECTION]\"\n";
  }
  chmod(spec.agent_binary.c_str(), 0755);
  SshLauncherOptions fake = options;
  fake.ssh_command = {WriteFakeSsh(dir)};
  SshLauncher run(fake);
  testutil::RecordingObserver observer;
  REQUIRE(run.Launch(spec, &observer).ok());
  const std::string command = run.RemoteCommand("h1");
  CHECK(command.find(spec.token) == std::string::npos);
  CHECK(command.find("read -r DRAGON_TOKEN") != std::string::npos);
  // The fake agent ran and saw the token and the forwarded variable.
  std::string log;
  for (int i = 0; i < 200; ++i) {
    std::ifstream in(dir + "/ssh-h1.log");
    std::getline(in, log, '\0');
    // The fake agent's own line, not the shell's "dragon-agent remote pid" before it.
    if (log.find(" token=") != std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  CHECK(log.find("dragon-agent remote pid ") != std::string::npos);
  CHECK(log.find("--node-id=h1") != std::string::npos);
  CHECK(log.find("token=" + spec.token) != std::string::npos);
  CHECK(log.find("py=/a b/c") != std::string::npos);
  // Nothing of the ssh session reaches the agent (and the shells its tasks start).
  CHECK(log.find("ssh=[]") != std::string::npos);
  run.Stop(absl::Seconds(2));
}

TEST_CASE("an unreachable host is reported with what ssh said") {
  const std::string dir = testutil::MakeTempDir("ssh_launcher");
  SshLauncherOptions options;
  options.hosts = {"down"};
  options.ssh_command = {WriteFakeSsh(dir)};
  SshLauncher launcher(options);
  AgentLaunchSpec spec;
  spec.agent_binary = "/bin/true";
  spec.run_dir = dir;
  testutil::RecordingObserver observer;
  REQUIRE(launcher.Launch(spec, &observer).ok());
  for (int i = 0; i < 200; ++i) {
    {
      std::lock_guard<std::mutex> l(observer.mu);
      if (!observer.failed.empty()) break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  std::lock_guard<std::mutex> l(observer.mu);
  REQUIRE(observer.failed.count("down") == 1);
  CHECK(observer.failed["down"].find("exited with code 255") != std::string::npos);
  CHECK(observer.failed["down"].find("Connection refused") != std::string::npos);
}

TEST_CASE("an agent that does not leave is ended on its node at Stop") {
  const std::string dir = testutil::MakeTempDir("ssh_launcher");
  SshLauncherOptions options;
  options.hosts = {"h1"};
  options.ssh_command = {WriteFakeSsh(dir)};
  SshLauncher launcher(options);
  AgentLaunchSpec spec;
  spec.agent_binary = dir + "/agent";
  {
    std::ofstream agent(spec.agent_binary);
    agent << "#!/bin/sh\nexec sleep 60\n";
  }
  chmod(spec.agent_binary.c_str(), 0755);
  spec.run_dir = dir;
  testutil::RecordingObserver observer;
  REQUIRE(launcher.Launch(spec, &observer).ok());
  int pid = 0;
  for (int i = 0; i < 200 && pid == 0; ++i) {
    std::ifstream in(dir + "/ssh-h1.log");
    std::string word;
    while (in >> word) {
      if (word == "pid") in >> pid;
    }
    if (pid == 0) absl::SleepFor(absl::Milliseconds(20));
  }
  REQUIRE(pid > 0);
  REQUIRE(kill(pid, 0) == 0);
  launcher.Stop(absl::Milliseconds(200));
  // The "remote" kill ran (through the fake ssh): the agent is gone.
  for (int i = 0; i < 200 && kill(pid, 0) == 0; ++i) absl::SleepFor(absl::Milliseconds(20));
  CHECK(kill(pid, 0) != 0);
}

}  // namespace
}  // namespace dragon::daemon
