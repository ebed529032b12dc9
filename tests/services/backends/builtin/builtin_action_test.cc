// Builtin actions (services/backends/builtin/builtin_action.h) run end to end on a real engine and
// KB: steps set facts, relation data and status; unresolved references and data the interface
// refuses fail the run naming the handler.

#include "services/backends/builtin/builtin_action.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "engine/engine.h"
#include "tests/services/backends/backend_test_util.h"
#include "tests/services/definition/definition_test_util.h"

namespace parley::services {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::Joined;
using testing::LineOf;
using testing::Named;
using ::testing::Pair;

constexpr char kBuiltinService[] = R"(name: web
requires:
  db: redis
provides:
  website: http
config:
  port: {type: int, default: 8080}
  title: {type: string}
actions:
  rename:
    params:
      title: {type: string, required: true}
  move:
    params:
      port: {type: string, required: true}
  withdraw: {}
events:
  app.published: Fired once the website data is out.
  show-title: Shows the configured title.
  copy-fact: Copies a fact nobody set.
  wait: Waits for a peer without failing.
handlers:
  - name: install
    on: [install]
    action:
      kind: builtin
      steps:
        - set: installed
        - status: {state: maintenance, message: "installing on port {{config.port}}"}
  - name: connect
    when: [db.ready, installed]
    action:
      kind: builtin
      steps:
        - set: "redis={{fact.db.remote.host}}:{{fact.db.remote.port}}"
        - status: {state: active, message: "using redis at {{ fact.redis }}"}
  - name: publish
    when: [website.joined, installed]
    action:
      kind: builtin
      steps:
        - relation-set: {endpoint: website, key: host, value: 10.0.0.5}
        - relation-set: {endpoint: website, key: port, value: "{{config.port}}"}
        - fire: app.published
  - name: announce
    on: [app.published]
    action: {kind: builtin, steps: [{set: "published=http://10.0.0.5:{{config.port}}/"}]}
  - name: republish
    when: [website.joined]
    on: [config.changed]
    action:
      kind: builtin
      steps: [{relation-set: {endpoint: website, key: port, value: "{{config.port}}"}}]
  - name: rename
    on: [action.rename]
    action: {kind: builtin, steps: [{set: "title={{event.title}}"}, {clear: installed}]}
  - name: move
    on: [action.move]
    action:
      kind: builtin
      steps: [{relation-set: {endpoint: website, key: port, value: "{{event.port}}"}}]
  - name: withdraw
    on: [action.withdraw]
    action: {kind: builtin, steps: [{relation-unset: {endpoint: website, key: host}}]}
  - name: show-title
    on: [show-title]
    action: {kind: builtin, steps: [{status: {state: active, message: "{{config.title}}"}}]}
  - name: copy
    on: [copy-fact]
    action: {kind: builtin, steps: [{set: "copy={{fact.nothing}}"}]}
  - name: wait
    on: [wait]
    action:
      kind: builtin
      steps:
        - status: {state: waiting, message: "waiting for a peer"}
        - retry-later: 2m
)";

// Every kind is registered (MakeBackends); the definition uses builtin actions only.
class BuiltinEngineTest : public testing::BackendTest {
 protected:
  void SetUp() override {
    Write("shared/redis.yaml", testing::kRedis);
    Write("shared/http.yaml", testing::kHttp);
    Write("svc/service.yaml", kBuiltinService);
    ASSERT_NO_FATAL_FAILURE(Start({}));
  }

  std::string Path(const std::string& rel) const { return dir_.Sub(rel); }
};

