#include "client/format.h"

#include <stdlib.h>
#include <time.h>

#include <catch2/catch.hpp>
#include <string>

#include "absl/strings/match.h"

namespace dragon::client {
namespace {

using dragon::v1::TaskState;

// 2026-01-02T03:04:05.678Z in microseconds.
constexpr int64_t kT0 = 1767323045678000;
constexpr int64_t kSec = 1000000;

// Local-time output depends on TZ; the tests pin it.
void UseTimeZone(const char* tz) {
  setenv("TZ", tz, 1);
  tzset();
}

TEST_CASE("state names round-trip and reject anything else") {
  CHECK(StateName(dragon::v1::PENDING) == "pending");
  CHECK(StateName(dragon::v1::CANCELLED) == "cancelled");
  for (TaskState s : {dragon::v1::PENDING, dragon::v1::SCHEDULED, dragon::v1::RUNNING,
                      dragon::v1::DONE, dragon::v1::FAILED, dragon::v1::CANCELLED}) {
    REQUIRE(ParseStateName(StateName(s)).has_value());
    CHECK(*ParseStateName(StateName(s)) == s);
  }
  CHECK(*ParseStateName("RUNNING") == dragon::v1::RUNNING);
  CHECK(!ParseStateName("canceled").has_value());
  CHECK(!ParseStateName("").has_value());
  CHECK(!ParseStateName("task_state_unspecified").has_value());
  CHECK(AcceptedStateNames() == "pending, scheduled, running, done, failed, cancelled");
}

TEST_CASE("durations") {
  CHECK(FormatDuration(-5) == "0us");
  CHECK(FormatDuration(850) == "850us");
  CHECK(FormatDuration(12345) == "12.3ms");
  CHECK(FormatDuration(4250000) == "4.25s");
  CHECK(FormatDuration(42 * kSec) == "42.0s");
  CHECK(FormatDuration(187 * kSec) == "3m07s");
  CHECK(FormatDuration((2 * 3600 + 5 * 60 + 9) * kSec) == "2h05m");
  CHECK(FormatDuration((3 * 86400 + 4 * 3600) * kSec) == "3d04h");
}

TEST_CASE("local times are ISO with offset") {
  UseTimeZone("UTC");
  CHECK(FormatLocalTime(kT0) == "2026-01-02T03:04:05.678+00:00");
  CHECK(FormatLocalTime(0) == "-");
  UseTimeZone("IST-5:30");  // POSIX TZ syntax: 5h30 east of UTC
  CHECK(FormatLocalTime(kT0) == "2026-01-02T08:34:05.678+05:30");
  UseTimeZone("UTC");
}

TEST_CASE("tables align columns without trailing spaces") {
  CHECK(FormatTable({{"ID", "STATE"}, {"12345", "running"}, {"7", "done"}}) ==
        "ID     STATE\n"
        "12345  running\n"
        "7      done\n");
}

TEST_CASE("ps table") {
  dragon::v1::ListTasksReply reply;
  auto* running = reply.add_tasks();
  running->set_task_id(3);
  running->set_state(dragon::v1::RUNNING);
  running->set_name("sleep_app");
  running->set_node("local-0");
  running->set_worker_pid(4242);
  running->mutable_times()->set_submitted_us(kT0);
  running->mutable_times()->set_running_us(kT0 + kSec);
  auto* pending = reply.add_tasks();
  pending->set_task_id(12);
  pending->set_state(dragon::v1::PENDING);
  pending->mutable_times()->set_submitted_us(kT0 + 2 * kSec);
  auto* done = reply.add_tasks();
  done->set_task_id(1);
  done->set_state(dragon::v1::DONE);
  done->set_name("add");
  done->set_node("local-0");
  done->set_worker_pid(4241);
  done->mutable_times()->set_submitted_us(kT0);
  done->mutable_times()->set_running_us(kT0 + 1000);
  done->mutable_times()->set_finished_us(kT0 + 3500);
  reply.set_total_matching(3);

  const int64_t now = kT0 + 5 * kSec;
  CHECK(FormatTasks(reply, now) ==
        "ID  STATE    NAME       NODE     WORKER  AGE/RUNTIME\n"
        "3   running  sleep_app  local-0  4242    4.00s\n"
        "12  pending  -          -        -       3.00s\n"
        "1   done     add        local-0  4241    2.5ms\n");

  reply.set_total_matching(10);
  CHECK(FormatTasks(reply, now).find("(3 of 10 matching tasks shown; use --limit N to see more)\n") !=
        std::string::npos);
  CHECK(FormatTasks(dragon::v1::ListTasksReply(), now) == "no tasks\n");
}

TEST_CASE("nodes table: membership columns, and why lost or gone nodes are") {
  dragon::v1::ListNodesReply reply;
  auto* n = reply.add_nodes();
  n->set_node_id("local-0");
  n->set_host("n1");
  n->set_state("ready");
  n->set_incarnation(1);
  n->set_cores(8);
  n->set_memory_bytes(16ull << 30);
  n->add_gpus("0");
  n->add_gpus("1");
  n->set_workers(4);
  n->set_ready_workers(1);
  n->set_running_tasks(3);
  n->set_queued_tasks(5);
  n->set_tasks_done(1234);
  n->set_last_heartbeat_us(kT0);
  auto* draining = reply.add_nodes();
  draining->set_node_id("n3-agent");
  draining->set_host("n3");
  draining->set_state("draining");
  draining->set_incarnation(2);
  draining->set_cores(2);
  draining->set_memory_bytes(1536ull << 20);
  draining->set_workers(2);
  draining->set_ready_workers(2);
  draining->set_last_heartbeat_us(kT0 + 500000);
  auto* lost = reply.add_nodes();
  lost->set_node_id("n2-agent");
  lost->set_host("n2");
  lost->set_state("lost");
  lost->set_incarnation(3);
  lost->set_tasks_done(7);
  lost->set_last_heartbeat_us(kT0 - 6 * kSec);
  lost->set_lost_reason("no heartbeat for 4.00s");
  auto* gone = reply.add_nodes();
  gone->set_node_id("n4");
  gone->set_state("gone");
  CHECK(FormatNodes(reply, kT0 + 800000) ==
        "NODE      HOST  STATE     INC  CORES  MEM      GPUS  WORKERS  READY  RUNNING  QUEUED  "
        "DONE  HEARTBEAT\n"
        "local-0   n1    ready     1    8      16.0GiB  2     4        1      3        5       "
        "1234  800.0ms ago\n"
        "n3-agent  n3    draining  2    2      1.5GiB   0     2        2      0        0       "
        "0     300.0ms ago\n"
        "n2-agent  n2    lost      3    -      -        0     0        0      0        0       "
        "7     6.80s ago\n"
        "n4        -     gone      -    -      -        0     0        0      0        0       "
        "0     -\n"
        "\n"
        "node n2-agent is lost: no heartbeat for 4.00s\n"
        "node n4 is gone: no reason given\n");
  CHECK(FormatNodes(dragon::v1::ListNodesReply(), kT0) == "no nodes connected\n");
}

TEST_CASE("nodes: agents of a provider's blocks show their block and when their allocation ends") {
  dragon::v1::ListNodesReply reply;
  auto* a = reply.add_nodes();
  a->set_node_id("n1-b0");
  a->set_host("n1");
  a->set_block_id("0");
  a->set_state("ready");
  a->set_incarnation(1);
  a->set_cores(2);
  a->set_workers(2);
  a->set_job_end_us(kT0 + 90 * 1000000);
  a->set_last_heartbeat_us(kT0 - 500000);
  auto* b = reply.add_nodes();
  b->set_node_id("n2-b1");
  b->set_host("n2");
  b->set_block_id("1");
  b->set_state("draining");
  b->set_incarnation(1);
  b->set_job_end_us(kT0 - 1);
  auto* c = reply.add_nodes();
  c->set_node_id("local");
  c->set_host("h");
  c->set_state("ready");
  CHECK(FormatNodes(reply, kT0) ==
        "NODE   HOST  BLOCK  STATE     INC  CORES  MEM  GPUS  WORKERS  READY  RUNNING  QUEUED  DONE  "
        "HEARTBEAT    ENDS IN\n"
        "n1-b0  n1    0      ready     1    2      -    0     2        0      0        0       0     "
        "500.0ms ago  1m30s\n"
        "n2-b1  n2    1      draining  1    -      -    0     0        0      0        0       0     "
        "-            ended\n"
        "local  h     -      ready     -    -      -    0     0        0      0        0       0     "
        "-            -\n");
}

TEST_CASE("nodes: a pool column (used/capacity) only when some agent has a shared-memory pool") {
  dragon::v1::ListNodesReply reply;
  auto* a = reply.add_nodes();
  a->set_node_id("a");
  a->set_host("h");
  a->set_state("ready");
  a->set_shm_pool_path("/dev/shm/dragon-pool-1000-a-42");
  a->set_shm_pool_bytes(512ull << 20);
  a->set_shm_pool_free_bytes((512ull << 20) - (3ull << 20));
  a->set_shm_pool_blocks(3);
  auto* b = reply.add_nodes();
  b->set_node_id("b");
  b->set_host("h");
  b->set_state("ready");
  CHECK(FormatNodes(reply, kT0) ==
        "NODE  HOST  STATE  INC  CORES  MEM  SHM              GPUS  WORKERS  READY  RUNNING  "
        "QUEUED  DONE  HEARTBEAT\n"
        "a     h     ready  -    -      -    3.0MiB/512.0MiB  0     0        0      0        "
        "0       0     -\n"
        "b     h     ready  -    -      -    -                0     0        0      0        "
        "0       0     -\n");
  reply.mutable_nodes()->RemoveLast();
  reply.mutable_nodes(0)->clear_shm_pool_bytes();
  CHECK(FormatNodes(reply, kT0).find("SHM") == std::string::npos);
}

TEST_CASE("drain and undrain say the node's new state") {
  dragon::v1::NodeInfo node;
  node.set_node_id("local-0");
  node.set_state("draining");
  node.set_running_tasks(2);
  CHECK(FormatDrain(node, true) ==
        "node local-0 is draining: no new tasks are placed on it; its 2 running task(s) finish "
        "('dragonctl nodes undrain local-0' resumes)\n");
  node.set_state("ready");
  CHECK(FormatDrain(node, false) == "node local-0 is ready: tasks are placed on it again\n");
  node.set_state("joining");
  CHECK(FormatDrain(node, true) == "node local-0 is joining (drain requested)\n");
}

TEST_CASE("nodes add: each added node's state, and each host that failed") {
  dragon::v1::AddNodesReply reply;
  auto* h4 = reply.add_nodes();
  h4->set_node_id("h4");
  h4->set_host("h4");
  h4->set_state("ready");
  h4->set_incarnation(1);
  h4->set_workers(2);
  CHECK(FormatAddedNodes(reply) == "node h4 is ready (host h4, incarnation 1, 2 worker(s))\n");
  CHECK(FormatAddFailures(reply, 1).empty());

  // An earlier incarnation of a host whose new agent failed: not "added".
  auto* h2 = reply.add_nodes();
  h2->set_node_id("h2");
  h2->set_host("h2");
  h2->set_state("gone");
  h2->set_incarnation(1);

  reply.add_failed("h2: ssh to h2 exited with code 255: ssh: connect to host h2: timed out\n");
  reply.add_failed("h9: ssh to h9 exited with code 255: Could not resolve hostname h9");
  CHECK(FormatAddedNodes(reply) == "node h4 is ready (host h4, incarnation 1, 2 worker(s))\n");
  CHECK(FormatAddFailures(reply, 3) ==
        "h2: ssh to h2 exited with code 255: ssh: connect to host h2: timed out\n"
        "h9: ssh to h9 exited with code 255: Could not resolve hostname h9\n"
        "2 of 3 host(s) could not be added\n");
  CHECK(FormatAddedNodes(dragon::v1::AddNodesReply()).empty());
}

TEST_CASE("nodes remove: the node drains, then leaves") {
  dragon::v1::NodeInfo node;
  node.set_node_id("h2");
  node.set_state("draining");
  node.set_removing(true);
  node.set_running_tasks(2);
  node.set_queued_tasks(5);
  CHECK(FormatRemove(node) ==
        "node h2 is being removed: no new tasks are placed on it; its 2 running task(s) finish, "
        "its 5 task(s) not started go back to the queue; then its agent leaves and the node is "
        "gone ('dragonctl nodes' shows it)\n");
  node.set_queued_tasks(0);
  CHECK(FormatRemove(node) ==
        "node h2 is being removed: no new tasks are placed on it; its 2 running task(s) finish; "
        "then its agent leaves and the node is gone ('dragonctl nodes' shows it)\n");
  node.set_running_tasks(0);
  CHECK(FormatRemove(node) ==
        "node h2 runs nothing: its agent is told to leave and the node will be gone "
        "('dragonctl nodes' shows it)\n");
  node.set_state("gone");
  CHECK(FormatRemove(node) == "node h2 is gone\n");
}

TEST_CASE("nodes remove --wait: leaving, gone, lost, replaced, vanished") {
  dragon::v1::ListNodesReply nodes;
  auto* other = nodes.add_nodes();
  other->set_node_id("h1");
  other->set_state("ready");
  auto* n = nodes.add_nodes();
  n->set_node_id("h2");
  n->set_incarnation(1);
  n->set_state("draining");
  n->set_running_tasks(3);
  RemovalState r = DescribeRemoval(nodes, "h2", 1);
  CHECK(r.kind == RemovalState::kLeaving);
  CHECK(r.text == "node h2 is draining: 3 running task(s), 0 not started");

  n->set_state("gone");
  n->set_lost_reason("agent closed its stream");
  r = DescribeRemoval(nodes, "h2", 1);
  CHECK(r.kind == RemovalState::kGone);
  CHECK(r.text == "node h2 is gone (agent closed its stream)");

  n->set_state("lost");
  n->set_lost_reason("no heartbeat for 4.0 s");
  r = DescribeRemoval(nodes, "h2", 1);
  CHECK(r.kind == RemovalState::kLost);
  CHECK(absl::StrContains(r.text, "node h2 was lost before it left: no heartbeat for 4.0 s"));

  n->set_incarnation(2);
  n->set_state("ready");
  r = DescribeRemoval(nodes, "h2", 1);
  CHECK(r.kind == RemovalState::kGone);
  CHECK(r.text == "node h2 incarnation 1 has ended; incarnation 2 registered since (ready)");

  r = DescribeRemoval(nodes, "h7", 1);
  CHECK(r.kind == RemovalState::kLost);
  CHECK(r.text == "no node 'h7' in this run any more");
}

TEST_CASE("failure kinds in words") {
  CHECK(FailureName(dragon::v1::FAILURE_KIND_UNSPECIFIED) == "-");
  CHECK(FailureName(dragon::v1::FAILURE_NODE_LOST) == "node lost");
  CHECK(FailureName(dragon::v1::FAILURE_WORKER_LOST) == "worker lost");
  CHECK(FailureName(dragon::v1::FAILURE_TIMED_OUT) == "timed out");
  CHECK(FailureName(dragon::v1::FAILURE_NO_NODES) == "no node left to run it");
  CHECK(FailureName(static_cast<dragon::v1::FailureKind>(99)) == "failure 99");
  CHECK(FormatBytesShort(512) == "512B");
  CHECK(FormatBytesShort(1536) == "1.5KiB");
}

TEST_CASE("show: every transition with local time and durations, and the error") {
  UseTimeZone("UTC");
  dragon::v1::TaskInfo task;
  task.set_task_id(7);
  task.set_state(dragon::v1::FAILED);
  task.set_kind(dragon::v1::PYTHON);
  task.set_name("simulate");
  task.set_session_id(2);
  task.set_client_ref(40);
  task.set_node("local-0");
  task.set_worker_pid(999);
  task.set_outcome(dragon::v1::SYSTEM_ERROR);
  task.set_failure(dragon::v1::FAILURE_WORKER_LOST);
  task.set_infra_attempts(1);
  task.set_error("task 7 on node local-0: worker pid 999 died (killed by signal 9 SIGKILL)");
  task.set_payload_bytes(2048);
  auto* t = task.mutable_times();
  t->set_submitted_us(kT0);
  t->set_scheduled_us(kT0 + 1500);
  t->set_running_us(kT0 + 2500);
  t->set_finished_us(kT0 + 2500 + 3 * kSec);

  CHECK(FormatTask(task, kT0 + 100 * kSec) ==
        "task:            7\n"
        "state:           failed\n"
        "outcome:         system error\n"
        "failure:         worker lost\n"
        "name:            simulate\n"
        "kind:            python\n"
        "session:         2 (client ref 40)\n"
        "node:            local-0\n"
        "worker pid:      999\n"
        "payload:         2.0 KiB\n"
        "infra attempts:  1 (run again after its node was lost)\n"
        "submitted:       2026-01-02T03:04:05.678+00:00\n"
        "scheduled:       2026-01-02T03:04:05.679+00:00  (+1.5ms after submitted)\n"
        "running:         2026-01-02T03:04:05.680+00:00  (+1.0ms after scheduled)\n"
        "finished:        2026-01-02T03:04:08.680+00:00  (+3.00s after running)\n"
        "runtime:         3.00s\n"
        "total:           3.00s\n"
        "error:           task 7 on node local-0: worker pid 999 died (killed by signal 9 "
        "SIGKILL)\n");
}

TEST_CASE("show: a pending task has unreached transitions and a running total") {
  UseTimeZone("UTC");
  dragon::v1::TaskInfo task;
  task.set_task_id(9);
  task.set_state(dragon::v1::PENDING);
  task.mutable_times()->set_submitted_us(kT0);
  const std::string out = FormatTask(task, kT0 + 65 * kSec);
  CHECK(out.find("scheduled:   -\n") != std::string::npos);
  CHECK(out.find("finished:    -\n") != std::string::npos);
  CHECK(out.find("total:       1m05s so far\n") != std::string::npos);
  CHECK(out.find("runtime:") == std::string::npos);
  CHECK(out.find("error:") == std::string::npos);
}

TEST_CASE("show: a task's resource request and grant") {
  dragon::v1::TaskInfo task;
  task.mutable_resources()->set_cores(2);
  task.mutable_resources()->set_memory_bytes(uint64_t{1} << 30);
  task.mutable_resources()->set_nodes(2);
  task.mutable_grant()->add_cpus(0);
  task.mutable_grant()->add_cpus(1);
  task.mutable_grant()->add_gpus("1");
  task.mutable_grant()->mutable_mpi()->add_hosts("h1");
  task.mutable_grant()->mutable_mpi()->add_hosts("h2");
  task.mutable_grant()->mutable_mpi()->set_ranks(4);
  task.mutable_grant()->mutable_mpi()->set_ranks_per_node(2);
  const std::string out = FormatTask(task, kT0);
  CHECK(out.find("resources:   cores 2, memory 1.0 GiB, nodes 2\n") != std::string::npos);
  CHECK(out.find("grant:       cpus 0,1; gpus 1; MPI 4 rank(s), 2 per node on h1,h2\n") !=
        std::string::npos);
  CHECK(FormatTask(dragon::v1::TaskInfo(), kT0).find("grant:") == std::string::npos);
}

TEST_CASE("show: multi-line errors stay under their key") {
  dragon::v1::TaskInfo task;
  task.set_error("first line\nsecond line\n");
  CHECK(FormatTask(task, kT0).find("error:       first line\n             second line\n") !=
        std::string::npos);
}

TEST_CASE("status lists counts for every state, folding the head's enum-name keys") {
  UseTimeZone("UTC");
  dragon::v1::StatusReply reply;
  reply.set_head_version("0.1.0");
  reply.set_protocol_version(1);
  reply.set_run_id("20260102-030405-77");
  reply.set_address("127.0.0.1:4000");
  reply.set_pid(77);
  reply.set_started_us(kT0);
  reply.set_run_dir("/home/u/.dragon/runs/20260102-030405-77");
  reply.set_nodes(1);
  reply.set_workers(2);
  reply.set_sessions(1);
  (*reply.mutable_tasks_by_state())["RUNNING"] = 2;
  (*reply.mutable_tasks_by_state())["DONE"] = 10;
  (*reply.mutable_tasks_by_state())["MIGRATING"] = 1;  // a state from a newer head
  reply.set_auth(true);
  reply.set_heartbeat_interval_ms(1000);
  reply.set_heartbeat_timeout_ms(4000);
  reply.set_infra_retries(1);
  (*reply.mutable_nodes_by_state())["ready"] = 1;
  (*reply.mutable_nodes_by_state())["lost"] = 2;
  (*reply.mutable_nodes_by_state())["gone"] = 0;
  (*reply.mutable_nodes_by_state())["fenced"] = 1;  // a state from a newer head

  CHECK(FormatStatus(reply, kT0 + 3725 * kSec) ==
        "version:        0.1.0 (protocol 1)\n"
        "run id:         20260102-030405-77\n"
        "address:        127.0.0.1:4000\n"
        "pid:            77\n"
        "started:        2026-01-02T03:04:05.678+00:00\n"
        "uptime:         1h02m\n"
        "run dir:        /home/u/.dragon/runs/20260102-030405-77\n"
        "nodes:          1 live; by state: 1 ready, 2 lost, 1 fenced\n"
        "workers:        2\n"
        "sessions:       1\n"
        "auth:           on (clients and agents present the run's token)\n"
        "tls:            off\n"
        "heartbeat:      every 1.00s, a node is lost after 4.00s without one\n"
        "infra retries:  1\n"
        "tasks:          13\n"
        "  pending:      0\n"
        "  scheduled:    0\n"
        "  running:      2\n"
        "  done:         10\n"
        "  failed:       0\n"
        "  cancelled:    0\n"
        "  migrating:    1\n");
}

TEST_CASE("status of a head without authentication, and of an older head") {
  dragon::v1::StatusReply reply;
  reply.set_nodes(2);
  reply.set_tls(true);
  std::string text = FormatStatus(reply, kT0);
  CHECK(absl::StrContains(text, "nodes:          2\n"));
  CHECK(absl::StrContains(
      text, "auth:           off (dragond --auth none: anyone who reaches the port may use it)\n"));
  CHECK(absl::StrContains(text, "tls:            on\n"));
  CHECK(absl::StrContains(text, "heartbeat:      -\n"));
  CHECK(absl::StrContains(text, "infra retries:  0\n"));
}

TEST_CASE("status shows what a head forgot under --keep-finished") {
  dragon::v1::StatusReply reply;
  (*reply.mutable_tasks_by_state())["DONE"] = 1000;
  (*reply.mutable_tasks_by_state())["FAILED"] = 3;
  (*reply.mutable_forgotten_by_state())["DONE"] = 4096;
  reply.set_keep_finished(1000);
  const std::string text = FormatStatus(reply, kT0);
  CHECK(absl::StrContains(text, "tasks:          5099\n"));
  CHECK(absl::StrContains(text, "keep finished:  newest 1000 (--keep-finished)\n"));
  CHECK(absl::StrContains(text, "  done:         1000 (4096 more forgotten)\n"));
  CHECK(absl::StrContains(text, "  failed:       3\n"));
  reply.set_keep_finished(-1);
  CHECK(absl::StrContains(FormatStatus(reply, kT0), "keep finished:  all (--keep-finished -1)\n"));
}

TEST_CASE("cancel messages") {
  dragon::v1::CancelReply r;
  r.set_previous_state(dragon::v1::RUNNING);
  r.set_state(dragon::v1::CANCELLED);
  CHECK(FormatCancel(5, r) == "task 5 cancelled (was running)\n");
  r.set_previous_state(dragon::v1::DONE);
  r.set_state(dragon::v1::DONE);
  CHECK(FormatCancel(5, r) == "task 5 had already ended (done); nothing to cancel\n");
  r.set_previous_state(dragon::v1::RUNNING);
  r.set_state(dragon::v1::DONE);
  CHECK(FormatCancel(5, r) == "task 5 is done (was running)\n");
}

TEST_CASE("JSON keeps proto names and prints zero fields") {
  dragon::v1::TaskInfo task;
  task.set_task_id(3);
  task.set_state(dragon::v1::PENDING);
  const std::string json = ToJson(task);
  CHECK(json.back() == '\n');
  CHECK(json.find("\"task_id\": \"3\"") != std::string::npos);  // uint64 is a JSON string
  CHECK(json.find("\"state\": \"PENDING\"") != std::string::npos);
  CHECK(json.find("\"worker_pid\": 0") != std::string::npos);
  CHECK(json.find("\"error\": \"\"") != std::string::npos);
  CHECK(json.find("workerPid") == std::string::npos);

  dragon::v1::ListTasksReply empty;
  const std::string list = ToJson(empty);
  CHECK(list.find("\"tasks\": []") != std::string::npos);
  CHECK(list.find("\"total_matching\": \"0\"") != std::string::npos);
}

}  // namespace
}  // namespace dragon::client
