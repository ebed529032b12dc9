// What the engine stores of the relation events it sends, and that records of an earlier schema
// version still load (kb/store.h, the version history): an outbox entry holds the event as it
// goes on the wire (OutboxEntry.event); a version-1 entry, with the event's fields in the entry
// itself, is read as if it had been written now, in the outbox and in stored traces.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "base/clock.h"
#include "engine/engine.h"
#include "engine/key_layout.h"
#include "engine/outbox.h"
#include "kb/kb.h"
#include "kb/store.h"
#include "tests/testing/temp_dir.h"

namespace parley::engine {
namespace {

using kb::Space;

class StoredFormatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = kb::Store::Open(dir_.Sub("kb"), {});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto kb = kb::Kb::Open(store_.get(), "svc/0");
    ASSERT_TRUE(kb.ok()) << kb.status();
    kb_ = std::move(*kb);
  }

  Engine& Start() {
    engine_.reset();
    ServiceSpec spec;
    spec.service = "svc";
    spec.unit = "svc/0";
    spec.endpoints.push_back({"db", Role::kRequires, "iface", {}});
    auto e = Engine::Create(std::move(spec), kb_.get(), &clock_, {});
    EXPECT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    return *engine_;
  }

  void Commit(kb::Txn& txn) {
    auto ticket = kb_->Commit(txn);
    ASSERT_TRUE(ticket.ok()) << ticket.status();
  }

  testing::TempDir dir_;
  base::ManualClock clock_;
  std::unique_ptr<kb::Store> store_;
  std::unique_ptr<kb::Kb> kb_;
  std::unique_ptr<Engine> engine_;
};

// An entry as a version-1 build wrote it: the event's fields in the entry itself.
v1::OutboxEntry VersionOneEntry() {
  v1::OutboxEntry e;
  e.set_id(1);
  e.set_destination("redis/0");
  e.set_relation_id("db:1");
  e.set_endpoint("db");
  e.set_receiver_endpoint("cache");
  e.set_sequence(1);
  e.set_kind(v1::RELATION_EVENT_KIND_JOINED);
  e.set_sender_unit("svc/0");
  e.set_sender_service("svc");
  v1::BagChange* c = e.add_unit_changes();
  c->set_key("host");
  c->set_value("10.0.0.1");
  e.add_service_changes()->set_key("gone");
  e.mutable_service_changes(0)->set_deleted(true);
  e.set_commit_run(3);
  e.set_interface("iface");
  return e;
}

// The event VersionOneEntry() carries.
v1::RelationEvent ItsEvent() {
  v1::RelationEvent ev;
  ev.set_relation_id("db:1");
  ev.set_sender_endpoint("db");
  ev.set_receiver_endpoint("cache");
  ev.set_sender_unit("svc/0");
  ev.set_sender_service("svc");
  ev.set_sequence(1);
  ev.set_kind(v1::RELATION_EVENT_KIND_JOINED);
  v1::BagChange* c = ev.add_unit_changes();
  c->set_key("host");
  c->set_value("10.0.0.1");
  ev.add_service_changes()->set_key("gone");
  ev.mutable_service_changes(0)->set_deleted(true);
  ev.set_sender_commit(3);
  ev.set_interface("iface");
  return ev;
}

// The upgraded entry: the event, and none of the version-1 fields.
void ExpectUpgraded(const v1::OutboxEntry& e) {
  v1::OutboxEntry want;
  want.set_id(1);
  want.set_destination("redis/0");
  *want.mutable_event() = ItsEvent();
  EXPECT_EQ(e.SerializeAsString(), want.SerializeAsString()) << e.DebugString();
}

