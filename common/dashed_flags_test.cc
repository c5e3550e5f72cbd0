#include "common/dashed_flags.h"

#include <catch2/catch.hpp>

namespace dragon::common {
namespace {

TEST_CASE("dashes in flag names become underscores, values stay", "[flags]") {
  std::vector<std::string> in = {"prog", "--run-dir=/a-b", "-log-level", "x-y", "start",
                                 "--", "--keep-me"};
  std::vector<char*> argv;
  for (auto& s : in) argv.push_back(s.data());
  std::vector<std::string> storage;
  auto out = UnderscoreFlagNames(static_cast<int>(argv.size()), argv.data(), &storage);
  REQUIRE(out.size() == 7);
  CHECK(std::string(out[1]) == "--run_dir=/a-b");
  CHECK(std::string(out[2]) == "-log_level");
  CHECK(std::string(out[3]) == "x-y");
  CHECK(std::string(out[4]) == "start");
  CHECK(std::string(out[6]) == "--keep-me");
}

}  // namespace
}  // namespace dragon::common
