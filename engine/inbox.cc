#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/key_layout.h"
#include "engine/run.h"

namespace parley::engine {

absl::Status Engine::ValidateEvent(const v1::Event& event) const {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("event '", event.name(), "' for agent ", kb_->agent(), ": ", why));
  };
  if (event.name().empty()) return bad("the event has no name");
  if (event.has_relation()) {
    const auto& rc = event.relation();
    auto ep = endpoints_.find(rc.endpoint());
    if (ep == endpoints_.end()) {
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
  } else if (EndpointOf(event.name()) != nullptr) {
    return bad("relationship events must carry their relation");
  }
  for (const auto& c : event.config_changes()) {
    if (c.key().empty() || c.key().find('\0') != std::string::npos) {
      return bad("a config change has an empty or invalid key");
    }
  }
  return absl::OkStatus();
}

void Engine::StageInbox(kb::Txn& txn, v1::Event& event) {
  event.set_id(next_event_id_);
  txn.Put(Space::kInbox, kb::EncodeU64(event.id()), event.SerializeAsString());
  txn.Put(Space::kMeta, kMetaNextEvent, kb::EncodeU64(event.id() + 1));
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
  const uint64_t first = next_event_id_;
  for (v1::Event& e : events) {
    StageInbox(txn, e);
    ++next_event_id_;
  }
  absl::StatusOr<uint64_t> ticket = kb_->Commit(txn);
  if (!ticket.ok()) {
    next_event_id_ = first;
    return ticket.status();
  }
  inbox_depth_ += events.size();
  return EnqueueResult{events.back().id(), *ticket};
}

absl::StatusOr<EnqueueResult> Engine::ChangeConfig(const std::map<std::string, std::string>& set,
                                                   const std::vector<std::string>& unset) {
  if (run_) return absl::FailedPreconditionError("config cannot change during a run");
  auto bad_key = [](const std::string& k) {
    return k.empty() || k.find('\0') != std::string::npos;
  };
  for (const auto& [k, v] : set) {
    if (bad_key(k)) return absl::InvalidArgumentError("a config key is empty or has a NUL byte");
  }
  for (const auto& k : unset) {
    if (bad_key(k)) return absl::InvalidArgumentError("a config key is empty or has a NUL byte");
  }
  // The queued config.changed events, oldest first, and the config they lead to.
  std::vector<v1::Event> queued;
  std::map<std::string, std::string> pending = config_;
  absl::Status parse;
  RETURN_IF_ERROR(kb_->Scan(Space::kInbox, "", [&](absl::string_view, absl::string_view bytes) {
    v1::Event e;
    if (!e.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
      parse =
          absl::DataLossError(absl::StrCat("agent ", kb_->agent(), ": inbox event does not parse"));
      return false;
    }
    if (e.name() != "config.changed") return true;
    for (const auto& c : e.config_changes()) {
      if (c.deleted()) {
        pending.erase(c.key());
      } else {
        pending[c.key()] = c.value();
      }
    }
    queued.push_back(std::move(e));
    return true;
  }));
  RETURN_IF_ERROR(parse);
  std::map<std::string, std::string> want = pending;
  for (const auto& k : unset) want.erase(k);
  for (const auto& [k, v] : set) want[k] = v;
  if (want == pending) return EnqueueResult{};
  // The whole change from the committed config.
  v1::Event change;
  change.set_name("config.changed");
  change.set_source("api");
  for (const auto& [k, v] : want) {
    auto it = config_.find(k);
    if (it != config_.end() && it->second == v) continue;
    v1::BagChange* c = change.add_config_changes();
    c->set_key(k);
    c->set_value(v);
  }
  for (const auto& [k, v] : config_) {
    if (want.contains(k)) continue;
    v1::BagChange* c = change.add_config_changes();
    c->set_key(k);
    c->set_deleted(true);
  }
  if (queued.empty()) return Enqueue(std::move(change));
  kb::Txn txn(kb_);
  for (size_t i = 0; i < queued.size(); ++i) {
    v1::Event& e = queued[i];
    e.clear_config_changes();
    if (i == 0) *e.mutable_config_changes() = change.config_changes();
    txn.Put(Space::kInbox, kb::EncodeU64(e.id()), e.SerializeAsString());
  }
  const bool retry_now = failure_ && failure_->event_id() == queued[0].id();
  if (retry_now) {
    v1::RunFailure f = *failure_;
    f.set_next_retry_unix_ms(absl::ToUnixMillis(clock_->Now()));
    txn.Put(Space::kMeta, kMetaFailure, f.SerializeAsString());
  }
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  if (retry_now) failure_->set_next_retry_unix_ms(absl::ToUnixMillis(clock_->Now()));
  return EnqueueResult{queued[0].id(), ticket};
}

absl::StatusOr<EnqueueResult> Engine::EnqueueFromPeer(v1::Event event, uint64_t sequence) {
  if (run_) return absl::FailedPreconditionError("events cannot be enqueued during a run");
  if (!event.has_relation() || event.relation().remote_unit().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("agent ", kb_->agent(), ": a peer event must name its relation and sender"));
  }
  RETURN_IF_ERROR(ValidateEvent(event));
  const auto& rc = event.relation();
  const std::string cursor = CursorKey("in", rc.relation_id(), rc.remote_unit());
  ASSIGN_OR_RETURN(auto bytes, kb_->Get(Space::kCursor, cursor));
  uint64_t last = 0;
  if (bytes) {
    ASSIGN_OR_RETURN(last, kb::DecodeU64(*bytes));
  }
  if (sequence <= last) return EnqueueResult{0, 0, true};
  if (sequence != last + 1) {
    return absl::OutOfRangeError(absl::StrCat(
        "agent ", kb_->agent(), ": relation ", rc.relation_id(), " from ", rc.remote_unit(),
        ": sequence ", sequence, " leaves a gap; expected ", last + 1));
  }
  kb::Txn txn(kb_);
  StageInbox(txn, event);
  txn.Put(Space::kCursor, cursor, kb::EncodeU64(sequence));
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  ++next_event_id_;
  ++inbox_depth_;
  return EnqueueResult{event.id(), ticket, false};
}

absl::StatusOr<EnqueueResult> Engine::EnqueueTimer(absl::string_view name) {
  if (run_) return absl::FailedPreconditionError("events cannot be enqueued during a run");
  v1::Event event;
  event.set_name(absl::StrCat("timer.", name));
  event.set_source("timer");
  kb::Txn txn(kb_);
  StageInbox(txn, event);
  txn.Delete(Space::kMeta, MetaKey("timer", name));
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  timers_.erase(std::string(name));
  ++next_event_id_;
  ++inbox_depth_;
  return EnqueueResult{event.id(), ticket};
}

}  // namespace parley::engine
