// Tests of the knowledge base (kb/kb.h): transactions, namespaces, deleting an agent, key
// encoding; against a real RocksDB in a fresh temporary directory per test. The store's own
// contract (durability, opening) is tested in store_test.cc.

#include "kb/kb.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
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
#include "absl/synchronization/notification.h"
#include "base/status_macros.h"
#include "kb/store.h"
#include "tests/kb/kb_fixture.h"

namespace parley::kb {

namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

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
// Deleting an agent.

TEST_F(KbTest, DeleteAgentRemovesEveryKeyOfThatAgentOnlyAtCommit) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto host, Kb::Open(store.get(), "host"));
  ASSERT_OK_AND_ASSIGN(auto a, Kb::Open(store.get(), "a"));
  // Names that share a's bytes: "ab" starts with "a", "a" is a prefix of neither's namespace.
  ASSERT_OK_AND_ASSIGN(auto ab, Kb::Open(store.get(), "ab"));
  for (Space space : {Space::kMeta, Space::kFact, Space::kInbox, Space::kTrace}) {
    CommitAll(*a, space, {{"k1", "v1"}, {"k2", "v2"}});
    CommitAll(*ab, space, {{"k1", "keep"}});
  }
  CommitAll(*host, Space::kMeta, {{"recipe/a", "r"}, {"recipe/ab", "r"}});

  auto txn = host->Begin();
  txn->Delete(Space::kMeta, "recipe/a");
  ASSERT_OK(txn->DeleteAgent("a"));
  EXPECT_FALSE(txn->empty());
  // Nothing is deleted before the commit.
  ASSERT_OK_AND_ASSIGN(auto before, ScanAll(*a, Space::kFact, ""));
  EXPECT_EQ(before.size(), 2u);
  ASSERT_OK(host->Commit(*txn));
  EXPECT_TRUE(txn->empty());

  for (Space space : {Space::kMeta, Space::kFact, Space::kInbox, Space::kTrace}) {
    ASSERT_OK_AND_ASSIGN(auto gone, ScanAll(*a, space, ""));
    EXPECT_TRUE(gone.empty()) << static_cast<char>(space);
    ASSERT_OK_AND_ASSIGN(auto kept, ScanAll(*ab, space, ""));
    EXPECT_THAT(kept, ElementsAre(Pair("k1", "keep"))) << static_cast<char>(space);
  }
  ASSERT_OK_AND_ASSIGN(auto recipes, ScanAll(*host, Space::kMeta, "recipe/"));
  EXPECT_THAT(recipes, ElementsAre(Pair("ab", "r")));
  // The store's own metadata survives: it opens again.
  a.reset();
  ab.reset();
  host.reset();
  store.reset();
  ASSERT_OK(Store::Open(path_, Options(Durability::kSync)));
}

TEST_F(KbTest, DeleteAgentIsRefusedForItselfBadNamesAndInsideSavePoints) {
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(path_, Options(Durability::kSync)));
  ASSERT_OK_AND_ASSIGN(auto host, Kb::Open(store.get(), "host"));
  auto txn = host->Begin();
  EXPECT_EQ(txn->DeleteAgent("host").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(txn->DeleteAgent("").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(txn->DeleteAgent(std::string("a\0b", 3)).code(), absl::StatusCode::kInvalidArgument);
  txn->SetSavePoint();
  EXPECT_EQ(txn->DeleteAgent("a").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_OK(txn->PopSavePoint());
  ASSERT_OK(txn->DeleteAgent("a"));
  EXPECT_TRUE(txn->empty() == false);
  // Clear forgets it.
  txn->Clear();
  EXPECT_TRUE(txn->empty());
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
