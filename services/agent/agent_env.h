#pragma once

// What an agent gets from whoever hosts it (LevelDB's Env): the store its KB lives in, the pool
// its strand runs on, the scheduler and clock its timers run on, where it logs and counts, and
// its links to peers. The host (services/host/) provides all of it; the agent never sees the
// host itself, so nothing here includes services/host/.

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "base/executor.h"
#include "kb/store.h"
#include "services/coord/coordinator.h"
#include "services/telemetry/log_buffer.h"
#include "services/telemetry/metrics.h"

namespace parley::services {

class Agent;

// What status shows of one link from a local agent to a remote one.
struct PeerLinkView {
  // An attempt (dial, request to dial, in-process pairing) or a session is under way.
  bool active = false;
  // When the next attempt may start (in the host's clock's time).
  absl::Time next_attempt = absl::InfinitePast();
  // Why the last attempt failed, until one establishes.
  std::string last_error;
};

// How an agent gets and inspects sessions with its peers. Implemented by the host.
class AgentLinks {
 public:
  virtual ~AgentLinks() = default;
  // Makes sure `local` gets a session with `remote` (pairing in-process, dialing or asking the
  // remote to dial, with backoff between attempts). Called on local's strand.
  virtual void EnsureSession(Agent* local, const std::string& remote) = 0;
  // Thread-safe.
  virtual PeerLinkView Link(const std::string& local, const std::string& remote) const = 0;
};

// Every pointer is non-owning and must outlive the agent.
struct AgentEnv {
  kb::Store* store = nullptr;
  base::ThreadPool* pool = nullptr;
  base::Scheduler* scheduler = nullptr;
  base::Clock* clock = nullptr;
  LogBuffer* logs = nullptr;
  Metrics* metrics = nullptr;
  AgentLinks* links = nullptr;
  // Leadership (docs/coordination.md): builds the coordinator a unit of a service that declares
  // leadership campaigns through, one per unit (its own connection, closed when the unit stops
  // campaigning). Unset when no coordinator is configured: such a unit reports why in its status
  // and never leads.
  std::function<absl::StatusOr<std::unique_ptr<coord::Coordinator>>()> coordinator;
  // Elections are named `election_prefix` + the service's name.
  std::string election_prefix = "parley/leader/";
};

}  // namespace parley::services
