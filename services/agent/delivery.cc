#include "services/agent/delivery.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace parley::services {

v1::PeerFrame ToFrame(const v1::OutboxEntry& entry) {
  v1::PeerFrame frame;
  *frame.mutable_event() = entry.event();
  return frame;
}

namespace {

bool PeerMaySend(v1::RelationEventKind kind) {
  return kind == v1::RELATION_EVENT_KIND_JOINED || kind == v1::RELATION_EVENT_KIND_CHANGED ||
         kind == v1::RELATION_EVENT_KIND_DEPARTED || kind == v1::RELATION_EVENT_KIND_BROKEN;
}

// The receiver's view of `ev`: the sender is the remote unit, the receiver's endpoint the local
// one. The only place the wire shape becomes the inbox's.
v1::Event ToInboxEvent(const std::string& remote, const v1::RelationEvent& ev) {
  v1::Event event;
  event.set_name(absl::StrCat(ev.receiver_endpoint(), ".", engine::RelationKindName(ev.kind())));
  event.set_source(absl::StrCat("peer:", remote));
  v1::RelationChange* rc = event.mutable_relation();
  rc->set_relation_id(ev.relation_id());
  rc->set_endpoint(ev.receiver_endpoint());
  rc->set_remote_service(ev.sender_service());
  rc->set_remote_unit(ev.sender_unit());
  rc->set_kind(ev.kind());
  *rc->mutable_unit_changes() = ev.unit_changes();
  *rc->mutable_service_changes() = ev.service_changes();
  rc->set_service_term(ev.service_term());
  rc->set_remote_endpoint(ev.sender_endpoint());
  rc->set_interface(ev.interface());
  return event;
}

}  // namespace

absl::StatusOr<v1::Event> AcceptEvent(const engine::Engine& engine, absl::string_view agent,
                                      const std::string& remote, const v1::RelationEvent& ev,
                                      Refusal* refusal) {
  auto refuse = [&](absl::Status status, absl::string_view reason) {
    refusal->status = status;
    refusal->reason = std::string(reason);
    return status;
  };
  if (ev.sender_unit() != remote) {
    return refuse(absl::PermissionDeniedError(
                      absl::StrCat("agent ", agent, ": event claims sender '", ev.sender_unit(),
                                   "' on the stream from '", remote, "'")),
                  "wrong_sender");
  }
  if (ev.sequence() == 0 || !PeerMaySend(ev.kind())) {
    return refuse(absl::InvalidArgumentError(absl::StrCat(
                      "agent ", agent, ": event from ", remote, " on relation '", ev.relation_id(),
                      "' has no sequence or a kind peers do not send (",
                      v1::RelationEventKind_Name(ev.kind()), ")")),
                  "invalid");
  }
  if (absl::Status s = engine.CheckPeerEvent(ev.relation_id(), remote, ev.kind()); !s.ok()) {
    return refuse(s, absl::IsNotFound(s) ? "unknown_relation" : "not_party_to_relation");
  }
  v1::Event event = ToInboxEvent(remote, ev);
  if (absl::Status s = engine.ValidateEvent(event); !s.ok()) {
    return refuse(absl::InvalidArgumentError(absl::StrCat("from ", remote, ": ", s.message())),
                  "invalid");
  }
  return event;
}

Delivery::Delivery(const AgentEnv& env, std::string agent, engine::Engine* engine,
                   Metrics::Agent* metrics, std::shared_ptr<base::Strand> strand, size_t send_batch,
                   DeliveryOwner* owner)
    : env_(env),
      agent_(std::move(agent)),
      engine_(engine),
      metrics_(metrics),
      strand_(std::move(strand)),
      send_batch_(send_batch),
      owner_(owner),
      alive_(std::make_shared<bool>(true)) {}

Delivery::~Delivery() = default;

void Delivery::Log(v1::LogLevel level, std::string message) const {
  v1::LogRecord r;
  r.set_agent(agent_);
  r.set_level(level);
  r.set_message(std::move(message));
  env_.logs->Add(std::move(r));
}

