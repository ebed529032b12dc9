// Tests of the knowledge base (kb/kb.h) and its store (kb/store.h) against a real RocksDB in a
// fresh temporary directory per test.

#include "kb/kb.h"

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
#include "kb/store.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"

namespace parley::kb {

// Test names and failure messages say "kSync" rather than "4-byte object <00-00 00-00>".
void PrintTo(Durability d, std::ostream* os) {
  *os << (d == Durability::kSync ? "kSync" : "kGroupCommit");
}

namespace {

namespace fs = std::filesystem;
using ::testing::ContainsRegex;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

const absl::Status& ToStatus(const absl::Status& s) { return s; }
template <typename T>
absl::Status ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

#define ASSERT_OK(expr)                     \
  do {                                      \
    const absl::Status _s = ToStatus(expr); \
    ASSERT_TRUE(_s.ok()) << _s;             \
  } while (0)

#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL(PARLEY_CONCAT(_statusor_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  ASSERT_TRUE(tmp.ok()) << tmp.status();          \
  lhs = std::move(*tmp)

using Entries = std::vector<std::pair<std::string, std::string>>;

// Everything a Kb or a Txn yields for `prefix`, in scan order.
template <typename Reader>
absl::StatusOr<Entries> ScanAll(const Reader& reader, Space space, absl::string_view prefix) {
  Entries out;
  RETURN_IF_ERROR(reader.Scan(space, prefix, [&](absl::string_view k, absl::string_view v) {
    out.emplace_back(std::string(k), std::string(v));
    return true;
  }));
  return out;
}

StoreOptions Options(Durability durability) {
  StoreOptions o;
  o.durability = durability;
  return o;
}

// The schema key as Store writes it: store-wide metadata sorts before every agent.
std::string SchemaKey() { return std::string("\0", 1) + "schema"; }

// Name -> (size, FNV-1a of the content) of everything under a directory; directories have size
// and hash 0. A failed open must leave this exactly as it was.
using DirSnapshot = std::map<std::string, std::pair<uintmax_t, uint64_t>>;

DirSnapshot Snapshot(const std::string& dir) {
  DirSnapshot out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = fs::relative(e.path(), dir).string();
    if (e.is_directory()) {
      out[name + "/"] = {0, 0};
      continue;
    }
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream content;
    content << in.rdbuf();
    uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char c : content.str()) {
      h ^= c;
      h *= 0x100000001b3ULL;
    }
    out[name] = {content.str().size(), h};
  }
  return out;
}

void WriteFile(const fs::path& p, const std::string& content) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << content;
}

class KbTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "parley_kb_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << "mkdtemp " << tmpl;
    root_ = tmpl;
    path_ = root_ + "/kb";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // Puts `entries` into `space` of `kb` in one committed transaction.
  void CommitAll(Kb& kb, Space space, const Entries& entries) {
    auto txn = kb.Begin();
    for (const auto& [k, v] : entries) txn->Put(space, k, v);
    ASSERT_OK(kb.Commit(*txn));
  }

  std::string root_;
  std::string path_;
};

// ---------------------------------------------------------------------------------------------
// Transactions.

