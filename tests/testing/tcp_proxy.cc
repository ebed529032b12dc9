#include "tests/testing/tcp_proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace parley::testing {
namespace {

struct HostPort {
  std::string host;
  std::string port;
};

absl::StatusOr<HostPort> ParseHostPort(absl::string_view address) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("upstream '", address, "' is not host:port"));
  }
  absl::string_view host = address.substr(0, colon);
  const absl::string_view port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port_number = 0;
  const bool all_digits =
      !port.empty() && std::all_of(port.begin(), port.end(), absl::ascii_isdigit);
  if (host.empty() || !all_digits || !absl::SimpleAtoi(port, &port_number) || port_number < 1 ||
      port_number > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("upstream '", address, "' is not host:port"));
  }
  return HostPort{std::string(host), std::string(port)};
}

absl::Status Errno(absl::string_view what) { return absl::ErrnoToStatus(errno, what); }

void SetNoDelay(int fd) {
  // gRPC writes small frames and waits for the reply; Nagle would add latency to every one.
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

bool WouldBlock(int error) { return error == EAGAIN || error == EWOULDBLOCK || error == EINTR; }

}  // namespace

// One direction of a connection: bytes read from the source and not yet written to the
// destination. It is refilled only once empty, which keeps the bookkeeping to two offsets.
struct TcpProxy::Direction {
  std::unique_ptr<char[]> buffer = std::make_unique<char[]>(kBufferSize);
  size_t begin = 0;
  size_t end = 0;
  bool eof = false;        // the source shut down its sending side
  bool shut_down = false;  // ... and that was passed on to the destination

  bool empty() const { return begin == end; }
  bool done() const { return eof && shut_down; }
};

struct TcpProxy::Connection {
  enum class State { kUnforwarded, kConnecting, kOpen, kClosed };

  State state = State::kUnforwarded;
  int client = -1;
  int upstream = -1;
  // Candidate upstream addresses, tried in order until one connects.
  std::vector<std::pair<sockaddr_storage, socklen_t>> addresses;
  size_t next_address = 0;
  Direction to_upstream;
  Direction to_client;
  bool discarded = false;  // the blackhole dropped some of this connection's bytes
};

struct TcpProxy::Commands {
  bool stop = false;
  bool blackholed = false;
  uint64_t drops = 0;
  uint64_t ticket = 0;
};

absl::StatusOr<std::unique_ptr<TcpProxy>> TcpProxy::Start(std::string upstream) {
  if (absl::StatusOr<HostPort> parsed = ParseHostPort(upstream); !parsed.ok()) {
    return parsed.status();
  }
  const int listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd < 0) return Errno("TcpProxy: socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(listen_fd, 128) != 0 ||
      getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    absl::Status status = Errno("TcpProxy: listen on 127.0.0.1:0");
    close(listen_fd);
    return status;
  }
  const int wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd < 0) {
    absl::Status status = Errno("TcpProxy: eventfd");
    close(listen_fd);
    return status;
  }
  std::unique_ptr<TcpProxy> proxy(
      new TcpProxy(listen_fd, wake_fd, ntohs(addr.sin_port), std::move(upstream)));
  proxy->thread_ = std::thread([p = proxy.get()] { p->Loop(); });
  return proxy;
}

TcpProxy::TcpProxy(int listen_fd, int wake_fd, int port, std::string upstream)
    : listen_fd_(listen_fd), wake_fd_(wake_fd), port_(port), upstream_(std::move(upstream)) {}

TcpProxy::~TcpProxy() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    Wake();
  }
  thread_.join();
  for (auto& conn : connections_) CloseConnection(*conn);
  close(listen_fd_);
  close(wake_fd_);
}

std::string TcpProxy::address() const { return absl::StrCat("127.0.0.1:", port_); }

void TcpProxy::SetUpstream(std::string upstream) {
  absl::MutexLock lock(&mu_);
  upstream_ = std::move(upstream);
}

void TcpProxy::DropConnections() {
  absl::MutexLock lock(&mu_);
  ++drops_requested_;
  ApplyLocked();
}

void TcpProxy::Blackhole() {
  absl::MutexLock lock(&mu_);
  blackholed_ = true;
  ApplyLocked();
}

void TcpProxy::Heal() {
  absl::MutexLock lock(&mu_);
  blackholed_ = false;
  ApplyLocked();
}

void TcpProxy::ApplyLocked() {
  const uint64_t ticket = ++commands_requested_;
  Wake();
  auto applied = [this, ticket]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return commands_applied_ >= ticket || loop_exited_;
  };
  mu_.Await(absl::Condition(&applied));
}