void Delivery::Committed(uint64_t through) {
  if (through <= written_through_) return;
  written_through_ = through;
  for (auto& [remote, ch] : channels_) {
    if (ch.session && ch.session->SharesStore()) Pump(remote);
  }
}

void Delivery::Sendable(uint64_t through) {
  if (through <= sendable_through_) return;
  sendable_through_ = through;
  pump_due_ = true;  // one pump once the work of this sync is done
}

void Delivery::OnDurable(uint64_t durable) {
  for (auto it = pending_acks_.begin(); it != pending_acks_.end();) {
    const auto& [key, pending] = *it;
    if (pending.ticket > durable) {
      ++it;
      continue;
    }
    SendAck(key.first, key.second, pending.sequence, pending.session);
    it = pending_acks_.erase(it);
  }
  if (pump_due_) {
    pump_due_ = false;
    PumpAll();
  }
}

void Delivery::SendAck(const std::string& remote, const std::string& relation, uint64_t sequence,
                       const std::shared_ptr<PeerSession>& session) {
  v1::PeerFrame ack;
  ack.mutable_ack()->set_relation_id(relation);
  ack.mutable_ack()->set_sender_unit(remote);
  ack.mutable_ack()->set_sequence(sequence);
  const auto& current = channels_[remote].session;
  (current ? current : session)->Send(std::move(ack));
}

void Delivery::Attach(const std::string& remote, std::shared_ptr<PeerSession> session) {
  if (stopped_) {
    session->Close(absl::UnavailableError(absl::StrCat("agent ", agent_, " is stopping")));
    return;
  }
  Channel& ch = channels_[remote];
  if (ch.session && ch.session != session) {
    ch.session->Close(absl::AbortedError("replaced by a newer stream"));
  }
  ch.session = std::move(session);
  ch.sent_through = 0;  // resend everything unacknowledged; the receiver deduplicates
  env_.metrics->PeerUp(agent_, remote).Set(1);
  env_.metrics->Reconnects(agent_, remote);  // the series exists, at 0, before the first end
  Log(v1::LOG_LEVEL_INFO, absl::StrCat("stream with ", remote, " up"));
  Pump(remote);
}

void Delivery::Detach(const std::string& remote, const PeerSession* session) {
  auto it = channels_.find(remote);
  if (it == channels_.end() || it->second.session.get() != session) return;
  it->second.session.reset();
  env_.metrics->PeerUp(agent_, remote).Set(0);
  if (stopped_) return;
  env_.metrics->Reconnects(agent_, remote).Increment();
  Log(v1::LOG_LEVEL_INFO, absl::StrCat("stream with ", remote, " down"));
  owner_->SessionDown(remote);
}

void Delivery::Close(const std::string& remote, const absl::Status& why) {
  auto it = channels_.find(remote);
  if (it != channels_.end() && it->second.session) it->second.session->Close(why);
}

void Delivery::Stop(const absl::Status& why) {
  stopped_ = true;
  for (auto& [remote, ch] : channels_) {
    if (ch.session) ch.session->Close(why);
    ch.session.reset();
  }
  alive_.reset();  // pending pumps see the delivery gone
}

bool Delivery::HasSession(const std::string& remote) const {
  auto it = channels_.find(remote);
  return it != channels_.end() && it->second.session != nullptr;
}

std::set<std::string> Delivery::Connected() const {
  std::set<std::string> out;
  for (const auto& [remote, ch] : channels_) {
    if (ch.session) out.insert(remote);
  }
  return out;
}

void Delivery::PumpAll() {
  for (auto& [remote, ch] : channels_) {
    if (ch.session) Pump(remote);
  }
}

