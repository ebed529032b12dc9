#include "kb/store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "rocksdb/env.h"
#include "rocksdb/options.h"

namespace parley::kb {
namespace {

namespace fs = std::filesystem;

// Store-wide metadata lives under keys starting with NUL; agent names are never empty.
const std::string& SchemaKey() {
  static const std::string key = std::string("\0", 1) + "schema";
  return key;
}

// Opening read-only first must leave the directory exactly as it was: no LOG file either.
class NullLogger : public rocksdb::Logger {
 public:
  using rocksdb::Logger::Logv;
  void Logv(const char*, va_list) override {}
};

rocksdb::Options BaseOptions() {
  rocksdb::Options o;
  o.paranoid_checks = true;
  o.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  // Agents' KBs are small; keep idle memory low (issue: <= 2 MB per extra agent).
  o.write_buffer_size = 4 << 20;
  o.max_write_buffer_number = 2;
  o.max_open_files = 64;
  o.keep_log_file_num = 2;
  o.max_background_jobs = 2;
  return o;
}

// What the directory at `path` holds, decided before RocksDB touches it.
enum class DirState { kMissing, kEmpty, kDatabase };

absl::StatusOr<DirState> Inspect(const std::string& path) {
  std::error_code ec;
  auto st = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return absl::UnavailableError(absl::StrCat("knowledge base ", path, ": ", ec.message()));
  }
  if (!fs::exists(st)) return DirState::kMissing;
  if (!fs::is_directory(st)) {
    return absl::FailedPreconditionError(
        absl::StrCat("knowledge base ", path, ": exists and is not a directory"));
  }
  if (fs::is_empty(path, ec)) return DirState::kEmpty;
  if (!fs::exists(fs::path(path) / "CURRENT")) {
    return absl::FailedPreconditionError(absl::StrCat(
        "knowledge base ", path,
        ": directory is not empty and holds no database (no CURRENT file); refusing to use it"));
  }
  return DirState::kDatabase;
}

absl::Status ConvertStatus(const rocksdb::Status& s, absl::string_view path,
                           absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg =
      absl::StrCat("knowledge base ", path, ": ", what, ": ", std::string(s.ToString()));
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsIOError()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

absl::Status CheckSchemaValue(const std::string& path, const std::string& value) {
  int version = 0;
  if (!absl::SimpleAtoi(value, &version)) {
    return absl::DataLossError(absl::StrCat("knowledge base ", path, ": schema version '", value,
                                            "' is not a number; the KB is corrupt"));
  }
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "knowledge base ", path, ": schema version ", version,
        " is newer than this build supports (", kSchemaVersion, "); upgrade Parley to open it"));
  }
  if (version < 1) {
    return absl::DataLossError(
        absl::StrCat("knowledge base ", path, ": invalid schema version ", version));
  }
  return absl::OkStatus();
}

// Checks an existing database without writing to its directory: checksums and schema version.
absl::Status CheckReadOnly(const std::string& path, const StoreOptions& options) {
  rocksdb::Options o = BaseOptions();
  o.info_log = std::make_shared<NullLogger>();
  rocksdb::DB* raw = nullptr;
  RETURN_IF_ERROR(ConvertStatus(rocksdb::DB::OpenForReadOnly(o, path, &raw), path, "open"));
  std::unique_ptr<rocksdb::DB> db(raw);
  if (options.verify_on_open) {
    RETURN_IF_ERROR(ConvertStatus(db->VerifyChecksum(), path, "checksum verification"));
  }
  std::string value;
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  rocksdb::Status s = db->Get(ro, SchemaKey(), &value);
  if (s.IsNotFound()) {
    return absl::DataLossError(absl::StrCat(
        "knowledge base ", path, ": no schema version recorded; not a Parley KB or corrupt"));
  }
  RETURN_IF_ERROR(ConvertStatus(s, path, "reading schema version"));
  return CheckSchemaValue(path, value);
}

// Creates a complete, empty KB at `path` atomically: built beside it, then renamed into place, so
// that a crash during creation leaves either nothing or a KB that opens.
absl::Status Create(const std::string& path) {
  const std::string building = path + ".creating";
  std::error_code ec;
  if (const fs::path parent = fs::path(path).parent_path(); !parent.empty()) {
    fs::create_directories(parent, ec);
    if (ec) {
      return absl::UnavailableError(absl::StrCat("knowledge base ", path, ": cannot create ",
                                                 parent.string(), ": ", ec.message()));
    }
  }
  fs::remove_all(building, ec);  // a creation that crashed before; it was never in use
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("knowledge base ", path, ": cannot remove ", building, ": ", ec.message()));
  }
  {
    rocksdb::Options o = BaseOptions();
    o.create_if_missing = true;
    o.error_if_exists = true;
    rocksdb::DB* raw = nullptr;
    RETURN_IF_ERROR(ConvertStatus(rocksdb::DB::Open(o, building, &raw), path, "create"));
    std::unique_ptr<rocksdb::DB> db(raw);
    rocksdb::WriteOptions wo;
    wo.sync = true;
    RETURN_IF_ERROR(ConvertStatus(db->Put(wo, SchemaKey(), absl::StrCat(kSchemaVersion)), path,
                                  "writing schema version"));
    RETURN_IF_ERROR(ConvertStatus(db->Close(), path, "closing the new KB"));
  }
  // rename(2) replaces an empty directory at `path`; make it durable in the parent.
  fs::rename(building, path, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("knowledge base ", path, ": cannot move ", building,
                                               " into place: ", ec.message()));
  }
  const std::string parent = fs::path(path).parent_path().empty()
                                 ? std::string(".")
                                 : fs::path(path).parent_path().string();
  if (int fd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY); fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path,
                                                   const StoreOptions& options) {
  ASSIGN_OR_RETURN(DirState state, Inspect(path));
  if (state != DirState::kDatabase) {
    if (!options.create_if_missing) {
      return absl::NotFoundError(absl::StrCat("knowledge base ", path, ": does not exist"));
    }
    RETURN_IF_ERROR(Create(path));
  }
  RETURN_IF_ERROR(CheckReadOnly(path, options));

  rocksdb::Options o = BaseOptions();
  rocksdb::DB* raw = nullptr;
  RETURN_IF_ERROR(ConvertStatus(rocksdb::DB::Open(o, path, &raw), path, "open"));
  return std::unique_ptr<Store>(new Store(path, options, std::unique_ptr<rocksdb::DB>(raw)));
}

