#include "daemon/message_batching.h"

#include <catch2/catch.hpp>

namespace dragon::daemon {
namespace {

dragon::v1::HeadMessage Results(int first, int count, size_t bytes = 1) {
  dragon::v1::HeadMessage m;
  for (int i = 0; i < count; ++i) {
    auto* r = m.mutable_results()->add_results();
    r->set_client_ref(first + i);
    r->mutable_result()->set_data(std::string(bytes, 'x'));
  }
  return m;
}

TEST_CASE("consecutive result batches become one message, in order", "[batching]") {
  std::vector<dragon::v1::HeadMessage> in;
  in.push_back(Results(0, 2));
  in.push_back(Results(2, 3));
  auto out = MergeForClient(&in);
  REQUIRE(out.size() == 1);
  REQUIRE(out[0].results().results_size() == 5);
  for (int i = 0; i < 5; ++i) CHECK(out[0].results().results(i).client_ref() == uint64_t(i));
  CHECK(in.empty());
}

TEST_CASE("accepted and results keep their relative order", "[batching]") {
  std::vector<dragon::v1::HeadMessage> in;
  dragon::v1::HeadMessage acc;
  acc.mutable_accepted()->add_client_refs(7);
  acc.mutable_accepted()->add_task_ids(1);
  in.push_back(acc);
  in.push_back(Results(7, 1));
  in.push_back(acc);
  auto out = MergeForClient(&in);
  REQUIRE(out.size() == 3);
  CHECK(out[0].has_accepted());
  CHECK(out[1].has_results());
  CHECK(out[2].has_accepted());
}

TEST_CASE("held ids ride along when result batches merge", "[batching]") {
  std::vector<dragon::v1::HeadMessage> in;
  in.push_back(Results(0, 1));
  in.push_back(Results(1, 1));
  in[1].mutable_results()->mutable_accepted()->add_client_refs(5);
  in[1].mutable_results()->mutable_accepted()->add_task_ids(50);
  auto out = MergeForClient(&in);
  REQUIRE(out.size() == 1);
  CHECK(out[0].results().results_size() == 2);
  REQUIRE(out[0].results().accepted().task_ids_size() == 1);
  CHECK(out[0].results().accepted().client_refs(0) == 5);
  CHECK(out[0].results().accepted().task_ids(0) == 50);
}

TEST_CASE("a batch stops growing at the size limit", "[batching]") {
  std::vector<dragon::v1::HeadMessage> in;
  for (int i = 0; i < 4; ++i) in.push_back(Results(i, 1, 100));
  auto out = MergeForClient(&in, 150);
  REQUIRE(out.size() == 2);
  CHECK(out[0].results().results_size() == 2);
  CHECK(out[1].results().results_size() == 2);
}

TEST_CASE("task batches for an agent merge; cancels stay separate", "[batching]") {
  std::vector<dragon::v1::HeadToAgent> in(3);
  in[0].mutable_tasks()->add_tasks()->set_task_id(1);
  in[1].mutable_tasks()->add_tasks()->set_task_id(2);
  in[2].mutable_cancel()->add_task_ids(1);
  auto out = MergeForAgent(&in);
  REQUIRE(out.size() == 2);
  CHECK(out[0].tasks().tasks_size() == 2);
  CHECK(out[1].has_cancel());
}

}  // namespace
}  // namespace dragon::daemon
