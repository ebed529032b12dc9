#pragma once

// A Store is one RocksDB database holding the knowledge bases of one or more agents (see kb.h),
// and the place where their commits become durable.
//
// Durability:
//  - kSync: each Write is fsynced before it returns.
//  - kGroupCommit: Write returns once the batch is applied and in the write-ahead log, not yet
//    synced; a syncer thread makes every write so far durable with one WAL sync and then runs the
//    callbacks registered with WhenDurable. Callers must not report a commit, acknowledge an event
//    or send a message that depends on it before its ticket is durable.
// Either way a crash loses at most a suffix of writes that were never reported durable: RocksDB
// recovers the WAL to a consistent point in time, and each Write is atomic.
//
// Writes reach a store only through Kb::Commit (kb.h). RocksDB is an implementation detail of
// kb/: no type of it appears in this header or kb.h (see store_impl.h).
//
// Thread-safe: any thread may commit, wait or register callbacks.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace parley::kb {

enum class Durability { kSync, kGroupCommit };

struct StoreOptions {
  Durability durability = Durability::kGroupCommit;
  // Create the database when the directory does not exist or is empty. An existing directory
  // that is not a Parley KB is never written to.
  bool create_if_missing = true;
  // Verify every block checksum when opening, so a corrupt KB is reported before it is used.
  bool verify_on_open = true;
};

// The on-disk format this build reads and writes. A KB with a newer version is refused; an older
// one opens, and is recorded as this version on open (an older build then refuses it), while the
// records it holds stay as they are: whoever reads a record reads every version of it.
//   1  the first.
//   2  an outbox entry (and a trace's messages) holds the relation event as it goes on the wire,
//      OutboxEntry.event (proto/parley/v1/kb.proto); version-1 entries, with the event's fields
//      in the entry itself, are read by engine::UpgradeOutboxEntry (engine/outbox.h).
inline constexpr int kSchemaVersion = 2;

class StoreImpl;

class Store {
 public:
  // Opens or creates the store at `path`. Errors name the path and the problem; a failed open
  // writes nothing.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path,
                                                     const StoreOptions& options);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Runs `done` once every write up to `ticket` is durable: at once (on this thread) if it already
  // is, else on the syncer thread. `done` gets the sync's status; it must not block. Tickets
  // increase with each write.
  void WhenDurable(uint64_t ticket, std::function<void(absl::Status)> done);

  // Blocks until `ticket` is durable.
  absl::Status WaitDurable(uint64_t ticket);

  // The highest ticket known durable, and the highest written.
  uint64_t durable_ticket() const;
  uint64_t written_ticket() const;

  const std::string& path() const;
  Durability durability() const;

 private:
  friend class Kb;
  friend class Txn;
  explicit Store(std::unique_ptr<StoreImpl> impl);

  std::unique_ptr<StoreImpl> impl_;
};

}  // namespace parley::kb
