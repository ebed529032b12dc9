// The workload's health in the engine (docs/service-definitions.md, "Health"): the events the
// health monitor queues are transitions only (also across restarts), applying them sets and
// clears the engine's fact workload.healthy, and nothing else may fire them or change the fact.
// A real RocksDB KB in a temp dir and a manual clock.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "tests/testing/temp_dir.h"

namespace parley::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class EngineHealthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    kb::StoreOptions o;
    auto store = kb::Store::Open(dir_.Sub("kb"), o);
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
    // What a definition's handlers on the health events look like.
    spec.handlers.push_back(
        {"restart", {}, {}, {"workload.unhealthy"}, MakeAction([this](RunContext& ctx) {
           seen_.push_back(std::string("restart:") + ctx.event().params().at("reason"));
           return absl::OkStatus();
         })});
    spec.handlers.push_back(
        {"serving", {"workload.healthy"}, {}, {}, MakeAction([this](RunContext&) {
           seen_.push_back("serving");
           return absl::OkStatus();
         })});
    spec.handlers.push_back(
        {"poke", {}, {}, {"poke"}, MakeAction([this](RunContext& ctx) { return poke_(ctx); })});
    auto e = Engine::Create(std::move(spec), kb_.get(), &clock_);
    EXPECT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    return *engine_;
  }

  void RunAll() {
    auto r = engine_->RunUntilIdle();
    ASSERT_TRUE(r.ok()) << r.status();
  }

  ::parley::testing::TempDir dir_;
  std::unique_ptr<kb::Store> store_;
  std::unique_ptr<kb::Kb> kb_;
  base::ManualClock clock_;
  std::unique_ptr<Engine> engine_;
  std::vector<std::string> seen_;
  std::function<absl::Status(RunContext&)> poke_ = [](RunContext&) { return absl::OkStatus(); };
};

TEST_F(EngineHealthTest, TransitionsSetAndClearTheFactAndFireTheirEvents) {
  Engine& e = Start();
  EXPECT_EQ(*e.QueuedHealth(), v1::WORKLOAD_HEALTH_UNSPECIFIED);
  auto healthy = e.EnqueueHealth(v1::WORKLOAD_HEALTH_HEALTHY, {{"probe", "port"}});
  ASSERT_TRUE(healthy.ok()) << healthy.status();
  EXPECT_NE(healthy->event_id, 0u);
  RunAll();
  EXPECT_TRUE(e.IsSet(kWorkloadHealthyFact));
  EXPECT_THAT(seen_, ElementsAre("serving"));

  auto unhealthy = e.EnqueueHealth(v1::WORKLOAD_HEALTH_UNHEALTHY,
                                   {{"probe", "port"}, {"reason", "connection refused"}});
  ASSERT_TRUE(unhealthy.ok()) << unhealthy.status();
  EXPECT_NE(unhealthy->event_id, 0u);
  RunAll();
  EXPECT_FALSE(e.IsSet(kWorkloadHealthyFact));
  EXPECT_THAT(seen_, ElementsAre("serving", "restart:connection refused"));
  auto traces = e.Traces(1);
  ASSERT_TRUE(traces.ok());
  EXPECT_EQ(traces->back().trigger().name(), "workload.unhealthy");
  EXPECT_EQ(traces->back().trigger().source(), "health");
}

