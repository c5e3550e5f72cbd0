// A session that said Hello.accepted_with_results: its Python tasks' ids come
// with the next message the head sends it, or only in their results; an
// executable's at once; Tick sends whatever is left.
#include <catch2/catch.hpp>

#include "daemon/head.h"
#include "daemon/head_test_fixture.h"

namespace dragon::daemon {
namespace {

constexpr bool kHold = true;

// Every (client_ref, task_id) the session was told in `messages`, wherever it came.
std::vector<std::pair<uint64_t, uint64_t>> AcceptedIn(
    const std::vector<dragon::v1::HeadMessage>& messages) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (const auto& m : messages) {
    const dragon::v1::Accepted* a = nullptr;
    if (m.has_accepted()) a = &m.accepted();
    if (m.has_results() && m.results().has_accepted()) a = &m.results().accepted();
    if (a == nullptr) continue;
    for (int i = 0; i < a->task_ids_size(); ++i) out.emplace_back(a->client_refs(i), a->task_ids(i));
  }
  return out;
}

TEST_CASE("a short task's id comes only with its result", "[head][accepted]") {
  Fixture f(kDefaultKeepFinished, 1, kHold);
  f.AddAgent(1);
  f.Submit(1);
  CHECK(f.session_box->TakeAll().empty());  // no Accepted written
  CHECK(f.SentToAgent() == std::vector<TaskId>{1});
  f.Report(1, dragon::v1::OK, "r");
  auto messages = f.session_box->TakeAll();
  REQUIRE(messages.size() == 1);
  REQUIRE(messages[0].results().results_size() == 1);
  CHECK(messages[0].results().results(0).task_id() == 1);
  CHECK(messages[0].results().results(0).client_ref() == 100);
  CHECK_FALSE(messages[0].results().has_accepted());
}

TEST_CASE("held ids ride on another task's results", "[head][accepted]") {
  Fixture f(kDefaultKeepFinished, 1, kHold);
  f.AddAgent(2);
  f.Submit(2);  // tasks 1 and 2
  (void)f.SentToAgent();
  f.Report(1, dragon::v1::OK);
  auto messages = f.session_box->TakeAll();
  REQUIRE(messages.size() == 1);
  CHECK(messages[0].results().results(0).task_id() == 1);
  CHECK(AcceptedIn(messages) == std::vector<std::pair<uint64_t, uint64_t>>{{101, 2}});
  f.Report(2, dragon::v1::OK);  // its id was told: nothing held any more
  messages = f.session_box->TakeAll();
  REQUIRE(messages.size() == 1);
  CHECK(AcceptedIn(messages).empty());
}

TEST_CASE("a tick tells the ids of tasks still running", "[head][accepted]") {
  Fixture f(kDefaultKeepFinished, 1, kHold);
  f.AddAgent(1);
  f.Submit(1);
  CHECK(f.session_box->TakeAll().empty());
  f.head.Tick();
  auto messages = f.session_box->TakeAll();
  REQUIRE(messages.size() == 1);
  CHECK(messages[0].has_accepted());
  CHECK(AcceptedIn(messages) == std::vector<std::pair<uint64_t, uint64_t>>{{100, 1}});
  f.head.Tick();  // told once only
  CHECK(f.session_box->TakeAll().empty());
}

TEST_CASE("an executable's id is sent at once, with the held ones", "[head][accepted]") {
  Fixture f(kDefaultKeepFinished, 1, kHold);
  f.Submit(1);  // a Python task: held
  dragon::v1::SubmitBatch batch;
  auto* t = batch.add_tasks();
  t->set_client_ref(500);
  t->set_kind(dragon::v1::EXECUTABLE);
  dragon::v1::ExecutableSpec spec;
  spec.add_argv("/bin/true");
  t->set_payload(spec.SerializeAsString());
  f.head.Submit(f.session, &batch);
  auto messages = f.session_box->TakeAll();
  REQUIRE(messages.size() == 1);
  CHECK(messages[0].has_accepted());
  auto told = AcceptedIn(messages);
  REQUIRE(told.size() == 2);
  CHECK(told[0] == std::make_pair<uint64_t, uint64_t>(500, 2));
  CHECK(told[1] == std::make_pair<uint64_t, uint64_t>(100, 1));
}

TEST_CASE("a session that did not ask gets Accepted as before", "[head][accepted]") {
  Fixture f;
  f.AddAgent(1);
  f.Submit(1);
  auto messages = f.session_box->TakeAll();
  REQUIRE(messages.size() == 1);
  CHECK(messages[0].has_accepted());
  f.Report(1, dragon::v1::OK);
  messages = f.session_box->TakeAll();
  REQUIRE(messages.size() == 1);
  CHECK_FALSE(messages[0].results().has_accepted());
}

}  // namespace
}  // namespace dragon::daemon
