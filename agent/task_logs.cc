#include "agent/task_logs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "agent/file_range.h"
#include "agent/mpi_launcher.h"

namespace dragon::agent {

TaskLogIndex::~TaskLogIndex() {
  for (SlotLog& s : slots_) {
    if (s.fd >= 0) close(s.fd);
  }
}

void TaskLogIndex::WorkerStarted(int slot, const std::string& log_path) {
  if (slot < 0) return;
  if (static_cast<size_t>(slot) >= slots_.size()) slots_.resize(slot + 1);
  SlotLog& s = slots_[slot];
  // Reopened at every start: the file may have been removed and made anew.
  if (s.fd >= 0) close(s.fd);
  s.path = log_path;
  s.fd = open(log_path.c_str(), O_RDONLY | O_CLOEXEC);
}

uint64_t TaskLogIndex::SlotLogSize(int slot) const {
  if (slot < 0 || static_cast<size_t>(slot) >= slots_.size()) return 0;
  const SlotLog& s = slots_[slot];
  if (s.fd < 0) return FileSize(s.path);
  struct stat st {};
  return fstat(s.fd, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

const std::string& TaskLogIndex::SlotLogPath(int slot) const {
  static const std::string kNone;
  if (slot < 0 || static_cast<size_t>(slot) >= slots_.size()) return kNone;
  return slots_[slot].path;
}

void TaskLogIndex::PythonStarted(uint64_t task_id, int slot) {
  if (keep_python_ == 0) return;
  PythonRun& run = python_[task_id];
  run.slot = slot;
  run.start = SlotLogSize(slot);
  run.end = 0;
  run.ended = false;
  python_order_.push_back(task_id);
  while (python_order_.size() > keep_python_) {
    python_.erase(python_order_.front());
    python_order_.pop_front();
  }
}

void TaskLogIndex::PythonEnded(uint64_t task_id) {
  auto it = python_.find(task_id);
  if (it == python_.end() || it->second.ended) return;
  it->second.end = SlotLogSize(it->second.slot);
  it->second.ended = true;
}

void TaskLogIndex::ExecutableEnded(uint64_t task_id, const std::string& result_data) {
  if (keep_executables_ == 0) return;
  v1::ExecutableResult r;
  if (!r.ParseFromString(result_data)) return;
  Tails& t = executables_[task_id];
  t.out = r.stdout_tail();
  t.err = r.stderr_tail();
  t.out_total = r.stdout_bytes();
  t.err_total = r.stderr_bytes();
  executable_order_.push_back(task_id);
  while (executable_order_.size() > keep_executables_) {
    executables_.erase(executable_order_.front());
    executable_order_.pop_front();
  }
}

v1::TaskLogsAnswer TaskLogIndex::Answer(const v1::TaskLogsQuery& query, const MpiLauncher* mpi) const {
  const uint64_t id = query.task_id();
  const uint64_t max = query.max_bytes() == 0 ? (1u << 20) : query.max_bytes();
  if (mpi != nullptr) {
    std::optional<v1::TaskLogsAnswer> a =
        mpi->Logs(id, query.has_rank() ? std::optional<int32_t>(query.rank()) : std::nullopt, max);
    if (a) {
      a->set_query_id(query.query_id());
      return *a;
    }
  }
  v1::TaskLogsAnswer a;
  a.set_query_id(query.query_id());
  if (auto it = executables_.find(id); it != executables_.end()) {
    for (const auto& [stream, data, total] :
         {std::make_tuple("stdout", &it->second.out, it->second.out_total),
          std::make_tuple("stderr", &it->second.err, it->second.err_total)}) {
      v1::TaskLogFile* f = a.add_files();
      f->set_rank(-1);
      f->set_stream(stream);
      f->set_host(host_);
      const std::string& d = *data;
      f->set_data(d.size() > max ? d.substr(d.size() - max) : d);
      f->set_size(total);
      f->set_truncated(total > f->data().size());
    }
    if (query.has_rank()) a.set_note("not an MPI task: --rank does not apply");
    return a;
  }
  if (auto it = python_.find(id); it != python_.end()) {
    const PythonRun& run = it->second;
    const std::string& path = SlotLogPath(run.slot);
    const uint64_t size = SlotLogSize(run.slot);
    const uint64_t end = run.ended ? std::min(run.end, size) : size;
    const uint64_t from = end - std::min(end - std::min(run.start, end), max);
    v1::TaskLogFile* f = a.add_files();
    f->set_rank(-1);
    f->set_stream("worker");
    f->set_path(path);
    f->set_host(host_);
    f->set_data(ReadFileRange(path, from, end));
    f->set_size(end - std::min(run.start, end));
    f->set_truncated(from > run.start);
    a.set_note(absl::StrCat("what worker slot ", run.slot, " wrote while it ran task ", id,
                            run.ended ? "" : " (it has not finished: up to now)",
                            query.has_rank() ? "; not an MPI task: --rank does not apply" : ""));
    return a;
  }
  a.set_error(absl::StrCat("this agent has no output of task ", id,
                           " (it did not run here, or too many tasks ran since)"));
  return a;
}

}  // namespace dragon::agent
