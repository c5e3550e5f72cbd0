// Native throughput and latency of dragond from the C++ client (no Parsl
// DFK): bench/native_bench.py drives it, bench/NATIVE.md reads the numbers.
//
//   native_bench --head ADDR --kind python --payload-file F --mode throughput --tasks N
//   native_bench --head ADDR --kind executable [--exe /bin/true] --mode latency --tasks N
//
// throughput: submits N tasks at once over one Session (client/session_client
//   batches them) and measures end to end, first submit to last result.
// latency: one task at a time; round trip p50/p99/mean in microseconds, and
//   where it went (client->start on the agent, run, end->client), from the
//   agent's start/end times (same machine, same clock).
// Both first run a warm-up (not measured) so that every worker is up.
// Prints one JSON object on one line (--json) or a short text summary.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/session_client.h"
#include "common/dashed_flags.h"
#include "common/head_locator.h"

ABSL_FLAG(std::string, head, "", "HOST:PORT of dragond (required)");
ABSL_FLAG(std::string, kind, "python", "python (payload from --payload-file) or executable");
ABSL_FLAG(std::string, mode, "throughput", "throughput or latency");
ABSL_FLAG(int64_t, tasks, 10000, "tasks to measure");
ABSL_FLAG(int64_t, warmup, -1, "tasks run first and not measured; -1 = automatic");
ABSL_FLAG(std::string, payload_file, "",
          "python: file holding a Parsl-packed call (parsl.serialize.pack_apply_message)");
ABSL_FLAG(std::string, exe, "/bin/true", "executable: the program to run (no arguments)");
ABSL_FLAG(bool, json, false, "print one JSON object on one line");
ABSL_FLAG(int, timeout_s, 600, "give up (exit 1) after this many seconds");

namespace {

using Clock = std::chrono::steady_clock;
using dragon::client::SessionCallbacks;
using dragon::client::SessionClient;
using dragon::client::SessionOptions;

int64_t WallUs() { return absl::ToUnixMicros(absl::Now()); }

double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

int Die(const std::string& message) {
  std::cerr << "native_bench: " << message << std::endl;
  return 1;
}

struct Result {
  dragon::v1::Outcome outcome;
  std::string error;
  int64_t start_us, end_us, received_us;
};

// What the receiver thread hands over.
class Results {
 public:
  SessionCallbacks Callbacks() {
    SessionCallbacks cb;
    cb.on_results = [this](dragon::v1::ResultBatch* batch) {
      const int64_t now = WallUs();
      std::lock_guard<std::mutex> l(mu_);
      for (auto& r : *batch->mutable_results()) {
        Result& out = by_ref_[r.client_ref()];
        out.outcome = r.result().outcome();
        if (out.outcome != dragon::v1::OK) out.error = r.result().error();
        out.start_us = r.result().start_us();
        out.end_us = r.result().end_us();
        out.received_us = now;
      }
      last_ = Clock::now();
      cv_.notify_all();
    };
    cb.on_end = [this](const absl::Status& s) {
      std::lock_guard<std::mutex> l(mu_);
      ended_ = true;
      end_status_ = s;
      cv_.notify_all();
    };
    return cb;
  }
  // Waits until `count` results are in; false on timeout or a broken stream.
  bool WaitFor(size_t count, Clock::time_point deadline, std::string* why) {
    std::unique_lock<std::mutex> l(mu_);
    const bool ok = cv_.wait_until(l, deadline, [&] { return by_ref_.size() >= count || ended_; });
    if (by_ref_.size() >= count) return true;
    *why = ended_ ? std::string(end_status_.message())
                  : absl::StrCat("timed out with ", by_ref_.size(), " of ", count, " results");
    (void)ok;
    return false;
  }
  std::map<uint64_t, Result> Take() {
    std::lock_guard<std::mutex> l(mu_);
    return std::move(by_ref_);
  }
  size_t size() {
    std::lock_guard<std::mutex> l(mu_);
    return by_ref_.size();
  }
  Clock::time_point last() {
    std::lock_guard<std::mutex> l(mu_);
    return last_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Result> by_ref_;
  Clock::time_point last_;
  bool ended_ = false;
  absl::Status end_status_;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - lo);
}

double Mean(const std::vector<double>& v) {
  return v.empty() ? 0 : std::accumulate(v.begin(), v.end(), 0.0) / v.size();
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += c;
        }
    }
  }
  return out;
}

