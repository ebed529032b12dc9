// Tests of the store (kb/store.h): durability in both modes, the schema version, and refusing to
// open what is not a Parley KB without writing to it; against a real RocksDB in a fresh temporary
// directory per test.

#include "kb/store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "kb/kb.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "tests/kb/kb_fixture.h"

namespace parley::kb {

namespace {

using ::testing::ContainsRegex;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------
// Durability.

TEST_F(KbTest, SyncWriteIsDurableAtOnce) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
  uint64_t last = 0;
  for (int i = 0; i < 20; ++i) {
    auto txn = kb->Begin();
    txn->Put(Space::kFact, "k", absl::StrCat(i));
    ASSERT_OK_AND_ASSIGN(uint64_t ticket, kb->Commit(*txn));
    EXPECT_GT(ticket, last);
    last = ticket;
    EXPECT_GE(store->durable_ticket(), ticket);
    // Already durable: the callback runs before WhenDurable returns, on this thread.
    bool ran = false;
    std::thread::id on;
    store->WhenDurable(ticket, [&](absl::Status s) {
      EXPECT_TRUE(s.ok()) << s;
      ran = true;
      on = std::this_thread::get_id();
    });
    EXPECT_TRUE(ran);
    EXPECT_EQ(on, std::this_thread::get_id());
    ASSERT_OK(store->WaitDurable(ticket));
  }
}

TEST_F(KbTest, GroupCommitTicketsIncreaseAndBecomeDurable) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kGroupCommit)));
  ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
  uint64_t last = 0;
  for (int i = 0; i < 50; ++i) {
    auto txn = kb->Begin();
    txn->Put(Space::kFact, "k", absl::StrCat(i));
    ASSERT_OK_AND_ASSIGN(uint64_t ticket, kb->Commit(*txn));
    EXPECT_GT(ticket, last);
    last = ticket;
  }
  ASSERT_OK(store->WaitDurable(last));
  EXPECT_GE(store->durable_ticket(), last);
  // A ticket that is already durable completes at once.
  bool ran = false;
  store->WhenDurable(last, [&](absl::Status s) {
    EXPECT_TRUE(s.ok()) << s;
    ran = true;
  });
  EXPECT_TRUE(ran);
}

// Writes `per_thread` commits from each of `threads` threads and registers a WhenDurable callback
// for each. With `serialize`, each Write and its WhenDurable are one step under a test mutex, so
// that registration order is ticket order across threads.
struct CallbackRecord {
  int thread;
  uint64_t ticket;
  uint64_t durable_when_run;
  absl::Status status;
};

std::vector<CallbackRecord> RunConcurrentWriters(Store& store, int threads, int per_thread,
                                                 bool serialize) {
  absl::Mutex mu;
  std::vector<CallbackRecord> records;
  absl::Mutex register_mu;
  std::vector<std::thread> writers;
  std::atomic<int> errors{0};
  for (int t = 0; t < threads; ++t) {
    writers.emplace_back([&, t] {
      auto kb = Kb::Open(&store, absl::StrCat("w", t));
      if (!kb.ok()) {
        ++errors;
        return;
      }
      for (int i = 0; i < per_thread; ++i) {
        auto txn = (*kb)->Begin();
        txn->Put(Space::kFact, absl::StrCat("k", i), "v");
        std::optional<absl::MutexLock> lock;
        if (serialize) lock.emplace(&register_mu);
        auto ticket = (*kb)->Commit(*txn);
        if (!ticket.ok()) {
          ++errors;
          return;
        }
        store.WhenDurable(*ticket, [&, t, ticket = *ticket](absl::Status s) {
          const uint64_t durable = store.durable_ticket();
          absl::MutexLock l(&mu);
          records.push_back({t, ticket, durable, s});
        });
      }
    });
  }
  for (auto& w : writers) w.join();
  EXPECT_EQ(errors.load(), 0);
  const size_t want = static_cast<size_t>(threads) * per_thread;
  absl::MutexLock l(&mu);
  auto all_ran = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return records.size() >= want; };
  EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all_ran), absl::Seconds(30)))
      << records.size() << " of " << want << " callbacks ran";
  return records;
}

void ExpectAllOkOnceAndDurable(const std::vector<CallbackRecord>& records, size_t want) {
  ASSERT_EQ(records.size(), want);
  std::vector<uint64_t> tickets;
  for (const auto& r : records) {
    EXPECT_TRUE(r.status.ok()) << "ticket " << r.ticket << ": " << r.status;
    EXPECT_GE(r.durable_when_run, r.ticket) << "callback ran before its ticket was durable";
    tickets.push_back(r.ticket);
  }
  std::sort(tickets.begin(), tickets.end());
  EXPECT_EQ(std::adjacent_find(tickets.begin(), tickets.end()), tickets.end())
      << "a callback ran twice";
  EXPECT_EQ(tickets.front(), 1u);
  EXPECT_EQ(tickets.back(), want) << "tickets are not 1..n";
}

