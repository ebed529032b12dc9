// One test (or more) per rule of the engine's semantics (docs/engine.md). Each uses a real
// RocksDB KB in a temp dir and a manual clock.

#include "engine/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/trace_format.h"
#include "tests/testing/temp_dir.h"

namespace parley::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;

using Fn = std::function<absl::Status(RunContext&)>;

absl::Status Ok(RunContext&) { return absl::OkStatus(); }

Fn SetFact(std::string name, std::string value = "") {
  return [=](RunContext& ctx) { return ctx.Set(name, value); };
}

v1::Event Named(std::string name) {
  v1::Event e;
  e.set_name(std::move(name));
  return e;
}

v1::Event Rel(std::string endpoint, v1::RelationEventKind kind, std::string id, std::string unit,
              std::vector<std::pair<std::string, std::string>> data = {}) {
  static const char* kKinds[] = {"", "joined", "changed", "departed", "broken", "created"};
  v1::Event e;
  e.set_name(absl::StrCat(endpoint, ".", kKinds[kind]));
  auto* r = e.mutable_relation();
  r->set_relation_id(id);
  r->set_endpoint(endpoint);
  r->set_remote_service(unit.substr(0, unit.find('/')));
  r->set_remote_unit(unit);
  r->set_kind(kind);
  for (auto& [k, v] : data) {
    auto* c = r->add_unit_changes();
    c->set_key(k);
    c->set_value(v);
  }
  return e;
}

// Which handlers a trace shows with a given step kind, in order.
std::vector<std::string> Steps(const v1::Trace& t, v1::TraceStep::Kind kind) {
  std::vector<std::string> out;
  for (const auto& s : t.steps()) {
    if (s.kind() == kind) out.push_back(s.handler());
  }
  return out;
}

std::vector<std::string> Ran(const v1::Trace& t) { return Steps(t, v1::TraceStep::KIND_RAN); }

std::string ReasonOf(const v1::Trace& t, v1::TraceStep::Kind kind, const std::string& handler) {
  for (const auto& s : t.steps()) {
    if (s.kind() == kind && s.handler() == handler) return s.reason();
  }
  return "<no such step>";
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override { OpenStore(); }

  void OpenStore() {
    kb::StoreOptions o;
    o.durability = kb::Durability::kGroupCommit;
    auto store = kb::Store::Open(dir_.Sub("kb"), o);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto kb = kb::Kb::Open(store_.get(), "svc/0");
    ASSERT_TRUE(kb.ok()) << kb.status();
    kb_ = std::move(*kb);
  }

  void Handler(std::string name, std::vector<std::string> when, std::vector<std::string> when_not,
               std::vector<std::string> on, Fn fn = Ok) {
    handlers_.push_back(
        {std::move(name), std::move(when), std::move(when_not), std::move(on), std::move(fn), {}});
  }

  void Endpoint(std::string name, std::vector<std::string> required = {}) {
    endpoints_.push_back({std::move(name), Role::kRequires, "iface", std::move(required)});
  }

  ServiceSpec Spec() {
    ServiceSpec spec;
    spec.service = "svc";
    spec.unit = "svc/0";
    spec.endpoints = endpoints_;
    for (auto& h : handlers_) {
      spec.handlers.push_back({h.name, h.when, h.when_not, h.on, MakeAction(h.fn), h.while_dying});
    }
    return spec;
  }

  Engine& Start() {
    engine_.reset();
    auto e = Engine::Create(Spec(), kb_.get(), &clock_, options_);
    EXPECT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    return *engine_;
  }

  // Enqueues `e` and runs it; returns the run's trace.
  v1::Trace Run(v1::Event e, RunOutcome expect = RunOutcome::kCommitted) {
    auto id = engine_->Enqueue(std::move(e));
    EXPECT_TRUE(id.ok()) << id.status();
    auto r = engine_->RunOnce();
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    EXPECT_EQ(r->outcome, expect) << (r->trace ? FormatTrace(*r->trace) : "no trace");
    return r->trace ? *r->trace : v1::Trace();
  }

  struct H {
    std::string name;
    std::vector<std::string> when, when_not, on;
    Fn fn;
    std::optional<bool> while_dying;
  };
  testing::TempDir dir_;
  base::ManualClock clock_;
  EngineOptions options_;
  std::unique_ptr<kb::Store> store_;
  std::unique_ptr<kb::Kb> kb_;
  std::vector<EndpointSpec> endpoints_;
  std::vector<H> handlers_;
  std::unique_ptr<Engine> engine_;
};

// Step 2: handlers on the fired event are queued in declaration order if their facts hold;
// the others are skipped with the failing precondition as the reason.
TEST_F(EngineTest, FiredEventQueuesMatchingHandlersInDeclarationOrder) {
  Handler("b", {}, {}, {"install"}, SetFact("b"));
  Handler("needs-x", {"x"}, {}, {"install"});
  Handler("a", {}, {}, {"install", "start"}, SetFact("a"));
  Handler("on-start", {}, {}, {"start"});
  Start();
  v1::Trace t = Run(Named("install"));
  EXPECT_THAT(Ran(t), ElementsAre("b", "a"));
  EXPECT_EQ(ReasonOf(t, v1::TraceStep::KIND_QUEUED, "b"), "on install");
  EXPECT_EQ(ReasonOf(t, v1::TraceStep::KIND_SKIPPED, "needs-x"), "on install, but when x: not set");
}

// Step 2: once fired, the event is inactive: a handler on it whose facts become true later in
// the run is not queued.
TEST_F(EngineTest, EventIsInactiveAfterFiring) {
  Handler("set-x", {}, {}, {"install"}, SetFact("x"));
  Handler("on-install-with-x", {"x"}, {}, {"install"}, SetFact("late"));
  Start();
  v1::Trace t = Run(Named("install"));
  EXPECT_THAT(Ran(t), ElementsAre("set-x"));
  EXPECT_FALSE(engine_->IsSet("late"));
}

// Step 3: a fact-only handler runs when it never ran, and does not run again while its inputs
// do not change (what charms.reactive gets wrong).
TEST_F(EngineTest, FactOnlyHandlerRunsOnceUntilInputsChange) {
  int runs = 0;
  Handler("setup", {}, {"configured"}, {}, [&](RunContext&) {
    ++runs;
    return absl::OkStatus();
  });
  Start();
  v1::Trace t = Run(Named("install"));
  EXPECT_THAT(Ran(t), ElementsAre("setup"));
  EXPECT_EQ(ReasonOf(t, v1::TraceStep::KIND_QUEUED, "setup"), "dirty: never ran");
  EXPECT_THAT(Ran(Run(Named("update"))), IsEmpty());
  EXPECT_THAT(Ran(Run(Named("update"))), IsEmpty());
  EXPECT_EQ(runs, 1);
}

// Step 3: a change of value (not only set/clear) of a named fact makes the handler dirty.
TEST_F(EngineTest, NewValueOfNamedFactMakesHandlerDirty) {
  Handler("set-port", {}, {}, {"config.changed"},
          [](RunContext& ctx) { return ctx.Set("port", ctx.event().params().at("port")); });
  std::vector<std::string> seen;
  Handler("render", {"port"}, {}, {}, [&](RunContext& ctx) {
    seen.push_back(*ctx.Value("port"));
    return absl::OkStatus();
  });
  Start();
  auto config = [](std::string port) {
    v1::Event e = Named("config.changed");
    (*e.mutable_params())["port"] = port;
    return e;
  };
  v1::Trace t = Run(config("80"));
  EXPECT_EQ(ReasonOf(t, v1::TraceStep::KIND_QUEUED, "render"), "dirty: never ran");
  t = Run(config("80"));  // same value: not a change
  EXPECT_THAT(Ran(t), ElementsAre("set-port"));
  t = Run(config("8080"));
  EXPECT_THAT(Ran(t), ElementsAre("set-port", "render"));
  EXPECT_EQ(ReasonOf(t, v1::TraceStep::KIND_QUEUED, "render"), "dirty: port changed");
  EXPECT_THAT(seen, ElementsAre("80", "8080"));
}

// Step 3: a when_not fact that is set and cleared again counts as a change.
TEST_F(EngineTest, WhenNotFactChangeMakesHandlerDirty) {
  Handler("block", {}, {}, {"block"}, SetFact("blocked"));
  Handler("unblock", {}, {}, {"unblock"}, [](RunContext& ctx) { return ctx.Clear("blocked"); });
  int runs = 0;
  Handler("serve", {}, {"blocked"}, {}, [&](RunContext&) {
    ++runs;
    return absl::OkStatus();
  });
  Start();
  Run(Named("start"));
  EXPECT_EQ(runs, 1);
  v1::Trace t = Run(Named("block"));
  EXPECT_EQ(runs, 1);
  t = Run(Named("unblock"));
  EXPECT_THAT(Ran(t), ElementsAre("unblock", "serve"));
  EXPECT_EQ(ReasonOf(t, v1::TraceStep::KIND_QUEUED, "serve"), "dirty: blocked changed");
  EXPECT_EQ(runs, 2);
}

// Step 3: a handler's own change of a fact it names does not make it dirty again.
TEST_F(EngineTest, OwnChangesDoNotMakeHandlerDirty) {
  int runs = 0;
  Handler("bump", {"go"}, {}, {}, [&](RunContext& ctx) {
    ++runs;
    return ctx.Set("go", absl::StrCat(runs));
  });
  Handler("start", {}, {}, {"start"}, SetFact("go", "0"));
  Start();
  v1::Trace t = Run(Named("start"));
  EXPECT_THAT(Ran(t), ElementsAre("start", "bump"));
  EXPECT_THAT(Ran(Run(Named("noop"))), IsEmpty());
}

// Step 4: after each handler the queue is retested; handlers whose facts no longer hold are
// dropped with the reason, newly satisfied ones appended.
TEST_F(EngineTest, RetestDropsAndAppends) {
  Handler("first", {}, {}, {"go"}, [](RunContext& ctx) { return ctx.Set("stop"); });
  Handler("second", {}, {"stop"}, {"go"}, SetFact("never"));
  Handler("third", {"stop"}, {}, {}, SetFact("after-stop"));
  Start();
  v1::Trace t = Run(Named("go"));
  EXPECT_THAT(Ran(t), ElementsAre("first", "third"));
  EXPECT_THAT(Steps(t, v1::TraceStep::KIND_DROPPED), ElementsAre("second"));
  EXPECT_EQ(ReasonOf(t, v1::TraceStep::KIND_DROPPED, "second"), "when_not stop: set");
  EXPECT_FALSE(engine_->IsSet("never"));
  EXPECT_TRUE(engine_->IsSet("after-stop"));
}