void TcpProxy::Wake() {
  const uint64_t one = 1;
  // Cannot fail short of a closed fd: the counter would need 2^64 unread wake-ups to fill.
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
}

void TcpProxy::Loop() {
  std::vector<pollfd> fds;
  while (true) {
    const Commands commands = TakeCommands();
    if (commands.stop) break;
    ApplyCommands(commands);

    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    for (const auto& conn : connections_) {
      short client_events = 0;
      short upstream_events = 0;
      const bool forwarding = conn->state == Connection::State::kOpen && !loop_blackholed_;
      // While blackholed, keep reading so that the bytes are discarded rather than queued.
      if (!conn->to_upstream.eof && (conn->to_upstream.empty() || loop_blackholed_)) {
        client_events |= POLLIN;
      }
      if (conn->state == Connection::State::kConnecting) upstream_events |= POLLOUT;
      if (conn->state == Connection::State::kOpen && !conn->to_client.eof &&
          (conn->to_client.empty() || loop_blackholed_)) {
        upstream_events |= POLLIN;
      }
      if (forwarding && !conn->to_client.empty()) client_events |= POLLOUT;
      if (forwarding && !conn->to_upstream.empty()) upstream_events |= POLLOUT;
      // A socket we wait on for nothing stays out of the set: a hung-up peer would otherwise
      // report POLLHUP on every turn and spin the loop until the other side catches up.
      fds.push_back({client_events != 0 ? conn->client : -1, client_events, 0});
      fds.push_back({upstream_events != 0 ? conn->upstream : -1, upstream_events, 0});
    }

    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;  // Only a bad argument fails poll; the callers are released below.
    }
    if (fds[0].revents != 0) {
      uint64_t count;
      [[maybe_unused]] ssize_t n = read(wake_fd_, &count, sizeof(count));
    }
    const size_t polled = (fds.size() - 2) / 2;
    for (size_t i = 0; i < polled; ++i) {
      Service(*connections_[i], fds[2 + 2 * i].revents, fds[3 + 2 * i].revents);
    }
    if (fds[1].revents != 0) AcceptAll();
    RemoveClosed();
  }
  absl::MutexLock lock(&mu_);
  loop_exited_ = true;
}

TcpProxy::Commands TcpProxy::TakeCommands() {
  absl::MutexLock lock(&mu_);
  return Commands{.stop = stopping_,
                  .blackholed = blackholed_,
                  .drops = drops_requested_,
                  .ticket = commands_requested_};
}

void TcpProxy::ApplyCommands(const Commands& commands) {
  if (commands.drops != drops_applied_) {
    drops_applied_ = commands.drops;
    for (auto& conn : connections_) CloseConnection(*conn);
  }
  if (commands.blackholed && !loop_blackholed_) {
    loop_blackholed_ = true;
  } else if (!commands.blackholed && loop_blackholed_) {
    loop_blackholed_ = false;
    for (auto& conn : connections_) {
      if (conn->state == Connection::State::kClosed) continue;
      if (conn->discarded) {
        CloseConnection(*conn);
      } else if (conn->state == Connection::State::kUnforwarded) {
        ConnectUpstream(*conn);
      }
    }
  }
  RemoveClosed();
  absl::MutexLock lock(&mu_);
  commands_applied_ = commands.ticket;
}

void TcpProxy::AcceptAll() {
  while (true) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // EAGAIN: drained. Out of fds: the backlog waits for the next turn.
    }
    ++connections_accepted_;
    if (connections_.size() >= kMaxConnections) {
      close(fd);
      continue;
    }
    SetNoDelay(fd);
    auto conn = std::make_unique<Connection>();
    conn->client = fd;
    if (!loop_blackholed_) ConnectUpstream(*conn);
    connections_.push_back(std::move(conn));
  }
}

