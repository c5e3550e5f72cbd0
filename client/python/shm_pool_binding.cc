#include "client/python/shm_pool_binding.h"

#include <pybind11/stl.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/python/lenient_text.h"
#include "client/python/without_gil.h"
#include "common/shm_pool.h"

namespace py = pybind11;

namespace dragon::client {
namespace {

using common::BlockRef;
using common::ShmPool;

// Set by RegisterShmPool; the module keeps them alive.
PyObject* g_pool_error = nullptr;
PyObject* g_pool_full = nullptr;
PyObject* g_block_error = nullptr;

[[noreturn]] void Raise(const absl::Status& s) {
  PyObject* type = g_pool_error;
  if (absl::IsResourceExhausted(s)) {
    type = g_pool_full;
  } else if (absl::IsInvalidArgument(s) || absl::IsNotFound(s) || absl::IsOutOfRange(s)) {
    type = g_block_error;
  }
  SetErrorText(type, std::string_view(s.message().data(), s.message().size()));
  throw py::error_already_set();
}

template <typename T>
T Value(absl::StatusOr<T> v) {
  if (!v.ok()) Raise(v.status());
  return *std::move(v);
}

void Check(const absl::Status& s) {
  if (!s.ok()) Raise(s);
}

BlockRef Ref(const py::bytes& encoded) {
  return Value(BlockRef::Decode(std::string(encoded)));
}

// One block's bytes, writable, for memoryview()/numpy.frombuffer(). It holds
// the pool, so the mapping outlives every view of it; the block itself stays
// valid until someone frees it (the pool cannot revoke a pointer).
//
// With free_on_release, the block is freed when this object goes, which is
// when the last memoryview or numpy array made from it goes (each holds its
// exporter). Freed only if the releasing process owns it then: a block handed
// on (transfer), reclaimed, or released in a forked child is left alone.
struct ShmBlock {
  ShmBlock(std::shared_ptr<ShmPool> p, BlockRef r, absl::Span<char> b, bool free)
      : pool(std::move(p)), ref(r), bytes(b), free_on_release(free) {}
  ShmBlock(const ShmBlock&) = delete;
  ShmBlock& operator=(const ShmBlock&) = delete;
  ~ShmBlock() {
    // Runs with the interpreter lock held, as Python drops the object; the
    // pool's mutex is only ever held for a few table updates, never while
    // waiting. Errors are dropped: a destructor has nobody to tell, and a
    // stale or damaged pool changes nothing for the caller.
    if (free_on_release) (void)pool->FreeIfOwner(ref, getpid());
  }

  std::shared_ptr<ShmPool> pool;
  BlockRef ref;
  absl::Span<char> bytes;
  bool free_on_release;
};

// The pool as Python holds it: close() lets it go (the creator's file is
// removed once no block view is left either).
class PoolHandle {
 public:
  explicit PoolHandle(std::unique_ptr<ShmPool> pool) : pool_(std::move(pool)) {}

  ShmPool& pool() const {
    if (pool_ == nullptr) {
      PyErr_SetString(g_pool_error, "the shared-memory pool is closed");
      throw py::error_already_set();
    }
    return *pool_;
  }
  const std::shared_ptr<ShmPool>& shared() const {
    pool();
    return pool_;
  }
  void close() { pool_.reset(); }

