// Cutting text short without cutting a character in two. Messages that
// travel in errors (Python exceptions, protobuf strings) must stay valid
// UTF-8: a name or a reason cut in the middle of a multi-byte character
// would turn a clear error into a decoding failure.
#ifndef DRAGON_COMMON_UTF8_H_
#define DRAGON_COMMON_UTF8_H_

#include <cstddef>
#include <string_view>

namespace dragon::common {

// The longest prefix of `text` of at most `max_bytes` bytes that does not
// end inside a UTF-8 sequence (it backs off over continuation bytes).
inline std::string_view Utf8Prefix(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  size_t cut = max_bytes;
  // 10xxxxxx is a continuation byte: the character starting before it would be cut.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut);
}

}  // namespace dragon::common

#endif  // DRAGON_COMMON_UTF8_H_
