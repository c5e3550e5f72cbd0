#include "daemon/listen_address.h"

#include <catch2/catch.hpp>

namespace dragon::daemon {
namespace {

TEST_CASE("a local agent: loopback by default") {
  auto plan = PlanListen("", /*remote=*/false, {});
  REQUIRE(plan.ok());
  CHECK(plan->bind_host == "127.0.0.1");
  CHECK(plan->advertise_host == "127.0.0.1");
}

TEST_CASE("an address is bound and advertised as it is") {
  auto plan = PlanListen("127.0.0.1", true, {});
  REQUIRE(plan.ok());
  CHECK(plan->bind_host == "127.0.0.1");
  CHECK(plan->advertise_host == "127.0.0.1");
}

TEST_CASE("an interface name gives its address") {
  auto lo = InterfaceAddress("lo");
  REQUIRE(lo.ok());
  CHECK(*lo == "127.0.0.1");
  auto plan = PlanListen("lo", true, {});
  REQUIRE(plan.ok());
  CHECK(plan->bind_host == "127.0.0.1");
  CHECK_FALSE(InterfaceAddress("no-such-if0").ok());
}

TEST_CASE("every interface advertises the address that routes to the agents' nodes") {
  auto source = SourceAddressToward("127.0.0.1");
  REQUIRE(source.ok());
  CHECK(*source == "127.0.0.1");
  // A loopback route is no use to remote agents: then the host name, if it is not loopback,
  // else an error telling to give --listen.
  auto plan = PlanListen("", true, {"127.0.0.1"});
  if (plan.ok()) {
    CHECK(plan->bind_host == "0.0.0.0");
    CHECK_FALSE(plan->advertise_host.empty());
    CHECK(plan->advertise_host.rfind("127.", 0) != 0);
  } else {
    CHECK(std::string(plan.status().message()).find("--listen") != std::string::npos);
  }
}

TEST_CASE("something that is neither address, interface nor host is refused, naming it") {
  auto plan = PlanListen("no-such-host.invalid", true, {});
  REQUIRE_FALSE(plan.ok());
  CHECK(std::string(plan.status().message()).find("no-such-host.invalid") != std::string::npos);
}

}  // namespace
}  // namespace dragon::daemon