// Step 4: event preconditions are not retested: a queued event handler runs even though the
// event is no longer active, as long as its facts hold.
TEST_F(EngineTest, EventPreconditionIsNotRetested) {
  Handler("a", {}, {}, {"go"}, SetFact("unrelated"));
  Handler("b", {}, {}, {"go"}, SetFact("b-ran"));
  Start();
  EXPECT_THAT(Ran(Run(Named("go"))), ElementsAre("a", "b"));
}

// Step 4: a handler that fires an event gets the handlers on it queued after it, event
// handlers before dirty fact-only ones; the fired event is then inactive again.
TEST_F(EngineTest, FiredEventsQueueTheirHandlers) {
  Handler("kick", {}, {}, {"go"}, [](RunContext& ctx) {
    if (auto s = ctx.Set("kicked"); !s.ok()) return s;
    return ctx.Fire("app.restart");
  });
  Handler("fact-only", {"kicked"}, {}, {});
  Handler("on-restart", {}, {}, {"app.restart"});
  Handler("on-restart-needs-y", {"y"}, {}, {"app.restart"});
  Start();
  v1::Trace t = Run(Named("go"));
  EXPECT_THAT(Ran(t), ElementsAre("kick", "on-restart", "fact-only"));
  EXPECT_EQ(ReasonOf(t, v1::TraceStep::KIND_QUEUED, "on-restart"), "on app.restart");
  EXPECT_EQ(ReasonOf(t, v1::TraceStep::KIND_SKIPPED, "on-restart-needs-y"),
            "on app.restart, but when y: not set");
  bool fired_step = false;
  for (const auto& s : t.steps()) {
    if (s.kind() == v1::TraceStep::KIND_FIRED && s.event() == "app.restart") {
      fired_step = true;
      EXPECT_EQ(s.reason(), "fired by kick");
    }
  }
  EXPECT_TRUE(fired_step);
}

// Step 5: a run commits facts, relation data, outbox and bookkeeping together with the removal
// of its inbox event; a restarted engine sees exactly that state.
TEST_F(EngineTest, CommitIsAtomicAndSurvivesRestart) {
  Endpoint("db");
  Handler("publish", {"db.joined"}, {}, {}, [](RunContext& ctx) {
    for (const auto* rel : ctx.Relations("db")) {
      if (auto s = ctx.SetData(rel->relation_id(), "user", "app"); !s.ok()) return s;
    }
    return ctx.Set("published");
  });
  Start();
  EXPECT_EQ(engine_->inbox_depth(), 0u);
  v1::Trace t = Run(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/0"));
  EXPECT_THAT(Ran(t), ElementsAre("publish"));
  EXPECT_EQ(engine_->inbox_depth(), 0u);
  ASSERT_EQ(t.messages_size(), 1);
  EXPECT_EQ(t.messages(0).event().relation_id(), "db:1");
  EXPECT_EQ(t.messages(0).event().sequence(), 1u);
  EXPECT_EQ(t.messages(0).event().sender_unit(), "svc/0");
  EXPECT_EQ(t.messages(0).destination(), "redis/0");

  Start();  // a new engine on the same KB
  EXPECT_TRUE(engine_->IsSet("published"));
  EXPECT_EQ(engine_->FactValue("db.joined"), "1");
  auto outbox = engine_->Outbox();
  ASSERT_TRUE(outbox.ok());
  ASSERT_EQ(outbox->size(), 1u);  // the introduction, with the data written in the same run
  EXPECT_EQ((*outbox)[0].event().kind(), v1::RELATION_EVENT_KIND_JOINED);
  EXPECT_EQ((*outbox)[0].event().unit_changes(0).key(), "user");
  auto bag = engine_->Bag("db:1", "lu");
  ASSERT_TRUE(bag.ok());
  EXPECT_THAT(*bag, ElementsAre(Pair("user", "app")));
  // Bookkeeping survived too: the handler is not dirty.
  EXPECT_THAT(Ran(Run(Named("update"))), IsEmpty());
}

// Relation data writes that change nothing stage no message; sequences increase per relation.
TEST_F(EngineTest, OutboxSequencesPerRelation) {
  Endpoint("db");
  Handler("write", {}, {}, {"write"}, [](RunContext& ctx) {
    for (const auto* rel : ctx.Relations("db")) {
      if (auto s = ctx.SetData(rel->relation_id(), "k", ctx.event().params().at("v")); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  });
  Start();
  // A unit that joins is introduced to: sequence 1 is a JOINED carrying this unit's data.
  v1::Trace t = Run(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/0"));
  ASSERT_EQ(t.messages_size(), 1);
  EXPECT_EQ(t.messages(0).event().kind(), v1::RELATION_EVENT_KIND_JOINED);
  EXPECT_EQ(t.messages(0).destination(), "redis/0");
  EXPECT_EQ(t.messages(0).event().sequence(), 1u);
  Run(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:2", "pg/0"));
  auto write = [](std::string v) {
    v1::Event e = Named("write");
    (*e.mutable_params())["v"] = v;
    return e;
  };
  EXPECT_EQ(Run(write("1")).messages_size(), 2);
  EXPECT_EQ(Run(write("1")).messages_size(), 0);
  t = Run(write("2"));
  ASSERT_EQ(t.messages_size(), 2);
  EXPECT_EQ(t.messages(0).event().relation_id(), "db:1");
  EXPECT_EQ(t.messages(0).event().kind(), v1::RELATION_EVENT_KIND_CHANGED);
  EXPECT_EQ(t.messages(0).event().sequence(), 3u);
  EXPECT_EQ(t.messages(1).event().relation_id(), "db:2");
  EXPECT_EQ(t.messages(1).event().sequence(), 3u);
  EXPECT_GT(t.messages(1).id(), t.messages(0).id());
}

// Step 1: relationship facts are derived from relation data: joined counts remote units, ready
// needs every required key in some unit's data, remote.<key> mirrors keys.
TEST_F(EngineTest, RelationshipFactsFollowRelationData) {
  Endpoint("db", {"host", "password"});
  std::vector<std::string> configured;
  Handler("configure", {"db.ready"}, {}, {}, [&](RunContext& ctx) {
    configured.push_back(*ctx.Value("db.remote.password"));
    return absl::OkStatus();
  });
  Handler("lost", {}, {"db.joined"}, {}, SetFact("lonely"));
  Start();
  Run(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/0", {{"host", "h"}}));
  EXPECT_EQ(engine_->FactValue("db.joined"), "1");
  EXPECT_EQ(engine_->FactValue("db.remote.host"), "h");
  EXPECT_FALSE(engine_->IsSet("db.ready"));
  EXPECT_THAT(configured, IsEmpty());

  Run(Rel("db", v1::RELATION_EVENT_KIND_CHANGED, "db:1", "redis/0", {{"password", "p1"}}));
  EXPECT_TRUE(engine_->IsSet("db.ready"));
  EXPECT_THAT(configured, ElementsAre("p1"));

  // New data under the required keys changes ready's value, so the handler runs again.
  Run(Rel("db", v1::RELATION_EVENT_KIND_CHANGED, "db:1", "redis/0", {{"password", "p2"}}));
  EXPECT_THAT(configured, ElementsAre("p1", "p2"));

  Run(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/1"));
  EXPECT_EQ(engine_->FactValue("db.joined"), "2");

  Run(Rel("db", v1::RELATION_EVENT_KIND_DEPARTED, "db:1", "redis/0"));
  EXPECT_EQ(engine_->FactValue("db.joined"), "1");
  EXPECT_FALSE(engine_->IsSet("db.ready"));  // redis/1 never published
  EXPECT_FALSE(engine_->IsSet("db.remote.host"));
  EXPECT_FALSE(engine_->IsSet("lonely"));

  v1::Event broken = Rel("db", v1::RELATION_EVENT_KIND_BROKEN, "db:1", "");
  Run(broken);
  EXPECT_FALSE(engine_->IsSet("db.joined"));
  EXPECT_TRUE(engine_->IsSet("lonely"));
  EXPECT_TRUE(engine_->relations().at("db:1").gone());
  auto bag = engine_->Bag("db:1", "ru:redis/1");
  ASSERT_TRUE(bag.ok());
  EXPECT_THAT(*bag, IsEmpty());
}

// Handlers cannot set relationship facts nor fire relationship events.
TEST_F(EngineTest, RelationshipFactsAreReadOnly) {
  Endpoint("db");
  Handler("cheat", {}, {}, {"go"}, SetFact("db.ready"));
  Start();
  v1::Trace t = Run(Named("go"), RunOutcome::kFailed);
  EXPECT_THAT(t.error(), HasSubstr("'db.ready' is a relationship fact"));
}

// Step 6: a failing handler rolls back the whole run: facts, relation data and messages.
TEST_F(EngineTest, FailureRollsBackEverything) {
  Endpoint("db");
  bool fail = true;
  Handler("write", {}, {}, {"go"}, [](RunContext& ctx) {
    if (auto s = ctx.Set("written"); !s.ok()) return s;
    if (auto s = ctx.SetStatus(v1::WORKLOAD_STATE_ACTIVE, "busy"); !s.ok()) return s;
    return ctx.SetData("db:1", "k", "v");
  });
  Handler("flaky", {"written"}, {}, {}, [&](RunContext&) {
    return fail ? absl::UnavailableError("service not up yet") : absl::OkStatus();
  });
  Start();
  Run(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/0"));
  v1::Trace t = Run(Named("go"), RunOutcome::kFailed);
  EXPECT_EQ(t.result(), v1::Trace::RESULT_ROLLED_BACK);
  EXPECT_EQ(t.error(), "handler flaky: service not up yet");
  EXPECT_THAT(Steps(t, v1::TraceStep::KIND_FAILED), ElementsAre("flaky"));
  EXPECT_FALSE(engine_->IsSet("written"));
  EXPECT_EQ(engine_->workload_status().state(), v1::WORKLOAD_STATE_UNSPECIFIED);
  EXPECT_THAT(*engine_->Bag("db:1", "lu"), IsEmpty());
  EXPECT_EQ(engine_->Outbox()->size(), 1u);  // only the introduction from the joined run
  EXPECT_EQ(engine_->inbox_depth(), 1u);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_EQ(engine_->failure()->handler(), "flaky");
  EXPECT_EQ(engine_->failure()->message(), "service not up yet");
  EXPECT_EQ(engine_->failure()->attempt(), 1u);

  // Retried after the backoff; the failure record survives a restart.
  Start();
  ASSERT_TRUE(engine_->failure().has_value());
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, RunOutcome::kNotDue);
  clock_.Advance(absl::Seconds(1));
  fail = false;
  r = engine_->RunOnce();
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted);
  EXPECT_EQ(r->trace->attempt(), 2u);
  EXPECT_TRUE(engine_->IsSet("written"));
  EXPECT_FALSE(engine_->failure().has_value());
  EXPECT_EQ(engine_->workload_status().message(), "busy");
  EXPECT_EQ(engine_->Outbox()->size(), 2u);
  EXPECT_EQ(engine_->inbox_depth(), 0u);
}

// Step 6: retries back off exponentially with jitter, from retry_initial doubling to retry_max.
TEST_F(EngineTest, RetryBackoffIsJitteredExponential) {
  options_.retry_initial = absl::Seconds(1);
  options_.retry_max = absl::Seconds(10);
  options_.retry_jitter = 0.2;
  Handler("broken", {}, {}, {"go"}, [](RunContext&) { return absl::InternalError("nope"); });
  Start();
  ASSERT_TRUE(engine_->Enqueue(Named("go")).ok());
  const double expected[] = {1, 2, 4, 8, 10, 10};
  for (int attempt = 1; attempt <= 6; ++attempt) {
    auto r = engine_->RunOnce();
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->outcome, RunOutcome::kFailed);
    EXPECT_EQ(engine_->failure()->attempt(), static_cast<uint32_t>(attempt));
    const double delay = absl::ToDoubleSeconds(r->next_attempt - clock_.Now());
    EXPECT_LE(delay, expected[attempt - 1]) << "attempt " << attempt;
    EXPECT_GE(delay, expected[attempt - 1] * 0.8 - 0.001) << "attempt " << attempt;
    auto early = engine_->RunOnce();
    ASSERT_TRUE(early.ok());
    EXPECT_EQ(early->outcome, RunOutcome::kNotDue);
    clock_.Set(r->next_attempt);
  }
}

// Step 6: a run that does not converge fails, naming the handlers that cycled.
TEST_F(EngineTest, CycleBoundNamesTheCyclingHandlers) {
  options_.max_handler_executions = 100;
  Handler("ping", {}, {"pong"}, {}, [](RunContext& ctx) {
    if (auto s = ctx.Clear("ping"); !s.ok()) return s;
    return ctx.Set("pong");
  });
  Handler("pong", {"pong"}, {}, {}, [](RunContext& ctx) {
    if (auto s = ctx.Clear("pong"); !s.ok()) return s;
    return ctx.Set("ping");
  });
  Start();
  v1::Trace t = Run(Named("go"), RunOutcome::kFailed);
  EXPECT_THAT(t.error(), HasSubstr("exceeded 100 handler executions"));
  EXPECT_THAT(t.error(), HasSubstr("ping (50 runs)"));
  EXPECT_THAT(t.error(), HasSubstr("pong (50 runs)"));
  EXPECT_FALSE(engine_->IsSet("pong"));
}

// Step 7: every run leaves a trace in the KB; only the newest traces_kept stay.
TEST_F(EngineTest, TracesAreKeptInTheKb) {
  options_.traces_kept = 3;
  Handler("h", {}, {}, {"go"});
  Start();
  for (int i = 0; i < 5; ++i) Run(Named("go"));
  Start();
  auto traces = engine_->Traces(10);
  ASSERT_TRUE(traces.ok());
  ASSERT_EQ(traces->size(), 3u);
  EXPECT_EQ((*traces)[0].run(), 3u);
  EXPECT_EQ((*traces)[2].run(), 5u);
  EXPECT_EQ((*traces)[2].trigger().name(), "go");
  EXPECT_THAT(Ran((*traces)[2]), ElementsAre("h"));
}

// A stored trace says how long its run took (time passes on the manual clock inside a handler).
TEST_F(EngineTest, StoredTracesHaveTheirRunsDuration) {
  Handler("slow", {}, {}, {"go"}, [&](RunContext&) {
    clock_.Advance(absl::Milliseconds(7));
    return absl::OkStatus();
  });
  Start();
  Run(Named("go"));
  auto traces = engine_->Traces(1);
  ASSERT_TRUE(traces.ok());
  ASSERT_EQ(traces->size(), 1u);
  EXPECT_EQ((*traces)[0].result(), v1::Trace::RESULT_COMMITTED);
  EXPECT_EQ((*traces)[0].duration_ns(), absl::ToInt64Nanoseconds(absl::Milliseconds(7)));
}

// The inbox is FIFO and durable: events queued before a restart run after it, in order.
TEST_F(EngineTest, InboxIsDurableFifo) {
  std::vector<std::string> order;
  Handler("record", {}, {}, {"a", "b", "c"}, [&](RunContext& ctx) {
    order.push_back(ctx.event().name());
    return absl::OkStatus();
  });
  Start();
  for (const char* n : {"c", "a", "b"}) ASSERT_TRUE(engine_->Enqueue(Named(n)).ok());
  EXPECT_EQ(engine_->inbox_depth(), 3u);
  engine_.reset();
  store_.reset();
  kb_.reset();
  OpenStore();
  Start();
  EXPECT_EQ(engine_->inbox_depth(), 3u);
  auto r = engine_->RunUntilIdle();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(order, ElementsAre("c", "a", "b"));
  EXPECT_EQ(engine_->inbox_depth(), 0u);
}

// Determinism: the same KB state and the same event give the same trace.
TEST_F(EngineTest, SameStateAndEventGiveSameTrace) {
  Endpoint("db", {"host"});
  Handler("install", {}, {"installed"}, {}, SetFact("installed"));
  Handler("configure", {"installed", "db.ready"}, {}, {}, [](RunContext& ctx) {
    if (auto s = ctx.Fire("app.configured"); !s.ok()) return s;
    return ctx.Set("configured", *ctx.Value("db.remote.host"));
  });
  Handler("announce", {}, {}, {"app.configured"}, SetFact("announced"));
  std::vector<std::string> traces;
  for (int i = 0; i < 2; ++i) {
    testing::TempDir dir;
    auto store = kb::Store::Open(dir.Sub("kb"), {});
    ASSERT_TRUE(store.ok());
    auto kb = kb::Kb::Open(store->get(), "svc/0");
    ASSERT_TRUE(kb.ok());
    auto engine = Engine::Create(Spec(), kb->get(), &clock_, options_);
    ASSERT_TRUE(engine.ok());
    std::string all;
    for (auto e : {Named("install"),
                   Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "r/0", {{"host", "x"}})}) {
      ASSERT_TRUE((*engine)->Enqueue(e).ok());
      auto r = (*engine)->RunOnce();
      ASSERT_TRUE(r.ok());
      all += r->trace->SerializeAsString();
    }
    traces.push_back(all);
  }
  EXPECT_EQ(traces[0], traces[1]);
}

// Bad service definitions are refused with the handler and the problem named.
TEST_F(EngineTest, InvalidSpecsAreRefused) {
  Endpoint("db");
  Handler("h", {"x"}, {"x"}, {});
  auto e = Engine::Create(Spec(), kb_.get(), &clock_);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(),
              HasSubstr("handler 'h': fact 'x' is in both when and when_not"));

  handlers_.clear();
  Handler("h", {"dbx.ready"}, {}, {});
  e = Engine::Create(Spec(), kb_.get(), &clock_);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("'dbx' is not an endpoint of this service"));

  handlers_.clear();
  Handler("h", {"db.bogus"}, {}, {});
  e = Engine::Create(Spec(), kb_.get(), &clock_);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("endpoint 'db' has facts joined, ready"));

  handlers_.clear();
  Handler("h", {}, {}, {});
  Handler("h", {}, {}, {});
  e = Engine::Create(Spec(), kb_.get(), &clock_);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("handler 'h' declared twice"));
}

