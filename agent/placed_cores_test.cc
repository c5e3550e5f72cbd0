// PlacedCores on its own: cores counted from arrival, CPUs taken while a
// placed task runs or a hold lasts, the CPUs left for plain tasks.
#include "agent/placed_cores.h"

#include <catch2/catch.hpp>
#include <vector>

namespace dragon::agent {
namespace {

v1::TaskAssignment Placed(uint64_t id, std::vector<uint32_t> cpus, bool mpi = false) {
  v1::TaskAssignment t;
  t.set_task_id(id);
  for (uint32_t c : cpus) t.mutable_grant()->add_cpus(c);
  if (mpi) t.mutable_grant()->mutable_mpi()->set_ranks(1);
  return t;
}

TEST_CASE("placed tasks hold their cores from arrival and take their CPUs when they start") {
  PlacedCores cores(4);
  cores.Arrive(Placed(1, {0, 1}));
  CHECK(cores.Has(1));
  CHECK(cores.held_all() == 2);
  CHECK(cores.held_running() == 0);
  CHECK(cores.queued() == 1);
  const PlacedCores::Entry* started = cores.Start(1);
  REQUIRE(started != nullptr);
  CHECK(started->cpus == std::vector<uint32_t>{0, 1});
  CHECK(cores.Start(1) == nullptr);  // already running
  CHECK(cores.queued() == 0);
  CHECK(cores.held_running() == 2);
  CHECK(cores.RecomputePlainCpus() == std::vector<uint32_t>{2, 3});
  CHECK(cores.plain_version() == 1);

  std::optional<PlacedCores::Entry> ended = cores.End(1);
  REQUIRE(ended.has_value());
  CHECK(ended->running);
  CHECK(!cores.Has(1));
  CHECK(cores.held_all() == 0);
  CHECK(cores.RecomputePlainCpus().empty());  // nothing placed runs: every CPU
  CHECK(!cores.End(1).has_value());
  CHECK(cores.Cpus(1).empty());
}

TEST_CASE("a hold takes its CPUs at once; a repeat is refused; a queued task's end frees nothing") {
  PlacedCores cores(2);
  const PlacedCores::Entry* held = cores.Hold(Placed(7, {0, 1}, /*mpi=*/true));
  REQUIRE(held != nullptr);
  CHECK(held->mpi);
  CHECK(cores.IsHold(7));
  CHECK(cores.Hold(Placed(7, {0})) == nullptr);
  CHECK(cores.held_running() == 2);
  CHECK(cores.RecomputePlainCpus().empty());  // all CPUs held: plain tasks may use every CPU
  cores.Arrive(Placed(8, {1}));
  std::optional<PlacedCores::Entry> queued = cores.End(8);
  REQUIRE(queued.has_value());
  CHECK(!queued->running);
  CHECK(cores.queued() == 0);
  cores.End(7);
  CHECK(!cores.IsHold(7));
  CHECK(cores.held_all() == 0);
  CHECK(cores.held_running() == 0);
}

}  // namespace
}  // namespace dragon::agent
