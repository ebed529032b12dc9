#include "kb/store_impl.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace parley::kb {

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

StoreImpl::StoreImpl(std::string path, const StoreOptions& options, std::unique_ptr<rocksdb::DB> db)
    : path_(std::move(path)), options_(options), db_(std::move(db)) {
  if (options_.durability == Durability::kGroupCommit) {
    syncer_ = std::thread([this] { SyncLoop(); });
  }
}

StoreImpl::~StoreImpl() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (syncer_.joinable()) syncer_.join();
  // Close flushes nothing we rely on (the WAL is synced); a failure here cannot lose a durable
  // commit, so there is nobody to report it to.
  db_->Close().PermitUncheckedError();
}

absl::StatusOr<uint64_t> StoreImpl::Write(rocksdb::WriteBatch* batch) {
  absl::MutexLock write_lock(&write_mu_);
  rocksdb::WriteOptions wo;
  wo.sync = options_.durability == Durability::kSync;
  RETURN_IF_ERROR(Convert(db_->Write(wo, batch), "commit"));
  absl::MutexLock lock(&mu_);
  const uint64_t ticket = ++written_;
  if (wo.sync) durable_ = ticket;
  return ticket;
}

void StoreImpl::WhenDurable(uint64_t ticket, std::function<void(absl::Status)> done) {
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

absl::Status StoreImpl::WaitDurable(uint64_t ticket) {
  absl::MutexLock lock(&mu_);
  auto ready = [this, ticket]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return durable_ >= ticket || !sync_error_.ok();
  };
  mu_.Await(absl::Condition(&ready));
  if (!sync_error_.ok()) return sync_error_;
  return absl::OkStatus();
}

uint64_t StoreImpl::written_ticket() const {
  absl::MutexLock lock(&mu_);
  return written_;
}

uint64_t StoreImpl::durable_ticket() const {
  absl::MutexLock lock(&mu_);
  return durable_;
}

void StoreImpl::SyncLoop() {
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

bool StoreImpl::HasReadyWaiters() const {
  for (const auto& w : waiters_) {
    if (w.ticket <= durable_) return true;
  }
  return false;
}

}  // namespace parley::kb