void Delivery::Pump(const std::string& remote) {
  Channel& ch = channels_[remote];
  if (!ch.session) return;
  const uint64_t limit = ch.session->SharesStore() ? written_through_ : sendable_through_;
  if (ch.sent_through >= limit) return;
  auto entries = engine_->OutboxAfter(remote, ch.sent_through, send_batch_, limit);
  if (!entries.ok()) {
    Log(v1::LOG_LEVEL_ERROR, absl::StrCat("outbox: ", entries.status().message()));
    return;
  }
  size_t sent = 0;
  for (const auto& e : *entries) {
    if (e.id() > limit) break;
    ch.session->Send(ToFrame(e));
    ch.sent_through = e.id();
    ++sent;
  }
  metrics_->events_sent->Increment(static_cast<double>(sent));
  if (sent == send_batch_) {
    std::weak_ptr<bool> alive = alive_;
    strand_->Post([this, alive, remote] {
      if (alive.lock()) Pump(remote);
    });
  }
}

void Delivery::Refuse(const std::string& remote, const std::shared_ptr<PeerSession>& session,
                      const Refusal& refusal) {
  env_.metrics->Rejected(agent_, refusal.reason).Increment();
  Log(v1::LOG_LEVEL_WARNING,
      absl::StrCat("refused frame from ", remote, ": ", refusal.status.message()));
  session->Close(refusal.status);
}

void Delivery::OnFrame(const std::string& remote, const std::shared_ptr<PeerSession>& session,
                       const v1::PeerFrame& frame) {
  if (stopped_) return;
  if (frame.has_ack()) {
    OnAck(remote, frame.ack());
  } else if (frame.has_event()) {
    OnEvent(remote, session, frame.event());
  } else {
    Refuse(remote, session,
           {absl::InvalidArgumentError(absl::StrCat("agent ", agent_, ": unexpected frame from ",
                                                    remote, " (expected an event or an ack)")),
            "unexpected_frame"});
  }
}

void Delivery::OnAck(const std::string& remote, const v1::Ack& ack) {
  auto t = engine_->Acknowledge(remote, ack.relation_id(), ack.sequence());
  if (!t.ok()) {
    Log(v1::LOG_LEVEL_ERROR, absl::StrCat("ack from ", remote, ": ", t.status().message()));
    return;
  }
  ++acks_;
  metrics_->acks_received->Increment();
  metrics_->outbox_unacked->Set(static_cast<double>(engine_->outbox_size()));
  owner_->StatusChanged();
}

void Delivery::OnEvent(const std::string& remote, const std::shared_ptr<PeerSession>& session,
                       const v1::RelationEvent& ev) {
  Refusal refusal;
  absl::StatusOr<v1::Event> event = AcceptEvent(*engine_, agent_, remote, ev, &refusal);
  if (!event.ok()) {
    Refuse(remote, session, refusal);
    return;
  }
  owner_->HeardFrom(remote);
  const uint64_t sequence = ev.sequence();
  auto r = engine_->EnqueueFromPeer(*std::move(event), sequence);
  if (!r.ok()) {
    if (absl::IsOutOfRange(r.status())) {
      Refuse(remote, session, {r.status(), "sequence_gap"});
    } else {
      Log(v1::LOG_LEVEL_ERROR, absl::StrCat("inbox: ", r.status().message()));
      session->Close(
          absl::UnavailableError(absl::StrCat("agent ", agent_, ": ", r.status().message())));
    }
    return;
  }
  if (r->duplicate) {
    metrics_->events_deduplicated->Increment();
  } else {
    ++received_;
    metrics_->events_received->Increment();
    owner_->PeerEventQueued(r->ticket);
  }
  // Acknowledge once the event (or, for a resend, everything up to now) is durable.
  const std::string& relation = ev.relation_id();
  if (session->SharesStore()) {
    SendAck(remote, relation, sequence, session);
    return;
  }
  PendingAck& pending = pending_acks_[{remote, relation}];
  pending.sequence = std::max(pending.sequence, sequence);
  pending.ticket = owner_->LastTicket();
  pending.session = session;
  owner_->WakeWhenDurable(pending.ticket);
}

}  // namespace parley::services
