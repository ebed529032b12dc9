#pragma once

// The RocksDB side of a Store: the database, the ticketed writes and the syncer thread that makes
// them durable (see store.h for the contract). Internal to kb/: only kb's .cc files include this
// header, so that no RocksDB type reaches the rest of Parley.

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
#include "kb/store.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"

namespace parley::kb {

// Turns a RocksDB status into an absl::Status that names the store's path and what failed.
absl::Status ConvertStatus(const rocksdb::Status& s, absl::string_view path,
                           absl::string_view what);

class StoreImpl {
 public:
  StoreImpl(std::string path, const StoreOptions& options, std::unique_ptr<rocksdb::DB> db);
  ~StoreImpl();

  // Applies `batch` atomically and returns its ticket; tickets increase with each write.
  absl::StatusOr<uint64_t> Write(rocksdb::WriteBatch* batch);
  void WhenDurable(uint64_t ticket, std::function<void(absl::Status)> done);
  absl::Status WaitDurable(uint64_t ticket);
  uint64_t durable_ticket() const;
  uint64_t written_ticket() const;

  rocksdb::DB* db() const { return db_.get(); }
  const std::string& path() const { return path_; }
  Durability durability() const { return options_.durability; }
  absl::Status Convert(const rocksdb::Status& s, absl::string_view what) const {
    return ConvertStatus(s, path_, what);
  }

 private:
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