// Bad events never reach the inbox.
TEST_F(EngineTest, InvalidEventsAreRefused) {
  Endpoint("db");
  Start();
  auto r = engine_->Enqueue(Rel("nope", v1::RELATION_EVENT_KIND_JOINED, "x:1", "a/0"));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("endpoint 'nope' is not declared"));
  v1::Event mismatched = Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "a/0");
  mismatched.set_name("db.changed");
  r = engine_->Enqueue(mismatched);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("must be named 'db.joined'"));
  r = engine_->Enqueue(Named("db.joined"));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("must carry their relation"));
  EXPECT_EQ(engine_->inbox_depth(), 0u);
}

// EnqueueAll writes its events in one transaction: consecutive ids in order, all of them durable
// together (they are there after a reopen), and none at all when one of them is invalid.
TEST_F(EngineTest, EnqueueAllIsAllOrNothing) {
  Endpoint("db");
  std::vector<std::string> order;
  Handler("any", {}, {}, {"install", "config.changed", "start"}, [&](RunContext& ctx) {
    order.push_back(ctx.event().name());
    return absl::OkStatus();
  });
  Start();
  std::vector<v1::Event> bad = {Named("install"), Named("db.joined"), Named("start")};
  auto r = engine_->EnqueueAll(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("must carry their relation"));
  EXPECT_EQ(engine_->inbox_depth(), 0u);
  EXPECT_FALSE(engine_->EnqueueAll({}).ok());

  r = engine_->EnqueueAll({Named("install"), Named("config.changed"), Named("start")});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(engine_->inbox_depth(), 3u);
  const uint64_t last = r->event_id;
  // Reopened (as after a crash once the write is durable): all three, in order, ids consecutive.
  ASSERT_TRUE(store_->WaitDurable(r->ticket).ok());
  engine_.reset();
  kb_.reset();
  store_.reset();
  OpenStore();
  Start();
  EXPECT_EQ(engine_->inbox_depth(), 3u);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) {
    auto run = engine_->RunOnce();
    ASSERT_TRUE(run.ok()) << run.status();
    ids.push_back(run->trace->trigger().id());
  }
  EXPECT_THAT(order, ElementsAre("install", "config.changed", "start"));
  EXPECT_THAT(ids, ElementsAre(last - 2, last - 1, last));
}

