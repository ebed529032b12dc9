#include "kb/store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kb/store_impl.h"
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

absl::StatusOr<int> CheckSchemaValue(const std::string& path, const std::string& value) {
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
  return version;
}

// Checks an existing database without writing to its directory: checksums and schema version.
// Returns the recorded version.
absl::StatusOr<int> CheckReadOnly(const std::string& path, const StoreOptions& options) {
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
  ASSIGN_OR_RETURN(const int version, CheckReadOnly(path, options));

  rocksdb::Options o = BaseOptions();
  rocksdb::DB* raw = nullptr;
  RETURN_IF_ERROR(ConvertStatus(rocksdb::DB::Open(o, path, &raw), path, "open"));
  if (version < kSchemaVersion) {
    // Records of older versions are read as they are (kb/store.h); from now on this build may
    // write records of its own version, which older builds must refuse.
    rocksdb::WriteOptions wo;
    wo.sync = true;
    if (absl::Status s = ConvertStatus(raw->Put(wo, SchemaKey(), absl::StrCat(kSchemaVersion)),
                                       path, "recording the schema version");
        !s.ok()) {
      delete raw;
      return s;
    }
  }
  return std::unique_ptr<Store>(
      new Store(std::make_unique<StoreImpl>(path, options, std::unique_ptr<rocksdb::DB>(raw))));
}

Store::Store(std::unique_ptr<StoreImpl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;

void Store::WhenDurable(uint64_t ticket, std::function<void(absl::Status)> done) {
  impl_->WhenDurable(ticket, std::move(done));
}
absl::Status Store::WaitDurable(uint64_t ticket) { return impl_->WaitDurable(ticket); }
uint64_t Store::durable_ticket() const { return impl_->durable_ticket(); }
uint64_t Store::written_ticket() const { return impl_->written_ticket(); }
const std::string& Store::path() const { return impl_->path(); }
Durability Store::durability() const { return impl_->durability(); }

}  // namespace parley::kb
