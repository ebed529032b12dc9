#pragma once

// The relation events an agent owes its peers, and the sequence numbers that make their delivery
// exactly-once and in order.
//
// Each (relation, destination) has its own sequence: a run stages the next event to a destination
// with the next number (its out cursor) in the run's transaction, and the entry stays in the
// outbox until the destination acknowledges that number. In the other direction, the in cursor of
// (relation, sender) is the last number received from it (see Engine::EnqueueFromPeer).
//
// An entry is built in one place, Outbox::Stage, from the relation's record and the sender; what
// goes on the wire is the stored entry's `event` as it is (v1::RelationEvent, the one shape of a
// relation event). Internal to engine/.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kb/kb.h"
#include "parley/v1/kb.pb.h"

namespace parley::engine {

// Who sends the events: stamped on every entry.
struct Sender {
  absl::string_view unit;
  absl::string_view service;
  // The leadership term the service's data is sent under (0: the service declares none).
  int64_t service_term = 0;
};

class Outbox {
 public:
  // Reads the entries not yet acknowledged and the next entry id. Forgets anything staged.
  absl::Status Load(const kb::Kb& kb);

  // Whether `destination` was ever sent an event of `relation_id`, as `txn` sees it.
  static absl::StatusOr<bool> Introduced(const kb::Txn& txn, absl::string_view relation_id,
                                         absl::string_view destination);

  // Stages in `txn` the next event of `relation` to `destination`, numbered with the next
  // sequence of the pair, and appends it to `trace`'s messages. The first event to a destination
  // introduces this unit, so a CHANGED becomes a JOINED; a DEPARTED to a destination never
  // introduced is not sent (nothing staged). `fill` adds the data changes, seeing the final kind.
  // Staged entries count in size() at once; they become unacknowledged entries with Committed().
  absl::Status Stage(kb::Txn& txn, const v1::RelationRecord& relation,
                     absl::string_view destination, v1::RelationEventKind kind, Sender sender,
                     uint64_t run, absl::FunctionRef<absl::Status(v1::RelationEvent&)> fill,
                     v1::Trace& trace);
  // Stages in `txn` the deletion of every unacknowledged entry of `relation_id` to
  // `destination` (a remote unit that departed); they leave size() at once, and the pending set
  // with Committed(). The pair's sequence goes on where it was.
  void StageForget(kb::Txn& txn, absl::string_view relation_id, absl::string_view destination);
  // Writes the next entry id in `txn` if entries were staged.
  void StageNextId(kb::Txn& txn) const;
  // The run's transaction committed: its staged entries wait for acknowledgement.
  void Committed();
  // The run's transaction was dropped: so are its staged entries.
  void Discard();

  // `destination` acknowledged every event of `relation_id` up to `sequence`: deletes them in a
  // transaction of its own. Returns its durability ticket (0 when nothing changed).
  absl::StatusOr<uint64_t> Acknowledge(kb::Kb& kb, absl::string_view destination,
                                       absl::string_view relation_id, uint64_t sequence);

  // Entries for one destination in id order, or for all (destination empty) in id order.
  static absl::StatusOr<std::vector<v1::OutboxEntry>> Entries(const kb::Kb& kb,
                                                              absl::string_view destination);
  // Up to `limit` entries for `destination` with ids in (after, through], in id order.
  static absl::StatusOr<std::vector<v1::OutboxEntry>> EntriesAfter(const kb::Kb& kb,
                                                                   absl::string_view destination,
                                                                   uint64_t after, size_t limit,
                                                                   uint64_t through);

  size_t size() const { return size_; }
  // Destinations with unacknowledged entries.
  std::set<std::string> Destinations() const;
  // Unacknowledged entries per destination.
  std::map<std::string, size_t> UnackedByDestination() const;
  // The id the next entry staged will get.
  uint64_t next_id() const { return next_id_; }

 private:
  struct Pending {
    std::string destination, relation;
    uint64_t sequence, id;
  };

  uint64_t next_id_ = 1;
  // The committed next id, while a run stages entries.
  uint64_t committed_next_id_ = 1;
  size_t size_ = 0;
  size_t committed_size_ = 0;
  // Unacknowledged entries per (destination, relation): (sequence, id), oldest first.
  std::map<std::pair<std::string, std::string>, std::deque<std::pair<uint64_t, uint64_t>>> unacked_;
  std::vector<Pending> staged_;
  std::vector<std::pair<std::string, std::string>> forgotten_;
};

// Entries stored before schema version 2 (kb/store.h) hold the event's fields in the entry itself
// (OutboxEntry fields 2-9 and 11-13): moves them into `entry.event()`. Entries that have an
// event, or no such fields, are left as they are. Every read of a stored entry goes through it: the
// outbox's and the messages of stored traces.
void UpgradeOutboxEntry(v1::OutboxEntry& entry);
// Parses a stored outbox entry (ParseRecord) and upgrades it.
absl::Status ParseOutboxEntry(const kb::Kb& kb, absl::string_view key, absl::string_view value,
                              v1::OutboxEntry& entry);

// The last sequence received from `sender` about `relation_id`; nullopt when none was.
absl::StatusOr<std::optional<uint64_t>> LastReceived(const kb::Kb& kb,
                                                     absl::string_view relation_id,
                                                     absl::string_view sender);
// Records in `txn` that `sequence` was received from `sender` about `relation_id`.
void StageReceived(kb::Txn& txn, absl::string_view relation_id, absl::string_view sender,
                   uint64_t sequence);

}  // namespace parley::engine
