// Leadership in the engine (docs/coordination.md): the facts and events of leader.changed, only
// the leader writes the service bag, its changes carry the term, a receiver ignores an older
// term's changes, and a run commits service data only while its term is current. A real RocksDB
// KB in a temp dir and a manual clock.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "engine/engine.h"
#include "engine/trace_format.h"
#include "tests/testing/temp_dir.h"

namespace parley::engine {
namespace {

using ::testing::HasSubstr;

using Fn = std::function<absl::Status(RunContext&)>;

v1::Event Named(std::string name) {
  v1::Event e;
  e.set_name(std::move(name));
  return e;
}

v1::Event LeaderChanged(std::string leader, int64_t term) {
  v1::Event e = Named("leader.changed");
  e.mutable_leadership()->set_leader(std::move(leader));
  e.mutable_leadership()->set_term(term);
  return e;
}

v1::Event Rel(v1::RelationEventKind kind, std::string unit,
              std::vector<std::pair<std::string, std::string>> service_data = {},
              int64_t service_term = 0) {
  v1::Event e;
  e.set_name(kind == v1::RELATION_EVENT_KIND_JOINED ? "db.joined" : "db.changed");
  auto* r = e.mutable_relation();
  r->set_relation_id("db:1");
  r->set_endpoint("db");
  r->set_remote_service(unit.substr(0, unit.find('/')));
  r->set_remote_unit(unit);
  r->set_kind(kind);
  for (auto& [k, v] : service_data) {
    auto* c = r->add_service_changes();
    c->set_key(k);
    c->set_value(v);
  }
  r->set_service_term(service_term);
  return e;
}

class EngineLeadershipTest : public ::testing::Test {
 protected:
  void SetUp() override {
    kb::StoreOptions o;
    o.durability = kb::Durability::kGroupCommit;
    store_ = std::move(kb::Store::Open(dir_.Sub("kb"), o).value());
    kb_ = std::move(kb::Kb::Open(store_.get(), "svc/0").value());
  }

  void Handler(std::string name, std::vector<std::string> on, Fn fn) {
    spec_.handlers.push_back(
        {std::move(name), {}, {}, std::move(on), MakeAction(std::move(fn)), {}});
  }

  Engine& Start(bool leadership = true) {
    spec_.service = "svc";
    spec_.unit = "svc/0";
    spec_.leadership = leadership;
    spec_.endpoints = {{"db", Role::kRequires, "iface", {}}};
    engine_ = std::move(Engine::Create(std::move(spec_), kb_.get(), &clock_).value());
    return *engine_;
  }

  RunResult Run(v1::Event e) {
    EXPECT_TRUE(engine_->Enqueue(std::move(e)).ok());
    auto r = engine_->RunOnce();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.value_or(RunResult{});
  }

  std::string FailureOf(const RunResult& r) {
    EXPECT_EQ(r.outcome, RunOutcome::kFailed);
    return engine_->failure().has_value() ? FailureText(*engine_->failure()) : "<no failure>";
  }

  Fn WriteService(std::string key, std::string value) {
    return [=](RunContext& ctx) { return ctx.SetData("db:1", key, value, /*service=*/true); };
  }

