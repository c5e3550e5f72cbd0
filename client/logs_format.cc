#include "client/logs_format.h"

#include "absl/strings/str_cat.h"

namespace dragon::client {

std::string FormatLogs(const dragon::v1::TaskLogsReply& reply) {
  std::string out = absl::StrCat("task ", reply.task_id());
  if (!reply.node().empty()) absl::StrAppend(&out, " ran on node ", reply.node());
  if (!reply.host().empty() && reply.host() != reply.node()) {
    absl::StrAppend(&out, " (host ", reply.host(), ")");
  }
  absl::StrAppend(&out, "\n");
  for (const auto& f : reply.files()) {
    std::string what = f.rank() >= 0 ? absl::StrCat("rank ", f.rank(), " ", f.stream()) : f.stream();
    std::string size = f.size() == 0 ? "empty"
                       : f.truncated()
                           ? absl::StrCat("last ", f.data().size(), " of ", f.size(), " bytes")
                           : absl::StrCat(f.size(), f.size() == 1 ? " byte" : " bytes");
    absl::StrAppend(&out, "==> ", what);
    if (!f.path().empty()) absl::StrAppend(&out, ": ", f.host().empty() ? "" : f.host() + ":", f.path());
    absl::StrAppend(&out, " (", size, ") <==\n");
    absl::StrAppend(&out, f.data());
    if (!f.data().empty() && f.data().back() != '\n') absl::StrAppend(&out, "\n");
  }
  if (reply.files_size() == 0 && reply.note().empty()) absl::StrAppend(&out, "(no output)\n");
  if (!reply.note().empty()) absl::StrAppend(&out, "note: ", reply.note(), "\n");
  return out;
}

}  // namespace dragon::client
