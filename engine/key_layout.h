#pragma once

// How the engine lays out an agent's state in the keyspaces of its KB (kb::Space), and how it
// reads those records back. Every key the engine writes is built here:
//
//   kMeta      clock, run, next_event, next_outbox (counters); failure, status (records);
//              stage, removal, health (the unit's life and its workload's health);
//              cfg NUL <key> -> config value; timer NUL <name> -> due time (unix ms)
//   kFact      <fact> -> FactRecord
//   kRelation  <relation id> -> RelationRecord
//   kBag       <relation id> NUL <bag> NUL <key> -> value, bags "lu" (local unit),
//              "ls" (local service), "ru:<unit>" (a remote unit), "rs" (the remote service)
//   kInbox     <event id> -> Event
//   kOutbox    <destination> NUL <entry id> -> OutboxEntry (version-1 entries: UpgradeOutboxEntry)
//   kCursor    in NUL <relation id> NUL <sender>: the last sequence received from it;
//              out NUL <relation id> NUL <destination>: the last sequence sent to it
//   kHandler   <handler> -> the change clock at its last successful run
//   kTrace     <run number> -> Trace
//
// Numbers in keys and counters are big-endian (kb::EncodeU64), so keys sort as the numbers do.
// Internal to engine/.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kb/kb.h"

namespace parley::engine::keys {

// Meta keys.
inline constexpr absl::string_view kClock = "clock";
inline constexpr absl::string_view kRun = "run";
inline constexpr absl::string_view kNextEvent = "next_event";
inline constexpr absl::string_view kNextOutbox = "next_outbox";
inline constexpr absl::string_view kFailure = "failure";
inline constexpr absl::string_view kStatus = "status";
inline constexpr absl::string_view kStage = "stage";
// Present once the removal's stop is queued (Engine::BeginRemoval).
inline constexpr absl::string_view kRemoval = "removal";
// The workload health the inbox leads to: that of the newest health event queued
// (Engine::EnqueueHealth), absent before the first.
inline constexpr absl::string_view kHealth = "health";

inline constexpr absl::string_view kNul("\0", 1);

// Config values and timers live in the meta keyspace under these prefixes.
inline const std::string& ConfigPrefix() {
  static const std::string* prefix = new std::string(absl::StrCat("cfg", kNul));
  return *prefix;
}
inline const std::string& TimerPrefix() {
  static const std::string* prefix = new std::string(absl::StrCat("timer", kNul));
  return *prefix;
}
inline std::string Config(absl::string_view key) { return absl::StrCat("cfg", kNul, key); }
inline std::string Timer(absl::string_view name) { return absl::StrCat("timer", kNul, name); }
// A handler's retry-later (docs/engine.md, "Retrying later") is a timer named
// "retry-later <handler> <event>[ <relation> <remote unit>]" (a space: no name a handler gives a
// timer has one), and the event its due time enqueues is kept under RetryLater(<timer name>).
inline constexpr absl::string_view kRetryLaterTimer = "retry-later ";
inline std::string RetryLater(absl::string_view timer) {
  return absl::StrCat("retry", kNul, timer);
}

// The sequence cursors of a relation: what was received from a sender, what was sent to a
// destination.
inline std::string InCursor(absl::string_view relation_id, absl::string_view sender) {
  return absl::StrCat("in", kNul, relation_id, kNul, sender);
}
inline std::string OutCursor(absl::string_view relation_id, absl::string_view destination) {
  return absl::StrCat("out", kNul, relation_id, kNul, destination);
}

// Outbox entries sort by destination, then by id.
inline std::string OutboxPrefix(absl::string_view destination) {
  return absl::StrCat(destination, kNul);
}
inline std::string Outbox(absl::string_view destination, uint64_t id) {
  return absl::StrCat(destination, kNul, kb::EncodeU64(id));
}

// Every bag of a relation, and one bag.
inline std::string RelationBags(absl::string_view relation_id) {
  return absl::StrCat(relation_id, kNul);
}
inline std::string Bag(absl::string_view relation_id, absl::string_view bag) {
  return absl::StrCat(relation_id, kNul, bag, kNul);
}

inline std::string Inbox(uint64_t event_id) { return kb::EncodeU64(event_id); }
inline std::string Trace(uint64_t run) { return kb::EncodeU64(run); }

}  // namespace parley::engine::keys

namespace parley::engine {

// The counter at meta `key`, `dflt` when it was never written; DATA_LOSS naming the KB when it
// does not decode.
absl::StatusOr<uint64_t> ReadCounter(const kb::Kb& kb, absl::string_view key, uint64_t dflt);

// DATA_LOSS: "knowledge base <path>, agent <agent>: <what>".
absl::Status DataLoss(const kb::Kb& kb, absl::string_view what);

// Decodes the record `what` stored at `key`.
template <typename Message>
absl::Status ParseRecord(const kb::Kb& kb, absl::string_view what, absl::string_view key,
                         absl::string_view bytes, Message& out) {
  if (!out.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return DataLoss(kb, absl::StrCat(what, " '", key, "' does not decode; the KB is corrupt"));
  }
  return absl::OkStatus();
}

}  // namespace parley::engine