TEST_F(KbTest, TxnSeesItsOwnWritesAndKbOnlyCommittedOnes) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
  CommitAll(*kb, Space::kFact, {{"a", "1"}, {"b", "2"}, {"c", "3"}});

  auto txn = kb->Begin();
  txn->Put(Space::kFact, "b", "20");
  txn->Delete(Space::kFact, "c");
  txn->Put(Space::kFact, "d", "4");
  EXPECT_EQ(txn->write_count(), 3u);
  EXPECT_FALSE(txn->empty());

  // The transaction: its own writes over the committed state.
  EXPECT_EQ(txn->Get(Space::kFact, "a").value(), "1");
  EXPECT_EQ(txn->Get(Space::kFact, "b").value(), "20");
  EXPECT_EQ(txn->Get(Space::kFact, "c").value(), std::nullopt);
  EXPECT_EQ(txn->Get(Space::kFact, "d").value(), "4");
  EXPECT_EQ(txn->Get(Space::kFact, "e").value(), std::nullopt);
  ASSERT_OK_AND_ASSIGN(Entries in_txn, ScanAll(*txn, Space::kFact, ""));
  EXPECT_THAT(in_txn, ElementsAre(Pair("a", "1"), Pair("b", "20"), Pair("d", "4")));

  // The Kb: only what is committed.
  EXPECT_EQ(kb->Get(Space::kFact, "b").value(), "2");
  EXPECT_EQ(kb->Get(Space::kFact, "c").value(), "3");
  EXPECT_EQ(kb->Get(Space::kFact, "d").value(), std::nullopt);
  ASSERT_OK_AND_ASSIGN(Entries committed, ScanAll(*kb, Space::kFact, ""));
  EXPECT_THAT(committed, ElementsAre(Pair("a", "1"), Pair("b", "2"), Pair("c", "3")));

  ASSERT_OK(kb->Commit(*txn));
  EXPECT_TRUE(txn->empty());
  ASSERT_OK_AND_ASSIGN(committed, ScanAll(*kb, Space::kFact, ""));
  EXPECT_THAT(committed, ElementsAre(Pair("a", "1"), Pair("b", "20"), Pair("d", "4")));

  // The emptied transaction is reusable and reads the new committed state.
  EXPECT_EQ(txn->Get(Space::kFact, "c").value(), std::nullopt);
  txn->Put(Space::kFact, "c", "30");
  ASSERT_OK(kb->Commit(*txn));
  EXPECT_EQ(kb->Get(Space::kFact, "c").value(), "30");
}

TEST_F(KbTest, TxnWritesAreInvisibleToOtherTransactions) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
  auto t1 = kb->Begin();
  auto t2 = kb->Begin();
  t1->Put(Space::kMeta, "x", "1");
  EXPECT_EQ(t2->Get(Space::kMeta, "x").value(), std::nullopt);
  ASSERT_OK(kb->Commit(*t1));
  EXPECT_EQ(t2->Get(Space::kMeta, "x").value(), "1");
}

TEST_F(KbTest, CommitIsSeenWholeOrNotAtAll) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kGroupCommit)));
  ASSERT_OK_AND_ASSIGN(auto writer, Kb::Open(store.get(), "a"));
  // A second Kb of the same agent, so that the reader thread owns its own Kb.
  ASSERT_OK_AND_ASSIGN(auto reader, Kb::Open(store.get(), "a"));
  constexpr int kCommits = 1000;
  constexpr int kKeys = 10;
  std::atomic<bool> done{false};
  absl::Notification reading;
  // Written by the reader thread only, read after join.
  int torn = 0, went_back = 0, reads = 0;
  std::string first_bad;
  absl::Status scan_status;
  std::thread t([&] {
    int last = 0;
    while (!done.load()) {
      auto entries = ScanAll(*reader, Space::kFact, "k");
      if (!entries.ok()) {
        scan_status = entries.status();
        break;
      }
      if (++reads == 1) reading.Notify();
      bool same = entries->empty() || static_cast<int>(entries->size()) == kKeys;
      for (const auto& [k, v] : *entries) same = same && v == entries->front().second;
      int seen = 0;
      bool back = false;
      if (same && !entries->empty() && absl::SimpleAtoi(entries->front().second, &seen)) {
        back = seen < last;
        if (back) ++went_back;
        last = seen;
      }
      if ((!same && torn++ == 0) || (back && went_back == 1)) {
        for (const auto& [k, v] : *entries) absl::StrAppend(&first_bad, k, "=", v, " ");
      }
    }
    if (!reading.HasBeenNotified()) reading.Notify();
  });
  // Start writing once the reader is reading, so that the two overlap.
  EXPECT_TRUE(reading.WaitForNotificationWithTimeout(absl::Seconds(10)));
  for (int i = 1; i <= kCommits; ++i) {
    auto txn = writer->Begin();
    for (int k = 0; k < kKeys; ++k) txn->Put(Space::kFact, absl::StrCat("k", k), absl::StrCat(i));
    auto ticket = writer->Commit(*txn);
    EXPECT_TRUE(ticket.ok()) << ticket.status();
    if (!ticket.ok()) break;
  }
  done = true;
  t.join();
  EXPECT_TRUE(scan_status.ok()) << scan_status;
  EXPECT_GT(reads, 1);
  EXPECT_EQ(torn, 0) << torn << " of " << reads
                     << " scans saw a partial commit; first: " << first_bad;
  EXPECT_EQ(went_back, 0) << "a scan saw an older commit after a newer one: " << first_bad;
}

