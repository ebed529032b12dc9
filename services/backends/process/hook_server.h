#pragma once

// Internal to services/backends/process/: the unix socket a run's program reaches the agent on
// (PARLEY_HOOK_SOCKET), served without threads — the run's poll loop asks for the server's
// descriptors (AddPollFds) and hands back what poll() reported (Serve). One request per
// connection (hook_protocol.h); at most kMaxConnections at once, requests up to kMaxRequest bytes.

#include <poll.h>

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/backends/process/fd.h"
#include "services/backends/process/hook_handler.h"

namespace parley::services::process {

// A hook request larger than this is refused.
inline constexpr size_t kMaxRequest = 1 << 20;
// Hook connections served at once; more are refused.
inline constexpr size_t kMaxConnections = 32;

// A listening, non-blocking unix socket at `path`.
absl::StatusOr<Fd> Listen(const std::string& path);

// Serves hook requests on `listener` while the program runs.
class HookServer {
 public:
  HookServer(Fd listener, HookEnv env) : listener_(std::move(listener)), env_(env) {}

  // Adds the server's descriptors to `fds` (remembering where).
  void AddPollFds(std::vector<pollfd>& fds);
  // Acts on what poll() reported for the descriptors AddPollFds added.
  void Serve(const std::vector<pollfd>& fds);

 private:
  struct Connection {
    Fd fd;
    std::string in;
    std::string out;
    size_t written = 0;
    bool replying = false;
  };

  void Accept();
  void StartReply(Connection& c, const HookReply& r);
  void Step(Connection& c, short revents);

  Fd listener_;
  HookEnv env_;
  std::vector<Connection> conns_;
  size_t base_ = 0;
};

}  // namespace parley::services::process
