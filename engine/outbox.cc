#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/key_layout.h"
#include "engine/run.h"

namespace parley::engine {

absl::StatusOr<uint64_t> Engine::Acknowledge(absl::string_view destination,
                                             absl::string_view relation_id, uint64_t sequence) {
  if (run_) return absl::FailedPreconditionError("acknowledgements are applied between runs");
  auto it = unacked_.find({std::string(destination), std::string(relation_id)});
  if (it == unacked_.end()) return 0;
  auto& pending = it->second;
  size_t removed = 0;
  kb::Txn txn(kb_);
  for (auto e = pending.begin(); e != pending.end() && e->first <= sequence; ++e, ++removed) {
    txn.Delete(Space::kOutbox, OutboxKey(destination, e->second));
  }
  if (removed == 0) return 0;
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  pending.erase(pending.begin(), pending.begin() + static_cast<ptrdiff_t>(removed));
  if (pending.empty()) unacked_.erase(it);
  outbox_size_ -= removed;
  return ticket;
}

std::set<std::string> Engine::OutboxDestinations() const {
  std::set<std::string> out;
  for (const auto& [key, pending] : unacked_) out.insert(key.first);
  return out;
}

absl::Status Engine::StageOutbox(uint64_t run_number, v1::Trace& trace, uint64_t& next_outbox) {
  auto stage = [&](const v1::RelationRecord& rel, const std::string& destination,
                   v1::RelationEventKind kind, auto fill) -> absl::Status {
    const std::string cursor = CursorKey("out", rel.relation_id(), destination);
    ASSIGN_OR_RETURN(auto seq_bytes, txn_->Get(Space::kCursor, cursor));
    uint64_t seq = 0;
    if (seq_bytes) {
      ASSIGN_OR_RETURN(seq, kb::DecodeU64(*seq_bytes));
    }
    if (kind == v1::RELATION_EVENT_KIND_CHANGED && seq == 0) {
      kind = v1::RELATION_EVENT_KIND_JOINED;  // the first event to a unit introduces this one
    }
    if (kind == v1::RELATION_EVENT_KIND_DEPARTED && seq == 0) {
      return absl::OkStatus();  // never introduced: nothing to take back
    }
    v1::OutboxEntry entry;
    entry.set_id(next_outbox++);
    entry.set_relation_id(rel.relation_id());
    entry.set_endpoint(rel.endpoint());
    entry.set_sequence(++seq);
    entry.set_kind(kind);
    entry.set_sender_unit(spec_.unit);
    entry.set_sender_service(spec_.service);
    entry.set_commit_run(run_number);
    entry.set_destination(destination);
    entry.set_receiver_endpoint(rel.remote_endpoint());
    entry.set_interface(rel.interface());
    RETURN_IF_ERROR(fill(entry));
    txn_->Put(Space::kCursor, cursor, kb::EncodeU64(seq));
    txn_->Put(Space::kOutbox, OutboxKey(destination, entry.id()), entry.SerializeAsString());
    ++outbox_size_;
    run_->staged.push_back({destination, rel.relation_id(), seq, entry.id()});
    *trace.add_messages() = std::move(entry);
    return absl::OkStatus();
  };
  auto add_changes = [](const auto& changes, auto* out) {
    for (const auto& [k, v] : changes) {
      v1::BagChange* c = out->Add();
      c->set_key(k);
      if (v) {
        c->set_value(*v);
      } else {
        c->set_deleted(true);
      }
    }
  };
  auto add_bag = [&](const std::string& id, absl::string_view bag, auto* out) {
    return txn_->Scan(Space::kBag, BagPrefix(id, bag),
                      [&](absl::string_view k, absl::string_view v) {
                        v1::BagChange* c = out->Add();
                        c->set_key(std::string(k));
                        c->set_value(std::string(v));
                        return true;
                      });
  };

  std::set<std::string> touched = run_->relations_changed;
  for (const auto& [id, m] : run_->local_unit) touched.insert(id);
  for (const auto& [id, m] : run_->local_service) touched.insert(id);
  for (const auto& id : touched) {
    const v1::RelationRecord& rel = relations_.at(id);
    if (rel.gone() || run_->broken.contains(id)) continue;
    auto unit_it = run_->local_unit.find(id);
    auto service_it = run_->local_service.find(id);
    const bool changed =
        unit_it != run_->local_unit.end() || service_it != run_->local_service.end();
    for (const auto& destination : rel.targets()) {
      ASSIGN_OR_RETURN(auto known, txn_->Get(Space::kCursor, CursorKey("out", id, destination)));
      if (known && !changed) continue;
      RETURN_IF_ERROR(stage(rel, destination, v1::RELATION_EVENT_KIND_CHANGED,
                            [&](v1::OutboxEntry& e) -> absl::Status {
                              if (e.kind() == v1::RELATION_EVENT_KIND_JOINED) {
                                // An introduction carries the whole of this unit's data.
                                RETURN_IF_ERROR(add_bag(id, "lu", e.mutable_unit_changes()));
                                return add_bag(id, "ls", e.mutable_service_changes());
                              }
                              if (unit_it != run_->local_unit.end()) {
                                add_changes(unit_it->second, e.mutable_unit_changes());
                              }
                              if (service_it != run_->local_service.end()) {
                                add_changes(service_it->second, e.mutable_service_changes());
                              }
                              return absl::OkStatus();
                            }));
    }
  }
  for (const auto& [id, unit] : run_->departs) {
    RETURN_IF_ERROR(stage(relations_.at(id), unit, v1::RELATION_EVENT_KIND_DEPARTED,
                          [](v1::OutboxEntry&) { return absl::OkStatus(); }));
  }
  // A broken relation's unacknowledged events stay in the outbox: receivers need every sequence
  // number, and they ignore events about a relation they no longer have.
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::OutboxEntry>> Engine::Outbox(absl::string_view destination) const {
  std::vector<v1::OutboxEntry> out;
  absl::Status parse_status;
  const std::string prefix =
      destination.empty() ? "" : absl::StrCat(destination, absl::string_view("\0", 1));
  RETURN_IF_ERROR(
      kb_->Scan(Space::kOutbox, prefix, [&](absl::string_view key, absl::string_view value) {
        v1::OutboxEntry e;
        parse_status = Parse(*kb_, "outbox entry", key, value, e);
        if (!parse_status.ok()) return false;
        out.push_back(std::move(e));
        return true;
      }));
  RETURN_IF_ERROR(parse_status);
  if (destination.empty()) {
    std::sort(out.begin(), out.end(),
              [](const v1::OutboxEntry& a, const v1::OutboxEntry& b) { return a.id() < b.id(); });
  }
  return out;
}

absl::StatusOr<std::vector<v1::OutboxEntry>> Engine::OutboxAfter(absl::string_view destination,
                                                                 uint64_t after, size_t limit,
                                                                 uint64_t through) const {
  std::vector<v1::OutboxEntry> out;
  absl::Status parse_status;
  const std::string prefix = absl::StrCat(destination, absl::string_view("\0", 1));
  RETURN_IF_ERROR(kb_->ScanFrom(Space::kOutbox, prefix, kb::EncodeU64(after + 1),
                                [&](absl::string_view key, absl::string_view value) {
                                  auto id = kb::DecodeU64(key);
                                  if (id.ok() && *id > through) return false;
                                  v1::OutboxEntry e;
                                  parse_status = Parse(*kb_, "outbox entry", key, value, e);
                                  if (!parse_status.ok()) return false;
                                  out.push_back(std::move(e));
                                  return out.size() < limit;
                                }));
  RETURN_IF_ERROR(parse_status);
  return out;
}

}  // namespace parley::engine
