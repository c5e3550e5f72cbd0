#include "agent/node_resources.h"

#include <stdlib.h>

#include <catch2/catch.hpp>

namespace dragon::agent {
namespace {

struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = getenv(name)) old_ = old, had_ = true;
    if (value) setenv(name, value, 1); else unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_, old_.c_str(), 1); else unsetenv(name_);
  }
  const char* name_;
  std::string old_;
  bool had_ = false;
};

TEST_CASE("cores: the affinity, capped by the Slurm job's CPUs on the node") {
  CHECK(CapCores(8, nullptr) == 8);
  CHECK(CapCores(8, "2") == 2);
  CHECK(CapCores(2, "8") == 2);
  CHECK(CapCores(8, "") == 8);
  CHECK(CapCores(8, "lots") == 8);
  CHECK(CapCores(8, "0") == 8);
  CHECK(CapCores(0, nullptr) == 1);
  ScopedEnv slurm("SLURM_CPUS_ON_NODE", "1");
  CHECK(UsableCores() == 1);
}

TEST_CASE("the --gpus flag wins over the environment") {
  ScopedEnv cuda("CUDA_VISIBLE_DEVICES", "5,6");
  auto gpus = DetectGpus("0,1");
  REQUIRE(gpus.ok());
  CHECK(*gpus == std::vector<std::string>{"0", "1"});
  CHECK(DetectGpus("none")->empty());
}

TEST_CASE("CUDA_VISIBLE_DEVICES, then ROCR_VISIBLE_DEVICES") {
  ScopedEnv cuda("CUDA_VISIBLE_DEVICES", "2, 3");
  ScopedEnv rocr("ROCR_VISIBLE_DEVICES", "7");
  CHECK(*DetectGpus("") == std::vector<std::string>{"2", "3"});
  {
    ScopedEnv none("CUDA_VISIBLE_DEVICES", nullptr);
    CHECK(*DetectGpus("") == std::vector<std::string>{"7"});
  }
  ScopedEnv empty("CUDA_VISIBLE_DEVICES", "");
  CHECK(DetectGpus("")->empty());
  ScopedEnv nodev("CUDA_VISIBLE_DEVICES", "NoDevFiles");
  CHECK(DetectGpus("")->empty());
}

TEST_CASE("a malformed list is an error naming where it came from") {
  auto bad = DetectGpus("0,,1");
  REQUIRE_FALSE(bad.ok());
  CHECK(std::string(bad.status().message()).find("--gpus") != std::string::npos);
  ScopedEnv cuda("CUDA_VISIBLE_DEVICES", "0,");
  auto env = DetectGpus("");
  REQUIRE_FALSE(env.ok());
  CHECK(std::string(env.status().message()).find("$CUDA_VISIBLE_DEVICES") != std::string::npos);
}

TEST_CASE("cores and memory are positive") {
  CHECK(UsableCores() >= 1);
  CHECK(UsableMemoryBytes() > (64ull << 20));
}


TEST_CASE("the allocation's end: --job-end or $SLURM_JOB_END_TIME, the earlier of the two") {
  CHECK(AllocationEndMicros(0, nullptr) == 0);
  CHECK(AllocationEndMicros(-5, nullptr) == 0);
  CHECK(AllocationEndMicros(1'800'000'000, nullptr) == 1'800'000'000'000'000);
  CHECK(AllocationEndMicros(0, "1800000100") == 1'800'000'100'000'000);
  CHECK(AllocationEndMicros(1'800'000'000, "1800000100") == 1'800'000'000'000'000);
  CHECK(AllocationEndMicros(1'800'000'200, " 1800000100\n") == 1'800'000'100'000'000);
  CHECK(AllocationEndMicros(1'800'000'000, "") == 1'800'000'000'000'000);
  CHECK(AllocationEndMicros(1'800'000'000, "0") == 1'800'000'000'000'000);
  CHECK(AllocationEndMicros(0, "Unknown") == 0);
}

TEST_CASE("block ids and the node id of a block's agent") {
  CHECK(BlockIdProblem("0").empty());
  CHECK(BlockIdProblem("block-12_a.b").empty());
  CHECK_THAT(BlockIdProblem(""), Catch::Contains("1..64"));
  CHECK_THAT(BlockIdProblem(std::string(65, 'x')), Catch::Contains("1..64"));
  CHECK_THAT(BlockIdProblem("a/b"), Catch::Contains("only letters"));
  CHECK_THAT(BlockIdProblem("a b"), Catch::Contains("only letters"));
  CHECK(DefaultNodeId("n1", "") == "n1");
  CHECK(DefaultNodeId("n1", "3") == "n1-b3");
}
}  // namespace
}  // namespace dragon::agent
