// A copy of a buffer in memory of its own, for results read out of the
// shared-memory pool (dragon_parsl.shm_pool_path): the pool block is freed at
// once and the value keeps the copy for as long as it lives.
//
// Why not a bytearray: from 32 MiB on, malloc maps fresh memory for every
// copy, which the copy then faults in 4 KiB at a time (64 MiB: 16,384 faults).
// This buffer maps its memory populated in one call (MADV_POPULATE_WRITE), and
// copies with the interpreter lock released.
#ifndef DRAGON_CLIENT_PYTHON_OWNED_BUFFER_H_
#define DRAGON_CLIENT_PYTHON_OWNED_BUFFER_H_

#include <pybind11/pybind11.h>

namespace dragon::client {

// Registers _core.OwnedBuffer, _core.copy_buffer(src) -> OwnedBuffer and
// _core.copy_into(dst, offset, src): copies without the interpreter lock.
void RegisterOwnedBuffer(pybind11::module_& m);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_PYTHON_OWNED_BUFFER_H_