// Fact changes outside a run are refused (nothing else touches the KB meanwhile).
TEST_F(EngineTest, EnqueueDuringRunIsRefused) {
  Engine* self = nullptr;
  absl::Status inner;
  Handler("h", {}, {}, {"go"}, [&](RunContext&) {
    inner = self->Enqueue(Named("go")).status();
    return absl::OkStatus();
  });
  self = &Start();
  Run(Named("go"));
  EXPECT_TRUE(absl::IsFailedPrecondition(inner)) << inner;
}

v1::Event Created(std::string endpoint, std::string id, std::string remote_agent) {
  v1::Event e = Rel(endpoint, v1::RELATION_EVENT_KIND_CREATED, id, remote_agent);
  e.set_name(endpoint + ".created");
  e.mutable_relation()->set_remote_endpoint("website");
  e.mutable_relation()->set_interface("http");
  return e;
}

// Relating records the relation and introduces this unit to the remote one; the remote unit's
// own JOINED makes it a member without a second introduction.
TEST_F(EngineTest, RelateIntroducesOnce) {
  Endpoint("db");
  Handler("joined", {"db.joined"}, {}, {}, SetFact("seen"));
  Start();
  v1::Trace t = Run(Created("db", "db:7", "redis/0"));
  ASSERT_EQ(t.messages_size(), 1);
  EXPECT_EQ(t.messages(0).event().kind(), v1::RELATION_EVENT_KIND_JOINED);
  EXPECT_EQ(t.messages(0).event().receiver_endpoint(), "website");
  EXPECT_EQ(t.messages(0).event().interface(), "http");
  EXPECT_FALSE(engine_->IsSet("db.joined"));  // nobody joined yet
  t = Run(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:7", "redis/0", {{"host", "h"}}));
  EXPECT_EQ(t.messages_size(), 0);
  EXPECT_TRUE(engine_->IsSet("seen"));
  EXPECT_EQ(engine_->FactValue("db.remote.host"), "h");
}

// Unrelating: a local departed tells the remote unit; the last departure queues broken, which
// removes the relation's data but keeps the DEPARTED notice in the outbox.
TEST_F(EngineTest, UnrelateTellsRemoteAndBreaks) {
  Endpoint("db");
  Handler("write", {"db.joined"}, {}, {},
          [](RunContext& ctx) { return ctx.SetData("db:1", "k", "v"); });
  Start();
  Run(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/0"));
  ASSERT_TRUE(engine_->Acknowledge("redis/0", "db:1", 1).ok());
  EXPECT_EQ(engine_->outbox_size(), 0u);
  v1::Event departed = Rel("db", v1::RELATION_EVENT_KIND_DEPARTED, "db:1", "redis/0");
  departed.mutable_relation()->set_local(true);
  v1::Trace t = Run(departed);
  ASSERT_EQ(t.messages_size(), 1);
  EXPECT_EQ(t.messages(0).event().kind(), v1::RELATION_EVENT_KIND_DEPARTED);
  EXPECT_EQ(t.messages(0).event().sequence(), 2u);
  EXPECT_EQ(engine_->inbox_depth(), 1u);  // the follow-up broken event
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->trace->trigger().name(), "db.broken");
  EXPECT_TRUE(engine_->relations().at("db:1").gone());
  EXPECT_THAT(*engine_->Bag("db:1", "lu"), IsEmpty());
  auto outbox = engine_->Outbox("redis/0");
  ASSERT_EQ(outbox->size(), 1u);
  EXPECT_EQ((*outbox)[0].event().kind(), v1::RELATION_EVENT_KIND_DEPARTED);
  // A late event for the broken relation changes nothing.
  Run(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/0"));
  EXPECT_FALSE(engine_->IsSet("db.joined"));
}

// Peer events are applied exactly once and in order: duplicates are reported, gaps refused.
TEST_F(EngineTest, PeerSequencesAreDeduplicatedAndGapsRefused) {
  Endpoint("db");
  Start();
  v1::Event joined = Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/0");
  auto r = engine_->EnqueueFromPeer(joined, 1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->duplicate);
  r = engine_->EnqueueFromPeer(joined, 1);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->duplicate);
  v1::Event changed = Rel("db", v1::RELATION_EVENT_KIND_CHANGED, "db:1", "redis/0", {{"a", "1"}});
  r = engine_->EnqueueFromPeer(changed, 3);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsOutOfRange(r.status()));
  EXPECT_THAT(r.status().message(), HasSubstr("expected 2"));
  EXPECT_EQ(engine_->inbox_depth(), 1u);
  ASSERT_TRUE(engine_->EnqueueFromPeer(changed, 2).ok());
  // Another sender has its own sequence.
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/1"), 1)
          .ok());
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_EQ(engine_->FactValue("db.joined"), "2");
  EXPECT_EQ(engine_->FactValue("db.remote.a"), "1");
  // Each run's trace records the sequence its trigger was received with (a fault campaign
  // checks from them that nothing was applied twice or out of order); local events carry none.
  auto traces = engine_->Traces(3);
  ASSERT_TRUE(traces.ok()) << traces.status();
  ASSERT_EQ(traces->size(), 3u);
  std::vector<std::pair<std::string, uint64_t>> received;
  for (const v1::Trace& t : *traces) {
    received.emplace_back(t.trigger().relation().remote_unit(), t.trigger().relation().sequence());
  }
  EXPECT_THAT(received, ElementsAre(Pair("redis/0", 1), Pair("redis/0", 2), Pair("redis/1", 1)));
  EXPECT_THAT(FormatTrace((*traces)[1]), HasSubstr("(relation db:1, remote unit redis/0, seq 2)"));
  Run(Rel("db", v1::RELATION_EVENT_KIND_CHANGED, "db:1", "redis/1", {{"a", "2"}}));
  auto local = engine_->Traces(1);
  ASSERT_TRUE(local.ok());
  EXPECT_EQ(local->at(0).trigger().relation().sequence(), 0u);
}

// Acknowledgements remove exactly the acknowledged prefix of one destination and relation.
TEST_F(EngineTest, AcknowledgeRemovesAcknowledgedPrefix) {
  Endpoint("db");
  Handler("write", {}, {}, {"write"},
          [](RunContext& ctx) { return ctx.SetData("db:1", "k", ctx.event().params().at("v")); });
  Start();
  Run(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/0"));
  for (const char* v : {"1", "2", "3"}) {
    v1::Event e = Named("write");
    (*e.mutable_params())["v"] = v;
    Run(e);
  }
  EXPECT_EQ(engine_->outbox_size(), 4u);
  ASSERT_TRUE(engine_->Acknowledge("redis/0", "db:1", 2).ok());
  auto outbox = engine_->Outbox("redis/0");
  ASSERT_EQ(outbox->size(), 2u);
  EXPECT_EQ((*outbox)[0].event().sequence(), 3u);
  ASSERT_TRUE(engine_->Acknowledge("redis/1", "db:1", 4).ok());  // another destination
  EXPECT_EQ(engine_->outbox_size(), 2u);
  Start();
  EXPECT_EQ(engine_->outbox_size(), 2u);
}

// Config changes ride on their config.changed event and are applied before handlers run.
TEST_F(EngineTest, ConfigChangesApplyInTheRun) {
  std::optional<std::string> seen;
  Handler("read", {}, {}, {"config.changed"}, [&](RunContext& ctx) {
    seen = ctx.Config("port");
    return absl::OkStatus();
  });
  Start();
  v1::Event e = Named("config.changed");
  auto* c = e.add_config_changes();
  c->set_key("port");
  c->set_value("8080");
  Run(e);
  EXPECT_EQ(seen, "8080");
  EXPECT_EQ(engine_->config().at("port"), "8080");
  Start();
  EXPECT_EQ(engine_->config().at("port"), "8080");
}

// Config is a state: a change is made against what the inbox leads to, and a queued config
// change that fails can be corrected instead of blocking the inbox until its retries give up.
TEST_F(EngineTest, ConfigChangesMergeIntoTheQueuedOne) {
  std::vector<std::string> seen;
  Handler("apply", {}, {}, {"config.changed"}, [&](RunContext& ctx) {
    const std::string port = ctx.Config("port").value_or("-");
    seen.push_back(port);
    if (port == "bad") return absl::InternalError("cannot listen on port 'bad'");
    return absl::OkStatus();
  });
  Start();
  // Nothing queued: a new event. The same config again: nothing.
  auto first = engine_->ChangeConfig({{"port", "1"}}, {});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_GT(first->event_id, 0u);
  EXPECT_EQ(engine_->ChangeConfig({{"port", "1"}}, {})->event_id, 0u);
  // Queued: the change merges into the queued event rather than queueing another.
  auto second = engine_->ChangeConfig({{"port", "2"}, {"mode", "x"}}, {});
  EXPECT_EQ(second->event_id, first->event_id);
  EXPECT_EQ(engine_->inbox_depth(), 1u);
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_THAT(seen, ElementsAre("2"));
  EXPECT_EQ(engine_->config().at("mode"), "x");

  // A value the handler refuses: the run fails and waits for its retry...
  auto bad = engine_->ChangeConfig({{"port", "bad"}}, {{"mode"}});
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->outcome, RunOutcome::kFailed);
  EXPECT_EQ(engine_->RunOnce()->outcome, RunOutcome::kNotDue);
  // ...until the value is corrected: the failing event now carries the correction and is due.
  auto fixed = engine_->ChangeConfig({{"port", "3"}}, {});
  EXPECT_EQ(fixed->event_id, bad->event_id);
  r = engine_->RunOnce();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, RunOutcome::kCommitted);
  EXPECT_EQ(engine_->config().at("port"), "3");
  EXPECT_FALSE(engine_->config().contains("mode"));
  EXPECT_FALSE(engine_->failure().has_value());
  EXPECT_THAT(seen, ElementsAre("2", "bad", "3"));
  // Restoring what is committed while nothing is queued changes nothing.
  EXPECT_EQ(engine_->ChangeConfig({{"port", "3"}}, {})->event_id, 0u);
}

