#include "client/logs_format.h"

#include <catch2/catch.hpp>

namespace dragon::client {
namespace {

TEST_CASE("dragonctl logs: a header per file, sizes, truncation, the note") {
  dragon::v1::TaskLogsReply r;
  r.set_task_id(12);
  r.set_node("n1");
  r.set_host("vm");
  auto* a = r.add_files();
  a->set_rank(0);
  a->set_stream("stdout");
  a->set_host("vm");
  a->set_path("/run/tasks/12/rank-0.out");
  a->set_data("37\n");
  a->set_size(3);
  auto* b = r.add_files();
  b->set_rank(1);
  b->set_stream("stderr");
  b->set_path("/run/tasks/12/rank-1.err");
  b->set_data("tail without newline");
  b->set_size(5000);
  b->set_truncated(true);
  auto* c = r.add_files();
  c->set_rank(-1);
  c->set_stream("launcher");
  c->set_path("/run/tasks/12/launcher.log");
  r.set_note("a note");
  CHECK(FormatLogs(r) ==
        "task 12 ran on node n1 (host vm)\n"
        "==> rank 0 stdout: vm:/run/tasks/12/rank-0.out (3 bytes) <==\n37\n"
        "==> rank 1 stderr: /run/tasks/12/rank-1.err (last 20 of 5000 bytes) <==\n"
        "tail without newline\n"
        "==> launcher: /run/tasks/12/launcher.log (empty) <==\n"
        "note: a note\n");
  dragon::v1::TaskLogsReply none;
  none.set_task_id(3);
  CHECK(FormatLogs(none) == "task 3\n(no output)\n");
}

}  // namespace
}  // namespace dragon::client