void TcpProxy::ConnectUpstream(Connection& conn) {
  std::string upstream;
  {
    absl::MutexLock lock(&mu_);
    upstream = upstream_;
  }
  absl::StatusOr<HostPort> parsed = ParseHostPort(upstream);
  if (!parsed.ok()) {
    CloseConnection(conn);
    return;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* results = nullptr;
  if (getaddrinfo(parsed->host.c_str(), parsed->port.c_str(), &hints, &results) != 0) {
    CloseConnection(conn);
    return;
  }
  conn.addresses.clear();
  conn.next_address = 0;
  for (addrinfo* ai = results; ai != nullptr; ai = ai->ai_next) {
    sockaddr_storage storage{};
    std::memcpy(&storage, ai->ai_addr, ai->ai_addrlen);
    conn.addresses.emplace_back(storage, ai->ai_addrlen);
  }
  freeaddrinfo(results);
  TryNextAddress(conn);
}

void TcpProxy::TryNextAddress(Connection& conn) {
  while (conn.next_address < conn.addresses.size()) {
    const auto& [address, length] = conn.addresses[conn.next_address++];
    const int fd = socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    SetNoDelay(fd);
    if (connect(fd, reinterpret_cast<const sockaddr*>(&address), length) == 0) {
      conn.upstream = fd;
      conn.state = Connection::State::kOpen;
      return;
    }
    if (errno == EINPROGRESS) {
      conn.upstream = fd;
      conn.state = Connection::State::kConnecting;
      return;
    }
    close(fd);
  }
  CloseConnection(conn);
}

void TcpProxy::FinishConnect(Connection& conn) {
  int error = 0;
  socklen_t len = sizeof(error);
  if (getsockopt(conn.upstream, SOL_SOCKET, SO_ERROR, &error, &len) != 0) error = errno;
  if (error == 0) {
    conn.state = Connection::State::kOpen;
    return;
  }
  close(conn.upstream);
  conn.upstream = -1;
  TryNextAddress(conn);
}

void TcpProxy::Service(Connection& conn, short client_events, short upstream_events) {
  if (conn.state == Connection::State::kClosed) return;
  if (conn.state == Connection::State::kConnecting) {
    if (upstream_events == 0) {
      // Still connecting; the client may have sent bytes ahead or hung up meanwhile.
      Pump(conn, conn.to_upstream, conn.client, conn.upstream, client_events, 0);
      return;
    }
    FinishConnect(conn);
    if (conn.state != Connection::State::kOpen) return;
  }
  Pump(conn, conn.to_upstream, conn.client, conn.upstream, client_events, upstream_events);
  Pump(conn, conn.to_client, conn.upstream, conn.client, upstream_events, client_events);
  if (conn.to_upstream.done() && conn.to_client.done()) CloseConnection(conn);
}

void TcpProxy::Pump(Connection& conn, Direction& dir, int from, int to, short from_events,
                    short to_events) {
  if (conn.state == Connection::State::kClosed) return;
  bool read_now = false;
  if ((from_events & (POLLIN | POLLHUP | POLLERR)) != 0 && !dir.eof &&
      (dir.empty() || loop_blackholed_)) {
    // While blackholed, bytes go to a sink and are forgotten; any held output stays put.
    char sink[16 * 1024];
    if (!loop_blackholed_) dir.begin = dir.end = 0;
    char* into = loop_blackholed_ ? sink : dir.buffer.get();
    const size_t room = loop_blackholed_ ? sizeof(sink) : kBufferSize;
    const ssize_t n = recv(from, into, room, 0);
    if (n == 0) {
      dir.eof = true;
    } else if (n < 0 && !WouldBlock(errno)) {
      CloseConnection(conn);
      return;
    } else if (n > 0 && loop_blackholed_) {
      conn.discarded = true;
      bytes_discarded_ += n;
    } else if (n > 0) {
      dir.end = n;
      read_now = true;
    }
  }
  if (conn.state != Connection::State::kOpen || loop_blackholed_) return;
  if (!dir.empty() && (read_now || to_events != 0)) {
    const ssize_t n = send(to, dir.buffer.get() + dir.begin, dir.end - dir.begin, MSG_NOSIGNAL);
    if (n < 0 && !WouldBlock(errno)) {
      CloseConnection(conn);
      return;
    }
    if (n > 0) {
      dir.begin += n;
      bytes_forwarded_ += n;
      if (dir.empty()) dir.begin = dir.end = 0;
    }
  }
  if (dir.empty() && dir.eof && !dir.shut_down) {
    shutdown(to, SHUT_WR);
    dir.shut_down = true;
  }
}

void TcpProxy::CloseConnection(Connection& conn) {
  if (conn.client >= 0) close(conn.client);
  if (conn.upstream >= 0) close(conn.upstream);
  conn.client = conn.upstream = -1;
  conn.state = Connection::State::kClosed;
}

void TcpProxy::RemoveClosed() {
  std::erase_if(connections_,
                [](const auto& conn) { return conn->state == Connection::State::kClosed; });
  open_connections_ = static_cast<int>(connections_.size());
}

}  // namespace parley::testing
