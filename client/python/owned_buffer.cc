#include "client/python/owned_buffer.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <string>

#include "client/python/without_gil.h"

namespace py = pybind11;

namespace dragon::client {
namespace {

// Below this, malloc: glibc raises its mmap threshold as large chunks are freed
// (up to 32 MiB), so repeated copies reuse heap memory without faults; a fresh
// mapping per copy would cost more. Above it, malloc maps and unmaps every time.
constexpr size_t kMapAtLeast = size_t{32} << 20;

// Copies this large run without the interpreter lock.
constexpr size_t kReleaseGilAtLeast = size_t{256} << 10;

class OwnedBuffer {
 public:
  explicit OwnedBuffer(size_t size) : size_(size) {
    if (size < kMapAtLeast) {
      data_ = static_cast<char*>(::operator new(size == 0 ? 1 : size));
      return;
    }
    mapped_ = size;
    void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    // Not MADV_HUGEPAGE: populating 64 MiB of huge pages took 150 ms (direct
    // compaction) where 4 KiB pages take a few.
#ifdef MADV_POPULATE_WRITE
    madvise(p, mapped_, MADV_POPULATE_WRITE);  // one call instead of a fault per page
#endif
    data_ = static_cast<char*>(p);
  }
  ~OwnedBuffer() {
    if (mapped_ > 0) {
      munmap(data_, mapped_);
    } else {
      ::operator delete(data_);
    }
  }
  OwnedBuffer(const OwnedBuffer&) = delete;
  OwnedBuffer& operator=(const OwnedBuffer&) = delete;

  char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  size_t size_;
  size_t mapped_ = 0;  // 0: from operator new
  char* data_ = nullptr;
};

void CheckContiguous(const py::buffer_info& b, const char* what) {
  py::ssize_t expected = b.itemsize;  // C order: each dimension's stride
  for (py::ssize_t d = b.ndim - 1; d >= 0; --d) {
    if (b.shape[d] > 1 && b.strides[d] != expected) {
      throw py::value_error(std::string("the ") + what + " must be contiguous");
    }
    expected *= b.shape[d];
  }
}

// memcpy, without the interpreter lock when it is long enough to matter.
void CopyBytes(char* to, const char* from, size_t size) {
  if (size >= kReleaseGilAtLeast) {
    WithoutGil([&] {
      std::memcpy(to, from, size);
      return true;  // WithoutGil returns a value
    });
  } else if (size > 0) {
    std::memcpy(to, from, size);
  }
}

}  // namespace

void RegisterOwnedBuffer(py::module_& m) {
  py::class_<OwnedBuffer>(m, "OwnedBuffer", py::buffer_protocol())
      .def_buffer([](OwnedBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.size())}, {1}, /*readonly=*/false);
      })
      .def("__len__", &OwnedBuffer::size);
  m.def(
      "copy_buffer",
      [](const py::buffer& source) {
        py::buffer_info in = source.request();
        CheckContiguous(in, "source");
        const size_t size = static_cast<size_t>(in.size * in.itemsize);
        auto copy = std::make_unique<OwnedBuffer>(size);
        const char* from = static_cast<const char*>(in.ptr);
        char* to = copy->data();
        CopyBytes(to, from, size);
        return copy;
      },
      py::arg("source"),
      "A writable copy of SOURCE (any contiguous buffer) in memory of its own (from 32 MiB on "
      "mapped and populated in one call), copied with the interpreter lock released.");
  m.def(
      "copy_into",
      [](const py::buffer& destination, size_t offset, const py::buffer& source) {
        py::buffer_info out = destination.request(/*writable=*/true);
        py::buffer_info in = source.request();
        CheckContiguous(out, "destination");
        CheckContiguous(in, "source");
        const size_t size = static_cast<size_t>(in.size * in.itemsize);
        const size_t room = static_cast<size_t>(out.size * out.itemsize);
        if (offset > room || size > room - offset) {
          throw py::value_error("copy_into: " + std::to_string(size) + " bytes at offset " +
                                std::to_string(offset) + " do not fit in " + std::to_string(room));
        }
        char* to = static_cast<char*>(out.ptr) + offset;
        const char* from = static_cast<const char*>(in.ptr);
        CopyBytes(to, from, size);
        return size;
      },
      py::arg("destination"), py::arg("offset"), py::arg("source"),
      "Copies SOURCE into DESTINATION at OFFSET (both contiguous buffers), without the "
      "interpreter lock from 256 KiB on; returns the bytes copied.");
}

}  // namespace dragon::client
