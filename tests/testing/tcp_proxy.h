#pragma once

// A TCP proxy for tests that inject network faults between two real endpoints (a gRPC client
// and server, two agents). It listens on 127.0.0.1:0 and forwards every accepted connection to an
// upstream "host:port"; the test can then cut connections, blackhole traffic and heal it again.
//
// One background thread runs a poll(2) loop over every socket; the public calls post a command
// to it through an eventfd and return once the loop has applied it, so when DropConnections()
// returns the connections are closed, and when Blackhole() returns no further byte gets through.
// All methods are thread-safe. Resources are bounded: at most kMaxConnections open connections
// (further ones are accepted and closed at once) and kBufferSize bytes buffered per direction.
//
// Blackhole discards data rather than holding it, so a connection that lost bytes carries a
// stream with a hole in it. Heal() closes such connections instead of resuming them: handing the
// rest of the stream to the peer would feed it corrupt framing (gRPC would see an HTTP/2 protocol
// error, or wait forever on a frame that never completes), whereas a closed connection makes it
// reconnect. Connections that lost nothing resume.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace parley::testing {

class TcpProxy {
 public:
  static constexpr int kMaxConnections = 256;
  static constexpr size_t kBufferSize = 64 * 1024;

  // Listens on 127.0.0.1:0 and forwards each accepted connection to `upstream` ("host:port",
  // "[v6]:port"). The upstream is resolved and connected per connection, so it need not be up
  // yet; a connection whose upstream cannot be reached is closed. Fails on a malformed address
  // or if the listening socket or the thread cannot be set up.
  static absl::StatusOr<std::unique_ptr<TcpProxy>> Start(std::string upstream);

  // Stops the loop, closes every socket and joins the thread.
  ~TcpProxy();

  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }
  std::string address() const;  // "127.0.0.1:<port>"

  // Connections accepted from now on go to `upstream` (the peer restarted on another port);
  // open connections keep their upstream. A malformed address makes new connections fail.
  void SetUpstream(std::string upstream);

  // Closes every open connection on both sides (each peer reads EOF, or a reset if it had unread
  // data in flight). The proxy keeps accepting: new connections are forwarded as before.
  void DropConnections();

  // Stops forwarding in both directions: bytes read from either side are discarded, pending
  // output is held, nothing is closed. New connections are accepted but not connected upstream.
  void Blackhole();

  // Forwards again. Connections that lost bytes during the blackhole are closed (see above);
  // the rest resume, and those accepted during it connect upstream now.
  void Heal();

  int connections_accepted() const { return connections_accepted_.load(); }
  int open_connections() const { return open_connections_.load(); }
  // Bytes written to either side, both directions together. Counted once send() returns, so a
  // peer may see the bytes a moment before the counter does: wait for it, don't sample it.
  uint64_t bytes_forwarded() const { return bytes_forwarded_.load(); }
  // Bytes read and thrown away by the blackhole, both directions together.
  uint64_t bytes_discarded() const { return bytes_discarded_.load(); }

 private:
  struct Connection;
  struct Direction;
  struct Commands;

  TcpProxy(int listen_fd, int wake_fd, int port, std::string upstream);

  // Posts the state change already made under mu_ to the loop and waits until it is applied.
  void ApplyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Wake();

  // Everything below runs on the loop thread only.
  void Loop();
  Commands TakeCommands();
  void ApplyCommands(const Commands& commands);
  void AcceptAll();
  void ConnectUpstream(Connection& conn);
  void TryNextAddress(Connection& conn);
  void FinishConnect(Connection& conn);
  void Service(Connection& conn, short client_events, short upstream_events);
  void Pump(Connection& conn, Direction& dir, int from, int to, short from_events, short to_events);
  void CloseConnection(Connection& conn);
  void RemoveClosed();

  const int listen_fd_;
  const int wake_fd_;
  const int port_;

  absl::Mutex mu_;
  std::string upstream_ ABSL_GUARDED_BY(mu_);
  bool blackholed_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool loop_exited_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t drops_requested_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t commands_requested_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t commands_applied_ ABSL_GUARDED_BY(mu_) = 0;

  std::atomic<int> connections_accepted_{0};
  std::atomic<int> open_connections_{0};
  std::atomic<uint64_t> bytes_forwarded_{0};
  std::atomic<uint64_t> bytes_discarded_{0};

  // Owned by the loop thread (and by the destructor once the thread is joined).
  std::vector<std::unique_ptr<Connection>> connections_;
  uint64_t drops_applied_ = 0;
  bool loop_blackholed_ = false;

  std::thread thread_;
};

}  // namespace parley::testing
