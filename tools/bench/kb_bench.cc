// The KB scenario: the commit of a typical run (a few small keys) through our Kb, in sync mode
// next to a raw RocksDB synced WriteBatch, and in group-commit mode with durability confirmed by
// Store::WhenDurable. Targets of the issue: ours >= 0.8x raw in sync mode; group commit >= 5x
// the raw sync rate.
//
// The three sides are measured in alternating slices (raw, ours, group, raw, ours, group, ...) in
// one process, so that the machine's noise falls on all of them alike.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kb/kb.h"
#include "base/status_macros.h"
#include "kb/store.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"
#include "tools/bench/bench.h"

namespace parley::bench {
namespace {

constexpr double kTargetRatioSync = 0.8;
constexpr double kTargetGroupVsRawSync = 5;
// How long a group-commit slice may wait for its last confirmation.
constexpr double kConfirmTimeoutSeconds = 60;

// The raw baseline deliberately bypasses kb/, so it converts its own RocksDB statuses.
absl::Status RawStatus(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("raw RocksDB baseline: ", what, ": ", s.ToString()));
}

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The keys of a commit and values that differ in every commit.
class Payload {
 public:
  Payload(int keys, int value_bytes) : value_(static_cast<size_t>(value_bytes), 'v') {
    for (int i = 0; i < keys; ++i) keys_.push_back(absl::StrCat("bench.fact.", i));
  }
  const std::vector<std::string>& keys() const { return keys_; }
  // The value of key `i` in the current commit; valid until the next call.
  absl::string_view Value(size_t i) {
    uint64_t v = commit_ * keys_.size() + i;
    static const char* kDigits = "0123456789abcdef";
    for (size_t pos = std::min<size_t>(16, value_.size()); pos > 0; --pos, v >>= 4) {
      value_[pos - 1] = kDigits[v & 0xf];
    }
    return value_;
  }
  void Next() { ++commit_; }

 private:
  std::vector<std::string> keys_;
  std::string value_;
  uint64_t commit_ = 0;
};

struct Rate {
  int64_t commits = 0;
  double seconds = 0;
  double PerSecond() const { return seconds > 0 ? static_cast<double>(commits) / seconds : NAN; }
  void Add(const Rate& o) {
    commits += o.commits;
    seconds += o.seconds;
  }
};

// Synced WriteBatches straight into RocksDB, with the same key bytes our Kb writes.
absl::StatusOr<Rate> RawSlice(rocksdb::DB* db, const std::vector<std::string>& full_keys,
                              Payload& payload, double seconds) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::WriteBatch batch;
  Rate rate;
  const int64_t start = NowNanos();
  const int64_t end = start + static_cast<int64_t>(seconds * 1e9);
  int64_t now = start;
  while (now < end) {
    batch.Clear();
    for (size_t i = 0; i < full_keys.size(); ++i) {
      absl::string_view v = payload.Value(i);
      RETURN_IF_ERROR(
          RawStatus(batch.Put(full_keys[i], rocksdb::Slice(v.data(), v.size())), "put"));
    }
    payload.Next();
    RETURN_IF_ERROR(RawStatus(db->Write(wo, &batch), "write"));
    ++rate.commits;
    now = NowNanos();
  }
  rate.seconds = static_cast<double>(now - start) / 1e9;
  return rate;
}

// Our commit path: a Txn filled with the run's keys, then Kb::Commit on a kSync store.
absl::StatusOr<Rate> OursSyncSlice(kb::Kb& kb, kb::Txn& txn, Payload& payload, double seconds) {
  Rate rate;
  const int64_t start = NowNanos();
  const int64_t end = start + static_cast<int64_t>(seconds * 1e9);
  int64_t now = start;
  while (now < end) {
    for (size_t i = 0; i < payload.keys().size(); ++i) {
      txn.Put(kb::Space::kFact, payload.keys()[i], payload.Value(i));
    }
    payload.Next();
    RETURN_IF_ERROR(kb.Commit(txn).status());
    ++rate.commits;
    now = NowNanos();
  }
  rate.seconds = static_cast<double>(now - start) / 1e9;
  return rate;
}

