#include "engine/outbox.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/key_layout.h"

namespace parley::engine {

using kb::Space;

absl::Status Outbox::Load(const kb::Kb& kb) {
  ASSIGN_OR_RETURN(next_id_, ReadCounter(kb, keys::kNextOutbox, 1));
  committed_next_id_ = next_id_;
  size_ = 0;
  unacked_.clear();
  staged_.clear();
  absl::Status parse_status;
  RETURN_IF_ERROR(kb.Scan(Space::kOutbox, "", [&](absl::string_view key, absl::string_view value) {
    v1::OutboxEntry e;
    parse_status = ParseOutboxEntry(kb, key, value, e);
    if (!parse_status.ok()) return false;
    unacked_[{e.destination(), e.event().relation_id()}].emplace_back(e.event().sequence(), e.id());
    ++size_;
    return true;
  }));
  RETURN_IF_ERROR(parse_status);
  committed_size_ = size_;
  return absl::OkStatus();
}

absl::StatusOr<bool> Outbox::Introduced(const kb::Txn& txn, absl::string_view relation_id,
                                        absl::string_view destination) {
  ASSIGN_OR_RETURN(auto cursor, txn.Get(Space::kCursor, keys::OutCursor(relation_id, destination)));
  return cursor.has_value();
}

absl::Status Outbox::Stage(kb::Txn& txn, const v1::RelationRecord& relation,
                           absl::string_view destination, v1::RelationEventKind kind, Sender sender,
                           uint64_t run, absl::FunctionRef<absl::Status(v1::RelationEvent&)> fill,
                           v1::Trace& trace) {
  const std::string cursor = keys::OutCursor(relation.relation_id(), destination);
  ASSIGN_OR_RETURN(auto seq_bytes, txn.Get(Space::kCursor, cursor));
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
  entry.set_id(next_id_++);
  entry.set_destination(std::string(destination));
  v1::RelationEvent& event = *entry.mutable_event();
  event.set_relation_id(relation.relation_id());
  event.set_sender_endpoint(relation.endpoint());
  event.set_receiver_endpoint(relation.remote_endpoint());
  event.set_sender_unit(std::string(sender.unit));
  event.set_sender_service(std::string(sender.service));
  event.set_sequence(++seq);
  event.set_kind(kind);
  event.set_sender_commit(run);
  event.set_interface(relation.interface());
  RETURN_IF_ERROR(fill(event));
  txn.Put(Space::kCursor, cursor, kb::EncodeU64(seq));
  txn.Put(Space::kOutbox, keys::Outbox(destination, entry.id()), entry.SerializeAsString());
  ++size_;
  staged_.push_back({std::string(destination), relation.relation_id(), seq, entry.id()});
  *trace.add_messages() = std::move(entry);
  return absl::OkStatus();
}

void Outbox::StageNextId(kb::Txn& txn) const {
  if (next_id_ != committed_next_id_) {
    txn.PutUnindexed(Space::kMeta, keys::kNextOutbox, kb::EncodeU64(next_id_));
  }
}

void Outbox::StageForget(kb::Txn& txn, absl::string_view relation_id,
                         absl::string_view destination) {
  std::pair<std::string, std::string> key{std::string(destination), std::string(relation_id)};
  auto it = unacked_.find(key);
  if (it == unacked_.end()) return;
  if (std::find(forgotten_.begin(), forgotten_.end(), key) != forgotten_.end()) return;
  for (const auto& [sequence, id] : it->second) {
    txn.Delete(Space::kOutbox, keys::Outbox(destination, id));
  }
  size_ -= it->second.size();
  forgotten_.push_back(std::move(key));
}

void Outbox::Committed() {
  for (const auto& key : forgotten_) unacked_.erase(key);
  forgotten_.clear();
  for (const auto& e : staged_)
    unacked_[{e.destination, e.relation}].emplace_back(e.sequence, e.id);
  staged_.clear();
  committed_next_id_ = next_id_;
  committed_size_ = size_;
}

void Outbox::Discard() {
  staged_.clear();
  forgotten_.clear();
  next_id_ = committed_next_id_;
  size_ = committed_size_;
}

absl::StatusOr<uint64_t> Outbox::Acknowledge(kb::Kb& kb, absl::string_view destination,
                                             absl::string_view relation_id, uint64_t sequence) {
  auto it = unacked_.find({std::string(destination), std::string(relation_id)});
  if (it == unacked_.end()) return 0;
  auto& pending = it->second;
  size_t removed = 0;
  kb::Txn txn(&kb);
  for (auto e = pending.begin(); e != pending.end() && e->first <= sequence; ++e, ++removed) {
    txn.Delete(Space::kOutbox, keys::Outbox(destination, e->second));
  }
  if (removed == 0) return 0;
  ASSIGN_OR_RETURN(uint64_t ticket, kb.Commit(txn));
  pending.erase(pending.begin(), pending.begin() + static_cast<ptrdiff_t>(removed));
  if (pending.empty()) unacked_.erase(it);
  size_ -= removed;
  committed_size_ = size_;
  return ticket;
}

std::set<std::string> Outbox::Destinations() const {
  std::set<std::string> out;
  for (const auto& [key, pending] : unacked_) out.insert(key.first);
  return out;
}

std::map<std::string, size_t> Outbox::UnackedByDestination() const {
  std::map<std::string, size_t> out;
  for (const auto& [key, pending] : unacked_) out[key.first] += pending.size();
  return out;
}

absl::StatusOr<std::vector<v1::OutboxEntry>> Outbox::Entries(const kb::Kb& kb,
                                                             absl::string_view destination) {
  std::vector<v1::OutboxEntry> out;
  absl::Status parse_status;
  const std::string prefix = destination.empty() ? "" : keys::OutboxPrefix(destination);
  RETURN_IF_ERROR(
      kb.Scan(Space::kOutbox, prefix, [&](absl::string_view key, absl::string_view value) {
        v1::OutboxEntry e;
        parse_status = ParseOutboxEntry(kb, key, value, e);
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

absl::StatusOr<std::vector<v1::OutboxEntry>> Outbox::EntriesAfter(const kb::Kb& kb,
                                                                  absl::string_view destination,
                                                                  uint64_t after, size_t limit,
                                                                  uint64_t through) {
  std::vector<v1::OutboxEntry> out;
  absl::Status parse_status;
  RETURN_IF_ERROR(kb.ScanFrom(Space::kOutbox, keys::OutboxPrefix(destination),
                              kb::EncodeU64(after + 1),
                              [&](absl::string_view key, absl::string_view value) {
                                auto id = kb::DecodeU64(key);
                                if (id.ok() && *id > through) return false;
                                v1::OutboxEntry e;
                                parse_status = ParseOutboxEntry(kb, key, value, e);
                                if (!parse_status.ok()) return false;
                                out.push_back(std::move(e));
                                return out.size() < limit;
                              }));
  RETURN_IF_ERROR(parse_status);
  return out;
}

void UpgradeOutboxEntry(v1::OutboxEntry& entry) {
  if (entry.has_event() || entry.sequence() == 0) return;
  v1::RelationEvent& event = *entry.mutable_event();
  event.set_relation_id(std::move(*entry.mutable_relation_id()));
  event.set_sender_endpoint(std::move(*entry.mutable_endpoint()));
  event.set_receiver_endpoint(std::move(*entry.mutable_receiver_endpoint()));
  event.set_sender_unit(std::move(*entry.mutable_sender_unit()));
  event.set_sender_service(std::move(*entry.mutable_sender_service()));
  event.set_sequence(entry.sequence());
  event.set_kind(entry.kind());
  event.mutable_unit_changes()->Swap(entry.mutable_unit_changes());
  event.mutable_service_changes()->Swap(entry.mutable_service_changes());
  event.set_sender_commit(entry.commit_run());
  event.set_interface(std::move(*entry.mutable_interface()));
  entry.clear_relation_id();
  entry.clear_endpoint();
  entry.clear_receiver_endpoint();
  entry.clear_sender_unit();
  entry.clear_sender_service();
  entry.clear_sequence();
  entry.clear_kind();
  entry.clear_unit_changes();
  entry.clear_service_changes();
  entry.clear_commit_run();
  entry.clear_interface();
}

absl::Status ParseOutboxEntry(const kb::Kb& kb, absl::string_view key, absl::string_view value,
                              v1::OutboxEntry& entry) {
  RETURN_IF_ERROR(ParseRecord(kb, "outbox entry", key, value, entry));
  UpgradeOutboxEntry(entry);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<uint64_t>> LastReceived(const kb::Kb& kb,
                                                     absl::string_view relation_id,
                                                     absl::string_view sender) {
  ASSIGN_OR_RETURN(auto bytes, kb.Get(Space::kCursor, keys::InCursor(relation_id, sender)));
  if (!bytes) return std::nullopt;
  ASSIGN_OR_RETURN(uint64_t last, kb::DecodeU64(*bytes));
  return last;
}

void StageReceived(kb::Txn& txn, absl::string_view relation_id, absl::string_view sender,
                   uint64_t sequence) {
  txn.Put(Space::kCursor, keys::InCursor(relation_id, sender), kb::EncodeU64(sequence));
}

}  // namespace parley::engine
