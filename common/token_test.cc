#include "common/token.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <string>

namespace dragon::common {
namespace {

std::string TempPath(const char* name) {
  const char* base = getenv("TEST_TMPDIR");
  return std::string(base ? base : "/tmp") + "/" + name + "-" + std::to_string(getpid());
}

TEST_CASE("NewToken gives 64 hex digits, different each time") {
  auto a = NewToken();
  auto b = NewToken();
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->size() == 64);
  CHECK(a->find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(*a != *b);
}

TEST_CASE("a token file is written 0600 and read back") {
  const std::string path = TempPath("token-rt");
  auto token = NewToken();
  REQUIRE(token.ok());
  REQUIRE(WriteTokenFile(path, *token).ok());
  struct stat st;
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto read = ReadTokenFile(path);
  REQUIRE(read.ok());
  CHECK(*read == *token);
  // Rewriting replaces it.
  REQUIRE(WriteTokenFile(path, "0123456789abcdef").ok());
  CHECK(*ReadTokenFile(path) == "0123456789abcdef");
  unlink(path.c_str());
}

TEST_CASE("a token file others can read is refused, naming the file and the fix") {
  const std::string path = TempPath("token-open");
  REQUIRE(WriteTokenFile(path, "0123456789abcdef").ok());
  REQUIRE(chmod(path.c_str(), 0644) == 0);
  auto read = ReadTokenFile(path);
  REQUIRE_FALSE(read.ok());
  CHECK(std::string(read.status().message()).find(path) != std::string::npos);
  CHECK(std::string(read.status().message()).find("0644") != std::string::npos);
  CHECK(std::string(read.status().message()).find("chmod 600") != std::string::npos);
  unlink(path.c_str());
}

TEST_CASE("missing, empty and implausible token files are errors naming the file") {
  const std::string path = TempPath("token-bad");
  auto missing = ReadTokenFile(path);
  CHECK(absl::IsNotFound(missing.status()));
  {
    std::ofstream out(path);
  }
  chmod(path.c_str(), 0600);
  auto empty = ReadTokenFile(path);
  REQUIRE_FALSE(empty.ok());
  CHECK(std::string(empty.status().message()).find(path) != std::string::npos);
  {
    std::ofstream out(path);
    out << "has a space in it\n";
  }
  CHECK_FALSE(ReadTokenFile(path).ok());
  unlink(path.c_str());
}

TEST_CASE("ValidateToken names where the token came from") {
  CHECK(ValidateToken("0123456789abcdef", "$DRAGON_TOKEN").ok());
  auto short_token = ValidateToken("abc", "$DRAGON_TOKEN");
  REQUIRE_FALSE(short_token.ok());
  CHECK(std::string(short_token.message()).find("$DRAGON_TOKEN") != std::string::npos);
}

}  // namespace
}  // namespace dragon::common
