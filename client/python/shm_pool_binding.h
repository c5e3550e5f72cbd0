// dragon_parsl._core.ShmPool: the node's shared-memory pool (common/shm_pool.h)
// for Python: workers and a client on the node attach it by path, allocate,
// and read and write blocks in place through the buffer protocol.
#ifndef DRAGON_CLIENT_PYTHON_SHM_POOL_BINDING_H_
#define DRAGON_CLIENT_PYTHON_SHM_POOL_BINDING_H_

#include <pybind11/pybind11.h>

#include <memory>

#include "common/shm_pool.h"

namespace dragon::client {

// Adds ShmPool, ShmBlock and the exceptions ShmPoolError (a RuntimeError),
// ShmPoolFull (no space, after waiting) and ShmBlockError (a reference that is
// malformed, stale or out of range) to `m`.
void RegisterShmPool(pybind11::module_& m);

// The pool a _core.ShmPool object holds, shared: an object built on it (a
// channel) keeps the mapping alive after the ShmPool is closed. TypeError if
// `pool` is not a ShmPool, ShmPoolError if it is closed.
std::shared_ptr<common::ShmPool> SharedPool(pybind11::handle pool);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_PYTHON_SHM_POOL_BINDING_H_
