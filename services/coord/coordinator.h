#pragma once

// The coordination seam (docs/coordination.md): what the agents need from a consensus store —
// leases, per-service leadership, linearizable reads and named locks — without naming the store.
// The engine never sees it; the agent runtime does, through this interface only. Its one
// implementation is EtcdCoordinator (etcd_coordinator.h).
//
// Every call may block on the network: call it from a thread of its own, never from an agent's
// strand or a gRPC reaction. Calls that wait (Campaign, WaitForLeader, Lock) end at their
// deadline or when Close() is called, whichever comes first. Implementations are thread-safe.

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace parley::coord {

// A lease: keys written under it vanish when it expires or is revoked.
using LeaseId = int64_t;

// What a campaign won: the election key that makes its holder leader. `term` is the key's create
// revision: a later leader of the same election always has a larger one, so it is a term number
// that only grows and a fencing token for what the leader writes.
struct LeaderKey {
  std::string election;
  std::string key;
  int64_t term = 0;
  LeaseId lease = 0;
};

// An election's current leader as observed: the value its campaign proclaimed (Parley puts the
// unit's name there) and its term.
struct Leader {
  std::string value;
  int64_t term = 0;
};

// A held lock. `token` (the lock key's create revision) grows with every grant of the same lock:
// a fencing token for what the holder does under it.
struct LockKey {
  std::string name;
  std::string key;
  int64_t token = 0;
};

class Coordinator {
 public:
  virtual ~Coordinator() = default;

  // Leases. KeepAlive refreshes once and returns the TTL left; NotFound when it already expired.
  virtual absl::StatusOr<LeaseId> GrantLease(absl::Duration ttl) = 0;
  virtual absl::StatusOr<absl::Duration> KeepAlive(LeaseId lease) = 0;
  virtual absl::Status RevokeLease(LeaseId lease) = 0;

  // Leadership of `election` (Parley names it after the model and the service). Campaign waits
  // until this candidate leads (candidates are served in the order they campaigned) and returns
  // its key; the key lives as long as `lease`. DeadlineExceeded (and the place in the queue
  // given up) when `deadline` passes first.
  virtual absl::StatusOr<LeaderKey> Campaign(const std::string& election, const std::string& value,
                                             LeaseId lease, absl::Time deadline) = 0;
  // The current leader (a linearizable read), or nullopt when nobody leads.
  virtual absl::StatusOr<std::optional<Leader>> CurrentLeader(const std::string& election) = 0;
  // Waits for a leader whose term is larger than `after_term` and returns it.
  virtual absl::StatusOr<Leader> WaitForLeader(const std::string& election, int64_t after_term,
                                               absl::Time deadline) = 0;
  // Whether `key` still leads (a linearizable read): false once it resigned or its lease ended.
  virtual absl::StatusOr<bool> StillLeads(const LeaderKey& key) = 0;
  // Gives leadership up (the next candidate in line leads); a key already gone is not an error.
  virtual absl::Status Resign(const LeaderKey& key) = 0;

  // Linearizable reads and writes of plain keys (nullopt: no such key). A Put under a lease
  // (0: none) vanishes with it. Put returns the revision it created.
  virtual absl::StatusOr<std::optional<std::string>> Get(const std::string& key) = 0;
  virtual absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value,
                                      LeaseId lease) = 0;

  // Named locks: Lock waits until this caller holds `name` (waiters are served in the order they
  // asked); the lock is held until Unlock or until `lease` ends.
  virtual absl::StatusOr<LockKey> Lock(const std::string& name, LeaseId lease,
                                       absl::Time deadline) = 0;
  virtual absl::Status Unlock(const LockKey& key) = 0;

  // Cancels every call in flight (they return Cancelled) and makes later calls fail the same way.
  virtual void Close() = 0;
};

}  // namespace parley::coord