// Timers a handler asks for are stored with the run and become timer.<name> events.
TEST_F(EngineTest, TimersBecomeEvents) {
  int fired = 0;
  Handler("arm", {}, {}, {"start"},
          [](RunContext& ctx) { return ctx.SetTimer("rotate", absl::Seconds(30)); });
  Handler("rotate", {}, {}, {"timer.rotate"}, [&](RunContext&) {
    ++fired;
    return absl::OkStatus();
  });
  Start();
  Run(Named("start"));
  ASSERT_EQ(engine_->timers().size(), 1u);
  EXPECT_EQ(engine_->timers().at("rotate"), clock_.Now() + absl::Seconds(30));
  Start();
  ASSERT_EQ(engine_->timers().size(), 1u);
  ASSERT_TRUE(engine_->EnqueueTimer("rotate").ok());
  EXPECT_TRUE(engine_->timers().empty());
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_EQ(fired, 1);
  Start();
  EXPECT_TRUE(engine_->timers().empty());
}

// Resolving the failed inbox head (docs/engine.md, "Resolving a failed event"): refused when
// nothing failed, or when the request names another event.
TEST_F(EngineTest, ResolveNeedsAFailedHead) {
  Handler("broken", {}, {}, {"go"}, [](RunContext&) { return absl::InternalError("nope"); });
  Start();
  auto r = engine_->Resolve(ResolveMode::kSkip, 0, "alice");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  EXPECT_THAT(r.status().message(),
              HasSubstr("has no failing event to resolve: its inbox is empty"));
  ASSERT_TRUE(engine_->Enqueue(Named("go")).ok());
  r = engine_->Resolve(ResolveMode::kRetry, 0, "alice");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("its inbox head (event 1) has not failed"));

  ASSERT_EQ(engine_->RunOnce()->outcome, RunOutcome::kFailed);
  ASSERT_TRUE(engine_->Enqueue(Named("go")).ok());
  // A stale request, about an event that is not the failing one, changes nothing.
  for (ResolveMode mode : {ResolveMode::kSkip, ResolveMode::kRetry}) {
    r = engine_->Resolve(mode, 2, "alice");
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
    EXPECT_THAT(r.status().message(),
                HasSubstr("event 2 is not the failing event; event 1 'go' is (1 failed attempts)"));
  }
  EXPECT_EQ(engine_->inbox_depth(), 2u);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_EQ(engine_->RunOnce()->outcome, RunOutcome::kNotDue);
}

// Skip drops the failed head unapplied in one write with its trace; the events behind it run,
// and after a restart it is neither in the inbox nor applied.
TEST_F(EngineTest, SkipDropsTheFailedHeadAndTracesIt) {
  int attempts = 0;
  Handler("broken", {}, {}, {"config.changed"}, [&](RunContext&) {
    ++attempts;
    return absl::InternalError("nope");
  });
  Handler("later", {}, {}, {"later"}, SetFact("later"));
  Start();
  ASSERT_TRUE(engine_->ChangeConfig({{"k", "v"}}, {}).ok());
  ASSERT_TRUE(engine_->Enqueue(Named("later")).ok());
  ASSERT_EQ(engine_->RunOnce()->outcome, RunOutcome::kFailed);
  clock_.Advance(absl::Seconds(1));
  ASSERT_EQ(engine_->RunOnce()->outcome, RunOutcome::kFailed);
  EXPECT_EQ(engine_->RunOnce()->outcome, RunOutcome::kNotDue);
  EXPECT_FALSE(engine_->IsSet("later"));

  auto r = engine_->Resolve(ResolveMode::kSkip, 1, "alice@ops");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->failure.event_id(), 1u);
  EXPECT_EQ(r->failure.attempt(), 2u);
  EXPECT_EQ(r->run, 3u);
  EXPECT_FALSE(engine_->failure().has_value());
  EXPECT_EQ(engine_->inbox_depth(), 1u);
  EXPECT_EQ(engine_->runs(), 3u);
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_TRUE(engine_->IsSet("later"));
  EXPECT_EQ(attempts, 2);
  // Nothing the event carried was applied: the config is the committed one.
  EXPECT_THAT(engine_->config(), IsEmpty());

  engine_.reset();
  store_.reset();
  kb_.reset();
  OpenStore();
  Start();
  EXPECT_EQ(engine_->inbox_depth(), 0u);
  EXPECT_FALSE(engine_->failure().has_value());
  EXPECT_EQ(engine_->RunOnce()->outcome, RunOutcome::kIdle);
  EXPECT_EQ(attempts, 2);
  auto traces = engine_->Traces(10);
  ASSERT_TRUE(traces.ok());
  ASSERT_EQ(traces->size(), 4u);
  const v1::Trace& skipped = (*traces)[2];
  EXPECT_EQ(skipped.run(), 3u);
  EXPECT_EQ(skipped.result(), v1::Trace::RESULT_SKIPPED);
  EXPECT_EQ(skipped.trigger().id(), 1u);
  EXPECT_EQ(skipped.trigger().name(), "config.changed");
  EXPECT_EQ(skipped.resolved_by(), "alice@ops");
  EXPECT_EQ(skipped.attempt(), 2u);
  EXPECT_EQ(skipped.error(), "handler broken: nope");
  EXPECT_THAT(FormatTrace(skipped), HasSubstr("SKIPPED by alice@ops after 2 failed attempts"));
  EXPECT_EQ((*traces)[3].trigger().name(), "later");
  EXPECT_EQ((*traces)[3].result(), v1::Trace::RESULT_COMMITTED);
}

// A skipped relation event stays received: its sender's redelivery is a duplicate, also after a
// restart, and the sender's next sequence is accepted.
TEST_F(EngineTest, SkippedPeerEventStaysReceived) {
  Endpoint("db");
  Handler("refuse", {}, {}, {"db.changed"}, [](RunContext& ctx) {
    return ctx.event().relation().unit_changes(0).value() == "bad"
               ? absl::InvalidArgumentError("bad value")
               : absl::OkStatus();
  });
  Start();
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/0"), 1)
          .ok());
  const v1::Event bad =
      Rel("db", v1::RELATION_EVENT_KIND_CHANGED, "db:1", "redis/0", {{"a", "bad"}});
  ASSERT_TRUE(engine_->EnqueueFromPeer(bad, 2).ok());
  ASSERT_EQ(engine_->RunUntilIdle()->outcome, RunOutcome::kFailed);
  ASSERT_TRUE(engine_->Resolve(ResolveMode::kSkip, 0, "bob").ok());
  auto again = engine_->EnqueueFromPeer(bad, 2);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate);
  engine_.reset();
  store_.reset();
  kb_.reset();
  OpenStore();
  Start();
  again = engine_->EnqueueFromPeer(bad, 2);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(engine_->inbox_depth(), 0u);
  ASSERT_TRUE(
      engine_
          ->EnqueueFromPeer(
              Rel("db", v1::RELATION_EVENT_KIND_CHANGED, "db:1", "redis/0", {{"b", "good"}}), 3)
          .ok());
  ASSERT_EQ(engine_->RunUntilIdle()->outcome, RunOutcome::kCommitted);
  EXPECT_FALSE(engine_->FactValue("db.remote.a").has_value());
  EXPECT_EQ(engine_->FactValue("db.remote.b"), "good");
}

// Retry makes the failed head due now and restarts its backoff from the initial delay; the
// retried run's trace names who asked.
TEST_F(EngineTest, RetryIsDueNowAndRestartsTheBackoff) {
  options_.retry_initial = absl::Seconds(1);
  options_.retry_max = absl::Seconds(100);
  options_.retry_jitter = 0;
  bool fail = true;
  Handler("flaky", {}, {}, {"go"}, [&](RunContext& ctx) {
    return fail ? absl::UnavailableError("not yet") : ctx.Set("done");
  });
  Start();
  ASSERT_TRUE(engine_->Enqueue(Named("go")).ok());
  absl::StatusOr<RunResult> r;
  for (int attempt = 1; attempt <= 4; ++attempt) {
    r = engine_->RunOnce();
    ASSERT_EQ(r->outcome, RunOutcome::kFailed);
    clock_.Set(r->next_attempt);
  }
  clock_.Advance(-absl::Seconds(8));  // just after the 4th failure: 8 s to wait
  EXPECT_EQ(engine_->RunOnce()->outcome, RunOutcome::kNotDue);

  auto resolved = engine_->Resolve(ResolveMode::kRetry, 1, "carol");
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->failure.attempt(), 4u);
  EXPECT_EQ(resolved->run, 0u);
  EXPECT_EQ(engine_->failure()->retry_requested_by(), "carol");
  // The retry request is durable.
  Start();
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_EQ(engine_->failure()->retry_requested_by(), "carol");
  r = engine_->RunOnce();
  ASSERT_EQ(r->outcome, RunOutcome::kFailed);
  EXPECT_EQ(r->trace->attempt(), 5u);
  EXPECT_EQ(r->trace->resolved_by(), "carol");
  EXPECT_EQ(r->next_attempt - clock_.Now(), absl::Seconds(1));
  EXPECT_EQ(engine_->failure()->retry_requested_by(), "");
  clock_.Set(r->next_attempt);
  r = engine_->RunOnce();
  ASSERT_EQ(r->outcome, RunOutcome::kFailed);
  EXPECT_EQ(r->trace->resolved_by(), "");
  EXPECT_EQ(r->next_attempt - clock_.Now(), absl::Seconds(2));

  // Once the cause is fixed, a retry applies it at once.
  fail = false;
  ASSERT_TRUE(engine_->Resolve(ResolveMode::kRetry, 0, "carol").ok());
  r = engine_->RunOnce();
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted);
  EXPECT_EQ(r->trace->attempt(), 7u);
  EXPECT_TRUE(engine_->IsSet("done"));
  EXPECT_FALSE(engine_->failure().has_value());
}

