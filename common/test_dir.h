// A private directory for one unit test (in /tmp, or in /dev/shm for pools),
// removed with everything in it when the test ends, also when it fails.
// Tests name their own prefix so a leftover says which test left it.
#ifndef DRAGON_COMMON_TEST_DIR_H_
#define DRAGON_COMMON_TEST_DIR_H_

#include <stdlib.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <filesystem>
#include <string>
#include <system_error>

namespace dragon::common {

struct TestDir {
  // `prefix`: the directory's path up to the random part, e.g.
  // "/dev/shm/dragon-data-plane-test-".
  explicit TestDir(const std::string& prefix) {
    std::string name = prefix + "XXXXXX";
    REQUIRE(mkdtemp(name.data()) != nullptr);
    path = name;
  }
  ~TestDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TestDir(const TestDir&) = delete;
  TestDir& operator=(const TestDir&) = delete;

  // Regular files in it now (a test checks its pools' files are gone).
  size_t Files() const {
    size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator(path)) n += e.is_regular_file();
    return n;
  }

  std::string path;
};

}  // namespace dragon::common

#endif  // DRAGON_COMMON_TEST_DIR_H_
