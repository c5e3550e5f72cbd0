// What the launchers' unit tests share: a private temp directory and a
// LaunchObserver that records what a launcher reports (thread-safe: launchers
// report from their own threads).
#ifndef DRAGON_DAEMON_LAUNCHERS_LAUNCHER_TEST_UTIL_H_
#define DRAGON_DAEMON_LAUNCHERS_LAUNCHER_TEST_UTIL_H_

#include <stdlib.h>

#include <catch2/catch.hpp>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/launchers/launcher.h"

namespace dragon::daemon::testutil {

// A new directory under $TEST_TMPDIR (Bazel's) or /tmp, named after `name`.
inline std::string MakeTempDir(const std::string& name) {
  const char* base = getenv("TEST_TMPDIR");
  std::string templ = std::string(base ? base : "/tmp") + "/" + name + "_XXXXXX";
  REQUIRE(mkdtemp(templ.data()) != nullptr);
  return templ;
}

class RecordingObserver : public LaunchObserver {
 public:
  void Progress(const std::string& m) override {
    std::lock_guard<std::mutex> l(mu);
    progress.push_back(m);
  }
  void NodeFailed(const std::string& node, const std::string& why) override {
    std::lock_guard<std::mutex> l(mu);
    failed[node] = why;
  }
  void Problem(const std::string& p) override {
    std::lock_guard<std::mutex> l(mu);
    problem = p;
  }
  size_t Failed() {
    std::lock_guard<std::mutex> l(mu);
    return failed.size();
  }
  // Every progress line, each ended by a newline.
  std::string All() {
    std::lock_guard<std::mutex> l(mu);
    std::string all;
    for (const auto& p : progress) all += p + "\n";
    return all;
  }
  std::mutex mu;
  std::vector<std::string> progress;
  std::map<std::string, std::string> failed;
  std::string problem;
};

}  // namespace dragon::daemon::testutil

#endif  // DRAGON_DAEMON_LAUNCHERS_LAUNCHER_TEST_UTIL_H_