// Index of the first record whose ticket is below the one before it, or -1.
int FirstOutOfOrder(const std::vector<CallbackRecord>& records, int thread) {
  uint64_t last = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    if (thread >= 0 && records[i].thread != thread) continue;
    if (records[i].ticket < last) return static_cast<int>(i);
    last = records[i].ticket;
  }
  return -1;
}

TEST_F(KbTest, GroupCommitCallbacksRunOkAndInOrderPerWriter) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kGroupCommit)));
  constexpr int kThreads = 4, kPerThread = 5000;
  auto records = RunConcurrentWriters(*store, kThreads, kPerThread, /*serialize=*/false);
  ExpectAllOkOnceAndDurable(records, kThreads * kPerThread);
  for (int t = 0; t < kThreads; ++t) {
    int bad = FirstOutOfOrder(records, t);
    EXPECT_EQ(bad, -1) << "writer " << t << ": ticket " << records[bad].ticket
                       << " completed after a later ticket of the same writer";
  }
}

TEST_F(KbTest, GroupCommitCallbacksRunInTicketOrderAcrossWriters) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kGroupCommit)));
  constexpr int kThreads = 4, kPerThread = 5000;
  auto records = RunConcurrentWriters(*store, kThreads, kPerThread, /*serialize=*/true);
  ExpectAllOkOnceAndDurable(records, kThreads * kPerThread);
  int bad = FirstOutOfOrder(records, -1);
  EXPECT_EQ(bad, -1) << "ticket " << records[bad].ticket << " (writer " << records[bad].thread
                     << ") completed after ticket " << records[bad - 1].ticket;
}

// The interleaving the stress tests above hit only sometimes, forced: one writer commits t1 and
// t2, the syncer makes both durable in one sync and starts running t1's callback, and only then
// does the writer ask WhenDurable(t2). t2's callback must still run after t1's. (t1's callback
// holds the syncer for at most a few seconds to keep that window open.)
TEST_F(KbTest, AlreadyDurableTicketDoesNotOvertakeAnEarlierCallback) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kGroupCommit)));
  ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
  struct Shared {
    absl::Mutex mu;
    bool first_running = false;
    bool covered = false;  // t2 was durable when t1's callback started
    bool registered = false;
    std::vector<uint64_t> order;
  };
  for (int attempt = 0; attempt < 2000; ++attempt) {
    auto shared = std::make_shared<Shared>();
    auto txn = kb->Begin();
    txn->Put(Space::kFact, "k", "1");
    ASSERT_OK_AND_ASSIGN(uint64_t t1, kb->Commit(*txn));
    Store* s = store.get();
    store->WhenDurable(t1, [shared, s, t1](absl::Status) {
      absl::MutexLock l(&shared->mu);
      shared->first_running = true;
      shared->covered = s->durable_ticket() > t1;
      if (shared->covered) {
        shared->mu.AwaitWithTimeout(absl::Condition(&shared->registered), absl::Seconds(3));
      }
      shared->order.push_back(t1);
    });
    txn->Put(Space::kFact, "k", "2");
    ASSERT_OK_AND_ASSIGN(uint64_t t2, kb->Commit(*txn));
    ASSERT_EQ(t2, t1 + 1);
    {
      absl::MutexLock l(&shared->mu);
      ASSERT_TRUE(
          shared->mu.AwaitWithTimeout(absl::Condition(&shared->first_running), absl::Seconds(10)));
      if (!shared->covered) {
        // The sync that ran t1's callback did not include t2: try again.
        continue;
      }
    }
    store->WhenDurable(t2, [shared, t2](absl::Status) {
      absl::MutexLock l(&shared->mu);
      shared->order.push_back(t2);
    });
    absl::MutexLock l(&shared->mu);
    shared->registered = true;
    auto both = [&]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(shared->mu) { return shared->order.size() == 2; };
    ASSERT_TRUE(shared->mu.AwaitWithTimeout(absl::Condition(&both), absl::Seconds(10)));
    EXPECT_THAT(shared->order, ElementsAre(t1, t2))
        << "WhenDurable(" << t2 << ") ran its callback at once, before the syncer ran the callback "
        << "of " << t1 << " (attempt " << attempt + 1 << ")";
    return;
  }
  GTEST_SKIP() << "the syncer never made two writes durable in one sync";
}

class DurabilityTest : public KbTest, public ::testing::WithParamInterface<Durability> {};

