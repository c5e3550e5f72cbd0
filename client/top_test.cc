#include <catch2/catch.hpp>
#include <deque>
#include <sstream>
#include <string>

#include "client/top_command.h"
#include "client/top_view.h"

namespace dragon::client {
namespace {

constexpr int64_t kT0 = 1'800'000'000'000'000;  // some wall-clock time, microseconds

// A sample of a head with `done` finished tasks of `ids` submitted, and one node.
TopSample Sample(int64_t at_us, uint64_t ids, uint64_t done, uint64_t node_done,
                 uint64_t incarnation = 1, bool load = true) {
  TopSample s;
  s.at_us = at_us;
  s.status.set_run_id("run-1");
  s.status.set_address("127.0.0.1:4000");
  s.status.set_started_us(at_us - 60'000'000);
  s.status.set_nodes(1);
  s.status.set_workers(2);
  s.status.set_highest_task_id(ids);
  (*s.status.mutable_tasks_by_state())["DONE"] = done;
  (*s.status.mutable_tasks_by_state())["RUNNING"] = 2;
  (*s.status.mutable_nodes_by_state())["ready"] = 1;
  auto* n = s.nodes.add_nodes();
  n->set_node_id("h1");
  n->set_state("ready");
  n->set_incarnation(incarnation);
  n->set_tasks_done(node_done);
  n->set_running_tasks(2);
  n->set_last_heartbeat_us(at_us - 300'000);
  if (load) {
    auto* l = n->mutable_load();
    l->set_cpu_busy_permille(875);
    l->set_cpus(2);
    l->set_mem_total_bytes(8ull << 30);
    l->set_mem_available_bytes(6ull << 30);
    l->set_load1(1.5);
    l->set_workers_rss_bytes(150ull << 20);
    l->set_sampled_us(at_us - 300'000);
  }
  return s;
}

TEST_CASE("FinishedTasks counts done, failed and cancelled, forgotten ones too") {
  dragon::v1::StatusReply st;
  (*st.mutable_tasks_by_state())["DONE"] = 10;
  (*st.mutable_tasks_by_state())["FAILED"] = 2;
  (*st.mutable_tasks_by_state())["RUNNING"] = 7;
  (*st.mutable_forgotten_by_state())["DONE"] = 100;
  (*st.mutable_forgotten_by_state())["CANCELLED"] = 1;
  CHECK(FinishedTasks(st) == 113);
}

TEST_CASE("The first frame has no rates; the next ones divide by the time between samples") {
  const TopSample a = Sample(kT0, 1000, 900, 900);
  const TopSample b = Sample(kT0 + 2'000'000, 5000, 4900, 4100);
  const TopFrame first = MakeTopFrame(nullptr, a);
  CHECK_FALSE(first.finished_per_s.has_value());
  CHECK_FALSE(first.submitted_per_s.has_value());
  REQUIRE(first.nodes.size() == 1);
  CHECK_FALSE(first.nodes[0].done_per_s.has_value());
  const std::string text = FormatTop(first);
  CHECK(text.find("rates: - submitted/s, - finished/s (from the next sample on)") != std::string::npos);

  const TopFrame next = MakeTopFrame(&a, b);
  CHECK(next.interval_s == Approx(2.0));
  CHECK(*next.submitted_per_s == Approx(2000.0));
  CHECK(*next.finished_per_s == Approx(2000.0));
  CHECK(*next.nodes[0].done_per_s == Approx(1600.0));
  const std::string shown = FormatTop(next);
  INFO(shown);
  CHECK(shown.find("rates: 2000 submitted/s, 2000 finished/s (over 2.0s)") != std::string::npos);
  CHECK(shown.find("tasks: 0 pending, 0 scheduled, 2 running, 4900 done, 0 failed, 0 cancelled") !=
        std::string::npos);
  CHECK(shown.find("NODE  STATE  CPU    LOAD  MEM") != std::string::npos);
  CHECK(shown.find("h1    ready  88%/2  1.50  2.0GiB/8.0GiB  150.0MiB") != std::string::npos);
  CHECK(shown.find("1600") != std::string::npos);
}

TEST_CASE("No rate across a new incarnation, a new head, or samples out of order") {
  const TopSample a = Sample(kT0, 1000, 900, 900);
  const TopFrame restarted = MakeTopFrame(&a, Sample(kT0 + 1'000'000, 1100, 1000, 10, 2));
  CHECK_FALSE(restarted.nodes[0].done_per_s.has_value());  // its count began again
  CHECK(restarted.finished_per_s.has_value());

  TopSample other_head = Sample(kT0 + 1'000'000, 5, 3, 3);
  other_head.status.set_run_id("run-2");
  const TopFrame fresh = MakeTopFrame(&a, other_head);
  CHECK_FALSE(fresh.finished_per_s.has_value());
  CHECK_FALSE(fresh.submitted_per_s.has_value());
  CHECK_FALSE(fresh.nodes[0].done_per_s.has_value());

  const TopFrame backwards = MakeTopFrame(&a, Sample(kT0 - 1, 1000, 900, 900));
  CHECK_FALSE(backwards.finished_per_s.has_value());
}

TEST_CASE("A node without a measure shows dashes; gone nodes are left out") {
  TopSample s = Sample(kT0, 10, 5, 5, 1, /*load=*/false);
  auto* gone = s.nodes.add_nodes();
  gone->set_node_id("h9");
  gone->set_state("gone");
  const TopFrame frame = MakeTopFrame(nullptr, s);
  REQUIRE(frame.nodes.size() == 1);
  const std::string text = FormatTop(frame);
  INFO(text);
  CHECK(text.find("h1    ready  -    -     -    -") != std::string::npos);
  CHECK(text.find("h9") == std::string::npos);
  const std::string json = TopJson(frame);
  CHECK(json.find("\"cpu_busy_percent\":null") != std::string::npos);
  CHECK(json.find("\"finished_per_s\":null") != std::string::npos);
}

TEST_CASE("TopJson: one line with the frame's numbers") {
  const TopSample a = Sample(kT0, 1000, 900, 900);
  const TopSample b = Sample(kT0 + 2'000'000, 5000, 4900, 4100);
  const std::string json = TopJson(MakeTopFrame(&a, b));
  INFO(json);
  CHECK(json.back() == '\n');
  CHECK(json.find('\n') == json.size() - 1);
  CHECK(json.find("\"finished_per_s\":2000") != std::string::npos);
  CHECK(json.find("\"done_per_s\":1600") != std::string::npos);
  CHECK(json.find("\"cpu_busy_percent\":87.5") != std::string::npos);
  CHECK(json.find("\"node_id\":\"h1\"") != std::string::npos);
  CHECK(json.find("\"run_id\":\"run-1\"") != std::string::npos);
}

// A head whose samples come from a list, on a clock that moves only when waited on.
struct ScriptedHead {
  std::deque<absl::StatusOr<TopSample>> samples;
  absl::Time now = absl::FromUnixMicros(kT0);
  std::vector<absl::Time> waited_until;
  int stop_after_waits = -1;  // wait_until says stop (Ctrl-C) at this wait; -1: never

  TopSource Source() {
    TopSource source;
    source.now = [this] { return now; };
    source.wait_until = [this](absl::Time deadline) {
      waited_until.push_back(deadline);
      if (static_cast<int>(waited_until.size()) == stop_after_waits) return false;
      now = std::max(now, deadline);
      return true;
    };
    source.sample = [this]() -> absl::StatusOr<TopSample> {
      absl::StatusOr<TopSample> next = samples.front();
      samples.pop_front();
      if (next.ok()) next->at_us = absl::ToUnixMicros(now);
      return next;
    };
    return source;
  }
};

TEST_CASE("RunTop shows --iterations samples, one interval apart") {
  ScriptedHead head;
  for (uint64_t i = 0; i < 3; ++i) head.samples.push_back(Sample(0, 100 * i, 100 * i, 100 * i));
  TopOptions options;
  options.interval = absl::Seconds(2);
  options.iterations = 3;
  options.json = true;
  std::ostringstream out;
  REQUIRE(RunTop(options, head.Source(), out).ok());
  const std::string text = out.str();
  CHECK(std::count(text.begin(), text.end(), '\n') == 3);
  REQUIRE(head.waited_until.size() == 2);
  CHECK(head.waited_until[0] == absl::FromUnixMicros(kT0) + absl::Seconds(2));
  CHECK(head.waited_until[1] == absl::FromUnixMicros(kT0) + absl::Seconds(4));
  CHECK(text.find("\"finished_per_s\":50") != std::string::npos);  // 100 more in 2 s
}

TEST_CASE("RunTop: Ctrl-C ends it quietly; a head that stops answering is the error") {
  ScriptedHead interrupted;
  for (int i = 0; i < 5; ++i) interrupted.samples.push_back(Sample(0, 1, 1, 1));
  interrupted.stop_after_waits = 2;
  TopOptions options;  // until stopped
  std::ostringstream out;
  CHECK(RunTop(options, interrupted.Source(), out).ok());
  CHECK(interrupted.samples.size() == 3);  // two shown
  CHECK(out.str().find("\x1b[2J") == std::string::npos);  // not a terminal: no redraw

  ScriptedHead gone;
  gone.samples.push_back(Sample(0, 1, 1, 1));
  gone.samples.push_back(absl::UnavailableError("cannot reach dragond at 127.0.0.1:4000"));
  std::ostringstream shown;
  const absl::Status st = RunTop(options, gone.Source(), shown);
  CHECK(absl::IsUnavailable(st));
  CHECK(shown.str().find("dragond 127.0.0.1:4000") != std::string::npos);  // the first frame
}

}  // namespace
}  // namespace dragon::client