  testing::TempDir dir_;
  base::ManualClock clock_;
  std::unique_ptr<kb::Store> store_;
  std::unique_ptr<kb::Kb> kb_;
  ServiceSpec spec_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineLeadershipTest, LeaderChangedSetsTheFactsAndElectedFiresOnTheNewLeaderOnly) {
  int changed = 0, elected = 0;
  Handler("on-changed", {"leader.changed"}, [&](RunContext&) {
    ++changed;
    return absl::OkStatus();
  });
  Handler("on-elected", {"leader.elected"}, [&](RunContext& ctx) {
    ++elected;
    EXPECT_TRUE(ctx.IsSet("leader"));
    return absl::OkStatus();
  });
  Start();
  ASSERT_EQ(Run(LeaderChanged("svc/0", 5)).outcome, RunOutcome::kCommitted);
  EXPECT_EQ(engine_->FactValue("leader"), "5");
  EXPECT_EQ(engine_->FactValue("leader.unit"), "svc/0");
  EXPECT_EQ(engine_->FactValue("leader.term"), "5");
  EXPECT_EQ(engine_->LeadingTerm(), 5);
  EXPECT_EQ(changed, 1);
  EXPECT_EQ(elected, 1);

  ASSERT_EQ(Run(LeaderChanged("svc/1", 9)).outcome, RunOutcome::kCommitted);
  EXPECT_FALSE(engine_->IsSet("leader"));
  EXPECT_EQ(engine_->FactValue("leader.unit"), "svc/1");
  EXPECT_EQ(engine_->FactValue("leader.term"), "9");
  EXPECT_EQ(engine_->LeadingTerm(), 0);
  EXPECT_EQ(changed, 2);
  EXPECT_EQ(elected, 1);

  // News older than what is known changes nothing.
  ASSERT_EQ(Run(LeaderChanged("svc/0", 5)).outcome, RunOutcome::kCommitted);
  EXPECT_EQ(engine_->FactValue("leader.unit"), "svc/1");
  EXPECT_FALSE(engine_->IsSet("leader"));
}

TEST_F(EngineLeadershipTest, HandlersCannotChangeTheLeadershipFacts) {
  Handler("claims", {"install"}, [](RunContext& ctx) { return ctx.Set("leader", "99"); });
  Start();
  EXPECT_THAT(FailureOf(Run(Named("install"))), HasSubstr("'leader' is the engine's"));
  EXPECT_FALSE(engine_->IsSet("leader"));
}

TEST_F(EngineLeadershipTest, ANonLeadersServiceBagWriteFailsTheRunNamingTheLeader) {
  Handler("publish", {"publish"}, WriteService("primary", "svc/0"));
  Start();
  ASSERT_EQ(Run(Rel(v1::RELATION_EVENT_KIND_JOINED, "app/0")).outcome, RunOutcome::kCommitted);
  ASSERT_EQ(Run(LeaderChanged("svc/1", 4)).outcome, RunOutcome::kCommitted);
  const std::string failure = FailureOf(Run(Named("publish")));
  EXPECT_THAT(failure, HasSubstr("unit 'svc/0' is not the leader of service 'svc'"));
  EXPECT_THAT(failure, HasSubstr("the leader is svc/1, term 4"));
  EXPECT_EQ(engine_->Bag("db:1", "ls")->size(), 0u);
}

TEST_F(EngineLeadershipTest, AServiceWithoutLeadershipWritesNoServiceBag) {
  Handler("publish", {"publish"}, WriteService("k", "v"));
  Start(/*leadership=*/false);
  ASSERT_EQ(Run(Rel(v1::RELATION_EVENT_KIND_JOINED, "app/0")).outcome, RunOutcome::kCommitted);
  EXPECT_THAT(FailureOf(Run(Named("publish"))), HasSubstr("declares no leadership"));
}

TEST_F(EngineLeadershipTest, ALeaderChangedEventOnAServiceWithoutLeadershipIsRefused) {
  Start(/*leadership=*/false);
  EXPECT_THAT(FailureOf(Run(LeaderChanged("svc/0", 3))), HasSubstr("does not declare leadership"));
}

TEST_F(EngineLeadershipTest, TheLeadersServiceChangesCarryItsTerm) {
  Handler("publish", {"publish"}, WriteService("primary", "svc/0"));
  Start();
  ASSERT_EQ(Run(Rel(v1::RELATION_EVENT_KIND_JOINED, "app/0")).outcome, RunOutcome::kCommitted);
  ASSERT_EQ(Run(LeaderChanged("svc/0", 12)).outcome, RunOutcome::kCommitted);
  ASSERT_EQ(Run(Named("publish")).outcome, RunOutcome::kCommitted);
  auto outbox = engine_->Outbox("app/0");
  ASSERT_TRUE(outbox.ok()) << outbox.status();
  ASSERT_FALSE(outbox->empty());
  const v1::RelationEvent& sent = outbox->back().event();
  ASSERT_EQ(sent.service_changes_size(), 1);
  EXPECT_EQ(sent.service_changes(0).key(), "primary");
  EXPECT_EQ(sent.service_term(), 12);
}

TEST_F(EngineLeadershipTest, ServiceDataCommitsOnlyWhileItsTermIsCurrent) {
  Handler("publish", {"publish"}, WriteService("primary", "svc/0"));
  Start();
  std::vector<int64_t> asked;
  absl::StatusOr<bool> answer = false;
  engine_->SetTermCheck([&](int64_t term) {
    asked.push_back(term);
    return answer;
  });
  ASSERT_EQ(Run(Rel(v1::RELATION_EVENT_KIND_JOINED, "app/0")).outcome, RunOutcome::kCommitted);
  ASSERT_EQ(Run(LeaderChanged("svc/0", 7)).outcome, RunOutcome::kCommitted);
  EXPECT_TRUE(asked.empty()) << "a run that wrote no service data is not checked";

  EXPECT_THAT(FailureOf(Run(Named("publish"))), HasSubstr("term 7 is not committed: the term is "
                                                          "no longer current"));
  EXPECT_EQ(asked, std::vector<int64_t>{7});
  EXPECT_EQ(engine_->Bag("db:1", "ls")->size(), 0u) << "the deposed term's write landed";

  answer = absl::UnavailableError("etcd is away");
  clock_.Advance(absl::Minutes(1));
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(FailureOf(*r), HasSubstr("could not be confirmed: etcd is away"));

  answer = true;
  clock_.Advance(absl::Minutes(1));
  r = engine_->RunOnce();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, RunOutcome::kCommitted);
  EXPECT_EQ(engine_->Bag("db:1", "ls")->at("primary"), "svc/0");
}

TEST_F(EngineLeadershipTest, AReceiverIgnoresAndCountsServiceChangesFromAnOlderTerm) {
  Start(/*leadership=*/false);  // the receiver needs no leadership of its own
  ASSERT_EQ(Run(Rel(v1::RELATION_EVENT_KIND_JOINED, "pg/1", {{"primary", "pg/1"}}, 8)).outcome,
            RunOutcome::kCommitted);
  // The deposed leader's write, from term 5, arrives late.
  ASSERT_EQ(Run(Rel(v1::RELATION_EVENT_KIND_JOINED, "pg/0", {{"primary", "pg/0"}}, 5)).outcome,
            RunOutcome::kCommitted);
  EXPECT_EQ(engine_->Bag("db:1", "rs")->at("primary"), "pg/1");
  EXPECT_EQ(engine_->stale_service_changes(), 1u);
  // The same term and a newer one are applied.
  ASSERT_EQ(Run(Rel(v1::RELATION_EVENT_KIND_CHANGED, "pg/1", {{"port", "5432"}}, 8)).outcome,
            RunOutcome::kCommitted);
  ASSERT_EQ(Run(Rel(v1::RELATION_EVENT_KIND_CHANGED, "pg/0", {{"primary", "pg/0"}}, 9)).outcome,
            RunOutcome::kCommitted);
  EXPECT_EQ(engine_->Bag("db:1", "rs")->at("primary"), "pg/0");
  EXPECT_EQ(engine_->Bag("db:1", "rs")->at("port"), "5432");
  EXPECT_EQ(engine_->stale_service_changes(), 1u);
}

}  // namespace
}  // namespace parley::engine