// Relation data is a state (docs/engine.md, "Retrying with the newest relation data"): the retry
// of a failed relation event runs against the newest data its remote unit sent since; news about
// that relation and unit makes the retry due at once; other news does not.
TEST_F(EngineTest, ARetryRunsAgainstTheNewestRelationData) {
  options_.retry_initial = absl::Minutes(5);
  options_.retry_jitter = 0;
  Endpoint("cluster");
  std::vector<std::string> seen;
  Handler("follow", {}, {}, {"cluster.joined", "cluster.changed"}, [&](RunContext& ctx) {
    auto bag = ctx.Bag("c:1", "ru:" + ctx.event().relation().remote_unit());
    if (!bag.ok()) return bag.status();
    const std::string primary = (*bag)["primary"];
    seen.push_back(absl::StrCat(primary, "+", (*bag)["slot"]));
    if (primary != "pg/2") return absl::UnavailableError("pg_basebackup: " + primary + " is down");
    return absl::OkStatus();
  });
  Handler("tick", {}, {}, {"tick"});
  Start();
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_JOINED, "c:1", "pg/0",
                                        {{"primary", "pg/9"}}),
                                    1)
                  .ok());
  ASSERT_EQ(engine_->RunOnce()->outcome, RunOutcome::kFailed);
  // News that is not about the failing event's relation and unit leaves its retry where it was.
  ASSERT_TRUE(engine_->Enqueue(Named("tick")).ok());
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_JOINED, "c:1", "pg/1",
                                        {{"primary", "pg/2"}}),
                                    1)
                  .ok());
  EXPECT_EQ(engine_->RunOnce()->outcome, RunOutcome::kNotDue);
  // Two changes from pg/0: the retry is due now and sees both (the later value of a key wins).
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_CHANGED, "c:1", "pg/0",
                                        {{"primary", "pg/1"}, {"slot", "s1"}}),
                                    2)
                  .ok());
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_CHANGED, "c:1", "pg/0",
                                        {{"primary", "pg/2"}}),
                                    3)
                  .ok());
  EXPECT_EQ(engine_->failure()->next_retry_unix_ms(), absl::ToUnixMillis(clock_.Now()));
  // The failure record says so durably: a restart keeps the retry due.
  Start();
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted) << FormatTrace(*r->trace);
  EXPECT_EQ(r->trace->trigger().id(), 1u);
  EXPECT_THAT(r->trace->folded(), ElementsAre(4, 5));
  EXPECT_THAT(FormatTrace(*r->trace), HasSubstr("with the newer data of events 4, 5"));
  EXPECT_THAT(seen, ElementsAre("pg/9+", "pg/2+s1"));
  // The events folded in run with nothing left to apply: no handler sees them again; the others
  // run as they came.
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_THAT(seen, ElementsAre("pg/9+", "pg/2+s1", "pg/2+"));
  auto traces = engine_->Traces(4);
  ASSERT_TRUE(traces.ok());
  ASSERT_EQ(traces->size(), 4u);
  EXPECT_THAT(Ran((*traces)[0]), ElementsAre("tick"));    // oldest first: event 2
  EXPECT_THAT(Ran((*traces)[1]), ElementsAre("follow"));  // pg/1 joined, in its place
  for (int i : {2, 3}) {
    EXPECT_EQ((*traces)[i].trigger().folded_into(), 1u);
    EXPECT_THAT(Ran((*traces)[i]), IsEmpty());
    EXPECT_THAT(FormatTrace((*traces)[i]), HasSubstr("folded into the retry of event 1"));
  }
  auto bag = engine_->Bag("c:1", "ru:pg/0");
  ASSERT_TRUE(bag.ok());
  EXPECT_THAT(*bag, ElementsAre(Pair("primary", "pg/2"), Pair("slot", "s1")));
  // Exactly-once accounting is unchanged: the folded sequences were received.
  auto dup = engine_->EnqueueFromPeer(
      Rel("cluster", v1::RELATION_EVENT_KIND_CHANGED, "c:1", "pg/0", {{"primary", "pg/9"}}), 3);
  ASSERT_TRUE(dup.ok());
  EXPECT_TRUE(dup->duplicate);
}

// A departed remote unit or a broken relation cancels the failing event about it that can no
// longer apply; the events behind it run; what it changed of the remote service's bag is kept.
TEST_F(EngineTest, ADepartureOrABreakCancelsTheFailingEventAboutIt) {
  options_.retry_initial = absl::Minutes(5);
  options_.retry_jitter = 0;
  Endpoint("cluster");
  std::vector<std::string> seen;
  Handler("follow", {}, {}, {"cluster.joined", "cluster.changed", "cluster.departed"},
          [&](RunContext& ctx) {
            seen.push_back(ctx.event().name() + " " + ctx.event().relation().remote_unit());
            if (ctx.event().name() == "cluster.departed") return absl::OkStatus();
            auto bag = ctx.Bag("c:1", "ru:" + ctx.event().relation().remote_unit());
            if (!bag.ok()) return bag.status();
            if ((*bag)["primary"] == "pg/9") return absl::UnavailableError("pg/9 is down");
            return absl::OkStatus();
          });
  Start();
  v1::Event joined =
      Rel("cluster", v1::RELATION_EVENT_KIND_JOINED, "c:1", "pg/0", {{"primary", "pg/9"}});
  auto* leader = joined.mutable_relation()->add_service_changes();
  leader->set_key("leader");
  leader->set_value("pg/0");
  ASSERT_TRUE(engine_->EnqueueFromPeer(joined, 1).ok());
  ASSERT_EQ(engine_->RunOnce()->outcome, RunOutcome::kFailed);
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_JOINED, "c:1", "pg/1",
                                        {{"primary", "pg/2"}}),
                                    1)
                  .ok());
  EXPECT_EQ(engine_->RunOnce()->outcome, RunOutcome::kNotDue);
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_DEPARTED, "c:1", "pg/0"), 2)
          .ok());
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted);
  EXPECT_EQ(r->trace->result(), v1::Trace::RESULT_CANCELLED);
  EXPECT_EQ(r->trace->trigger().id(), 1u);
  EXPECT_THAT(r->trace->error(),
              HasSubstr("cancelled by event 3 'cluster.departed' queued behind it (pg/0 left "
                        "relation c:1): its data was applied and no handler ran for it; the last "
                        "attempt failed: handler follow: pg/9 is down"));
  EXPECT_THAT(FormatTrace(*r->trace), HasSubstr("CANCELLED after 1 failed attempt"));
  EXPECT_FALSE(engine_->failure().has_value());
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_THAT(seen,
              ElementsAre("cluster.joined pg/0", "cluster.joined pg/1", "cluster.departed pg/0"));
  auto service = engine_->Bag("c:1", "rs");
  ASSERT_TRUE(service.ok());
  EXPECT_THAT(*service, ElementsAre(Pair("leader", "pg/0")));
  // The cancelled event's sequence stays received: its redelivery is a duplicate.
  auto dup = engine_->EnqueueFromPeer(joined, 1);
  ASSERT_TRUE(dup.ok());
  EXPECT_TRUE(dup->duplicate);

  // A break of the relation cancels a failing event about any of its units.
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_CHANGED, "c:1", "pg/1",
                                        {{"primary", "pg/9"}}),
                                    2)
                  .ok());
  ASSERT_EQ(engine_->RunOnce()->outcome, RunOutcome::kFailed);
  ASSERT_TRUE(engine_->Enqueue(Rel("cluster", v1::RELATION_EVENT_KIND_BROKEN, "c:1", "")).ok());
  r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->trace->result(), v1::Trace::RESULT_CANCELLED);
  EXPECT_THAT(r->trace->error(), HasSubstr("(relation c:1 is broken)"));
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_FALSE(engine_->failure().has_value());
  EXPECT_EQ(engine_->inbox_depth(), 0u);
}

// Found by the reference model (tests/engine/reference_model_test.cc): a departure takes the
// remote service's bag changes of the cancelled event before it, but applies them after the newer
// changes of the events that ran in between, so the bag goes back to older data. The later value
// of a key must win (docs/engine.md, "Relation data is a state too").
TEST_F(EngineTest, ACancelledEventsServiceDataDoesNotOverwriteNewerData) {
  options_.retry_jitter = 0;
  Endpoint("cluster");
  Handler("follow", {}, {}, {"cluster.changed"}, [&](RunContext& ctx) {
    auto bag = ctx.Bag("c:1", "ru:" + ctx.event().relation().remote_unit());
    if (!bag.ok()) return bag.status();
    if ((*bag)["primary"] == "pg/9") return absl::UnavailableError("pg/9 is down");
    return absl::OkStatus();
  });
  Start();
  auto leader = [](v1::Event e, std::string unit) {
    v1::BagChange* c = e.mutable_relation()->add_service_changes();
    c->set_key("leader");
    c->set_value(unit);
    return e;
  };
  // pg/1 stays in the relation, so that the remote service's bag outlives pg/0.
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_JOINED, "c:1", "pg/0"), 1)
          .ok());
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_JOINED, "c:1", "pg/1"), 1)
          .ok());
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  // pg/0 names the old leader with data `follow` fails on, then the new leader, then leaves.
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(leader(Rel("cluster", v1::RELATION_EVENT_KIND_CHANGED, "c:1",
                                               "pg/0", {{"primary", "pg/9"}}),
                                           "pg/0"),
                                    2)
                  .ok());
  ASSERT_EQ(engine_->RunOnce()->outcome, RunOutcome::kFailed);
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(leader(Rel("cluster", v1::RELATION_EVENT_KIND_CHANGED, "c:1",
                                               "pg/0", {{"primary", "pg/2"}}),
                                           "pg/1"),
                                    3)
                  .ok());
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_DEPARTED, "c:1", "pg/0"), 4)
          .ok());
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->trace->result(), v1::Trace::RESULT_CANCELLED) << FormatTrace(*r->trace);
  r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted) << FormatTrace(*r->trace);
  auto service = engine_->Bag("c:1", "rs");
  ASSERT_TRUE(service.ok());
  EXPECT_THAT(*service, ElementsAre(Pair("leader", "pg/1")));
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_EQ(engine_->inbox_depth(), 0u);
  service = engine_->Bag("c:1", "rs");
  ASSERT_TRUE(service.ok());
  // The departure must not bring back the older leader the cancelled event carried.
  EXPECT_THAT(*service, ElementsAre(Pair("leader", "pg/1")));
}