// Confirmations of one group-commit slice. Callbacks run on the store's syncer thread, or on
// the committing thread when the ticket is already durable.
struct Confirmations {
  std::atomic<int64_t> confirmed{0};
  std::atomic<int64_t> failed{0};
  std::atomic<int64_t> last_ns{0};

  void Confirm(const absl::Status& s) {
    if (!s.ok()) failed.fetch_add(1);
    const int64_t now = NowNanos();
    int64_t seen = last_ns.load();
    while (seen < now && !last_ns.compare_exchange_weak(seen, now)) {
    }
    confirmed.fetch_add(1, std::memory_order_release);
  }
};

struct GroupRate {
  // Commits over the time from the slice's start to the last confirmation.
  Rate confirmed;
  // Commits over the time spent committing (durability not yet known).
  Rate applied;
};

// Runs committed back to back from this thread on a kGroupCommit store; each commit counts once
// WhenDurable confirms it.
absl::StatusOr<GroupRate> GroupSlice(kb::Kb& kb, kb::Txn& txn, Payload& payload, double seconds) {
  auto confirmations = std::make_shared<Confirmations>();
  int64_t issued = 0;
  const int64_t start = NowNanos();
  const int64_t end = start + static_cast<int64_t>(seconds * 1e9);
  int64_t now = start;
  while (now < end) {
    for (size_t i = 0; i < payload.keys().size(); ++i) {
      txn.Put(kb::Space::kFact, payload.keys()[i], payload.Value(i));
    }
    payload.Next();
    ASSIGN_OR_RETURN(uint64_t ticket, kb.Commit(txn));
    kb.store()->WhenDurable(ticket, [confirmations](absl::Status s) { confirmations->Confirm(s); });
    ++issued;
    now = NowNanos();
  }
  const int64_t applied_end = now;
  const int64_t deadline = now + static_cast<int64_t>(kConfirmTimeoutSeconds * 1e9);
  while (confirmations->confirmed.load(std::memory_order_acquire) < issued) {
    if (NowNanos() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("group commit: ", confirmations->confirmed.load(), " of ", issued,
                       " commits confirmed durable after ", kConfirmTimeoutSeconds, " s"));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  if (confirmations->failed.load() > 0) {
    return absl::DataLossError(absl::StrCat("group commit: ", confirmations->failed.load(),
                                            " commits reported a failed WAL sync"));
  }
  GroupRate rate;
  rate.confirmed = {issued, static_cast<double>(confirmations->last_ns.load() - start) / 1e9};
  rate.applied = {issued, static_cast<double>(applied_end - start) / 1e9};
  return rate;
}

absl::StatusOr<std::unique_ptr<rocksdb::DB>> OpenRaw(const std::string& path) {
  rocksdb::Options o;
  o.create_if_missing = true;
  rocksdb::DB* raw = nullptr;
  RETURN_IF_ERROR(RawStatus(rocksdb::DB::Open(o, path, &raw), absl::StrCat("open ", path)));
  return std::unique_ptr<rocksdb::DB>(raw);
}

}  // namespace

