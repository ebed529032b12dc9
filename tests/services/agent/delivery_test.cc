// The boundary where relation events enter an agent (services/agent/delivery.h): a frame carries
// the outbox's event unchanged, and AcceptEvent is the one check of an arriving event and the one
// conversion into the receiver's inbox event. Against a real engine and KB; the protocol over
// real streams is tests/services/transport/peer_protocol_test.cc.

#include "services/agent/delivery.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "base/clock.h"
#include "engine/engine.h"
#include "kb/kb.h"
#include "kb/store.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

using ::testing::HasSubstr;

class DeliveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = kb::Store::Open(dir_.Sub("kb"), {});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto kb = kb::Kb::Open(store_.get(), "app/0");
    ASSERT_TRUE(kb.ok()) << kb.status();
    kb_ = std::move(*kb);
    engine::ServiceSpec spec;
    spec.service = "app";
    spec.unit = "app/0";
    spec.endpoints.push_back({"db", engine::Role::kRequires, "redis", {}});
    auto e = engine::Engine::Create(std::move(spec), kb_.get(), &clock_, {});
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
  }

  // An event redis/0 sends app/0 about relation db:1.
  static v1::RelationEvent FromRedis(v1::RelationEventKind kind, uint64_t sequence = 1) {
    v1::RelationEvent ev;
    ev.set_relation_id("db:1");
    ev.set_sender_endpoint("cache");
    ev.set_receiver_endpoint("db");
    ev.set_sender_unit("redis/0");
    ev.set_sender_service("redis");
    ev.set_sequence(sequence);
    ev.set_kind(kind);
    v1::BagChange* c = ev.add_unit_changes();
    c->set_key("host");
    c->set_value("10.0.0.2");
    ev.add_service_changes()->set_key("password");
    ev.mutable_service_changes(0)->set_value("s3cret");
    ev.set_sender_commit(9);
    ev.set_interface("redis");
    return ev;
  }

  // The refusal of `ev` from `remote`: its status (expected an error) and reason.
  Refusal Refused(const v1::RelationEvent& ev, const std::string& remote = "redis/0") {
    Refusal refusal;
    absl::StatusOr<v1::Event> r = AcceptEvent(*engine_, "app/0", remote, ev, &refusal);
    EXPECT_FALSE(r.ok()) << r->DebugString();
    if (!r.ok()) {
      EXPECT_EQ(r.status(), refusal.status);
    }
    return refusal;
  }

  testing::TempDir dir_;
  base::ManualClock clock_;
  std::unique_ptr<kb::Store> store_;
  std::unique_ptr<kb::Kb> kb_;
  std::unique_ptr<engine::Engine> engine_;
};

TEST_F(DeliveryTest, AFrameCarriesTheStoredEventUnchanged) {
  v1::OutboxEntry entry;
  entry.set_id(4);
  entry.set_destination("app/0");
  *entry.mutable_event() = FromRedis(v1::RELATION_EVENT_KIND_CHANGED, 3);
  const v1::PeerFrame frame = ToFrame(entry);
  ASSERT_TRUE(frame.has_event());
  EXPECT_EQ(frame.event().SerializeAsString(), entry.event().SerializeAsString());
}

TEST_F(DeliveryTest, AnAcceptedEventIsTheReceiversInboxEvent) {
  Refusal refusal;
  absl::StatusOr<v1::Event> e = AcceptEvent(*engine_, "app/0", "redis/0",
                                            FromRedis(v1::RELATION_EVENT_KIND_JOINED), &refusal);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->name(), "db.joined");
  EXPECT_EQ(e->source(), "peer:redis/0");
  const v1::RelationChange& rc = e->relation();
  EXPECT_EQ(rc.relation_id(), "db:1");
  EXPECT_EQ(rc.endpoint(), "db");
  EXPECT_EQ(rc.remote_service(), "redis");
  EXPECT_EQ(rc.remote_unit(), "redis/0");
  EXPECT_EQ(rc.remote_endpoint(), "cache");
  EXPECT_EQ(rc.interface(), "redis");
  EXPECT_EQ(rc.kind(), v1::RELATION_EVENT_KIND_JOINED);
  EXPECT_FALSE(rc.local());
  ASSERT_EQ(rc.unit_changes_size(), 1);
  EXPECT_EQ(rc.unit_changes(0).key(), "host");
  EXPECT_EQ(rc.unit_changes(0).value(), "10.0.0.2");
  ASSERT_EQ(rc.service_changes_size(), 1);
  EXPECT_EQ(rc.service_changes(0).value(), "s3cret");
  // And the engine takes it as it is.
  auto queued = engine_->EnqueueFromPeer(*e, 1);
  ASSERT_TRUE(queued.ok()) << queued.status();
  EXPECT_FALSE(queued->duplicate);
}

TEST_F(DeliveryTest, AnEventClaimingAnotherSenderIsRefused) {
  const Refusal r = Refused(FromRedis(v1::RELATION_EVENT_KIND_JOINED), "redis/1");
  EXPECT_EQ(r.status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(r.status.message(), HasSubstr("redis/1"));
  EXPECT_EQ(r.reason, "wrong_sender");
}

TEST_F(DeliveryTest, NoSequenceOrAKindPeersDoNotSendIsInvalid) {
  for (v1::RelationEventKind kind :
       {v1::RELATION_EVENT_KIND_UNSPECIFIED, v1::RELATION_EVENT_KIND_CREATED}) {
    SCOPED_TRACE(v1::RelationEventKind_Name(kind));
    const Refusal r = Refused(FromRedis(kind));
    EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(r.reason, "invalid");
  }
  const Refusal r = Refused(FromRedis(v1::RELATION_EVENT_KIND_JOINED, 0));
  EXPECT_THAT(r.status.message(), HasSubstr("no sequence"));
  EXPECT_EQ(r.reason, "invalid");
}

TEST_F(DeliveryTest, AnEventAboutAnUnknownRelationIsRefused) {
  const Refusal r = Refused(FromRedis(v1::RELATION_EVENT_KIND_CHANGED));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(r.reason, "unknown_relation");
}

TEST_F(DeliveryTest, WhatTheEngineCannotTakeIsInvalidNamingTheSender) {
  v1::RelationEvent undeclared = FromRedis(v1::RELATION_EVENT_KIND_JOINED);
  undeclared.set_receiver_endpoint("nope");
  Refusal r = Refused(undeclared);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("from redis/0"));
  EXPECT_THAT(r.status.message(), HasSubstr("'nope'"));
  EXPECT_EQ(r.reason, "invalid");

  v1::RelationEvent bad_key = FromRedis(v1::RELATION_EVENT_KIND_JOINED);
  bad_key.mutable_unit_changes(0)->set_key(std::string("a\0b", 3));
  r = Refused(bad_key);
  EXPECT_THAT(r.status.message(), HasSubstr("invalid key"));
  EXPECT_EQ(r.reason, "invalid");

  v1::RelationEvent no_id = FromRedis(v1::RELATION_EVENT_KIND_JOINED);
  no_id.set_relation_id("");
  EXPECT_EQ(Refused(no_id).reason, "invalid");
}

}  // namespace
}  // namespace parley::services