// Found by the reference model too: when two failing events of a unit are cancelled by its
// departure, the departure keeps the older one's service bag changes over the newer one's.
TEST_F(EngineTest, ADepartureKeepsTheNewestServiceDataOfTheEventsItCancelled) {
  options_.retry_jitter = 0;
  Endpoint("cluster");
  Handler("follow", {}, {}, {"cluster.changed"}, [&](RunContext& ctx) {
    auto bag = ctx.Bag("c:1", "ru:" + ctx.event().relation().remote_unit());
    if (!bag.ok()) return bag.status();
    if ((*bag)["primary"] == "pg/9") return absl::UnavailableError("pg/9 is down");
    return absl::OkStatus();
  });
  Start();
  auto leader = [](v1::Event e, std::string unit) {
    v1::BagChange* c = e.mutable_relation()->add_service_changes();
    c->set_key("leader");
    c->set_value(unit);
    return e;
  };
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_JOINED, "c:1", "pg/0"), 1)
          .ok());
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_JOINED, "c:1", "pg/1"), 1)
          .ok());
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  // Two changes of pg/0 that `follow` fails on, the second naming a newer leader; then pg/0 leaves.
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(leader(Rel("cluster", v1::RELATION_EVENT_KIND_CHANGED, "c:1",
                                               "pg/0", {{"primary", "pg/9"}}),
                                           "pg/0"),
                                    2)
                  .ok());
  ASSERT_EQ(engine_->RunOnce()->outcome, RunOutcome::kFailed);
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(leader(Rel("cluster", v1::RELATION_EVENT_KIND_CHANGED, "c:1",
                                               "pg/0", {{"primary", "pg/9"}}),
                                           "pg/1"),
                                    3)
                  .ok());
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_DEPARTED, "c:1", "pg/0"), 4)
          .ok());
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->trace->result(), v1::Trace::RESULT_CANCELLED) << FormatTrace(*r->trace);
  ASSERT_EQ(engine_->RunOnce()->outcome, RunOutcome::kFailed);
  clock_.Advance(absl::Seconds(2));
  r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->trace->result(), v1::Trace::RESULT_CANCELLED) << FormatTrace(*r->trace);
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_EQ(engine_->inbox_depth(), 0u);
  auto service = engine_->Bag("c:1", "rs");
  ASSERT_TRUE(service.ok());
  EXPECT_THAT(*service, ElementsAre(Pair("leader", "pg/1")));
}

// Retrying later (docs/engine.md, "Retrying later"): a handler that waits for a peer asks to run
// again after a delay instead of failing. Its run commits (no failure, no backoff), later events
// run at once, and after the delay a retry runs only that handler, against the newest data.
TEST_F(EngineTest, RetryLaterDoesNotFailOrBlockAndRetriesAgainstTheNewestData) {
  Endpoint("cluster");
  std::vector<std::string> seen;
  int greeted = 0;
  Handler("follow", {}, {}, {"cluster.joined"}, [&](RunContext& ctx) {
    auto bag = ctx.Bag("c:1", "ru:" + ctx.event().relation().remote_unit());
    if (!bag.ok()) return bag.status();
    const std::string primary = (*bag)["primary"];
    seen.push_back(primary);
    if (primary == "pg/0") {  // dead: wait for news of the promotion
      RETURN_IF_ERROR(ctx.SetStatus(v1::WORKLOAD_STATE_WAITING, "waiting for a primary"));
      return ctx.RetryLater(absl::Seconds(10));
    }
    return ctx.Set("following", primary);
  });
  Handler("greet", {}, {}, {"cluster.joined"}, [&](RunContext&) {
    ++greeted;
    return absl::OkStatus();
  });
  Handler("tick", {}, {}, {"tick"}, SetFact("ticked"));
  Start();
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_JOINED, "c:1", "pg/1",
                                        {{"primary", "pg/0"}}),
                                    1)
                  .ok());
  ASSERT_TRUE(engine_->Enqueue(Named("tick")).ok());
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted) << FormatTrace(*r->trace);
  EXPECT_FALSE(engine_->failure().has_value());
  EXPECT_EQ(engine_->workload_status().state(), v1::WORKLOAD_STATE_WAITING);  // kept
  EXPECT_THAT(FormatTrace(*r->trace), HasSubstr("run     follow"));
  EXPECT_THAT(FormatTrace(*r->trace), HasSubstr("retries later, in 10s"));
  const std::string timer = "retry-later follow cluster.joined c:1 pg/1";
  ASSERT_TRUE(engine_->timers().contains(timer));
  EXPECT_EQ(engine_->timers().at(timer), clock_.Now() + absl::Seconds(10));
  // The next event runs at once, and so does the news of the promotion.
  r = engine_->RunOnce();
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted);
  EXPECT_TRUE(engine_->IsSet("ticked"));
  ASSERT_TRUE(engine_
                  ->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_CHANGED, "c:1", "pg/1",
                                        {{"primary", "pg/2"}}),
                                    2)
                  .ok());
  ASSERT_EQ(engine_->RunOnce()->outcome, RunOutcome::kCommitted);
  EXPECT_EQ(engine_->inbox_depth(), 0u);
  // The retry survives a restart; when due (the agent enqueues due timers) it runs `follow` alone,
  // for the same event, against the newest data.
  Start();
  ASSERT_TRUE(engine_->timers().contains(timer));
  clock_.Advance(absl::Seconds(10));
  ASSERT_TRUE(engine_->EnqueueTimer(timer).ok());
  EXPECT_TRUE(engine_->timers().empty());
  r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted) << FormatTrace(*r->trace);
  EXPECT_EQ(r->trace->trigger().retry_handler(), "follow");
  EXPECT_EQ(r->trace->trigger().retry_of(), 1u);
  EXPECT_EQ(r->trace->trigger().name(), "cluster.joined");
  EXPECT_EQ(r->trace->trigger().relation().unit_changes_size(), 0);
  EXPECT_THAT(Ran(*r->trace), ElementsAre("follow"));
  EXPECT_EQ(ReasonOf(*r->trace, v1::TraceStep::KIND_QUEUED, "follow"),
            "retry later, asked for event 1");
  EXPECT_THAT(FormatTrace(*r->trace), HasSubstr("for follow (asked in event 1)"));
  EXPECT_THAT(seen, ElementsAre("pg/0", "pg/2"));
  EXPECT_EQ(engine_->FactValue("following"), "pg/2");
  EXPECT_EQ(greeted, 1);
  EXPECT_FALSE(engine_->failure().has_value());
  EXPECT_TRUE(engine_->timers().empty());
  // The data was applied once, in order: the retry changed none of it.
  auto bag = engine_->Bag("c:1", "ru:pg/1");
  ASSERT_TRUE(bag.ok());
  EXPECT_THAT(*bag, ElementsAre(Pair("primary", "pg/2")));
}

// A retry about a unit that has left since cannot apply: its handler does not run.
TEST_F(EngineTest, ARetryLaterAboutAUnitThatLeftIsSkipped) {
  Endpoint("cluster");
  int runs = 0;
  Handler("follow", {}, {}, {"cluster.joined"}, [&](RunContext& ctx) {
    ++runs;
    return ctx.RetryLater(absl::Seconds(5));
  });
  Start();
  for (const char* unit : {"pg/1", "pg/2"}) {
    ASSERT_TRUE(
        engine_->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_JOINED, "c:1", unit), 1)
            .ok());
  }
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("cluster", v1::RELATION_EVENT_KIND_DEPARTED, "c:1", "pg/1"), 2)
          .ok());
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_EQ(runs, 2);
  ASSERT_EQ(engine_->timers().size(), 2u);  // one per remote unit
  clock_.Advance(absl::Seconds(5));
  ASSERT_TRUE(engine_->EnqueueTimer("retry-later follow cluster.joined c:1 pg/1").ok());
  auto r = engine_->RunOnce();
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted);
  EXPECT_THAT(Ran(*r->trace), IsEmpty());
  EXPECT_EQ(ReasonOf(*r->trace, v1::TraceStep::KIND_SKIPPED, "follow"),
            "retry later of follow for event 1, but pg/1 left relation c:1");
  EXPECT_EQ(runs, 2);
  ASSERT_TRUE(engine_->EnqueueTimer("retry-later follow cluster.joined c:1 pg/2").ok());
  r = engine_->RunOnce();
  EXPECT_THAT(Ran(*r->trace), ElementsAre("follow"));
  EXPECT_EQ(runs, 3);
  EXPECT_EQ(engine_->timers().size(), 1u);  // it asked again
}

// A fact-only handler that retries later stays dirty, but is held until its retry is due: other
// events do not run it again meanwhile.
TEST_F(EngineTest, AFactOnlyHandlerThatRetriesLaterIsHeldUntilDue) {
  int runs = 0;
  bool peer_up = false;
  Handler("configure", {"cfg"}, {}, {}, [&](RunContext& ctx) {
    ++runs;
    if (!peer_up) return ctx.RetryLater(absl::Minutes(1));
    return ctx.Set("configured");
  });
  Handler("set-cfg", {}, {}, {"set-cfg"}, SetFact("cfg", "1"));
  Handler("tick", {}, {}, {"tick"});
  Start();
  v1::Trace t = Run(Named("set-cfg"));
  EXPECT_THAT(Ran(t), ElementsAre("set-cfg", "configure"));
  EXPECT_EQ(runs, 1);
  t = Run(Named("tick"));
  EXPECT_THAT(Ran(t), ElementsAre("tick"));
  Start();  // held across a restart too
  t = Run(Named("tick"));
  EXPECT_THAT(Ran(t), ElementsAre("tick"));
  EXPECT_EQ(runs, 1);
  peer_up = true;
  clock_.Advance(absl::Minutes(1));
  ASSERT_TRUE(engine_->EnqueueTimer("retry-later configure").ok());
  auto r = engine_->RunOnce();
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted);
  EXPECT_THAT(Ran(*r->trace), ElementsAre("configure"));
  EXPECT_TRUE(engine_->IsSet("configured"));
  t = Run(Named("tick"));
  EXPECT_THAT(Ran(t), ElementsAre("tick"));  // clean now
  EXPECT_EQ(runs, 2);
}

