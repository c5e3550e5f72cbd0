// Runs ucx_perftest (UCX's own benchmark, from ucx-utils) as the yardstick
// of the channel benchmarks of issue 14: its server in the background
// (optionally through a prefix that puts it on another host, such as
// `ip netns exec tb-h1`), its client here, and returns the numbers of the
// client's "Final:" line. UCX_TLS and the other UCX_* variables are the
// caller's environment, which both processes inherit.
#ifndef DRAGON_COMMON_PERFTEST_RUNNER_H_
#define DRAGON_COMMON_PERFTEST_RUNNER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dragon::common {

struct PerftestSetup {
  // Words put before `ucx_perftest` for the server (empty: this host).
  std::vector<std::string> server_prefix;
  // Where the client connects: the server's host.
  std::string host = "127.0.0.1";
  int port = 13517;
};

// ucx_perftest's "Final:" line: iterations, then latency typical (p50),
// average and overall (us, half a round trip for *_lat tests), bandwidth
// average and overall (MB/s, 2^20 bytes), message rate average and overall.
struct PerftestFinal {
  double iterations = 0;
  double latency_p50_us = 0;
  double latency_average_us = 0;
  double latency_overall_us = 0;
  double bandwidth_average_mbps = 0;
  double bandwidth_overall_mbps = 0;
};

// Runs `ucx_perftest -p <port> <test_args> <host>` against a server started
// for it (up to 3 attempts: the server may not listen yet). Fails naming the
// test when none gave a "Final:" line, or when ucx_perftest cannot be run.
absl::StatusOr<PerftestFinal> RunPerftest(const PerftestSetup& setup,
                                          const std::vector<std::string>& test_args);

}  // namespace dragon::common

#endif  // DRAGON_COMMON_PERFTEST_RUNNER_H_
