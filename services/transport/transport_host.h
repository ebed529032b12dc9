#pragma once

// What the gRPC side needs of the host it serves, as interfaces the host implements: the peer
// streams (PeerHost) and the agent API (ApiHost). Transport never includes services/host/, so
// the includes run host -> transport -> agent, without a circle.

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/executor.h"
#include "parley/v1/agent.pb.h"
#include "services/agent/agent.h"
#include "services/telemetry/log_buffer.h"
#include "services/telemetry/metrics.h"
#include "services/transport/tls.h"

namespace parley::services {

// What peer streams (peer_streams.h) need. Thread-safe.
class PeerHost {
 public:
  virtual ~PeerHost() = default;
  // The hosted agent named `name`, or null.
  virtual Agent* Find(absl::string_view name) const = 0;
  // Where peers reach this host.
  virtual const std::string& address() const = 0;
  virtual const TlsOptions& tls() const = 0;
  // Largest peer or API message accepted.
  virtual int max_message_bytes() const = 0;
  // A dialed stream whose listener does not answer the Hello within this is cancelled.
  virtual absl::Duration handshake_timeout() const = 0;
  virtual base::Scheduler& scheduler() = 0;
  virtual Metrics& metrics() = 0;
  virtual LogBuffer& logs() = 0;
  // The stream (or attempt) from `local` to `remote` is over. `established`: it carried frames,
  // so the next attempt starts with the initial backoff.
  virtual void SessionEnded(const std::string& local, const std::string& remote, bool established,
                            const absl::Status& status) = 0;
  // Called once by every dialed stream when gRPC is done with it.
  virtual void StreamDone() = 0;
};

// What the agent API (api_service.h) needs besides. Thread-safe.
class ApiHost : public PeerHost {
 public:
  virtual std::vector<Agent*> Agents() const = 0;
  virtual v1::HostInfo Info() const = 0;
  // Relates request.agent's endpoint to a remote agent; `done` runs on an arbitrary thread.
  virtual void Relate(v1::RelateRequest request,
                      std::function<void(absl::StatusOr<v1::RelateResponse>)> done) = 0;
  // Host::AddAgentFromRecipe and Host::RemoveAgent, run on the host's hosting executor: `done`
  // is called there, exactly once (UNAVAILABLE if the host shuts down before the work starts).
  virtual void AddAgentLater(v1::AgentRecipe recipe,
                             std::function<void(absl::StatusOr<std::string>)> done) = 0;
  virtual void RemoveAgentLater(
      v1::RemoveAgentRequest request,
      std::function<void(absl::StatusOr<v1::RemoveAgentResponse>)> done) = 0;
};

}  // namespace parley::services