TEST_F(EngineHealthTest, OnlyTransitionsAreQueuedAlsoAcrossARestart) {
  Engine& e = Start();
  ASSERT_NE(e.EnqueueHealth(v1::WORKLOAD_HEALTH_UNHEALTHY, {{"reason", "down"}})->event_id, 0u);
  // The same health again, queued or applied, queues nothing.
  EXPECT_EQ(e.EnqueueHealth(v1::WORKLOAD_HEALTH_UNHEALTHY, {{"reason", "down"}})->event_id, 0u);
  RunAll();
  EXPECT_EQ(e.EnqueueHealth(v1::WORKLOAD_HEALTH_UNHEALTHY, {{"reason", "down"}})->event_id, 0u);
  EXPECT_THAT(seen_, ElementsAre("restart:down"));
  Engine& again = Start();
  EXPECT_EQ(*again.QueuedHealth(), v1::WORKLOAD_HEALTH_UNHEALTHY);
  EXPECT_EQ(again.EnqueueHealth(v1::WORKLOAD_HEALTH_UNHEALTHY, {{"reason", "x"}})->event_id, 0u);
  EXPECT_EQ(again.inbox_depth(), 0u);
  EXPECT_NE(again.EnqueueHealth(v1::WORKLOAD_HEALTH_HEALTHY)->event_id, 0u);
  EXPECT_EQ(again.inbox_depth(), 1u);
}

TEST_F(EngineHealthTest, HealthEventsWaitInTheInboxInOrderWithTheRest) {
  Engine& e = Start();
  v1::Event poke;
  poke.set_name("poke");
  ASSERT_TRUE(e.Enqueue(poke).ok());
  ASSERT_TRUE(e.EnqueueHealth(v1::WORKLOAD_HEALTH_HEALTHY).ok());
  ASSERT_TRUE(e.EnqueueHealth(v1::WORKLOAD_HEALTH_UNHEALTHY, {{"reason", "r"}}).ok());
  EXPECT_EQ(e.inbox_depth(), 3u);
  RunAll();
  auto traces = e.Traces(3);
  ASSERT_TRUE(traces.ok());
  std::vector<std::string> names;
  for (const v1::Trace& t : *traces) names.push_back(t.trigger().name());
  EXPECT_THAT(names, ElementsAre("poke", "workload.healthy", "workload.unhealthy"));
  EXPECT_FALSE(e.IsSet(kWorkloadHealthyFact));
}

TEST_F(EngineHealthTest, HandlersCannotChangeTheFactOrFireTheEvents) {
  Engine& e = Start();
  for (auto [what, fn] :
       std::vector<std::pair<std::string, std::function<absl::Status(RunContext&)>>>{
           {"is the engine's", [](RunContext& c) { return c.Set("workload.healthy"); }},
           {"is the engine's", [](RunContext& c) { return c.Clear("workload.healthy"); }},
           {"only the health probes", [](RunContext& c) { return c.Fire("workload.unhealthy"); }},
           {"only the health probes", [](RunContext& c) { return c.Fire("workload.healthy"); }}}) {
    poke_ = fn;
    v1::Event poke;
    poke.set_name("poke");
    ASSERT_TRUE(e.Enqueue(poke).ok());
    auto r = e.RunOnce();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->outcome, RunOutcome::kFailed);
    EXPECT_THAT(r->trace->error(), HasSubstr(what));
    ASSERT_TRUE(e.Resolve(ResolveMode::kSkip, 0, "test").ok());
  }
  EXPECT_FALSE(e.IsSet(kWorkloadHealthyFact));
}

TEST_F(EngineHealthTest, EventsThatPretendToBeHealthAreRefused) {
  Engine& e = Start();
  v1::Event named;
  named.set_name("workload.unhealthy");  // as the agent API or a peer might send it
  EXPECT_THAT(e.Enqueue(named).status().message(), HasSubstr("only the agent's health probes"));
  v1::Event mismatched;
  mismatched.set_name("poke");
  mismatched.set_health(v1::WORKLOAD_HEALTH_HEALTHY);
  EXPECT_THAT(e.Enqueue(mismatched).status().message(), HasSubstr("must be named"));
  EXPECT_TRUE(absl::IsInvalidArgument(e.EnqueueHealth(v1::WORKLOAD_HEALTH_UNSPECIFIED).status()));
  EXPECT_EQ(e.inbox_depth(), 0u);
}

}  // namespace
}  // namespace parley::engine
