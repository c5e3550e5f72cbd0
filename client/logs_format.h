// What `dragonctl logs TASK [--rank R]` prints: each file of the task's output
// (an MPI job's per-rank stdout/stderr and launcher log, an executable's
// captured stdout/stderr, a Python task's worker log lines) under a header
// naming rank, stream, host, path and size, then the head's note.
#ifndef DRAGON_CLIENT_LOGS_FORMAT_H_
#define DRAGON_CLIENT_LOGS_FORMAT_H_

#include <string>

#include "proto/head.pb.h"

namespace dragon::client {

std::string FormatLogs(const dragon::v1::TaskLogsReply& reply);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_LOGS_FORMAT_H_
