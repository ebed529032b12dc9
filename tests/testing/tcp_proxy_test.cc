// Tests of the fault-injection proxy (tests/testing/tcp_proxy.h) with real sockets: an echo
// server on 127.0.0.1:0 behind the proxy, and blocking clients that talk to it.

#include "tests/testing/tcp_proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace parley::testing {
namespace {

constexpr absl::Duration kPatience = absl::Seconds(10);     // for things that must happen
constexpr absl::Duration kStall = absl::Milliseconds(200);  // for things that must not

// An owned file descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    Reset();
    fd_ = std::exchange(other.fd_, -1);
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

int PollMillis(absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  return left <= absl::ZeroDuration() ? 0 : static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
}

bool SendAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(n);
  }
  return true;
}

// Reads exactly `n` bytes. DeadlineExceeded if they do not all arrive by the deadline,
// Unavailable if the connection ends first.
absl::StatusOr<std::string> ReadExactly(int fd, size_t n, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string out;
  char buffer[64 * 1024];
  while (out.size() < n) {
    pollfd pfd{fd, POLLIN, 0};
    const int ready = poll(&pfd, 1, PollMillis(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      return absl::DeadlineExceededError(absl::StrCat("read ", out.size(), " of ", n, " bytes"));
    }
    const ssize_t got = recv(fd, buffer, std::min(sizeof(buffer), n - out.size()), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      return absl::UnavailableError(absl::StrCat("connection ended after ", out.size(), " bytes"));
    }
    out.append(buffer, got);
  }
  return out;
}

// True once the peer has closed the connection (EOF or reset), false if it stays open until the
// deadline. Data that arrives meanwhile is skipped.
bool WaitForClosed(int fd, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  char buffer[4096];
  while (true) {
    pollfd pfd{fd, POLLIN, 0};
    const int ready = poll(&pfd, 1, PollMillis(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) return false;
    const ssize_t got = recv(fd, buffer, sizeof(buffer), 0);
    if (got == 0 || (got < 0 && errno != EINTR)) return true;
  }
}

// Polls `condition` until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout = kPatience) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

Fd ConnectTo(int port) {
  Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) fd.Reset();
  return fd;
}

// A socket bound to 127.0.0.1:0, listening or not. Connecting to one that is not listening is
// refused, which makes a port that is known to be dead.
Fd BoundSocket(bool listening, int* port) {
  Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      (listening && listen(fd.get(), 64) != 0) ||
      getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    fd.Reset();
  }
  *port = ntohs(addr.sin_port);
  return fd;
}

// Echoes every byte back on the connection it came from, until the client closes its side.
// One thread polls all connections; an eventfd stops it.
class EchoServer {
 public:
  EchoServer() : listen_(BoundSocket(true, &port_)), wake_(eventfd(0, EFD_CLOEXEC)) {
    thread_ = std::thread([this] { Run(); });
  }
  ~EchoServer() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wake_.get(), &one, sizeof(one));
    thread_.join();
  }

  bool ok() const { return listen_.get() >= 0 && wake_.get() >= 0; }
  int port() const { return port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  int accepted() const { return accepted_.load(); }
  int open() const { return open_.load(); }

 private:
  void Run() {
    std::vector<Fd> conns;
    char buffer[64 * 1024];
    while (true) {
      std::vector<pollfd> fds = {{wake_.get(), POLLIN, 0}, {listen_.get(), POLLIN, 0}};
      for (const Fd& c : conns) fds.push_back({c.get(), POLLIN, 0});
      if (poll(fds.data(), fds.size(), -1) < 0) continue;
      if (fds[0].revents != 0) return;
      for (size_t i = 0; i < conns.size(); ++i) {
        if (fds[2 + i].revents == 0) continue;
        const ssize_t n = recv(conns[i].get(), buffer, sizeof(buffer), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || !SendEchoed(conns[i].get(), absl::string_view(buffer, n))) conns[i].Reset();
      }
      std::erase_if(conns, [](const Fd& c) { return c.get() < 0; });
      if (fds[1].revents != 0) {
        Fd conn(accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (conn.get() >= 0) {
          ++accepted_;
          conns.push_back(std::move(conn));
        }
      }
      open_ = static_cast<int>(conns.size());
    }
  }

  // Blocks until sent, unless the server is told to stop meanwhile.
  bool SendEchoed(int fd, absl::string_view data) {
    while (!data.empty()) {
      pollfd fds[2] = {{fd, POLLOUT, 0}, {wake_.get(), POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) continue;
      if (fds[1].revents != 0) return false;
      const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) return false;
      data.remove_prefix(n);
    }
    return true;
  }

  int port_ = 0;
  Fd listen_;
  Fd wake_;
  std::atomic<int> accepted_{0};
  std::atomic<int> open_{0};
  std::thread thread_;
};

// Sends `message` on `fd` and expects it back within kPatience.
void ExpectRoundTrip(int fd, const std::string& message) {
  ASSERT_TRUE(SendAll(fd, message));
  absl::StatusOr<std::string> echoed = ReadExactly(fd, message.size(), kPatience);
  ASSERT_TRUE(echoed.ok()) << echoed.status();
  EXPECT_EQ(*echoed, message);
}

class TcpProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(echo_.ok());
    absl::StatusOr<std::unique_ptr<TcpProxy>> proxy = TcpProxy::Start(echo_.address());
    ASSERT_TRUE(proxy.ok()) << proxy.status();
    proxy_ = std::move(*proxy);
  }

  Fd Connect() { return ConnectTo(proxy_->port()); }

  EchoServer echo_;
  std::unique_ptr<TcpProxy> proxy_;
};

