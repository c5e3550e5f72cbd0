#include "daemon/stop_command.h"

#include <errno.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/host.h"
#include "common/transport.h"
#include "proto/head.grpc.pb.h"

namespace dragon::daemon {
namespace {

// Gone, or a zombie waiting for whoever adopted it to reap it.
bool ProcessGone(pid_t pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  FILE* f = fopen(absl::StrCat("/proc/", pid, "/stat").c_str(), "r");
  if (f == nullptr) return true;
  char buf[512] = {0};
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  std::string stat(buf, n);
  size_t paren = stat.rfind(") ");
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

grpc::Status Call(dragon::v1::HeadService::Stub* stub, absl::Duration timeout,
                  dragon::v1::StatusReply* status) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  return stub->Status(&ctx, dragon::v1::StatusRequest(), status);
}

}  // namespace

int Stop(const StopOptions& options) {
  auto location = common::LocateHead(options.locate);
  if (!location.ok()) {
    std::cerr << "dragond: " << location.status().message() << std::endl;
    return 1;
  }
  common::ClientTransport transport;
  transport.token = location->token;
  transport.tls_ca = location->tls_ca;
  auto channel = common::MakeChannel(location->address, transport);
  if (!channel.ok()) {
    std::cerr << "dragond: " << channel.status().message() << std::endl;
    return 1;
  }
  auto stub = dragon::v1::HeadService::NewStub(*channel);
  // Learn the pid first so we can wait for the process itself to be gone.
  dragon::v1::StatusReply status;
  if (grpc::Status st = Call(stub.get(), absl::Seconds(10), &status); !st.ok()) {
    if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
      std::cerr << "dragond: the head at " << location->address << " refused to stop: "
                << st.error_message() << " (this command's token: " << location->token_source
                << ")" << std::endl;
    } else {
      std::cerr << "dragond: cannot reach dragond at " << location->address << " (from "
                << location->source << "): " << st.error_message() << std::endl;
    }
    return 1;
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    dragon::v1::ShutdownReply reply;
    grpc::Status st = stub->Shutdown(&ctx, dragon::v1::ShutdownRequest(), &reply);
    if (!st.ok()) {
      std::cerr << "dragond: Shutdown of " << location->address
                << " failed: " << st.error_message() << std::endl;
      return 1;
    }
  }
  const pid_t pid = status.pid();
  const std::string host = status.address().substr(0, status.address().rfind(':'));
  const bool same_host = status.address().empty() || host == common::Hostname() ||
                         absl::StartsWith(host, "127.") || host == "localhost";
  const absl::Time deadline = absl::Now() + options.timeout;
  while (absl::Now() < deadline) {
    // A head on another host is gone once it stops answering.
    dragon::v1::StatusReply ignored;
    const bool gone = same_host ? ProcessGone(pid) : !Call(stub.get(), absl::Seconds(1), &ignored).ok();
    if (gone) {
      std::cout << "dragond: stopped head " << status.run_id() << " at " << location->address
                << std::endl;
      return 0;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  std::cerr << "dragond: head " << location->address << " (pid " << pid
            << ") did not exit within " << absl::FormatDuration(options.timeout) << "; see "
            << status.run_dir() << "/dragond.log" << std::endl;
  return 1;
}

}  // namespace dragon::daemon
