#include "engine/inbox.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/handler_graph.h"
#include "engine/key_layout.h"
#include "engine/outbox.h"
#include "engine/run.h"

namespace parley::engine {

using kb::Space;

absl::Status Inbox::Load(const kb::Kb& kb) {
  ASSIGN_OR_RETURN(next_id_, ReadCounter(kb, keys::kNextEvent, 1));
  staged_ = 0;
  head_ = next_id_;
  absl::Status parse_status;
  RETURN_IF_ERROR(kb.Scan(Space::kInbox, "", [&](absl::string_view key, absl::string_view) {
    auto id = kb::DecodeU64(key);
    if (id.ok()) head_ = *id;
    parse_status = id.status();
    return false;
  }));
  RETURN_IF_ERROR(parse_status);
  depth_ = next_id_ - head_;
  return absl::OkStatus();
}

void Inbox::Stage(kb::Txn& txn, v1::Event& event) {
  event.set_id(next_id_);
  txn.Put(Space::kInbox, keys::Inbox(event.id()), event.SerializeAsString());
  txn.Put(Space::kMeta, keys::kNextEvent, kb::EncodeU64(event.id() + 1));
  ++next_id_;
  ++staged_;
}

absl::StatusOr<uint64_t> Inbox::Commit(kb::Kb& kb, kb::Txn& txn) {
  absl::StatusOr<uint64_t> ticket = kb.Commit(txn);
  if (ticket.ok()) {
    Committed();
  } else {
    Discard();
  }
  return ticket;
}

void Inbox::StageRewrite(kb::Txn& txn, const v1::Event& event) {
  txn.Put(Space::kInbox, keys::Inbox(event.id()), event.SerializeAsString());
}

void Inbox::StageRemove(kb::Txn& txn, uint64_t id) {
  txn.DeleteUnindexed(Space::kInbox, keys::Inbox(id));
}

absl::Status Engine::ValidateEvent(const v1::Event& event) const {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("event '", event.name(), "' for agent ", kb_->agent(), ": ", why));
  };
  if (event.name().empty()) return bad("the event has no name");
  if (event.has_relation() && event.health() != v1::WORKLOAD_HEALTH_UNSPECIFIED) {
    return bad("a relation event carries no workload health");
  }
  RETURN_IF_ERROR(ValidateHealthEvent(event));
  if (event.has_relation()) {
    const auto& rc = event.relation();
    if (graph_->Endpoint(rc.endpoint()) == nullptr) {
      return bad(absl::StrCat("endpoint '", rc.endpoint(), "' is not declared by service '",
                              spec_.service, "'"));
    }
    if (rc.relation_id().empty()) return bad("relation id is empty");
    absl::string_view kind = RelationKindName(rc.kind());
    if (kind.empty()) return bad("relation event kind is unspecified");
    if (event.name() != absl::StrCat(rc.endpoint(), ".", kind)) {
      return bad(absl::StrCat("a ", kind, " event on endpoint '", rc.endpoint(),
                              "' must be named '", rc.endpoint(), ".", kind, "'"));
    }
    if ((rc.kind() == v1::RELATION_EVENT_KIND_JOINED ||
         rc.kind() == v1::RELATION_EVENT_KIND_DEPARTED ||
         rc.kind() == v1::RELATION_EVENT_KIND_CREATED) &&
        rc.remote_unit().empty()) {
      return bad("joined, departed and created events name the remote unit");
    }
    for (const auto* changes : {&rc.unit_changes(), &rc.service_changes()}) {
      for (const auto& c : *changes) {
        if (c.key().empty() || c.key().find('\0') != std::string::npos) {
          return bad("a relation data change has an empty or invalid key");
        }
      }
    }
  } else if (graph_->EndpointOf(event.name()) != nullptr) {
    return bad("relationship events must carry their relation");
  }
  for (const auto& c : event.config_changes()) {
    if (c.key().empty() || c.key().find('\0') != std::string::npos) {
      return bad("a config change has an empty or invalid key");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<EnqueueResult> Engine::Enqueue(v1::Event event) {
  std::vector<v1::Event> one;
  one.push_back(std::move(event));
  return EnqueueAll(std::move(one));
}

absl::StatusOr<EnqueueResult> Engine::EnqueueAll(std::vector<v1::Event> events) {
  if (run_) return absl::FailedPreconditionError("events cannot be enqueued during a run");
  if (events.empty()) return absl::InvalidArgumentError("no events to enqueue");
  for (const v1::Event& e : events) RETURN_IF_ERROR(ValidateEvent(e));
  kb::Txn txn(kb_);
  for (v1::Event& e : events) inbox_->Stage(txn, e);
  if (absl::Status s = RetrySoonerFor(txn, events); !s.ok()) {
    inbox_->Discard();
    return s;
  }
  absl::StatusOr<uint64_t> ticket = inbox_->Commit(*kb_, txn);
  RetrySoonerCommitted(ticket.ok());
  if (!ticket.ok()) return ticket.status();
  return EnqueueResult{events.back().id(), *ticket};
}

absl::StatusOr<EnqueueResult> Engine::EnqueueFromPeer(v1::Event event, uint64_t sequence) {
  if (run_) return absl::FailedPreconditionError("events cannot be enqueued during a run");
  const auto& rc = event.relation();
  ASSIGN_OR_RETURN(std::optional<uint64_t> received,
                   LastReceived(*kb_, rc.relation_id(), rc.remote_unit()));
  const uint64_t last = received.value_or(0);
  if (sequence <= last) return EnqueueResult{0, 0, true};
  if (sequence != last + 1) {
    return absl::OutOfRangeError(absl::StrCat(
        "agent ", kb_->agent(), ": relation ", rc.relation_id(), " from ", rc.remote_unit(),
        ": sequence ", sequence, " leaves a gap; expected ", last + 1));
  }
  event.mutable_relation()->set_sequence(sequence);
  kb::Txn txn(kb_);
  inbox_->Stage(txn, event);
  StageReceived(txn, rc.relation_id(), rc.remote_unit(), sequence);
  if (absl::Status s = RetrySoonerFor(txn, {event}); !s.ok()) {
    inbox_->Discard();
    return s;
  }
  absl::StatusOr<uint64_t> ticket = inbox_->Commit(*kb_, txn);
  RetrySoonerCommitted(ticket.ok());
  if (!ticket.ok()) return ticket.status();
  return EnqueueResult{event.id(), *ticket, false};
}

absl::StatusOr<EnqueueResult> Engine::EnqueueTimer(absl::string_view name) {
  if (run_) return absl::FailedPreconditionError("events cannot be enqueued during a run");
  if (absl::StartsWith(name, keys::kRetryLaterTimer)) return EnqueueRetryLater(name);
  v1::Event event;
  event.set_name(absl::StrCat("timer.", name));
  event.set_source("timer");
  kb::Txn txn(kb_);
  inbox_->Stage(txn, event);
  txn.Delete(Space::kMeta, keys::Timer(name));
  ASSIGN_OR_RETURN(uint64_t ticket, inbox_->Commit(*kb_, txn));
  timers_.erase(std::string(name));
  return EnqueueResult{event.id(), ticket};
}

absl::StatusOr<uint64_t> Engine::Acknowledge(absl::string_view destination,
                                             absl::string_view relation_id, uint64_t sequence) {
  if (run_) return absl::FailedPreconditionError("acknowledgements are applied between runs");
  return outbox_->Acknowledge(*kb_, destination, relation_id, sequence);
}

}  // namespace parley::engine