 private:
  std::shared_ptr<ShmPool> pool_;
};

py::dict StatsDict(const common::ShmPoolStats& s) {
  py::dict d;
  d["capacity_bytes"] = s.capacity_bytes;
  d["free_bytes"] = s.free_bytes;
  d["blocks_in_use"] = s.blocks_in_use;
  d["largest_free_block"] = s.largest_free_block;
  d["largest_possible_block"] = s.largest_possible_block;
  d["waiters"] = s.waiters;
  d["repairs"] = s.repairs;
  return d;
}

}  // namespace

std::shared_ptr<ShmPool> SharedPool(py::handle pool) {
  return pool.cast<const PoolHandle&>().shared();
}

void RegisterShmPool(py::module_& m) {
  static py::exception<std::runtime_error> pool_error(m, "ShmPoolError", PyExc_RuntimeError);
  static py::exception<std::runtime_error> pool_full(m, "ShmPoolFull", pool_error.ptr());
  static py::exception<std::runtime_error> block_error(m, "ShmBlockError", pool_error.ptr());
  g_pool_error = pool_error.ptr();
  g_pool_full = pool_full.ptr();
  g_block_error = block_error.ptr();

  py::class_<ShmBlock>(m, "ShmBlock", py::buffer_protocol())
      .def_buffer([](ShmBlock& b) {
        return py::buffer_info(b.bytes.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.bytes.size())}, {1},
                               /*readonly=*/false);
      })
      .def("__len__", [](const ShmBlock& b) { return b.bytes.size(); })
      .def_property_readonly("ref", [](const ShmBlock& b) { return py::bytes(b.ref.Encode()); })
      .def_readwrite("free_on_release", &ShmBlock::free_on_release,
                     "Free the block when this object goes, if this process owns it then: set "
                     "by a worker that took over a block its task's app still refers to.");

  py::class_<PoolHandle>(m, "ShmPool")
      .def_static(
          "create",
          [](const std::string& dir, const std::string& name, uint64_t size_bytes,
             uint64_t min_block, bool prefault, bool reserve) {
            common::ShmPoolOptions o;
            o.dir = dir;
            o.name = name;
            o.size_bytes = size_bytes;
            o.min_block = min_block;
            o.prefault = prefault;
            o.reserve = reserve;
            return PoolHandle(Value(WithoutGil([&] { return ShmPool::Create(o); })));
          },
          py::arg("dir"), py::arg("name"), py::arg("size_bytes"), py::arg("min_block") = 4096,
          py::arg("prefault") = false, py::arg("reserve") = true,
          "Creates DIR/NAME (mode 0600) with its space reserved now (with reserve=False, each "
          "block's space is reserved when it is allocated); removed when closed.")
      .def_static(
          "attach",
          [](const std::string& path) { return PoolHandle(Value(ShmPool::Attach(path))); },
          py::arg("path"), "Maps the pool another process created at PATH.")
      .def_static("remove_stale", &ShmPool::RemoveStale, py::arg("dir"), py::arg("prefix"),
                  "Removes pool files in DIR starting with PREFIX whose creator is dead.")
      .def(
          "allocate",
          [](const PoolHandle& h, uint64_t size, double wait_s, int owner) {
            ShmPool& pool = h.pool();
            const absl::Duration wait = absl::Seconds(wait_s > 0 ? wait_s : 0);
            BlockRef ref = Value(WithoutGil([&] { return pool.Allocate(size, wait, owner); }));
            return py::bytes(ref.Encode());
          },
          py::arg("size"), py::arg("wait_s") = 0.0, py::arg("owner") = 0,
          "A block of at least SIZE bytes (its 24-byte reference), owned by OWNER (0: this "
          "process); waits up to WAIT_S for space, then raises ShmPoolFull.")
      .def(
          "block",
          [](const PoolHandle& h, const py::bytes& encoded, bool free_on_release) {
            const std::shared_ptr<ShmPool>& pool = h.shared();
            BlockRef ref = Ref(encoded);
            absl::Span<char> bytes = Value(pool->Resolve(ref));
            return std::make_unique<ShmBlock>(pool, ref, bytes, free_on_release);
          },
          py::arg("ref"), py::arg("free_on_release") = false,
          "The block's bytes, writable (memoryview(pool.block(ref))). With FREE_ON_RELEASE the "
          "block is freed when the last view of it is gone, if this process owns it then.")
      .def(
          "free", [](const PoolHandle& h, const py::bytes& ref) { Check(h.pool().Free(Ref(ref))); },
          py::arg("ref"))
      .def(
          "set_owner",
          [](const PoolHandle& h, const py::bytes& ref, int pid) {
            Check(h.pool().SetOwner(Ref(ref), pid));
          },
          py::arg("ref"), py::arg("pid"))
      .def(
          "transfer",
          [](const PoolHandle& h, const py::bytes& ref, int from_pid, int to_pid) {
            Check(h.pool().TransferOwner(Ref(ref), from_pid, to_pid));
          },
          py::arg("ref"), py::arg("from_pid"), py::arg("to_pid"),
          "Hands the block from FROM_PID to TO_PID; ShmPoolError if FROM_PID does not own it.")
      .def(
          "free_if_owner",
          [](const PoolHandle& h, const py::bytes& ref, int pid) {
            return Value(h.pool().FreeIfOwner(Ref(ref), pid));
          },
          py::arg("ref"), py::arg("pid"),
          "Frees the block if PID owns it (True); False if another process owns it or the "
          "reference is stale.")
      .def(
          "owners", [](const PoolHandle& h) { return Value(h.pool().Owners()); },
          "The pids owning allocated blocks, ascending.")
      .def(
          "reclaim_owner",
          [](const PoolHandle& h, int pid) { return Value(h.pool().ReclaimOwner(pid)); },
          py::arg("pid"), "Frees every block of PID (a dead process); the bytes freed.")
      .def("stats", [](const PoolHandle& h) { return StatsDict(Value(h.pool().Stats())); })
      .def_property_readonly("path", [](const PoolHandle& h) { return h.pool().path(); })
      .def_property_readonly("capacity_bytes",
                             [](const PoolHandle& h) { return h.pool().capacity_bytes(); })
      .def_property_readonly("creator", [](const PoolHandle& h) { return h.pool().creator(); })
      .def_property_readonly("creator_pid",
                             [](const PoolHandle& h) { return h.pool().creator_pid(); },
                             "The pid of the process that created (or adopted) the pool: its agent.")
      .def("mark_creator_ready", [](const PoolHandle& h) { h.pool().MarkCreatorReady(); },
           "Says that the services beside the pool (its <path>.sock) are started, or never "
           "will be: what an agent does once its data plane is up or failed to start.")
      .def_property_readonly(
          "creator_ready", [](const PoolHandle& h) { return h.pool().creator_ready(); },
          "The creating agent has finished starting: its data socket <path>.sock exists now "
          "or never will (it has no data plane).")
      .def("close", &PoolHandle::close,
           "Lets the pool go; the creator's file is removed once no block view is left.");
}

}  // namespace dragon::client
