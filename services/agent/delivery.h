#pragma once

// The peer protocol on an agent's side (docs/protocol.md), in one place: the sessions an agent has
// with its peers, sending its outbox on them (the pump), checking and queueing the relation
// events that arrive (the one boundary where peer data enters), and acknowledging them once they
// are durable. The sequences and cursors that make delivery exactly-once are the engine's
// (engine/outbox.h): they are written in the same transactions as the outbox and the inbox.
//
// A relation event has one shape, v1::RelationEvent (proto/parley/v1/kb.proto): the outbox stores
// it, a frame carries it unchanged (ToFrame), and AcceptEvent checks it once, as it arrives,
// before it becomes the receiver's inbox event.
//
// Everything here runs on the agent's strand.

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/executor.h"
#include "engine/engine.h"
#include "parley/v1/kb.pb.h"
#include "parley/v1/peer.pb.h"
#include "services/agent/agent_env.h"
#include "services/agent/session.h"
#include "services/telemetry/metrics.h"

namespace parley::services {

// The frame that carries an outbox entry: its event, as stored.
v1::PeerFrame ToFrame(const v1::OutboxEntry& entry);

// Why a frame from a peer was refused: the error the stream is closed with, and the reason
// label of parley_peer_frames_rejected_total (docs/operations.md).
struct Refusal {
  absl::Status status;
  std::string reason;
};

// The one check of a relation event from `remote` (the peer at the other end of the stream,
// authenticated by the handshake), made where frames arrive; `agent` names the receiver in
// errors. Refuses an event that claims another sender (PERMISSION_DENIED, "wrong_sender"),
// that has no sequence or a kind a peer may not send (only JOINED, CHANGED, DEPARTED and BROKEN
// travel; "invalid"), that is about a relation the receiver does not know or is not party to
// ("unknown_relation", "not_party_to_relation", Engine::CheckPeerEvent), or that the engine
// would refuse (Engine::ValidateEvent: undeclared endpoint, bad keys; "invalid"). Returns the
// event as the receiver's inbox holds it: named "<receiver endpoint>.<kind>", its relation
// change seen from the receiver (the sender is the remote unit).
absl::StatusOr<v1::Event> AcceptEvent(const engine::Engine& engine, absl::string_view agent,
                                      const std::string& remote, const v1::RelationEvent& event,
                                      Refusal* refusal);

// What delivery asks of the agent it works for, on the agent's strand.
class DeliveryOwner {
 public:
  virtual ~DeliveryOwner() = default;
  // An event from a peer was queued in the inbox, in a write with `ticket`: run it.
  virtual void PeerEventQueued(uint64_t ticket) = 0;
  // The ticket of the agent's newest write: an acknowledgement waits for it.
  virtual uint64_t LastTicket() const = 0;
  // Calls Delivery::OnDurable once `ticket` is durable (with the agent's other durable work).
  virtual void WakeWhenDurable(uint64_t ticket) = 0;
  // `remote` sent a valid event: it no longer needs to be expected.
  virtual void HeardFrom(const std::string& remote) = 0;
  // The session with `remote` ended: the agent dials again if it still needs one.
  virtual void SessionDown(const std::string& remote) = 0;
  // Status changed (an acknowledgement emptied part of the outbox).
  virtual void StatusChanged() = 0;
};

class Delivery {
 public:
  // Every pointer is non-owning and must outlive the delivery; `engine` is the agent's.
  Delivery(const AgentEnv& env, std::string agent, engine::Engine* engine, Metrics::Agent* metrics,
           std::shared_ptr<base::Strand> strand, size_t send_batch, DeliveryOwner* owner);
  ~Delivery();

  // Outbox entries up to `through` are committed: sessions that share the agent's store get them
  // now.
  void Committed(uint64_t through);
  // Outbox entries up to `through` are durable: every session gets them at the next OnDurable.
  void Sendable(uint64_t through);
  // The agent's writes up to `durable` are durable: sends the acknowledgements waiting for them,
  // and the outbox entries that became sendable.
  void OnDurable(uint64_t durable);

  // Peer sessions. `Attach` replaces an earlier session with the same remote and resends every
  // unacknowledged entry (the receiver deduplicates).
  void Attach(const std::string& remote, std::shared_ptr<PeerSession> session);
  void Detach(const std::string& remote, const PeerSession* session);
  void OnFrame(const std::string& remote, const std::shared_ptr<PeerSession>& session,
               const v1::PeerFrame& frame);
  // Closes the session with `remote`, if there is one.
  void Close(const std::string& remote, const absl::Status& why);
  // Closes every session; frames that arrive afterwards are ignored.
  void Stop(const absl::Status& why);

  bool HasSession(const std::string& remote) const;
  // The remotes this agent has a session with.
  std::set<std::string> Connected() const;
  // Events received (not duplicates) and acknowledgements received: progress for CheckIdle.
  uint64_t received() const { return received_; }
  uint64_t acks() const { return acks_; }

 private:
  struct Channel {
    std::shared_ptr<PeerSession> session;
    // Highest outbox id sent on this session.
    uint64_t sent_through = 0;
  };
  // An acknowledgement to send once the events it covers are durable.
  struct PendingAck {
    uint64_t sequence = 0;
    uint64_t ticket = 0;
    std::shared_ptr<PeerSession> session;
  };

  void Pump(const std::string& remote);
  void PumpAll();
  void OnAck(const std::string& remote, const v1::Ack& ack);
  void OnEvent(const std::string& remote, const std::shared_ptr<PeerSession>& session,
               const v1::RelationEvent& event);
  void Refuse(const std::string& remote, const std::shared_ptr<PeerSession>& session,
              const Refusal& refusal);
  void SendAck(const std::string& remote, const std::string& relation, uint64_t sequence,
               const std::shared_ptr<PeerSession>& session);
  void Log(v1::LogLevel level, std::string message) const;

  const AgentEnv env_;
  const std::string agent_;
  engine::Engine* const engine_;
  Metrics::Agent* const metrics_;
  const std::shared_ptr<base::Strand> strand_;
  const size_t send_batch_;
  DeliveryOwner* const owner_;
  // Guards the pump's re-posts, which may outlive the delivery.
  std::shared_ptr<bool> alive_;

  std::map<std::string, Channel> channels_;
  // Outbox entries up to this id belong to durable runs and may be sent; up to written_through_
  // they may go to sessions that share this agent's store.
  uint64_t sendable_through_ = 0;
  uint64_t written_through_ = 0;
  bool pump_due_ = false;
  bool stopped_ = false;
  uint64_t received_ = 0;
  uint64_t acks_ = 0;
  // Acknowledgements to send once their events are durable, per (remote, relation). Acks are
  // cumulative: one per relation and sync is enough.
  std::map<std::pair<std::string, std::string>, PendingAck> pending_acks_;
};

}  // namespace parley::services