TEST_F(KbTest, ScanStripsPrefixAndStaysInsideBounds) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
  const std::string ff = "\xff";
  CommitAll(*kb, Space::kFact,
            {{"a", "0"},
             {"ab", "1"},
             {"abc", "2"},
             {"abd", "3"},
             {"ac", "4"},
             {"b" + ff, "5"},
             {"b" + ff + ff, "6"},
             {"c", "7"},
             {ff, "8"},
             {ff + ff, "9"}});
  // Same names in the neighbouring keyspaces must not leak into a kFact scan.
  CommitAll(*kb, Space::kRelation, {{"ab", "rel"}, {"", "rel-empty"}});
  CommitAll(*kb, Space::kCursor, {{"ab", "cursor"}});

  ASSERT_OK_AND_ASSIGN(Entries ab, ScanAll(*kb, Space::kFact, "ab"));
  EXPECT_THAT(ab, ElementsAre(Pair("", "1"), Pair("c", "2"), Pair("d", "3")));
  ASSERT_OK_AND_ASSIGN(Entries bff, ScanAll(*kb, Space::kFact, "b" + ff));
  EXPECT_THAT(bff, ElementsAre(Pair("", "5"), Pair(ff, "6")));
  // An all-0xff prefix has no successor of the same length; the bound is the next keyspace.
  ASSERT_OK_AND_ASSIGN(Entries allff, ScanAll(*kb, Space::kFact, ff));
  EXPECT_THAT(allff, ElementsAre(Pair("", "8"), Pair(ff, "9")));
  ASSERT_OK_AND_ASSIGN(Entries none, ScanAll(*kb, Space::kFact, "zz"));
  EXPECT_TRUE(none.empty());
  ASSERT_OK_AND_ASSIGN(Entries all, ScanAll(*kb, Space::kFact, ""));
  EXPECT_EQ(all.size(), 10u);
  EXPECT_EQ(all.front(), std::make_pair(std::string("a"), std::string("0")));
  EXPECT_EQ(all.back(), std::make_pair(ff + ff, std::string("9")));
  ASSERT_OK_AND_ASSIGN(Entries rel, ScanAll(*kb, Space::kRelation, ""));
  EXPECT_THAT(rel, ElementsAre(Pair("", "rel-empty"), Pair("ab", "rel")));

  // Through a transaction the same bounds hold, with staged writes merged in.
  auto txn = kb->Begin();
  txn->Put(Space::kFact, "abb", "s1");
  txn->Delete(Space::kFact, "abc");
  txn->Put(Space::kFact, "aa", "outside");
  txn->Put(Space::kFact, "ad", "outside");
  txn->Put(Space::kRelation, "abz", "other space");
  ASSERT_OK_AND_ASSIGN(Entries staged, ScanAll(*txn, Space::kFact, "ab"));
  EXPECT_THAT(staged, ElementsAre(Pair("", "1"), Pair("b", "s1"), Pair("d", "3")));
}

