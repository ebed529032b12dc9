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
// Thread-safe: any thread may Write, Get or register callbacks.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"

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

// The on-disk format this build reads and writes. A KB with a newer version is refused.
inline constexpr int kSchemaVersion = 1;

class Store {
 public:
  // Opens or creates the store at `path`. Errors name the path and the problem; a failed open
  // writes nothing.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path,
                                                     const StoreOptions& options);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Applies `batch` atomically and returns its ticket; tickets increase with each write.
  absl::StatusOr<uint64_t> Write(rocksdb::WriteBatch* batch);

  // Runs `done` once every write up to `ticket` is durable: at once (on this thread) if it already
  // is, else on the syncer thread. `done` gets the sync's status; it must not block.
  void WhenDurable(uint64_t ticket, std::function<void(absl::Status)> done);

  // Blocks until `ticket` is durable.
  absl::Status WaitDurable(uint64_t ticket);

  // The highest ticket known durable, and the highest written.
  uint64_t durable_ticket() const;
  uint64_t written_ticket() const;

  rocksdb::DB* db() const { return db_.get(); }
  const std::string& path() const { return path_; }
  Durability durability() const { return options_.durability; }

  // Turns a RocksDB status into an absl::Status that names this store's path.
  absl::Status Convert(const rocksdb::Status& s, absl::string_view what) const;

 private:
  Store(std::string path, const StoreOptions& options, std::unique_ptr<rocksdb::DB> db);
  void SyncLoop();
  bool HasReadyWaiters() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const StoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;

  struct Waiter {
    uint64_t ticket;
    std::function<void(absl::Status)> done;
  };
  mutable absl::Mutex mu_;
  uint64_t written_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t durable_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status sync_error_ ABSL_GUARDED_BY(mu_);
  std::vector<Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // The syncer is running callbacks: new ones queue behind them.
  bool delivering_ ABSL_GUARDED_BY(mu_) = false;
  // Serializes writes so that tickets follow WAL order.
  absl::Mutex write_mu_;
  std::thread syncer_;
};

}  // namespace parley::kb
