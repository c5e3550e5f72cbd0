#include "common/utf8.h"

#include <catch2/catch.hpp>
#include <string>

namespace dragon::common {
namespace {

TEST_CASE("Utf8Prefix keeps short text and never cuts a character in two") {
  CHECK(Utf8Prefix("abc", 10) == "abc");
  CHECK(Utf8Prefix("abcdef", 3) == "abc");
  CHECK(Utf8Prefix("", 0).empty());
  const std::string text = "n\xC5\x93ud-\xE2\x82\xAC";  // "nœud-€": 2- and 3-byte characters
  CHECK(Utf8Prefix(text, 1) == "n");
  CHECK(Utf8Prefix(text, 2) == "n");  // inside œ: backs off before it
  CHECK(Utf8Prefix(text, 3) == "n\xC5\x93");
  CHECK(Utf8Prefix(text, 7) == "n\xC5\x93ud-");  // inside €
  CHECK(Utf8Prefix(text, 8) == "n\xC5\x93ud-");
  CHECK(Utf8Prefix(text, 9) == text);
}

}  // namespace
}  // namespace dragon::common
