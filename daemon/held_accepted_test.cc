#include "daemon/held_accepted.h"

#include <catch2/catch.hpp>

namespace dragon::daemon {
namespace {

dragon::v1::ResultBatch ResultsFor(std::initializer_list<uint64_t> task_ids) {
  dragon::v1::ResultBatch batch;
  for (uint64_t id : task_ids) {
    auto* r = batch.add_results();
    r->set_task_id(id);
    r->set_client_ref(id + 100);
  }
  return batch;
}

TEST_CASE("a result answers its own held id; the others ride along", "[held_accepted]") {
  HeldAccepted held;
  held.Hold(101, 1);
  held.Hold(102, 2);
  held.Hold(103, 3);
  auto batch = ResultsFor({2});
  held.AttachTo(&batch);
  CHECK(held.empty());
  REQUIRE(batch.accepted().task_ids_size() == 2);
  CHECK(batch.accepted().task_ids(0) == 1);
  CHECK(batch.accepted().client_refs(0) == 101);
  CHECK(batch.accepted().task_ids(1) == 3);
  CHECK(batch.accepted().client_refs(1) == 103);
}

TEST_CASE("a batch that answers every held id carries no accepted", "[held_accepted]") {
  HeldAccepted held;
  held.Hold(101, 1);
  auto batch = ResultsFor({1, 7});
  held.AttachTo(&batch);
  CHECK(held.empty());
  CHECK_FALSE(batch.has_accepted());
}

TEST_CASE("large batches are matched as well as small ones", "[held_accepted]") {
  HeldAccepted held;
  dragon::v1::ResultBatch batch;
  for (uint64_t id = 1; id <= 40; ++id) {
    held.Hold(id + 100, id);
    if (id % 2 == 0) batch.add_results()->set_task_id(id);  // the even ones answered
  }
  held.AttachTo(&batch);
  REQUIRE(batch.accepted().task_ids_size() == 20);
  for (int i = 0; i < 20; ++i) CHECK(batch.accepted().task_ids(i) % 2 == 1);
}

TEST_CASE("MoveTo appends every held id and empties the hold", "[held_accepted]") {
  HeldAccepted held;
  dragon::v1::Accepted accepted;
  held.MoveTo(&accepted);  // nothing held: nothing added
  CHECK(accepted.task_ids_size() == 0);
  accepted.add_client_refs(109);
  accepted.add_task_ids(9);
  held.Hold(101, 1);
  held.Hold(102, 2);
  CHECK(held.size() == 2);
  held.MoveTo(&accepted);
  CHECK(held.empty());
  REQUIRE(accepted.task_ids_size() == 3);
  CHECK(accepted.task_ids(0) == 9);
  CHECK(accepted.task_ids(2) == 2);
  CHECK(accepted.client_refs(2) == 102);

  dragon::v1::Accepted fresh;  // the swap path: nothing there yet
  held.Hold(104, 4);
  held.MoveTo(&fresh);
  REQUIRE(fresh.task_ids_size() == 1);
  CHECK(fresh.client_refs(0) == 104);
  CHECK(held.empty());
}

}  // namespace
}  // namespace dragon::daemon