TEST_F(StoredFormatTest, VersionOneOutboxEntryLoadsIsSentAndAcknowledged) {
  {
    kb::Txn txn(kb_.get());
    txn.Put(Space::kOutbox, keys::Outbox("redis/0", 1), VersionOneEntry().SerializeAsString());
    txn.Put(Space::kMeta, keys::kNextOutbox, kb::EncodeU64(2));
    txn.Put(Space::kCursor, keys::OutCursor("db:1", "redis/0"), kb::EncodeU64(1));
    Commit(txn);
  }
  Start();
  EXPECT_EQ(engine_->outbox_size(), 1u);
  auto all = engine_->Outbox();
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 1u);
  ExpectUpgraded((*all)[0]);
  auto after = engine_->OutboxAfter("redis/0", 0, 10, 1);
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->size(), 1u);
  ExpectUpgraded((*after)[0]);
  // Loaded under its relation: the acknowledgement of the relation's sequence removes it.
  ASSERT_TRUE(engine_->Acknowledge("redis/0", "db:1", 1).ok());
  EXPECT_EQ(engine_->outbox_size(), 0u);
  EXPECT_THAT(*engine_->Outbox(), ::testing::IsEmpty());
}

TEST_F(StoredFormatTest, VersionOneTraceMessagesReadAsEvents) {
  {
    v1::Trace t;
    t.set_run(1);
    t.set_result(v1::Trace::RESULT_COMMITTED);
    *t.add_messages() = VersionOneEntry();
    kb::Txn txn(kb_.get());
    txn.Put(Space::kTrace, keys::Trace(1), t.SerializeAsString());
    txn.Put(Space::kMeta, keys::kRun, kb::EncodeU64(1));
    Commit(txn);
  }
  Start();
  auto traces = engine_->Traces(10);
  ASSERT_TRUE(traces.ok()) << traces.status();
  ASSERT_EQ(traces->size(), 1u);
  ASSERT_EQ((*traces)[0].messages_size(), 1);
  ExpectUpgraded((*traces)[0].messages(0));
}

// What this build writes: the event, no version-1 field; the staged trace message is the same.
TEST_F(StoredFormatTest, NewEntriesHoldTheEventAsSent) {
  Start();
  v1::Event created;
  created.set_name("db.created");
  created.set_source("api");
  v1::RelationChange* rc = created.mutable_relation();
  rc->set_relation_id("db:7");
  rc->set_endpoint("db");
  rc->set_remote_service("redis");
  rc->set_remote_unit("redis/0");
  rc->set_remote_endpoint("cache");
  rc->set_kind(v1::RELATION_EVENT_KIND_CREATED);
  rc->set_interface("iface");
  ASSERT_TRUE(engine_->Enqueue(created).ok());
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted);
  std::string bytes;
  ASSERT_TRUE(kb_->Scan(Space::kOutbox, "",
                        [&](absl::string_view, absl::string_view v) {
                          bytes = std::string(v);
                          return false;
                        })
                  .ok());
  v1::OutboxEntry stored;
  ASSERT_TRUE(stored.ParseFromString(bytes));
  EXPECT_EQ(stored.sequence(), 0u);
  EXPECT_TRUE(stored.relation_id().empty());
  ASSERT_TRUE(stored.has_event());
  const v1::RelationEvent& ev = stored.event();
  EXPECT_EQ(ev.relation_id(), "db:7");
  EXPECT_EQ(ev.sender_endpoint(), "db");
  EXPECT_EQ(ev.receiver_endpoint(), "cache");
  EXPECT_EQ(ev.sender_unit(), "svc/0");
  EXPECT_EQ(ev.sender_service(), "svc");
  EXPECT_EQ(ev.sequence(), 1u);
  EXPECT_EQ(ev.kind(), v1::RELATION_EVENT_KIND_JOINED);
  EXPECT_EQ(ev.sender_commit(), r->run);
  EXPECT_EQ(ev.interface(), "iface");
  ASSERT_EQ(r->trace->messages_size(), 1);
  EXPECT_EQ(r->trace->messages(0).SerializeAsString(), bytes);
}

}  // namespace
}  // namespace parley::engine
