#include "daemon/listen_address.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/host.h"

namespace dragon::daemon {
namespace {

bool IsIpLiteral(const std::string& text) {
  in_addr v4;
  in6_addr v6;
  return inet_pton(AF_INET, text.c_str(), &v4) == 1 || inet_pton(AF_INET6, text.c_str(), &v6) == 1;
}

bool IsLoopback(const std::string& ip) { return absl::StartsWith(ip, "127.") || ip == "::1"; }

// The first IPv4 address `host` resolves to.
absl::StatusOr<std::string> Resolve(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.c_str(), nullptr, &hints, &found); rc != 0 || found == nullptr) {
    return absl::NotFoundError(absl::StrCat("'", host, "' does not resolve: ", gai_strerror(rc)));
  }
  char buf[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr, buf, sizeof(buf));
  freeaddrinfo(found);
  return std::string(buf);
}

}  // namespace

absl::StatusOr<std::string> InterfaceAddress(const std::string& name) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return absl::InternalError("getifaddrs failed");
  std::string address;
  for (ifaddrs* p = list; p != nullptr; p = p->ifa_next) {
    if (p->ifa_addr == nullptr || p->ifa_addr->sa_family != AF_INET || name != p->ifa_name) continue;
    char buf[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(p->ifa_addr)->sin_addr, buf, sizeof(buf));
    address = buf;
    break;
  }
  freeifaddrs(list);
  if (address.empty()) return absl::NotFoundError(absl::StrCat("no interface '", name, "' with an IPv4 address"));
  return address;
}

absl::StatusOr<std::string> SourceAddressToward(const std::string& host) {
  absl::StatusOr<std::string> ip = Resolve(host);
  if (!ip.ok()) return ip.status();
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_port = htons(9);
  inet_pton(AF_INET, ip->c_str(), &peer.sin_addr);
  // connect() on a UDP socket only picks the route and source: nothing is sent.
  if (connect(fd, reinterpret_cast<sockaddr*>(&peer), sizeof(peer)) != 0) {
    const std::string err = strerror(errno);
    close(fd);
    return absl::UnavailableError(absl::StrCat("no route to ", host, " (", *ip, "): ", err));
  }
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len);
  close(fd);
  char buf[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &local.sin_addr, buf, sizeof(buf));
  return std::string(buf);
}

absl::StatusOr<ListenPlan> PlanListen(const std::string& listen, bool remote,
                                      const std::vector<std::string>& peers) {
  if (listen.empty() && !remote) return ListenPlan{"127.0.0.1", "127.0.0.1"};
  if (!listen.empty() && listen != "0.0.0.0" && listen != "::" && listen != "[::]") {
    if (IsIpLiteral(listen)) return ListenPlan{listen, listen};
    if (absl::StatusOr<std::string> ip = InterfaceAddress(listen); ip.ok()) {
      return ListenPlan{*ip, *ip};
    }
    absl::StatusOr<std::string> ip = Resolve(listen);
    if (!ip.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--listen '", listen, "' is neither an address, an interface of this host, nor a "
          "host name that resolves"));
    }
    return ListenPlan{*ip, listen};
  }
  // Every interface: advertise what the agents' nodes can reach.
  ListenPlan plan{listen.empty() ? "0.0.0.0" : listen, ""};
  for (const std::string& peer : peers) {
    absl::StatusOr<std::string> source = SourceAddressToward(peer);
    if (source.ok() && !IsLoopback(*source)) {
      plan.advertise_host = *source;
      return plan;
    }
  }
  const std::string host = common::Hostname();
  if (absl::StatusOr<std::string> ip = Resolve(host); ip.ok() && !IsLoopback(*ip)) {
    plan.advertise_host = host;
    return plan;
  }
  if (!remote) {
    plan.advertise_host = host;  // listening everywhere by request; local agents dial it
    return plan;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "cannot tell which address agents on other nodes can reach: this host's name '", host,
      "' resolves to a loopback address and no route to their nodes was found; give "
      "--listen ADDRESS or --listen INTERFACE (e.g. --listen ib0)"));
}

}  // namespace dragon::daemon
