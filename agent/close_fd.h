// Closing a descriptor that may be open, shared by the MPI launcher's parts.
#ifndef DRAGON_AGENT_CLOSE_FD_H_
#define DRAGON_AGENT_CLOSE_FD_H_

#include <unistd.h>

namespace dragon::agent {

// Closes *fd if it is open (>= 0) and sets it to -1, so that closing twice
// cannot close a descriptor that was reused in between.
inline void CloseFd(int* fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_CLOSE_FD_H_