// Nothing is retried later for a dying unit (nothing outlives it), nor for a user action (its
// answer is its run's); a delay must be positive; a handler that fails after asking fails, and
// the request goes with its run.
TEST_F(EngineTest, RetryLaterIsRefusedWhereItCannotApply) {
  Handler("answer", {}, {}, {"action.backup"},
          [](RunContext& ctx) { return ctx.RetryLater(absl::Seconds(1)); });
  Handler("zero", {}, {}, {"zero"},
          [](RunContext& ctx) { return ctx.RetryLater(absl::ZeroDuration()); });
  Handler("then-fail", {}, {}, {"then-fail"}, [](RunContext& ctx) {
    RETURN_IF_ERROR(ctx.RetryLater(absl::Seconds(1)));
    return absl::UnavailableError("no");
  });
  Handler("stop", {}, {}, {"stop"},
          [](RunContext& ctx) { return ctx.RetryLater(absl::Seconds(1)); });
  Start();
  Run(Named("action.backup"), RunOutcome::kFailed);
  EXPECT_THAT(engine_->failure()->message(), HasSubstr("is a user action, answered by this run"));
  ASSERT_TRUE(engine_->Resolve(ResolveMode::kSkip, 0, "test").ok());
  Run(Named("zero"), RunOutcome::kFailed);
  EXPECT_THAT(engine_->failure()->message(), HasSubstr("the delay must be positive"));
  ASSERT_TRUE(engine_->Resolve(ResolveMode::kSkip, 0, "test").ok());
  Run(Named("then-fail"), RunOutcome::kFailed);
  EXPECT_TRUE(engine_->timers().empty());
  ASSERT_TRUE(engine_->Resolve(ResolveMode::kSkip, 0, "test").ok());
  ASSERT_TRUE(engine_->BeginRemoval("test").ok());
  auto r = engine_->RunOnce();
  ASSERT_EQ(r->outcome, RunOutcome::kFailed);
  EXPECT_THAT(engine_->failure()->message(), HasSubstr("the unit is dying"));
  EXPECT_TRUE(engine_->timers().empty());
}

// A unit's life (docs/engine.md, "A unit's life"): installing until `start` commits, active,
// dying once the removal's `stop` committed (the fact `dying` is set, only handlers that run
// while dying run, timers are gone), dead once everything queued is applied. The stage survives
// a restart.
TEST_F(EngineTest, AUnitLivesInstallingActiveDyingDead) {
  Endpoint("db");
  std::vector<std::string> ran;
  auto note = [&ran](std::string what) {
    return [&ran, what](RunContext&) {
      ran.push_back(what);
      return absl::OkStatus();
    };
  };
  Handler("install", {}, {}, {"install"}, note("install"));
  Handler("start", {}, {}, {"start"}, [&](RunContext& ctx) {
    ran.push_back("start");
    return ctx.SetTimer("rotate", absl::Hours(1));
  });
  Handler("stop", {}, {}, {"stop"}, [&](RunContext& ctx) {
    ran.push_back(absl::StrCat("stop dying=", ctx.IsSet("dying")));
    return ctx.SetTimer("again", absl::Seconds(1));  // a no-op while dying
  });
  Handler("reconfigure", {}, {}, {"db.departed"}, note("reconfigure"));
  handlers_.push_back({"forget", {}, {}, {"db.departed"}, note("forget"), true});
  Handler("farewell", {"dying"}, {}, {}, note("farewell"));
  Handler("watch", {"db.joined"}, {}, {}, note("watch"));
  Start();
  EXPECT_EQ(engine_->stage(), v1::UNIT_STAGE_INSTALLING);
  Run(Named("install"));
  EXPECT_EQ(engine_->stage(), v1::UNIT_STAGE_INSTALLING);
  Run(Named("start"));
  EXPECT_EQ(engine_->stage(), v1::UNIT_STAGE_ACTIVE);
  ASSERT_EQ(engine_->timers().size(), 1u);
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "redis/0"), 1)
          .ok());
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_THAT(ran, ElementsAre("install", "start", "watch"));
  ran.clear();

  auto removal = engine_->BeginRemoval("cli");
  ASSERT_TRUE(removal.ok()) << removal.status();
  EXPECT_GT(removal->event_id, 0u);
  EXPECT_EQ(engine_->BeginRemoval("cli")->event_id, 0u);  // once
  Start();
  EXPECT_EQ(engine_->BeginRemoval("cli")->event_id, 0u);  // once, across a restart too
  EXPECT_EQ(engine_->stage(), v1::UNIT_STAGE_ACTIVE);
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->outcome, RunOutcome::kCommitted);
  EXPECT_TRUE(r->trace->trigger().dying());
  EXPECT_EQ(r->trace->trigger().source(), "cli");
  EXPECT_THAT(ran, ElementsAre("stop dying=1", "farewell"));
  EXPECT_TRUE(engine_->timers().empty());
  EXPECT_EQ(engine_->stage(), v1::UNIT_STAGE_DEAD);  // nothing else queued
  ran.clear();

  // Departures still arrive while dying: only the handlers that run while dying see them.
  Start();
  EXPECT_EQ(engine_->stage(), v1::UNIT_STAGE_DEAD);
  EXPECT_TRUE(engine_->timers().empty());
  ASSERT_TRUE(
      engine_->EnqueueFromPeer(Rel("db", v1::RELATION_EVENT_KIND_DEPARTED, "db:1", "redis/0"), 2)
          .ok());
  EXPECT_EQ(engine_->stage(), v1::UNIT_STAGE_DYING);
  r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(ran, ElementsAre("forget"));
  EXPECT_EQ(ReasonOf(*r->trace, v1::TraceStep::KIND_SKIPPED, "reconfigure"),
            "on db.departed, but when_not dying: set");
  // The relation left without units breaks in a follow-up event: dead once that ran too.
  EXPECT_EQ(engine_->stage(), v1::UNIT_STAGE_DYING);
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_EQ(engine_->stage(), v1::UNIT_STAGE_DEAD);
}

// FAILS on purpose (found by tests/examples/postgres_test.py, issue 11): a remote unit that
// departed is still owed what was staged for it. In a `down --purge` the host removes units one
// by one: postgres/0's dying stop tells postgres/1 `role: stopped`, postgres/1 promotes itself and
// publishes `role: primary` to postgres/0, which is removed before it acknowledges; postgres/1
// then applies postgres/0's departure and the relation breaks, but the entry stays in its outbox,
// so postgres/1 is dead with 1 unacknowledged and the host waits out its whole grace (60 s;
// "not dead after 1m (UNIT_STAGE_DEAD, 0 event(s) queued, 1 unacknowledged)"). Expected: once a
// remote unit's departure is applied, nothing is owed to it (or the host does not wait for acks
// from an agent that is gone).
TEST_F(EngineTest, ADepartedUnitIsOwedNothing) {
  Endpoint("db");
  Handler("publish", {}, {}, {"go"},
          [](RunContext& ctx) { return ctx.SetData("db:1", "role", "primary"); });
  Start();
  Run(Rel("db", v1::RELATION_EVENT_KIND_JOINED, "db:1", "pg/0"));
  Run(Named("go"));
  ASSERT_GT(engine_->outbox_size(), 0u);  // the introduction and the data, never acknowledged
  Run(Rel("db", v1::RELATION_EVENT_KIND_DEPARTED, "db:1", "pg/0"));
  ASSERT_TRUE(engine_->RunUntilIdle().ok());  // the relation breaks
  EXPECT_EQ(engine_->inbox_depth(), 0u);
  EXPECT_EQ(engine_->outbox_size(), 0u) << "entries to the departed pg/0 are still owed";
}

// A failed head — any event — cannot hold the unit's removal back: the removal makes it due at
// once and cancels it (its data applied in place, nothing fired), so the stop runs next and the
// unit dies. Without the rule the stop would wait behind the failing event until the host's
// grace ran out, and the unit's departures would never be sent.
TEST_F(EngineTest, TheUnitsRemovalCancelsAFailedHeadInsteadOfWaitingBehindIt) {
  std::vector<std::string> ran;
  Handler("broken", {}, {}, {"action.report"},
          [](RunContext&) { return absl::InternalError("disk full"); });
  Handler("halt", {}, {}, {"stop"}, [&](RunContext&) {
    ran.push_back("halt");
    return absl::OkStatus();
  });
  Start();
  Run(Named("start"));
  v1::Trace failed = Run(Named("action.report"), RunOutcome::kFailed);
  ASSERT_TRUE(engine_->failure().has_value());
  // Its retry is a second away; the removal makes it due now.
  auto not_due = engine_->RunOnce();
  ASSERT_TRUE(not_due.ok());
  EXPECT_EQ(not_due->outcome, RunOutcome::kNotDue);
  ASSERT_TRUE(engine_->BeginRemoval("remove-unit").ok());
  auto cancelled = engine_->RunOnce();
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  ASSERT_EQ(cancelled->outcome, RunOutcome::kCommitted);
  EXPECT_EQ(cancelled->trace->result(), v1::Trace::RESULT_CANCELLED);
  EXPECT_EQ(cancelled->trace->trigger().name(), "action.report");
  EXPECT_THAT(cancelled->trace->error(),
              HasSubstr("'stop' queued behind it (the unit is being removed, by remove-unit)"));
  EXPECT_THAT(cancelled->trace->error(), HasSubstr("disk full"));
  EXPECT_THAT(Ran(*cancelled->trace), IsEmpty());
  EXPECT_FALSE(engine_->failure().has_value());
  ASSERT_TRUE(engine_->RunUntilIdle().ok());
  EXPECT_THAT(ran, ElementsAre("halt"));
  EXPECT_EQ(engine_->stage(), v1::UNIT_STAGE_DEAD);
}

// The removal's own stop failing is not cancelled by itself: it is retried (and the host removes
// the unit when its grace runs out).
TEST_F(EngineTest, AFailingStopOfTheRemovalIsRetried) {
  Handler("halt", {}, {}, {"stop"}, [](RunContext&) { return absl::InternalError("stuck"); });
  Start();
  Run(Named("start"));
  ASSERT_TRUE(engine_->BeginRemoval("remove-unit").ok());
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, RunOutcome::kFailed);
  clock_.Set(r->next_attempt);
  r = engine_->RunOnce();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, RunOutcome::kFailed);
  EXPECT_EQ(r->trace->result(), v1::Trace::RESULT_ROLLED_BACK);
  EXPECT_EQ(engine_->stage(), v1::UNIT_STAGE_ACTIVE);
}

// The fact `dying` is the engine's, and a handler cannot need it while refusing to run dying.
TEST_F(EngineTest, TheDyingFactIsTheEngines) {
  Handler("fake", {}, {}, {"go"}, [](RunContext& ctx) { return ctx.Set("dying"); });
  Start();
  v1::Trace t = Run(Named("go"), RunOutcome::kFailed);
  EXPECT_THAT(t.error(), HasSubstr("fact 'dying' is the engine's"));

  handlers_.clear();
  handlers_.push_back({"odd", {"dying"}, {}, {}, Ok, false});
  auto e = Engine::Create(Spec(), kb_.get(), &clock_, options_);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(),
              HasSubstr("handler 'odd': it needs the fact 'dying' but says it does not run while "
                        "the unit is dying"));
}

}  // namespace
}  // namespace parley::engine
