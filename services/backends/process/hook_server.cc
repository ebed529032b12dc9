#include "services/backends/process/hook_server.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "services/backends/process/hook_protocol.h"

namespace parley::services::process {

absl::StatusOr<Fd> Listen(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
  }
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Errno("socket");
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Errno(absl::StrCat("bind ", path));
  }
  if (listen(fd.get(), 64) != 0) return Errno("listen");
  return fd;
}

void HookServer::AddPollFds(std::vector<pollfd>& fds) {
  base_ = fds.size();
  fds.push_back({listener_.get(), POLLIN, 0});
  for (const Connection& c : conns_) {
    fds.push_back({c.fd.get(), static_cast<short>(c.replying ? POLLOUT : POLLIN), 0});
  }
}

void HookServer::Serve(const std::vector<pollfd>& fds) {
  for (size_t i = 0; i < conns_.size(); ++i) {
    const short revents = fds[base_ + 1 + i].revents;
    if (revents != 0) Step(conns_[i], revents);
  }
  std::erase_if(conns_, [](const Connection& c) { return !c.fd.valid(); });
  if (fds[base_].revents & POLLIN) Accept();
}

void HookServer::Accept() {
  while (true) {
    int fd = accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    Connection c;
    c.fd = Fd(fd);
    if (conns_.size() >= kMaxConnections) {
      StartReply(c, HookReply{false, "too many hook requests at once"});
      Step(c, POLLOUT);
      continue;  // a client that does not read its reply is dropped
    }
    conns_.push_back(std::move(c));
  }
}

void HookServer::StartReply(Connection& c, const HookReply& r) {
  c.replying = true;
  c.out = absl::StrCat(r.ok ? "0" : "1", r.text);
  c.written = 0;
}

void HookServer::Step(Connection& c, short revents) {
  if (!c.replying) {
    char buf[16384];
    while (true) {
      ssize_t n = read(c.fd.get(), buf, sizeof(buf));
      if (n > 0) {
        c.in.append(buf, n);
        if (c.in.size() > kMaxRequest) {
          StartReply(c,
                     HookReply{false, absl::StrCat("request larger than ", kMaxRequest, " bytes")});
          break;
        }
        continue;
      }
      if (n == 0) {
        auto args = DecodeHookRequest(c.in);
        StartReply(c, args.ok() ? HandleHookRequest(env_, *args)
                                : HookReply{false, std::string(args.status().message())});
        break;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      c.fd.Reset();
      return;
    }
  } else if (!(revents & (POLLOUT | POLLERR | POLLHUP))) {
    return;
  }
  while (c.written < c.out.size()) {
    ssize_t n = send(c.fd.get(), c.out.data() + c.written, c.out.size() - c.written, MSG_NOSIGNAL);
    if (n > 0) {
      c.written += n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    break;  // the client went away
  }
  c.fd.Reset();
}

}  // namespace parley::services::process