TEST_F(TcpProxyTest, EchoesThroughTheProxyAndCounts) {
  EXPECT_NE(proxy_->port(), 0);
  EXPECT_EQ(proxy_->address(), absl::StrCat("127.0.0.1:", proxy_->port()));
  Fd client = Connect();
  ASSERT_GE(client.get(), 0);
  ExpectRoundTrip(client.get(), "hello");
  ExpectRoundTrip(client.get(), "again");
  EXPECT_EQ(proxy_->connections_accepted(), 1);
  EXPECT_EQ(proxy_->open_connections(), 1);
  // The loop counts a write after send() returns, so the counter may trail the echo a moment.
  EXPECT_TRUE(WaitFor([&] { return proxy_->bytes_forwarded() == 20; }))  // 10 bytes each way
      << proxy_->bytes_forwarded();
  EXPECT_EQ(proxy_->bytes_discarded(), 0u);
  EXPECT_EQ(echo_.accepted(), 1);

  client.Reset();
  EXPECT_TRUE(WaitFor([&] { return proxy_->open_connections() == 0; }));
  EXPECT_TRUE(WaitFor([&] { return echo_.open() == 0; }));
  EXPECT_EQ(proxy_->connections_accepted(), 1);
}

TEST_F(TcpProxyTest, CarriesLargeConcurrentStreamsIntact) {
  // Several connections share the loop, each carrying far more than the proxy's buffers in both
  // directions at once, so every side has to wait for the others.
  constexpr size_t kSize = 8 << 20;
  constexpr int kConnections = 3;
  std::string payload(kSize, '\0');
  for (size_t i = 0; i < kSize; ++i) payload[i] = static_cast<char>((i * 7919) >> 3);

  // Each connection gets its own writer and reader: the echo server serves one connection at a
  // time and blocks on one whose client is not reading.
  std::vector<Fd> clients;
  std::vector<std::thread> writers;
  std::vector<std::thread> readers;
  std::vector<absl::StatusOr<std::string>> echoed(kConnections, std::string());
  for (int i = 0; i < kConnections; ++i) {
    clients.push_back(Connect());
    ASSERT_GE(clients.back().get(), 0);
  }
  for (int i = 0; i < kConnections; ++i) {
    const int fd = clients[i].get();
    writers.emplace_back([&, fd] { EXPECT_TRUE(SendAll(fd, payload)); });
    readers.emplace_back([&, fd, i] { echoed[i] = ReadExactly(fd, kSize, kPatience); });
  }
  for (std::thread& t : readers) t.join();
  for (int i = 0; i < kConnections; ++i) {
    if (!echoed[i].ok()) shutdown(clients[i].get(), SHUT_RDWR);  // unblocks its writer
  }
  for (std::thread& t : writers) t.join();
  for (int i = 0; i < kConnections; ++i) {
    ASSERT_TRUE(echoed[i].ok()) << "connection " << i << ": " << echoed[i].status();
    EXPECT_TRUE(*echoed[i] == payload) << "connection " << i << " corrupted the stream";
  }
  EXPECT_TRUE(WaitFor([&] { return proxy_->bytes_forwarded() == 2u * kSize * kConnections; }))
      << proxy_->bytes_forwarded();
  EXPECT_EQ(proxy_->open_connections(), kConnections);
}