Store::Store(std::string path, const StoreOptions& options, std::unique_ptr<rocksdb::DB> db)
    : path_(std::move(path)), options_(options), db_(std::move(db)) {
  if (options_.durability == Durability::kGroupCommit) {
    syncer_ = std::thread([this] { SyncLoop(); });
  }
}

Store::~Store() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (syncer_.joinable()) syncer_.join();
  // Close flushes nothing we rely on (the WAL is synced); a failure here cannot lose a durable
  // commit, so there is nobody to report it to.
  db_->Close().PermitUncheckedError();
}

absl::Status Store::Convert(const rocksdb::Status& s, absl::string_view what) const {
  return ConvertStatus(s, path_, what);
}

absl::StatusOr<uint64_t> Store::Write(rocksdb::WriteBatch* batch) {
  absl::MutexLock write_lock(&write_mu_);
  rocksdb::WriteOptions wo;
  wo.sync = options_.durability == Durability::kSync;
  RETURN_IF_ERROR(Convert(db_->Write(wo, batch), "commit"));
  absl::MutexLock lock(&mu_);
  const uint64_t ticket = ++written_;
  if (wo.sync) durable_ = ticket;
  return ticket;
}

void Store::WhenDurable(uint64_t ticket, std::function<void(absl::Status)> done) {
  absl::Status status;
  {
    absl::MutexLock lock(&mu_);
    // Run at once only when nothing registered earlier is still waiting to run: callbacks run
    // in ticket order, and a caller's callbacks in the order it registered them.
    const bool inline_ok = options_.durability == Durability::kSync ||
                           (ticket <= durable_ && waiters_.empty() && !delivering_);
    if (sync_error_.ok() && !inline_ok) {
      waiters_.push_back({ticket, std::move(done)});
      return;
    }
    status = sync_error_;
  }
  done(status);
}

absl::Status Store::WaitDurable(uint64_t ticket) {
  absl::MutexLock lock(&mu_);
  auto ready = [this, ticket]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return durable_ >= ticket || !sync_error_.ok();
  };
  mu_.Await(absl::Condition(&ready));
  if (!sync_error_.ok()) return sync_error_;
  return absl::OkStatus();
}

uint64_t Store::written_ticket() const {
  absl::MutexLock lock(&mu_);
  return written_;
}

uint64_t Store::durable_ticket() const {
  absl::MutexLock lock(&mu_);
  return durable_;
}

void Store::SyncLoop() {
  for (;;) {
    uint64_t target = 0;
    absl::Status status;
    {
      absl::MutexLock lock(&mu_);
      auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || written_ > durable_ || HasReadyWaiters();
      };
      mu_.Await(absl::Condition(&work));
      if (written_ == durable_ && !HasReadyWaiters()) return;  // stopping, all done
      target = written_;
    }
    if (target > durable_ticket()) {
      status = Convert(db_->SyncWAL(), "WAL sync");
    }
    // Deliver every ready callback, lowest ticket first, until none is left; meanwhile new
    // callbacks queue behind them.
    for (;;) {
      std::vector<Waiter> ready;
      {
        absl::MutexLock lock(&mu_);
        if (status.ok()) {
          durable_ = std::max(durable_, target);
        } else {
          // A failed fsync leaves the WAL's state unknown; nothing after it may be reported
          // durable.
          sync_error_ = status;
        }
        std::stable_sort(waiters_.begin(), waiters_.end(),
                         [](const Waiter& a, const Waiter& b) { return a.ticket < b.ticket; });
        auto split = waiters_.begin();
        while (split != waiters_.end() && (split->ticket <= durable_ || !sync_error_.ok())) ++split;
        ready.assign(std::make_move_iterator(waiters_.begin()), std::make_move_iterator(split));
        waiters_.erase(waiters_.begin(), split);
        delivering_ = !ready.empty();
        if (ready.empty()) break;
      }
      for (auto& w : ready) w.done(w.ticket <= target && status.ok() ? absl::OkStatus() : status);
    }
    if (!status.ok()) return;
  }
}

bool Store::HasReadyWaiters() const {
  for (const auto& w : waiters_) {
    if (w.ticket <= durable_) return true;
  }
  return false;
}

}  // namespace parley::kb
