#pragma once

// The relations an agent takes part in: their records (endpoint, remote service, remote units,
// the units this one sends to), their data bags, the relationship facts derived from the data
// (<endpoint>.joined, <endpoint>.ready, <endpoint>.remote.<key>) and the relation events a run
// owes its peers. A run stages its changes here and in its transaction; a failed run is undone by
// Load. Internal to engine/.

#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/outbox.h"
#include "engine/spec.h"
#include "kb/kb.h"
#include "parley/v1/kb.pb.h"

namespace parley::engine {

class Relations {
 public:
  // Reads the records. Forgets what a run staged.
  absl::Status Load(const kb::Kb& kb);

  // Every relation ever known here, by id; broken ones are marked gone.
  const std::map<std::string, v1::RelationRecord>& records() const { return records_; }

  // A run begins: nothing is staged.
  void BeginRun() { run_ = {}; }

  // Applies the relation change `event` carries to the records and to `txn`: membership,
  // the remote unit's and service's data. `event`'s endpoint is declared (the caller checked).
  // Returns whether the relationship facts of its endpoint may have changed; false for an
  // event about a relation that is gone or a unit that departed meanwhile (stale: no change).
  absl::StatusOr<bool> Apply(const v1::Event& event, kb::Txn& txn);

  // The relationship facts of `endpoint` as the relation data stands in `txn`, by name.
  absl::StatusOr<std::map<std::string, std::string>> DerivedFacts(const EndpointSpec& endpoint,
                                                                  const kb::Txn& txn) const;

  // Relations attached to `endpoint` (all of them when empty) that are neither gone nor broken by
  // this run.
  std::vector<const v1::RelationRecord*> Live(absl::string_view endpoint) const;

  // Writes (`value`) or deletes (nullopt) `key` in this unit's bag (or, with `service`, this
  // service's) in `txn`; peers are sent the change once the run commits.
  absl::Status SetLocalData(kb::Txn& txn, absl::string_view relation_id, absl::string_view key,
                            std::optional<absl::string_view> value, bool service);

  // At commit, in this order: stages in `outbox` the relation events this run owes its peers
  // (changes of this unit's data, introductions, departures); writes the records of the relations
  // the run changed, deleting the data of those it broke; returns the broken events to queue for
  // relations a departure left without units.
  absl::Status StageMessages(kb::Txn& txn, Outbox& outbox, Sender sender, uint64_t run,
                             v1::Trace& trace) const;
  absl::Status StageRecords(kb::Txn& txn);
  std::vector<v1::Event> FollowUps() const;

  // Service-bag changes ignored because they came from an older leadership term of the remote
  // service than one already applied (fencing), since this object was made.
  uint64_t stale_service_changes() const { return stale_service_changes_; }

  // See Engine::CheckPeerEvent.
  absl::Status CheckPeerEvent(const kb::Kb& kb, absl::string_view relation_id,
                              absl::string_view sender, v1::RelationEventKind kind) const;

 private:
  bool IsLive(const std::string& id, const v1::RelationRecord& rel) const {
    return !rel.gone() && !run_.broken.contains(id);
  }

  // Whether `rc`'s service changes are from a term at least as new as any applied before for its
  // relation (recording the newer term in `txn`); false (and counted) when they are stale.
  absl::StatusOr<bool> AcceptServiceTerm(kb::Txn& txn, const v1::RelationChange& rc);

  std::map<std::string, v1::RelationRecord> records_;
  uint64_t stale_service_changes_ = 0;

  // What the current run changed.
  struct RunChanges {
    // Relation id -> key -> new value (nullopt: deleted), for the unit and the service bag.
    std::map<std::string, std::map<std::string, std::optional<std::string>>> local_unit;
    std::map<std::string, std::map<std::string, std::optional<std::string>>> local_service;
    std::set<std::string> changed;
    std::set<std::string> broken;
    // Relations left without remote units by a departed event: a broken event follows.
    std::set<std::string> follow_up_broken;
    // (relation, unit) this agent unrelated from: the unit is told with a DEPARTED event.
    std::vector<std::pair<std::string, std::string>> departs;
    // (relation, unit) of remote units that departed: nothing more is owed to them.
    std::vector<std::pair<std::string, std::string>> left;
  };
  RunChanges run_;
};

// A bag of a relation, committed (`kb`) or as a run's transaction sees it (`txn`). Bags: "lu"
// (local unit), "ls" (local service), "ru:<unit>" (a remote unit), "rs" (the remote service).
absl::StatusOr<std::map<std::string, std::string>> ReadBag(const kb::Kb& kb,
                                                           absl::string_view relation_id,
                                                           absl::string_view bag);
absl::StatusOr<std::map<std::string, std::string>> ReadBag(const kb::Txn& txn,
                                                           absl::string_view relation_id,
                                                           absl::string_view bag);

}  // namespace parley::engine