absl::StatusOr<std::vector<Report>> RunKbBench(const KbBenchOptions& options) {
  // Destroyed last, after every database in it is closed.
  ASSIGN_OR_RETURN(TempDir dir, TempDir::Create(options.dir));

  kb::StoreOptions sync_options;
  sync_options.durability = kb::Durability::kSync;
  ASSIGN_OR_RETURN(auto sync_store, kb::Store::Open(dir.Sub("ours-sync"), sync_options));
  ASSIGN_OR_RETURN(auto sync_kb, kb::Kb::Open(sync_store.get(), "bench"));
  auto sync_txn = sync_kb->Begin();

  kb::StoreOptions group_options;
  group_options.durability = kb::Durability::kGroupCommit;
  ASSIGN_OR_RETURN(auto group_store, kb::Store::Open(dir.Sub("ours-group"), group_options));
  ASSIGN_OR_RETURN(auto group_kb, kb::Kb::Open(group_store.get(), "bench"));
  auto group_txn = group_kb->Begin();

  ASSIGN_OR_RETURN(auto raw_db, OpenRaw(dir.Sub("raw-sync")));

  Payload raw_payload(options.keys, options.value_bytes);
  Payload sync_payload(options.keys, options.value_bytes);
  Payload group_payload(options.keys, options.value_bytes);
  std::vector<std::string> raw_keys;
  for (const auto& k : raw_payload.keys()) raw_keys.push_back(sync_kb->Key(kb::Space::kFact, k));

  const double slice = options.seconds / options.rounds;
  // Warm-up, unmeasured: files created, caches and the syncer thread running.
  const double warm = std::min(0.2, slice);
  RETURN_IF_ERROR(RawSlice(raw_db.get(), raw_keys, raw_payload, warm).status());
  RETURN_IF_ERROR(OursSyncSlice(*sync_kb, *sync_txn, sync_payload, warm).status());
  RETURN_IF_ERROR(GroupSlice(*group_kb, *group_txn, group_payload, warm).status());

  Rate raw, ours, group, group_applied;
  double ratio_min = INFINITY, ratio_max = -INFINITY;
  for (int round = 0; round < options.rounds; ++round) {
    ASSIGN_OR_RETURN(Rate r, RawSlice(raw_db.get(), raw_keys, raw_payload, slice));
    ASSIGN_OR_RETURN(Rate o, OursSyncSlice(*sync_kb, *sync_txn, sync_payload, slice));
    ASSIGN_OR_RETURN(GroupRate g, GroupSlice(*group_kb, *group_txn, group_payload, slice));
    raw.Add(r);
    ours.Add(o);
    group.Add(g.confirmed);
    group_applied.Add(g.applied);
    const double ratio = o.PerSecond() / r.PerSecond();
    ratio_min = std::min(ratio_min, ratio);
    ratio_max = std::max(ratio_max, ratio);
  }

  const double ratio_sync = ours.PerSecond() / raw.PerSecond();
  const double group_vs_raw = group.PerSecond() / raw.PerSecond();
  Report r("kb");
  r.AddInt("keys", options.keys);
  r.AddInt("value_bytes", options.value_bytes);
  r.AddInt("rounds", options.rounds);
  r.AddDouble("seconds_per_side", options.seconds);
  r.AddDouble("raw_sync_commits_per_s", raw.PerSecond());
  r.AddDouble("ours_sync_commits_per_s", ours.PerSecond());
  r.AddDouble("ratio_sync", ratio_sync);
  r.AddDouble("ratio_sync_min_round", ratio_min);
  r.AddDouble("ratio_sync_max_round", ratio_max);
  r.AddDouble("group_commit_runs_per_s", group.PerSecond());
  r.AddDouble("group_commit_applied_per_s", group_applied.PerSecond());
  r.AddDouble("group_vs_raw_sync", group_vs_raw);
  r.AddDouble("target_ratio_sync", kTargetRatioSync);
  r.AddDouble("target_group_vs_raw_sync", kTargetGroupVsRawSync);
  r.AddBool("meets_sync_target", ratio_sync >= kTargetRatioSync);
  r.AddBool("meets_group_target", group_vs_raw >= kTargetGroupVsRawSync);
  r.AddBool("meets_target",
            ratio_sync >= kTargetRatioSync && group_vs_raw >= kTargetGroupVsRawSync);
  std::vector<Report> reports;
  reports.push_back(std::move(r));
  return reports;
}

}  // namespace parley::bench