TEST_F(KbTest, ScanStopsWhenTheCallbackReturnsFalse) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
  CommitAll(*kb, Space::kInbox,
            {{EncodeU64(3), "c"}, {EncodeU64(1), "a"}, {EncodeU64(2), "b"}, {EncodeU64(256), "d"}});
  std::vector<uint64_t> seen;
  ASSERT_OK(kb->Scan(Space::kInbox, "", [&](absl::string_view k, absl::string_view) {
    seen.push_back(DecodeU64(k).value());
    return seen.size() < 2;
  }));
  EXPECT_THAT(seen, ElementsAre(1, 2));
}

TEST_F(KbTest, DeletePrefixDeletesCommittedAndStagedKeys) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
  CommitAll(*kb, Space::kBag, {{"r1/x", "1"}, {"r1/y", "2"}, {"r10", "3"}, {"r2/x", "4"}});
  auto txn = kb->Begin();
  txn->Put(Space::kBag, "r1/z", "staged");
  ASSERT_OK(txn->DeletePrefix(Space::kBag, "r1/"));
  ASSERT_OK_AND_ASSIGN(Entries staged, ScanAll(*txn, Space::kBag, ""));
  EXPECT_THAT(staged, ElementsAre(Pair("r10", "3"), Pair("r2/x", "4")));
  EXPECT_EQ(txn->Get(Space::kBag, "r1/z").value(), std::nullopt);
  // Not committed yet.
  EXPECT_EQ(kb->Get(Space::kBag, "r1/x").value(), "1");
  ASSERT_OK(kb->Commit(*txn));
  ASSERT_OK_AND_ASSIGN(Entries committed, ScanAll(*kb, Space::kBag, ""));
  EXPECT_THAT(committed, ElementsAre(Pair("r10", "3"), Pair("r2/x", "4")));
}

TEST_F(KbTest, RollbackToSavePointUndoesOnlyWritesSinceIt) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
  CommitAll(*kb, Space::kFact, {{"c", "committed"}});

  auto txn = kb->Begin();
  txn->Put(Space::kFact, "a", "1");
  txn->SetSavePoint();
  txn->Put(Space::kFact, "a", "2");
  txn->Put(Space::kFact, "b", "1");
  txn->Delete(Space::kFact, "c");
  EXPECT_EQ(txn->Get(Space::kFact, "a").value(), "2");
  EXPECT_EQ(txn->Get(Space::kFact, "c").value(), std::nullopt);
  ASSERT_OK(txn->RollbackToSavePoint());

  EXPECT_EQ(txn->write_count(), 1u);
  EXPECT_EQ(txn->Get(Space::kFact, "a").value(), "1");
  EXPECT_EQ(txn->Get(Space::kFact, "b").value(), std::nullopt);
  EXPECT_EQ(txn->Get(Space::kFact, "c").value(), "committed");
  ASSERT_OK_AND_ASSIGN(Entries staged, ScanAll(*txn, Space::kFact, ""));
  EXPECT_THAT(staged, ElementsAre(Pair("a", "1"), Pair("c", "committed")));

  // The save point is gone: a second rollback has nothing to roll back to.
  EXPECT_FALSE(txn->RollbackToSavePoint().ok());
  EXPECT_EQ(txn->Get(Space::kFact, "a").value(), "1");

  ASSERT_OK(kb->Commit(*txn));
  ASSERT_OK_AND_ASSIGN(Entries committed, ScanAll(*kb, Space::kFact, ""));
  EXPECT_THAT(committed, ElementsAre(Pair("a", "1"), Pair("c", "committed")));
}

