#include "client/python/session_inbox.h"

#include <catch2/catch.hpp>
#include <thread>

namespace dragon::client {
namespace {

dragon::v1::ResultBatch Results(std::initializer_list<uint64_t> refs) {
  dragon::v1::ResultBatch b;
  for (uint64_t ref : refs) {
    auto* r = b.add_results();
    r->set_client_ref(ref);
    r->set_task_id(ref + 100);
    r->mutable_result()->set_data("x");
  }
  return b;
}

TEST_CASE("the inbox hands over everything gathered in one batch, in order") {
  SessionInbox inbox;
  CHECK(inbox.Take(absl::ZeroDuration()).empty());
  dragon::v1::Accepted acc;
  acc.add_client_refs(1);
  acc.add_task_ids(101);
  acc.add_client_refs(2);
  acc.add_task_ids(102);
  inbox.AddAccepted(acc);
  auto b1 = Results({1});
  auto b2 = Results({2, 3});
  inbox.AddResults(&b1);
  inbox.AddResults(&b2);
  InboxBatch got = inbox.Take(absl::ZeroDuration());
  REQUIRE(got.accepted.size() == 2);
  CHECK(got.accepted[1] == std::make_pair<uint64_t, uint64_t>(2, 102));
  REQUIRE(got.results.size() == 3);
  CHECK(got.results[2].client_ref() == 3);
  CHECK(got.results[0].result().data() == "x");
  CHECK_FALSE(got.end.has_value());
  CHECK(inbox.Take(absl::ZeroDuration()).empty());  // nothing twice
}

TEST_CASE("the end is delivered with what came before it, and in every batch after") {
  SessionInbox inbox;
  auto b = Results({7});
  inbox.AddResults(&b);
  inbox.End(absl::UnavailableError("broke"));
  inbox.End(absl::OkStatus());  // only the first end counts
  InboxBatch got = inbox.Take(absl::Hours(1));  // does not wait: there is something
  CHECK(got.results.size() == 1);
  REQUIRE(got.end.has_value());
  CHECK(absl::IsUnavailable(*got.end));
  InboxBatch again = inbox.Take(absl::Hours(1));
  CHECK(again.results.empty());
  REQUIRE(again.end.has_value());
  CHECK(absl::IsUnavailable(*again.end));
}

TEST_CASE("a waiting Take wakes when results arrive from another thread") {
  SessionInbox inbox;
  std::thread producer([&] {
    auto b = Results({5});
    inbox.AddResults(&b);
  });
  InboxBatch got;
  while (got.results.empty()) got = inbox.Take(absl::Hours(1));
  producer.join();
  CHECK(got.results[0].client_ref() == 5);
}

TEST_CASE("whole results are wanted once per marked ref") {
  SessionInbox inbox;
  CHECK_FALSE(inbox.TakeWantsWhole(3));
  inbox.WantWhole(3);
  CHECK_FALSE(inbox.TakeWantsWhole(4));
  CHECK(inbox.TakeWantsWhole(3));
  CHECK_FALSE(inbox.TakeWantsWhole(3));
}

}  // namespace
}  // namespace dragon::client