TEST_F(BuiltinEngineTest, StepsSetFactsRelationDataAndStatus) {
  EXPECT_EQ(Run(Named("install")).outcome, engine::RunOutcome::kCommitted);
  EXPECT_EQ(engine_->FactValue("installed"), "");
  EXPECT_EQ(engine_->workload_status().state(), v1::WORKLOAD_STATE_MAINTENANCE);
  EXPECT_EQ(engine_->workload_status().message(), "installing on port 8080");  // the default

  // A load balancer joins: publish writes the website data, fires app.published, announce runs.
  engine::RunResult r = Run(Joined("website", "website:1", "lb/0"));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kCommitted);
  EXPECT_THAT(LocalBag("website:1"), ElementsAre(Pair("host", "10.0.0.5"), Pair("port", "8080")));
  EXPECT_EQ(engine_->FactValue("published"), "http://10.0.0.5:8080/");
  ASSERT_TRUE(r.trace);
  ASSERT_EQ(r.trace->messages_size(), 1);
  EXPECT_EQ(r.trace->messages(0).destination(), "lb/0");

  // Redis joins with its data: facts from relation data expand in templates.
  Run(Joined("db", "db:1", "redis/0",
             {{"host", "10.0.0.9"}, {"port", "6379"}, {"password", "secret"}}));
  EXPECT_EQ(engine_->FactValue("redis"), "10.0.0.9:6379");
  EXPECT_EQ(engine_->workload_status().state(), v1::WORKLOAD_STATE_ACTIVE);
  EXPECT_EQ(engine_->workload_status().message(), "using redis at 10.0.0.9:6379");

  // The run's config wins over the default.
  v1::Event changed = Named("config.changed");
  auto* c = changed.add_config_changes();
  c->set_key("port");
  c->set_value("9090");
  Run(std::move(changed));
  EXPECT_EQ(LocalBag("website:1").at("port"), "9090");

  // A published key withdrawn: the peer is sent its deletion.
  r = Run(Named("action.withdraw"));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kCommitted);
  EXPECT_THAT(LocalBag("website:1"), ElementsAre(Pair("port", "9090")));
  ASSERT_TRUE(r.trace);
  ASSERT_EQ(r.trace->messages_size(), 1);
  ASSERT_EQ(r.trace->messages(0).event().unit_changes_size(), 1);
  EXPECT_TRUE(r.trace->messages(0).event().unit_changes(0).deleted());

  // Event parameters; clear.
  Run(Named("action.rename", {{"title", "Hello"}}));
  EXPECT_EQ(engine_->FactValue("title"), "Hello");
  EXPECT_FALSE(engine_->IsSet("installed"));
}

TEST_F(BuiltinEngineTest, UnresolvedReferenceFailsTheRunNamingTheHandler) {
  // `title` has no default and the model gave none.
  engine::RunResult r = Run(Named("show-title"));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_EQ(engine_->failure()->handler(), "show-title");
  EXPECT_THAT(engine_->failure()->message(),
              HasSubstr(absl::StrCat("handler 'show-title': ", Path("svc/service.yaml"), ":",
                                     LineOf(kBuiltinService, "message: \"{{config.title}}\""),
                                     ": '{{config.title}}': config option 'title' has no value "
                                     "and no default")));
  EXPECT_EQ(engine_->workload_status().state(), v1::WORKLOAD_STATE_UNSPECIFIED);
}

TEST_F(BuiltinEngineTest, RelationDataIsCheckedAgainstTheInterface) {
  Run(Named("install"));
  Run(Joined("website", "website:1", "lb/0"));
  ASSERT_EQ(LocalBag("website:1").at("port"), "8080");
  engine::RunResult r = Run(Named("action.move", {{"port", "eighty"}}));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_THAT(engine_->failure()->message(),
              HasSubstr(absl::StrCat("handler 'move': ", Path("svc/service.yaml"), ":",
                                     LineOf(kBuiltinService, "value: \"{{event.port}}\""),
                                     ": relation-set website.port: interface 'http': key "
                                     "'port': expected an int, got 'eighty'")));
  EXPECT_EQ(LocalBag("website:1").at("port"), "8080");  // rolled back
}

TEST_F(BuiltinEngineTest, MissingEventParameterFailsTheRun) {
  engine::RunResult r = Run(Named("action.rename"));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_THAT(engine_->failure()->message(),
              HasSubstr("'{{event.title}}': event 'action.rename' has no parameter 'title'"));
  EXPECT_FALSE(engine_->IsSet("title"));
}

TEST_F(BuiltinEngineTest, UnsetFactFailsTheRun) {
  engine::RunResult r = Run(Named("copy-fact"));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_THAT(engine_->failure()->message(), HasSubstr("handler 'copy': "));
  EXPECT_THAT(engine_->failure()->message(),
              HasSubstr("'{{fact.nothing}}': fact 'nothing' is not set"));
  EXPECT_FALSE(engine_->IsSet("copy"));
}

// The builtin step retry-later asks for the handler to run again later; the run commits.
TEST_F(BuiltinEngineTest, RetryLaterStepDoesNotFailTheRun) {
  engine::RunResult r = Run(Named("wait"));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_FALSE(engine_->failure().has_value());
  EXPECT_EQ(engine_->workload_status().message(), "waiting for a peer");
  ASSERT_TRUE(engine_->timers().contains("retry-later wait wait"));
  EXPECT_EQ(engine_->timers().at("retry-later wait wait"), clock_.Now() + absl::Minutes(2));
}

}  // namespace
}  // namespace parley::services
