// absl::Status <-> grpc::Status. The code numbers are the same by design.
#ifndef DRAGON_DAEMON_GRPC_STATUS_H_
#define DRAGON_DAEMON_GRPC_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace dragon::daemon {

inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_GRPC_STATUS_H_