TEST_F(KbTest, PopSavePointKeepsWritesAndNestedSavePointsUnwindInOrder) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
  auto txn = kb->Begin();
  txn->Put(Space::kFact, "a", "1");
  txn->SetSavePoint();  // outer
  txn->Put(Space::kFact, "b", "1");
  txn->SetSavePoint();  // inner, popped below: its writes stay
  txn->Put(Space::kFact, "c", "1");
  ASSERT_OK(txn->PopSavePoint());
  EXPECT_EQ(txn->Get(Space::kFact, "c").value(), "1");
  txn->SetSavePoint();  // inner, rolled back below
  txn->Put(Space::kFact, "d", "1");
  ASSERT_OK(txn->RollbackToSavePoint());
  ASSERT_OK_AND_ASSIGN(Entries staged, ScanAll(*txn, Space::kFact, ""));
  EXPECT_THAT(staged, ElementsAre(Pair("a", "1"), Pair("b", "1"), Pair("c", "1")));
  // The outer save point still exists and covers b and c (c's save point was popped into it).
  ASSERT_OK(txn->RollbackToSavePoint());
  ASSERT_OK_AND_ASSIGN(staged, ScanAll(*txn, Space::kFact, ""));
  EXPECT_THAT(staged, ElementsAre(Pair("a", "1")));
  EXPECT_FALSE(txn->PopSavePoint().ok());

  txn->SetSavePoint();
  txn->Put(Space::kFact, "e", "1");
  ASSERT_OK(txn->PopSavePoint());
  ASSERT_OK(kb->Commit(*txn));
  ASSERT_OK_AND_ASSIGN(Entries committed, ScanAll(*kb, Space::kFact, ""));
  EXPECT_THAT(committed, ElementsAre(Pair("a", "1"), Pair("e", "1")));
}

TEST_F(KbTest, ClearDropsEveryWrite) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto kb, Kb::Open(store.get(), "a"));
  auto txn = kb->Begin();
  txn->Put(Space::kFact, "a", "1");
  txn->Clear();
  EXPECT_TRUE(txn->empty());
  EXPECT_EQ(txn->Get(Space::kFact, "a").value(), std::nullopt);
  ASSERT_OK(kb->Commit(*txn));
  EXPECT_EQ(kb->Get(Space::kFact, "a").value(), std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// Namespaces.

TEST_F(KbTest, AgentsInOneStoreDoNotSeeEachOther) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto a, Kb::Open(store.get(), "a"));
  ASSERT_OK_AND_ASSIGN(auto b, Kb::Open(store.get(), "b"));
  // "ab" extends "a": its keys must not fall inside a's ranges either.
  ASSERT_OK_AND_ASSIGN(auto ab, Kb::Open(store.get(), "ab"));
  CommitAll(*a, Space::kFact, {{"x", "from a"}, {"only-a", "1"}});
  CommitAll(*b, Space::kFact, {{"x", "from b"}});
  CommitAll(*ab, Space::kFact, {{"x", "from ab"}});
  CommitAll(*b, Space::kMeta, {{"m", "b meta"}});

  EXPECT_EQ(a->Get(Space::kFact, "x").value(), "from a");
  EXPECT_EQ(b->Get(Space::kFact, "x").value(), "from b");
  EXPECT_EQ(ab->Get(Space::kFact, "x").value(), "from ab");
  EXPECT_EQ(b->Get(Space::kFact, "only-a").value(), std::nullopt);
  EXPECT_EQ(a->Get(Space::kMeta, "m").value(), std::nullopt);
  ASSERT_OK_AND_ASSIGN(Entries in_a, ScanAll(*a, Space::kFact, ""));
  EXPECT_THAT(in_a, ElementsAre(Pair("only-a", "1"), Pair("x", "from a")));
  ASSERT_OK_AND_ASSIGN(Entries in_b, ScanAll(*b, Space::kFact, ""));
  EXPECT_THAT(in_b, ElementsAre(Pair("x", "from b")));

  // A transaction of b sees neither a's committed keys nor a's staged ones.
  auto ta = a->Begin();
  ta->Put(Space::kFact, "staged", "a");
  auto tb = b->Begin();
  ASSERT_OK_AND_ASSIGN(Entries via_tb, ScanAll(*tb, Space::kFact, ""));
  EXPECT_THAT(via_tb, ElementsAre(Pair("x", "from b")));
  ASSERT_OK(tb->DeletePrefix(Space::kFact, ""));
  ASSERT_OK(b->Commit(*tb));
  EXPECT_EQ(a->Get(Space::kFact, "x").value(), "from a");
  EXPECT_EQ(ab->Get(Space::kFact, "x").value(), "from ab");
  EXPECT_EQ(b->Get(Space::kFact, "x").value(), std::nullopt);

  // Store-wide metadata (the schema key) is in nobody's namespace.
  for (Space s : {Space::kMeta, Space::kFact, Space::kInbox}) {
    ASSERT_OK_AND_ASSIGN(Entries e, ScanAll(*a, s, ""));
    for (const auto& [k, v] : e) EXPECT_EQ(k.find("schema"), std::string::npos) << k;
  }
}