TEST_F(TcpProxyTest, SurvivesASlowReaderWithATinyWindow) {
  // A small receive buffer read in small pieces keeps the proxy's socket to the client nearly
  // full, so its sends come back short and it must resume from where each one stopped. The
  // kernel grows send buffers to megabytes, hence a payload that outlasts all of them.
  constexpr size_t kSize = 32 << 20;
  std::string payload(kSize, '\0');
  for (size_t i = 0; i < kSize; ++i) payload[i] = static_cast<char>(i * 131 + (i >> 11));
  Fd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const int small = 4096;
  ASSERT_EQ(setsockopt(client.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(proxy_->port());
  ASSERT_EQ(connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);

  std::thread writer([&] { EXPECT_TRUE(SendAll(client.get(), payload)); });
  std::string echoed;
  absl::Status status;
  while (status.ok() && echoed.size() < kSize) {
    absl::StatusOr<std::string> piece =
        ReadExactly(client.get(), std::min<size_t>(700, kSize - echoed.size()), kPatience);
    status = piece.status();
    if (piece.ok()) echoed += *piece;
  }
  if (!status.ok()) shutdown(client.get(), SHUT_RDWR);  // unblocks the writer
  writer.join();
  ASSERT_TRUE(status.ok()) << status << " after " << echoed.size() << " bytes";
  EXPECT_TRUE(echoed == payload) << "the stream was corrupted";
}

TEST_F(TcpProxyTest, PassesHalfCloseOn) {
  Fd client = Connect();
  ASSERT_GE(client.get(), 0);
  ASSERT_TRUE(SendAll(client.get(), "last words"));
  ASSERT_EQ(shutdown(client.get(), SHUT_WR), 0);
  // The echo server only closes once it reads EOF, so its reply and then EOF prove the FIN
  // crossed the proxy while the other direction stayed open.
  absl::StatusOr<std::string> echoed = ReadExactly(client.get(), 10, kPatience);
  ASSERT_TRUE(echoed.ok()) << echoed.status();
  EXPECT_EQ(*echoed, "last words");
  EXPECT_TRUE(WaitForClosed(client.get(), kPatience));
  EXPECT_TRUE(WaitFor([&] { return proxy_->open_connections() == 0; }));
}

TEST_F(TcpProxyTest, DropConnectionsClosesBothSidesAndKeepsAccepting) {
  Fd first = Connect();
  Fd second = Connect();
  ASSERT_GE(first.get(), 0);
  ASSERT_GE(second.get(), 0);
  ExpectRoundTrip(first.get(), "one");
  ExpectRoundTrip(second.get(), "two");
  ASSERT_EQ(echo_.open(), 2);

  proxy_->DropConnections();
  EXPECT_EQ(proxy_->open_connections(), 0);  // synchronous: already closed on return
  EXPECT_TRUE(WaitForClosed(first.get(), kPatience));
  EXPECT_TRUE(WaitForClosed(second.get(), kPatience));
  EXPECT_TRUE(WaitFor([&] { return echo_.open() == 0; }));

  Fd third = Connect();
  ASSERT_GE(third.get(), 0);
  ExpectRoundTrip(third.get(), "three");
  EXPECT_EQ(proxy_->connections_accepted(), 3);
  EXPECT_EQ(proxy_->open_connections(), 1);
  EXPECT_EQ(echo_.accepted(), 3);
}

TEST_F(TcpProxyTest, BlackholeStallsTrafficUntilHealAndCutsDamagedConnections) {
  Fd talker = Connect();  // will lose bytes in the blackhole
  Fd idle = Connect();    // will not
  ASSERT_GE(talker.get(), 0);
  ASSERT_GE(idle.get(), 0);
  ExpectRoundTrip(talker.get(), "before");
  ExpectRoundTrip(idle.get(), "before");
  ASSERT_TRUE(WaitFor([&] { return proxy_->bytes_forwarded() == 24; }));  // 2 x 6 bytes x 2 ways

  proxy_->Blackhole();
  ASSERT_TRUE(SendAll(talker.get(), "lost"));
  ASSERT_TRUE(WaitFor([&] { return proxy_->bytes_discarded() == 4; }));
  // Neither an echo nor an EOF: DeadlineExceeded, not Unavailable.
  EXPECT_TRUE(absl::IsDeadlineExceeded(ReadExactly(talker.get(), 4, kStall).status()));
  EXPECT_EQ(proxy_->bytes_forwarded(), 24u);
  EXPECT_EQ(proxy_->open_connections(), 2);

  // A connection made during the blackhole is accepted but gets nowhere.
  Fd newcomer = Connect();
  ASSERT_GE(newcomer.get(), 0);
  ASSERT_TRUE(SendAll(newcomer.get(), "hello?"));
  ASSERT_TRUE(WaitFor([&] { return proxy_->bytes_discarded() == 10; }));
  EXPECT_TRUE(absl::IsDeadlineExceeded(ReadExactly(newcomer.get(), 6, kStall).status()));
  EXPECT_EQ(proxy_->connections_accepted(), 3);
  EXPECT_EQ(echo_.accepted(), 2);

  proxy_->Heal();
  // Connections that lost bytes are cut; the untouched one carries on.
  EXPECT_TRUE(WaitForClosed(talker.get(), kPatience));
  EXPECT_TRUE(WaitForClosed(newcomer.get(), kPatience));
  EXPECT_EQ(proxy_->open_connections(), 1);
  ExpectRoundTrip(idle.get(), "after");

  Fd fresh = Connect();
  ASSERT_GE(fresh.get(), 0);
  ExpectRoundTrip(fresh.get(), "fresh");
  EXPECT_EQ(echo_.accepted(), 3);
}

TEST_F(TcpProxyTest, HealConnectsQuietConnectionsAcceptedDuringBlackhole) {
  proxy_->Blackhole();
  Fd waiting = Connect();
  ASSERT_GE(waiting.get(), 0);
  ASSERT_TRUE(WaitFor([&] { return proxy_->connections_accepted() == 1; }));
  EXPECT_EQ(echo_.accepted(), 0);

  proxy_->Heal();
  ExpectRoundTrip(waiting.get(), "late but whole");
  EXPECT_EQ(echo_.accepted(), 1);
}

TEST_F(TcpProxyTest, DropConnectionsCutsDuringBlackholeToo) {
  Fd client = Connect();
  ASSERT_GE(client.get(), 0);
  proxy_->Blackhole();
  proxy_->DropConnections();  // faults compose: a cut during a blackhole still cuts
  EXPECT_TRUE(WaitForClosed(client.get(), kPatience));
  proxy_->Heal();
  Fd again = Connect();
  ASSERT_GE(again.get(), 0);
  ExpectRoundTrip(again.get(), "ok");
}

TEST_F(TcpProxyTest, SetUpstreamRedirectsNewConnectionsOnly) {
  Fd old_peer = Connect();
  ASSERT_GE(old_peer.get(), 0);
  ExpectRoundTrip(old_peer.get(), "to A");

  EchoServer restarted;
  ASSERT_TRUE(restarted.ok());
  proxy_->SetUpstream(restarted.address());
  Fd new_peer = Connect();
  ASSERT_GE(new_peer.get(), 0);
  ExpectRoundTrip(new_peer.get(), "to B");
  ExpectRoundTrip(old_peer.get(), "still A");

  EXPECT_EQ(echo_.accepted(), 1);
  EXPECT_EQ(restarted.accepted(), 1);
  EXPECT_EQ(proxy_->connections_accepted(), 2);
  EXPECT_EQ(proxy_->open_connections(), 2);
}

TEST_F(TcpProxyTest, UnreachableUpstreamClosesTheClient) {
  int dead_port = 0;
  Fd not_listening = BoundSocket(false, &dead_port);
  ASSERT_GE(not_listening.get(), 0);
  proxy_->SetUpstream(absl::StrCat("127.0.0.1:", dead_port));
  Fd client = Connect();
  ASSERT_GE(client.get(), 0);
  EXPECT_TRUE(WaitForClosed(client.get(), kPatience));
  EXPECT_TRUE(WaitFor([&] { return proxy_->open_connections() == 0; }));

  proxy_->SetUpstream("localhost:" + std::to_string(echo_.port()));  // by name works too
  Fd retry = Connect();
  ASSERT_GE(retry.get(), 0);
  ExpectRoundTrip(retry.get(), "back");
}

TEST_F(TcpProxyTest, DestructionClosesOpenConnections) {
  Fd client = Connect();
  ASSERT_GE(client.get(), 0);
  ExpectRoundTrip(client.get(), "bye");
  proxy_.reset();
  EXPECT_TRUE(WaitForClosed(client.get(), kPatience));
  EXPECT_TRUE(WaitFor([&] { return echo_.open() == 0; }));
}

TEST(TcpProxyStartTest, RejectsMalformedUpstream) {
  for (const char* bad : {"", "nohost", ":80", "host:", "host:http", "host:0", "host:70000"}) {
    absl::StatusOr<std::unique_ptr<TcpProxy>> proxy = TcpProxy::Start(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(proxy.status())) << "'" << bad << "': " << proxy.status();
  }
  EXPECT_TRUE(TcpProxy::Start("[::1]:1").ok());
}

}  // namespace
}  // namespace parley::testing
