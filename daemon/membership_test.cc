#include "daemon/membership.h"

#include <catch2/catch.hpp>

namespace dragon::daemon {
namespace {

using common::FakeClock;

MembershipOptions Options() {
  MembershipOptions o;
  o.heartbeat_interval = absl::Seconds(1);
  o.heartbeat_timeout = absl::Seconds(4);
  o.no_node_grace = absl::Seconds(30);
  return o;
}

// Admits `node` and answers its first ping, as a healthy agent does.
AgentIndex Join(Membership* m, const std::string& node, uint64_t previous = 0) {
  auto admission = m->Admit(node, previous, 100);
  REQUIRE(admission.ok());
  m->Answered(admission->index, 1);
  return admission->index;
}

TEST_CASE("a member is joining until its task loop answers a ping, then ready") {
  FakeClock clock;
  Membership m(Options(), &clock);
  auto a = m.Admit("n1", 0, 10);
  REQUIRE(a.ok());
  CHECK(a->incarnation == 1);
  CHECK(a->fenced == kNoAgent);
  CHECK(m.member(a->index).state == NodeState::kJoining);
  CHECK_FALSE(m.Schedulable(a->index));
  m.Heard(a->index);  // a message that is not an answer does not make it ready
  CHECK(m.member(a->index).state == NodeState::kJoining);
  m.Answered(a->index, 1);
  CHECK(m.member(a->index).state == NodeState::kReady);
  CHECK(m.Schedulable(a->index));
}

TEST_CASE("pings are due once per interval per live member") {
  FakeClock clock;
  Membership m(Options(), &clock);
  AgentIndex a = Join(&m, "n1");
  auto first = m.TakeDuePings();
  REQUIRE(first.size() == 1);
  CHECK(first[0].first == a);
  CHECK(first[0].second == 1);
  CHECK(m.TakeDuePings().empty());
  clock.Advance(absl::Milliseconds(999));
  CHECK(m.TakeDuePings().empty());
  clock.Advance(absl::Milliseconds(1));
  auto second = m.TakeDuePings();
  REQUIRE(second.size() == 1);
  CHECK(second[0].second == 2);
}

TEST_CASE("a member silent for the timeout is lost; one that answers is not") {
  FakeClock clock;
  Membership m(Options(), &clock);
  AgentIndex quiet = Join(&m, "quiet");
  AgentIndex chatty = Join(&m, "chatty");
  for (int i = 0; i < 3; ++i) {
    clock.Advance(absl::Seconds(1));
    m.Answered(chatty, 2 + i);
    CHECK(m.ExpireSilent().empty());
  }
  clock.Advance(absl::Milliseconds(999));
  m.Heard(chatty);
  CHECK(m.ExpireSilent().empty());  // quiet: 3.999 s
  clock.Advance(absl::Milliseconds(1));
  auto expired = m.ExpireSilent();
  REQUIRE(expired.size() == 1);
  CHECK(expired[0] == quiet);
  CHECK(m.member(quiet).state == NodeState::kLost);
  CHECK(m.member(quiet).reason.find("no heartbeat for 4.0 s") != std::string::npos);
  CHECK(m.member(quiet).reason.find("--heartbeat-timeout-ms 4000") != std::string::npos);
  CHECK(m.Live(chatty));
  CHECK(m.live_count() == 1);
  CHECK(m.ExpireSilent().empty());  // lost once
  // A lost member is neither pinged nor revived by a late message.
  m.Heard(quiet);
  m.Answered(quiet, 9);
  CHECK(m.member(quiet).state == NodeState::kLost);
  for (auto& [index, seq] : m.TakeDuePings()) CHECK(index != quiet);
}

TEST_CASE("a fresh agent for a live node fences the previous incarnation") {
  FakeClock clock;
  Membership m(Options(), &clock);
  AgentIndex first = Join(&m, "n1");
  auto second = m.Admit("n1", /*previous_incarnation=*/0, 200);
  REQUIRE(second.ok());
  CHECK(second->incarnation == 2);
  CHECK(second->fenced == first);
  CHECK(m.member(first).state == NodeState::kLost);
  CHECK(m.member(first).reason.find("replaced by incarnation 2") != std::string::npos);
  CHECK(m.Latest("n1") == second->index);
  CHECK(m.live_count() == 1);
}

TEST_CASE("a stale agent re-registering after a newer one joined is refused") {
  FakeClock clock;
  Membership m(Options(), &clock);
  AgentIndex first = Join(&m, "n1");
  clock.Advance(absl::Seconds(5));
  REQUIRE(m.ExpireSilent().size() == 1);  // e.g. SIGSTOPped
  AgentIndex second = Join(&m, "n1");     // the launcher started a new one
  CHECK(m.member(second).incarnation == 2);
  // SIGCONT: the stale agent (incarnation 1) tries to come back.
  auto stale = m.Admit("n1", 1, 100);
  REQUIRE_FALSE(stale.ok());
  CHECK(absl::IsAlreadyExists(stale.status()));
  CHECK(std::string(stale.status().message()).find("stale") != std::string::npos);
  CHECK(m.Live(second));
  CHECK_FALSE(m.Live(first));
}

TEST_CASE("a lost agent whose incarnation is still the latest re-joins as the next one") {
  FakeClock clock;
  Membership m(Options(), &clock);
  AgentIndex first = Join(&m, "n1");
  clock.Advance(absl::Seconds(5));
  REQUIRE(m.ExpireSilent().size() == 1);
  auto back = m.Admit("n1", 1, 100);
  REQUIRE(back.ok());
  CHECK(back->incarnation == 2);
  CHECK(back->fenced == kNoAgent);  // already lost
  CHECK(m.member(first).state == NodeState::kLost);
  // And one that lost its stream before the head noticed fences its own old self.
  auto again = m.Admit("n1", 2, 100);
  REQUIRE(again.ok());
  CHECK(again->fenced == back->index);
}

TEST_CASE("drain and undrain; a drain asked while joining applies once ready") {
  FakeClock clock;
  Membership m(Options(), &clock);
  AgentIndex a = Join(&m, "n1");
  auto drained = m.SetDrain("n1", true);
  REQUIRE(drained.ok());
  CHECK(*drained == a);
  CHECK(m.member(a).state == NodeState::kDraining);
  CHECK(m.Live(a));
  CHECK_FALSE(m.Schedulable(a));
  REQUIRE(m.SetDrain("n1", false).ok());
  CHECK(m.Schedulable(a));

  auto b = m.Admit("n2", 0, 7);
  REQUIRE(b.ok());
  REQUIRE(m.SetDrain("n2", true).ok());
  CHECK(m.member(b->index).state == NodeState::kJoining);
  m.Answered(b->index, 1);
  CHECK(m.member(b->index).state == NodeState::kDraining);

  CHECK(absl::IsNotFound(m.SetDrain("nope", true).status()));
  clock.Advance(absl::Seconds(10));
  m.ExpireSilent();
  CHECK(absl::IsFailedPrecondition(m.SetDrain("n1", true).status()));
}

TEST_CASE("the no-node grace starts when the last member is lost, not when it leaves") {
  FakeClock clock;
  Membership m(Options(), &clock);
  AgentIndex a = Join(&m, "n1");
  AgentIndex b = Join(&m, "n2");
  CHECK(m.Leave(a, "removed"));
  CHECK(m.member(a).state == NodeState::kGone);
  CHECK_FALSE(m.NoNodeGraceExpired());
  CHECK(m.Lose(b, "stream broke"));
  CHECK_FALSE(m.Lose(b, "again"));
  clock.Advance(absl::Seconds(29));
  CHECK_FALSE(m.NoNodeGraceExpired());
  clock.Advance(absl::Seconds(1));
  CHECK(m.NoNodeGraceExpired());
  CHECK(m.NoNodeReason().find("30 s") != std::string::npos);
  CHECK(m.NoNodeReason().find("node n2") != std::string::npos);
  CHECK(m.NoNodeReason().find("stream broke") != std::string::npos);
  Join(&m, "n3");  // a node comes back: no more expiry
  CHECK_FALSE(m.NoNodeGraceExpired());
}

TEST_CASE("only leaving members never start the grace") {
  FakeClock clock;
  Membership m(Options(), &clock);
  AgentIndex a = Join(&m, "n1");
  m.Leave(a, "drained and removed");
  clock.Advance(absl::Hours(1));
  CHECK_FALSE(m.NoNodeGraceExpired());
}

TEST_CASE("ExpectNodes starts the grace for agents that never register") {
  FakeClock clock;
  Membership m(Options(), &clock);
  m.ExpectNodes();
  clock.Advance(absl::Seconds(31));
  CHECK(m.NoNodeGraceExpired());
  CHECK(m.NoNodeReason().find("have not registered") != std::string::npos);
  Join(&m, "n1");
  CHECK_FALSE(m.NoNodeGraceExpired());
}

TEST_CASE("a member is drained once, when its allocation's end minus its window has come") {
  FakeClock clock;
  Membership m(Options(), &clock);
  AgentIndex a = Join(&m, "n1");
  AgentIndex b = Join(&m, "n2");
  m.SetAllocationEnd(a, clock.Now() + absl::Seconds(100), absl::Seconds(60));
  CHECK(m.TakeEnding().empty());
  clock.Advance(absl::Seconds(39));
  CHECK(m.TakeEnding().empty());
  clock.Advance(absl::Seconds(1));
  CHECK(m.TakeEnding() == std::vector<AgentIndex>{a});
  CHECK(m.member(a).state == NodeState::kDraining);
  CHECK_FALSE(m.Schedulable(a));
  CHECK(m.TakeEnding().empty());  // once
  CHECK(m.Schedulable(b));        // no end: never
  // Undrained by hand, it is not drained again for the same end.
  REQUIRE(m.SetDrain("n1", false).ok());
  clock.Advance(absl::Seconds(10));
  CHECK(m.TakeEnding().empty());
  CHECK(m.Schedulable(a));
}

TEST_CASE("a joining member whose window has begun drains once ready") {
  FakeClock clock;
  Membership m(Options(), &clock);
  auto admitted = m.Admit("n1", 0, 10);
  REQUIRE(admitted.ok());
  m.SetAllocationEnd(admitted->index, clock.Now() + absl::Seconds(5), absl::Seconds(60));
  CHECK(m.TakeEnding() == std::vector<AgentIndex>{admitted->index});
  CHECK(m.member(admitted->index).state == NodeState::kJoining);
  m.Answered(admitted->index, 1);
  CHECK(m.member(admitted->index).state == NodeState::kDraining);
}

}  // namespace
}  // namespace dragon::daemon