TEST_F(KbTest, AgentNameMustBeNonEmptyWithoutNul) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  auto empty = Kb::Open(store.get(), "");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument) << empty.status();
  auto nul = Kb::Open(store.get(), absl::string_view("a\0b", 3));
  EXPECT_EQ(nul.status().code(), absl::StatusCode::kInvalidArgument) << nul.status();
  auto trailing = Kb::Open(store.get(), absl::string_view("a\0", 2));
  EXPECT_EQ(trailing.status().code(), absl::StatusCode::kInvalidArgument) << trailing.status();
  ASSERT_OK(Kb::Open(store.get(), "redis/0"));
}

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

TEST_F(KbTest, FreshStoreRecordsSchemaVersion) {
  {
    ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kGroupCommit)));
    std::string value;
    ASSERT_TRUE(store->db()->Get(rocksdb::ReadOptions(), SchemaKey(), &value).ok());
    EXPECT_EQ(value, absl::StrCat(kSchemaVersion));
    EXPECT_EQ(store->path(), path_);
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
    rocksdb::FlushOptions fo;
    fo.wait = true;
    ASSERT_TRUE(store->db()->Flush(fo).ok());
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

// ---------------------------------------------------------------------------------------------
// Key encoding.

TEST(EncodeU64Test, RoundTripsAndSortsAsNumbers) {
  std::vector<uint64_t> values = {0,
                                  1,
                                  255,
                                  256,
                                  65535,
                                  65536,
                                  (1ULL << 32) - 1,
                                  1ULL << 32,
                                  (1ULL << 63) - 1,
                                  1ULL << 63,
                                  std::numeric_limits<uint64_t>::max() - 1,
                                  std::numeric_limits<uint64_t>::max()};
  std::mt19937_64 random(42);
  for (int i = 0; i < 2000; ++i) values.push_back(random() >> (random() % 64));
  for (uint64_t v : values) {
    const std::string e = EncodeU64(v);
    ASSERT_EQ(e.size(), 8u);
    auto d = DecodeU64(e);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(*d, v);
  }
  EXPECT_EQ(EncodeU64(0x0102030405060708ULL), "\x01\x02\x03\x04\x05\x06\x07\x08");
  for (size_t i = 0; i < values.size(); ++i) {
    for (size_t j = i; j < values.size(); j += 7) {
      const uint64_t a = values[i], b = values[j];
      // Bytewise order (RocksDB's comparator; std::string compares chars as unsigned).
      const int cmp = EncodeU64(a).compare(EncodeU64(b));
      EXPECT_EQ(cmp < 0, a < b) << a << " vs " << b;
      EXPECT_EQ(cmp == 0, a == b) << a << " vs " << b;
    }
  }
}

TEST(DecodeU64Test, RejectsWrongSize) {
  for (size_t n : {0, 1, 7, 9, 16}) {
    auto d = DecodeU64(std::string(n, '\x01'));
    EXPECT_FALSE(d.ok()) << n << " bytes decoded to " << d.value_or(0);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss) << d.status();
  }
}

}  // namespace
}  // namespace parley::kb
