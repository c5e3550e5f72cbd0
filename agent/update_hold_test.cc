#include "agent/update_hold.h"

#include <catch2/catch.hpp>

namespace dragon::agent {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'000'000);

UpdateHoldOptions Options() {
  UpdateHoldOptions o;
  o.coalesce = absl::Microseconds(1000);
  o.coalesce_max_results = 4;
  o.start_linger = absl::Microseconds(300);
  return o;
}

TEST_CASE("nothing queued, or something urgent: now", "[update_hold]") {
  PendingUpdate p;
  CHECK(SendAt(p, Options()) == absl::InfinitePast());
  p.urgent = true;
  p.started = 3;
  p.results = 2;
  p.queued_tasks = 10;
  p.last_update = kT0;
  p.first_started = kT0;
  CHECK(SendAt(p, Options()) == absl::InfinitePast());
}

TEST_CASE("a lone start waits for its result until the linger is over", "[update_hold]") {
  PendingUpdate p;
  p.started = 1;
  p.first_started = kT0;
  CHECK(SendAt(p, Options()) == kT0 + absl::Microseconds(300));
  p.started = 3;  // later starts do not push the time out
  CHECK(SendAt(p, Options()) == kT0 + absl::Microseconds(300));
  UpdateHoldOptions off = Options();
  off.start_linger = absl::ZeroDuration();
  CHECK(SendAt(p, off) == absl::InfinitePast());
  p.released = 1;  // a released slot goes at once, with the starts
  CHECK(SendAt(p, Options()) == absl::InfinitePast());
}

TEST_CASE("a result with nothing queued in the pool goes at once, starts or not",
          "[update_hold]") {
  PendingUpdate p;
  p.started = 2;
  p.first_started = kT0;
  p.results = 1;
  p.last_update = kT0;
  CHECK(SendAt(p, Options()) == absl::InfinitePast());
}

TEST_CASE("results wait for the coalescing window while the pool has work queued",
          "[update_hold]") {
  PendingUpdate p;
  p.results = 2;
  p.queued_tasks = 5;
  p.last_update = kT0;
  CHECK(SendAt(p, Options()) == kT0 + absl::Microseconds(1000));
  p.results = 4;  // full
  CHECK(SendAt(p, Options()) == absl::InfinitePast());
  p.results = 2;
  UpdateHoldOptions off = Options();
  off.coalesce = absl::ZeroDuration();
  CHECK(SendAt(p, off) == absl::InfinitePast());
  p.last_update = absl::InfinitePast();  // no update yet: the window is long over
  CHECK(SendAt(p, Options()) < kT0);
}

}  // namespace
}  // namespace dragon::agent
