// dragon_parsl._core.ShmChannel and ShmBarrier: the node's communication
// objects (common/shm_channel.h, common/shm_barrier.h) for Python.
#ifndef DRAGON_CLIENT_PYTHON_CHANNEL_BINDING_H_
#define DRAGON_CLIENT_PYTHON_CHANNEL_BINDING_H_

#include <pybind11/pybind11.h>

namespace dragon::client {

// Adds ShmChannel, ShmBarrier and the exceptions ChannelTimeout (a
// TimeoutError), ChannelClosed (an EOFError), ChannelPeerLost (a
// ConnectionError: the peer or the object's creator exited, or the object is
// gone) and BarrierBroken (a RuntimeError). Call after RegisterShmPool and
// RegisterOwnedBuffer: a full pool raises ShmPoolFull, and large messages are
// returned as OwnedBuffer.
void RegisterChannels(pybind11::module_& m);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_PYTHON_CHANNEL_BINDING_H_