struct Counts {
  int64_t ok = 0, failed = 0;
  std::string first_error;
  void Add(const Result& r) {
    if (r.outcome == dragon::v1::OK) {
      ++ok;
    } else {
      ++failed;
      if (first_error.empty()) {
        first_error = absl::StrCat(dragon::v1::Outcome_Name(r.outcome), ": ", r.error);
      }
    }
  }
};

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "native throughput/latency of dragond from the C++ client.\n"
      "  native_bench --head ADDR --kind python --payload-file F --mode throughput|latency "
      "--tasks N [--json]\n"
      "  native_bench --head ADDR --kind executable [--exe /bin/true] --mode ... --tasks N");
  std::vector<std::string> storage;
  std::vector<char*> args = dragon::common::UnderscoreFlagNames(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  const std::string head = absl::GetFlag(FLAGS_head);
  const std::string kind = absl::GetFlag(FLAGS_kind);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  const int64_t tasks = absl::GetFlag(FLAGS_tasks);
  if (head.empty()) return Die("--head is required");
  if (kind != "python" && kind != "executable") return Die("--kind must be python or executable");
  if (mode != "throughput" && mode != "latency") return Die("--mode must be throughput or latency");
  if (tasks < 1) return Die("--tasks must be >= 1");

  dragon::v1::TaskKind task_kind;
  std::string payload;
  if (kind == "python") {
    task_kind = dragon::v1::PYTHON;
    const std::string path = absl::GetFlag(FLAGS_payload_file);
    if (path.empty()) return Die("--kind python needs --payload-file");
    std::ifstream in(path, std::ios::binary);
    if (!in) return Die(absl::StrCat("cannot read --payload-file ", path));
    std::ostringstream ss;
    ss << in.rdbuf();
    payload = ss.str();
    if (payload.empty()) return Die(absl::StrCat(path, " is empty"));
  } else {
    task_kind = dragon::v1::EXECUTABLE;
    dragon::v1::ExecutableSpec spec;
    spec.add_argv(absl::GetFlag(FLAGS_exe));
    payload = spec.SerializeAsString();
  }
  const auto deadline = Clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_timeout_s));

  Results results;
  dragon::common::LocateOptions locate;
  locate.explicit_address = head;
  auto location = dragon::common::LocateHead(locate);
  if (!location.ok()) return Die(std::string(location.status().message()));
  SessionOptions options;
  options.address = location->address;
  options.token = location->token;
  options.tls_ca = location->tls_ca;
  options.client_name = absl::StrCat("native_bench (", kind, " ", mode, ")");
  auto session = SessionClient::Connect(options, results.Callbacks());
  if (!session.ok()) return Die(std::string(session.status().message()));

  uint64_t next_ref = 1;
  auto make = [&](uint64_t ref) {
    dragon::v1::TaskSubmission t;
    t.set_client_ref(ref);
    t.set_kind(task_kind);
    t.set_payload(payload);
    t.set_name("noop");
    return t;
  };

  // Warm-up: every worker imported parsl and ran a task; connections warm.
  int64_t warmup = absl::GetFlag(FLAGS_warmup);
  if (warmup < 0) warmup = mode == "throughput" ? std::min<int64_t>(2000, std::max<int64_t>(100, tasks / 10)) : 20;
  if (warmup > 0) {
    std::vector<dragon::v1::TaskSubmission> batch;
    for (int64_t i = 0; i < warmup; ++i) batch.push_back(make(next_ref++));
    if (absl::Status s = (*session)->SubmitMany(std::move(batch)); !s.ok()) {
      return Die(std::string(s.message()));
    }
    std::string why;
    if (!results.WaitFor(static_cast<size_t>(warmup), deadline, &why)) {
      return Die(absl::StrCat("warm-up: ", why));
    }
    Counts c;
    for (auto& [ref, r] : results.Take()) c.Add(r);
    if (c.failed > 0) return Die(absl::StrCat("warm-up task failed: ", c.first_error));
  }

  std::string json;
  std::string text;
  Counts counts;
  const double cpu0 = CpuSeconds();
  if (mode == "throughput") {
    std::vector<dragon::v1::TaskSubmission> batch;
    batch.reserve(static_cast<size_t>(tasks));
    for (int64_t i = 0; i < tasks; ++i) batch.push_back(make(next_ref++));
    const int64_t submit_wall = WallUs();
    const auto t0 = Clock::now();
    if (absl::Status s = (*session)->SubmitMany(std::move(batch)); !s.ok()) {
      return Die(std::string(s.message()));
    }
    std::string why;
    if (!results.WaitFor(static_cast<size_t>(tasks), deadline, &why)) return Die(why);
    const auto t1 = results.last();
    const double elapsed = std::chrono::duration<double>(t1 - t0).count();
    auto got = results.Take();
    std::vector<double> run_us;
    int64_t first_start = INT64_MAX, last_end = 0;
    for (auto& [ref, r] : got) {
      counts.Add(r);
      if (r.start_us > 0) first_start = std::min(first_start, r.start_us);
      last_end = std::max(last_end, r.end_us);
      run_us.push_back(static_cast<double>(r.end_us - r.start_us));
    }
    const double cpu = CpuSeconds() - cpu0;
    const double rate = tasks / elapsed;
    json = absl::StrFormat(
        "{\"kind\": \"%s\", \"mode\": \"throughput\", \"tasks\": %d, \"warmup\": %d, "
        "\"elapsed_s\": %.6f, \"tasks_per_s\": %.1f, \"ok\": %d, \"failed\": %d, "
        "\"first_error\": \"%s\", \"batches_sent\": %d, \"client_cpu_s\": %.3f, "
        "\"submit_to_first_start_ms\": %.3f, \"last_end_to_last_result_ms\": %.3f, "
        "\"agent_run_us_mean\": %.1f, \"payload_bytes\": %d}",
        kind, tasks, warmup, elapsed, rate, counts.ok, counts.failed,
        JsonEscape(counts.first_error), (*session)->batches_sent(), cpu,
        (first_start - submit_wall) / 1000.0,
        (std::chrono::duration<double>(t1 - t0).count() * 1e6 - (last_end - submit_wall)) / 1000.0,
        Mean(run_us), payload.size());
    text = absl::StrFormat("%s throughput: %d tasks in %.3f s = %.0f tasks/s (%d failed)", kind,
                           tasks, elapsed, rate, counts.failed);
  } else {
    std::vector<double> rtt, to_start, run, back;
    for (int64_t i = 0; i < tasks; ++i) {
      const uint64_t ref = next_ref++;
      const int64_t sent = WallUs();
      const auto t0 = Clock::now();
      if (absl::Status s = (*session)->Submit(make(ref)); !s.ok()) return Die(std::string(s.message()));
      std::string why;
      if (!results.WaitFor(1, deadline, &why)) return Die(why);
      const auto t1 = Clock::now();
      auto got = results.Take();
      const Result& r = got.begin()->second;
      counts.Add(r);
      rtt.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      if (r.start_us > 0) {
        to_start.push_back(static_cast<double>(r.start_us - sent));
        run.push_back(static_cast<double>(r.end_us - r.start_us));
        back.push_back(static_cast<double>(r.received_us - r.end_us));
      }
    }
    const double cpu = CpuSeconds() - cpu0;
    json = absl::StrFormat(
        "{\"kind\": \"%s\", \"mode\": \"latency\", \"tasks\": %d, \"warmup\": %d, "
        "\"p50_us\": %.1f, \"p99_us\": %.1f, \"mean_us\": %.1f, \"min_us\": %.1f, "
        "\"max_us\": %.1f, \"ok\": %d, \"failed\": %d, \"first_error\": \"%s\", "
        "\"client_cpu_s\": %.3f, \"hops_mean_us\": {\"submit_to_agent_start\": %.1f, "
        "\"agent_run\": %.1f, \"agent_end_to_client\": %.1f}, "
        "\"hops_p50_us\": {\"submit_to_agent_start\": %.1f, \"agent_run\": %.1f, "
        "\"agent_end_to_client\": %.1f}, \"payload_bytes\": %d}",
        kind, tasks, warmup, Percentile(rtt, 50), Percentile(rtt, 99), Mean(rtt),
        Percentile(rtt, 0), Percentile(rtt, 100), counts.ok, counts.failed,
        JsonEscape(counts.first_error), cpu, Mean(to_start), Mean(run), Mean(back),
        Percentile(to_start, 50), Percentile(run, 50), Percentile(back, 50), payload.size());
    text = absl::StrFormat("%s latency over %d tasks: p50 %.0f us, p99 %.0f us, mean %.0f us", kind,
                           tasks, Percentile(rtt, 50), Percentile(rtt, 99), Mean(rtt));
  }
  absl::Status closed = (*session)->Close();
  if (!closed.ok()) std::cerr << "native_bench: closing the session: " << closed.message() << "\n";
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << json << std::endl;
  } else {
    std::cout << text << std::endl;
  }
  if (counts.failed > 0) {
    std::cerr << "native_bench: " << counts.failed << " task(s) did not end OK; first: "
              << counts.first_error << std::endl;
    return 2;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
