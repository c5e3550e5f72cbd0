// Reading part of a file the agent keeps (task logs, ranks' output): whole
// reads with EINTR retried, an unreadable file read as empty, since these
// answer a person's `dragonctl logs` and must never fail the agent.
#ifndef DRAGON_AGENT_FILE_RANGE_H_
#define DRAGON_AGENT_FILE_RANGE_H_

#include <cstdint>
#include <string>

namespace dragon::agent {

// The file's size in bytes; 0 when it cannot be stat'ed.
uint64_t FileSize(const std::string& path);

// Bytes [from, to) of the file (fewer if it is shorter); "" when it cannot be opened.
std::string ReadFileRange(const std::string& path, uint64_t from, uint64_t to);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_FILE_RANGE_H_