TEST_P(DurabilityTest, CommitsSurviveCloseAndReopen) {
  constexpr int kCommits = 200;
  {
    ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(GetParam())));
    ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
    for (int i = 0; i < kCommits; ++i) {
      auto txn = kb->Begin();
      txn->Put(Space::kInbox, EncodeU64(i), absl::StrCat("event ", i));
      txn->Put(Space::kMeta, "last", absl::StrCat(i));
      ASSERT_OK(kb->Commit(*txn));
    }
    // No WaitDurable: closing the store must not lose what was committed.
  }
  for (Durability reopen : {GetParam(), Durability::kSync, Durability::kGroupCommit}) {
    ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(reopen)));
    ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
    EXPECT_EQ(kb->Get(Space::kMeta, "last").value(), absl::StrCat(kCommits - 1));
    ASSERT_OK_AND_ASSIGN(Entries inbox, ScanAll(*kb, Space::kInbox, ""));
    ASSERT_EQ(inbox.size(), static_cast<size_t>(kCommits));
    for (int i = 0; i < kCommits; ++i) {
      EXPECT_EQ(DecodeU64(inbox[i].first).value(), static_cast<uint64_t>(i));
      EXPECT_EQ(inbox[i].second, absl::StrCat("event ", i));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(BothModes, DurabilityTest,
                         ::testing::Values(Durability::kSync, Durability::kGroupCommit),
                         [](const ::testing::TestParamInfo<Durability>& info) {
                           return info.param == Durability::kSync ? "Sync" : "GroupCommit";
                         });

// ---------------------------------------------------------------------------------------------
// Schema and refusing to open.

// Writes `value` under the schema key with plain RocksDB, as another build of Parley would.
void WriteRawSchema(const std::string& path, const std::string& value) {
  rocksdb::Options o;
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(o, path, &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  ASSERT_TRUE(db->Put(wo, SchemaKey(), value).ok());
  ASSERT_TRUE(db->Close().ok());
}

// The message with every occurrence of `path` removed, so that digits in the path cannot satisfy
// a check for a number.
std::string WithoutPath(const absl::Status& s, const std::string& path) {
  return absl::StrReplaceAll(s.message(), {{path, "<path>"}});
}

// Opens the database at `path` with plain RocksDB, as a tool outside Parley would; the store
// must be closed.
std::unique_ptr<rocksdb::DB> OpenRaw(const std::string& path) {
  rocksdb::Options o;
  rocksdb::DB* raw = nullptr;
  EXPECT_TRUE(rocksdb::DB::Open(o, path, &raw).ok());
  return std::unique_ptr<rocksdb::DB>(raw);
}

TEST_F(KbTest, FreshStoreRecordsSchemaVersion) {
  {
    ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kGroupCommit)));
    EXPECT_EQ(store->path(), path_);
  }
  {
    std::unique_ptr<rocksdb::DB> db = OpenRaw(path_);
    ASSERT_NE(db, nullptr);
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), SchemaKey(), &value).ok());
    EXPECT_EQ(value, absl::StrCat(kSchemaVersion));
    ASSERT_TRUE(db->Close().ok());
  }
  // And it opens again.
  ASSERT_OK(Store::Open(path_, Options(Durability::kSync)));
}

TEST_F(KbTest, NewerSchemaIsRefusedWithoutWriting) {
  { ASSERT_OK(Store::Open(path_, Options(Durability::kSync))); }
  const int newer = kSchemaVersion + 41;
  WriteRawSchema(path_, absl::StrCat(newer));
  const DirSnapshot before = Snapshot(path_);

  auto store = Store::Open(path_, Options(Durability::kGroupCommit));
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(path_));
  const std::string msg = WithoutPath(store.status(), path_);
  EXPECT_THAT(msg, ContainsRegex(absl::StrCat("(^|[^0-9])", newer, "([^0-9]|$)")));
  EXPECT_THAT(msg, ContainsRegex(absl::StrCat("(^|[^0-9])", kSchemaVersion, "([^0-9]|$)")));
  EXPECT_EQ(Snapshot(path_), before) << "a refused open changed the directory";
}

// A KB of an older version opens (its records are read as they are) and is recorded as this
// build's version, so that an older build refuses it once this one may have written newer
// records.
TEST_F(KbTest, OlderSchemaOpensAndIsRecordedAsThisVersion) {
  static_assert(kSchemaVersion > 1);
  { ASSERT_OK(Store::Open(path_, Options(Durability::kSync))); }
  WriteRawSchema(path_, "1");
  { ASSERT_OK(Store::Open(path_, Options(Durability::kGroupCommit))); }
  std::unique_ptr<rocksdb::DB> db = OpenRaw(path_);
  ASSERT_NE(db, nullptr);
  std::string value;
  ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), SchemaKey(), &value).ok());
  EXPECT_EQ(value, absl::StrCat(kSchemaVersion));
  ASSERT_TRUE(db->Close().ok());
}

TEST_F(KbTest, InvalidSchemaValuesAreDataLoss) {
  { ASSERT_OK(Store::Open(path_, Options(Durability::kSync))); }
  for (const std::string value : {"0", "-1", "one", ""}) {
    SCOPED_TRACE(absl::StrCat("schema '", value, "'"));
    WriteRawSchema(path_, value);
    const DirSnapshot before = Snapshot(path_);
    auto store = Store::Open(path_, Options(Durability::kSync));
    EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
    EXPECT_THAT(std::string(store.status().message()), HasSubstr(path_));
    EXPECT_EQ(Snapshot(path_), before);
  }
}

TEST_F(KbTest, RocksDbWithoutSchemaIsRefusedWithoutWriting) {
  {
    rocksdb::Options o;
    o.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, path_, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "someone else's", "data").ok());
    ASSERT_TRUE(db->Close().ok());
  }
  const DirSnapshot before = Snapshot(path_);
  auto store = Store::Open(path_, Options(Durability::kSync));
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(path_));
  EXPECT_EQ(Snapshot(path_), before);
}

TEST_F(KbTest, DirectoryWithoutCurrentIsRefusedWithoutWriting) {
  fs::create_directories(path_);
  WriteFile(fs::path(path_) / "notes.txt", "not a database");
  WriteFile(fs::path(path_) / "000003.log", std::string(1000, '\x5a'));
  WriteFile(fs::path(path_) / "MANIFEST-000001", "garbage manifest");
  fs::create_directories(fs::path(path_) / "sub");
  WriteFile(fs::path(path_) / "sub" / "x", "y");
  const DirSnapshot before = Snapshot(path_);
  for (Durability d : {Durability::kSync, Durability::kGroupCommit}) {
    auto store = Store::Open(path_, Options(d));
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
    EXPECT_THAT(std::string(store.status().message()), HasSubstr(path_));
    EXPECT_THAT(std::string(store.status().message()), HasSubstr("CURRENT"));
  }
  EXPECT_EQ(Snapshot(path_), before);
}

TEST_F(KbTest, CorruptSstIsDataLossWithoutWriting) {
  {
    ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
    ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
    // Random values, so that compression cannot shrink the file to a block or two.
    std::mt19937_64 random(7);
    auto txn = kb->Begin();
    for (int i = 0; i < 2000; ++i) {
      std::string value(100, '\0');
      for (char& c : value) c = static_cast<char>(random());
      txn->Put(Space::kFact, absl::StrCat("fact", i), value);
    }
    ASSERT_OK(kb->Commit(*txn));
  }
  {
    // Into a table file: the commit is in the write-ahead log only.
    std::unique_ptr<rocksdb::DB> db = OpenRaw(path_);
    ASSERT_NE(db, nullptr);
    rocksdb::FlushOptions fo;
    fo.wait = true;
    ASSERT_TRUE(db->Flush(fo).ok());
    ASSERT_TRUE(db->Close().ok());
  }
  // The biggest table file holds the data just flushed.
  fs::path sst;
  uintmax_t size = 0;
  for (const auto& e : fs::directory_iterator(path_)) {
    if (e.path().extension() == ".sst" && e.file_size() > size) {
      sst = e.path();
      size = e.file_size();
    }
  }
  ASSERT_FALSE(sst.empty()) << "no SST file after the flush";
  ASSERT_GT(size, 64u * 1024) << "the SST should span many data blocks";
  {
    std::fstream f(sst, std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes(64, '\0');
    f.seekg(static_cast<std::streamoff>(size / 2));
    f.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    for (char& c : bytes) c = static_cast<char>(~c);
    f.seekp(static_cast<std::streamoff>(size / 2));
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(f.good());
  }
  const DirSnapshot before = Snapshot(path_);
  auto store = Store::Open(path_, Options(Durability::kGroupCommit));
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(path_));
  EXPECT_EQ(Snapshot(path_), before) << "a refused open changed the directory";
}

TEST_F(KbTest, RegularFileIsRefused) {
  WriteFile(path_, "a file, not a directory");
  auto store = Store::Open(path_, Options(Durability::kSync));
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(path_));
  EXPECT_TRUE(fs::is_regular_file(path_));
  EXPECT_EQ(fs::file_size(path_), std::string("a file, not a directory").size());
}

TEST_F(KbTest, MissingStoreWithoutCreateIsNotFound) {
  StoreOptions o;
  o.create_if_missing = false;
  auto store = Store::Open(path_, o);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(path_));
  EXPECT_FALSE(fs::exists(path_));
}

}  // namespace
}  // namespace parley::kb
