// Agents in one process: on one host (in-process sessions) and on several hosts talking real
// gRPC over 127.0.0.1.

#include "services/agent/agent.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/engine.h"
#include "prometheus/text_serializer.h"
#include "services/fixtures/builtin_services.h"
#include "services/host/host.h"
#include "tests/services/agent/agent_test_util.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

using testing::Fact;
using ::testing::HasSubstr;
using testing::OnStrand;
using testing::Settled;
using testing::WaitFor;

class AgentTest : public ::testing::Test {
 protected:
  Host* NewHost(kb::Durability durability = kb::Durability::kGroupCommit) {
    HostOptions o;
    o.data_dir = dir_.Sub(absl::StrCat("host", hosts_.size()));
    o.tls.plaintext = true;
    o.durability = durability;
    o.reconnect_initial = absl::Milliseconds(20);
    o.reconnect_max = absl::Milliseconds(500);
    auto h = Host::Start(o);
    EXPECT_TRUE(h.ok()) << h.status();
    if (getenv("PARLEY_TEST_LOG") != nullptr) (*h)->logs().set_echo(true);
    hosts_.push_back(std::move(*h));
    return hosts_.back().get();
  }

  Agent* Add(Host* host, const std::string& kind, const std::string& unit) {
    auto spec = BuiltinService(kind, unit);
    EXPECT_TRUE(spec.ok()) << spec.status();
    auto a = host->AddAgent(std::move(*spec));
    EXPECT_TRUE(a.ok()) << a.status();
    return *a;
  }

  absl::StatusOr<v1::RelateResponse> Relate(Host* host, const std::string& id, Agent* a,
                                            const std::string& ep, Host* remote_host, Agent* b,
                                            const std::string& remote_ep) {
    return testing::Relate(host, id, a, ep, remote_host->address(), b->name(), remote_ep);
  }

  void Fire(Agent* a, const std::string& event,
            std::vector<std::pair<std::string, std::string>> params = {}) {
    auto id = testing::FireEvent(a, event, params);
    ASSERT_TRUE(id.ok()) << id.status();
  }

  std::vector<Host*> hosts() {
    std::vector<Host*> out;
    for (auto& h : hosts_) out.push_back(h.get());
    return out;
  }

  std::string Metrics(Host* h) {
    return prometheus::TextSerializer().Serialize(h->options().registry->Collect());
  }

  parley::testing::TempDir dir_;
  std::vector<std::unique_ptr<Host>> hosts_;
};

// One proposes, the other accepts or counters; both converge on the same port.
TEST_F(AgentTest, TwoAgentsNegotiateOnOneHost) {
  Host* h = NewHost();
  Agent* p = Add(h, "proposer", "web/0");
  Agent* a = Add(h, "acceptor", "lb/0");
  ASSERT_TRUE(Relate(h, "negotiate:1", p, "negotiate", h, a, "negotiate").ok());
  ASSERT_TRUE(WaitFor([&] { return Fact(p, "agreed").has_value(); }));
  EXPECT_EQ(Fact(p, "agreed"), "8080");  // 80 was countered with 8080
  EXPECT_EQ(Fact(a, "port"), "8080");
  ASSERT_TRUE(WaitFor([&] { return Settled(hosts()); }));
}

TEST_F(AgentTest, TwoAgentsNegotiateOverGrpc) {
  Host* h1 = NewHost();
  Host* h2 = NewHost();
  Agent* p = Add(h1, "proposer", "web/0");
  Agent* a = Add(h2, "acceptor", "lb/0");
  // Relating from the side whose name sorts last: the other side dials.
  ASSERT_TRUE(Relate(h1, "negotiate:1", p, "negotiate", h2, a, "negotiate").ok());
  ASSERT_TRUE(WaitFor([&] { return Fact(p, "agreed").has_value(); }));
  EXPECT_EQ(Fact(p, "agreed"), "8080");
  // A config change renegotiates.
  v1::SetConfigRequest c;
  c.set_agent(p->name());
  (*c.mutable_set())["port"] = "9000";
  ASSERT_TRUE(OnStrand(p, [&] { return p->SetConfig(c); }).ok());
  ASSERT_TRUE(WaitFor([&] { return Fact(p, "agreed") == "9000"; }));
  EXPECT_EQ(Fact(a, "port"), "9000");
  ASSERT_TRUE(WaitFor([&] { return Settled(hosts()); }));
  EXPECT_THAT(Metrics(h2), HasSubstr("parley_peer_stream_up{agent=\"lb/0\",peer=\"web/0\"} 1"));
}

// a -> b -> c across three hosts: a value set at the root reaches the end of the chain.
TEST_F(AgentTest, ThreeServiceChain) {
  Host* h1 = NewHost();
  Host* h2 = NewHost();
  Host* h3 = NewHost();
  Agent* a = Add(h1, "relay", "a/0");
  Agent* b = Add(h2, "relay", "b/0");
  Agent* c = Add(h3, "recorder", "c/0");
  ASSERT_TRUE(Relate(h1, "chain:1", a, "out", h2, b, "in").ok());
  ASSERT_TRUE(Relate(h3, "chain:2", c, "in", h2, b, "out").ok());
  Fire(a, "action.set", {{"value", "42"}});
  ASSERT_TRUE(WaitFor([&] { return Fact(c, "seen") == "42"; })) << Fact(c, "seen").value_or("-");
  Fire(a, "action.set", {{"value", "43"}});
  ASSERT_TRUE(WaitFor([&] { return Fact(c, "seen") == "42,43"; }));
  ASSERT_TRUE(WaitFor([&] { return Settled(hosts()); }));
  EXPECT_EQ(Fact(b, "value"), "43");
}

// Events of one relation are applied in order and exactly once.
TEST_F(AgentTest, FifoPerRelation) {
  Host* h1 = NewHost();
  Host* h2 = NewHost();
  Agent* a = Add(h1, "relay", "a/0");
  Agent* c = Add(h2, "recorder", "c/0");
  ASSERT_TRUE(Relate(h1, "r:1", a, "out", h2, c, "in").ok());
  std::string expected;
  for (int i = 1; i <= 200; ++i) {
    Fire(a, "action.set", {{"value", absl::StrCat(i)}});
    absl::StrAppend(&expected, i == 1 ? "" : ",", i);
  }
  ASSERT_TRUE(WaitFor([&] { return Fact(c, "count") == "200"; })) << Fact(c, "count").value_or("");
  EXPECT_EQ(Fact(c, "seen"), expected);
  ASSERT_TRUE(WaitFor([&] { return Settled(hosts()); }));
}

// A failing handler on the receiver: the run rolls back, is retried, and eventually succeeds.
TEST_F(AgentTest, FailingHandlerIsRetriedUntilItSucceeds) {
  Host* h1 = NewHost();
  Host* h2 = NewHost();
  Agent* a = Add(h1, "relay", "a/0");
  Agent* f = Add(h2, "flaky", "f/0");
  ASSERT_TRUE(Relate(h1, "r:1", a, "out", h2, f, "in").ok());
  Fire(a, "action.set", {{"value", "7"}});
  // Between the failed attempts and their retries the agent is in error, and says so.
  const std::string in_error = "parley_agent_in_error{agent=\"f/0\"} ";
  ASSERT_TRUE(WaitFor([&] { return absl::StrContains(Metrics(h2), in_error + "1"); }))
      << Metrics(h2);
  ASSERT_TRUE(WaitFor([&] { return Fact(f, "value") == "7"; }));
  const std::string m = Metrics(h2);
  EXPECT_THAT(m, HasSubstr(in_error + "0"));
  EXPECT_THAT(m, HasSubstr("parley_agent_runs_total{agent=\"f/0\",result=\"failed\"} 2"));
  EXPECT_THAT(m, HasSubstr("parley_agent_handler_failures_total{agent=\"f/0\"} 2"));
  auto traces = OnStrand(f, [&] { return f->engine().Traces(20); });
  ASSERT_TRUE(traces.ok());
  int rolled_back = 0;
  for (const auto& t : *traces) rolled_back += t.result() == v1::Trace::RESULT_ROLLED_BACK;
  EXPECT_EQ(rolled_back, 2);
}

// Incompatible endpoints are refused and neither side changes.
TEST_F(AgentTest, IncompatibleRelationIsRefused) {
  Host* h1 = NewHost();
  Host* h2 = NewHost();
  Agent* a = Add(h1, "relay", "a/0");
  Agent* p = Add(h2, "acceptor", "lb/0");
  auto r = Relate(h1, "x:1", a, "out", h2, p, "negotiate");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("interfaces differ"));
  Agent* b = Add(h2, "relay", "b/0");
  r = Relate(h1, "x:2", a, "out", h2, b, "out");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("roles must be provides/requires"));
  EXPECT_TRUE(OnStrand(a, [&] { return a->engine().relations().empty(); }));
  EXPECT_TRUE(OnStrand(b, [&] { return b->engine().relations().empty(); }));
  EXPECT_TRUE(OnStrand(p, [&] { return p->engine().relations().empty(); }));
}

// Unrelating: both sides see departed then broken, and the relation's data is gone.
TEST_F(AgentTest, UnrelateBreaksBothSides) {
  Host* h1 = NewHost();
  Host* h2 = NewHost();
  Agent* a = Add(h1, "relay", "a/0");
  Agent* c = Add(h2, "recorder", "c/0");
  ASSERT_TRUE(Relate(h1, "r:1", a, "out", h2, c, "in").ok());
  Fire(a, "action.set", {{"value", "1"}});
  ASSERT_TRUE(WaitFor([&] { return Fact(c, "in.joined").has_value(); }));
  ASSERT_TRUE(OnStrand(a, [&] { return a->Unrelate("r:1"); }).ok());
  ASSERT_TRUE(WaitFor([&] { return !Fact(c, "in.joined").has_value(); }));
  ASSERT_TRUE(WaitFor([&] { return Settled(hosts()); }));
  EXPECT_TRUE(OnStrand(c, [&] { return c->engine().relations().at("r:1").gone(); }));
  EXPECT_TRUE(OnStrand(a, [&] { return a->engine().relations().at("r:1").gone(); }));
  auto bag = OnStrand(c, [&] { return c->engine().Bag("r:1", "ru:a/0"); });
  ASSERT_TRUE(bag.ok());
  EXPECT_TRUE(bag->empty());
}

// A restarted host resumes from its KB: relations, facts and pending deliveries.
TEST_F(AgentTest, RestartResumes) {
  Host* h1 = NewHost();
  Host* h2 = NewHost();
  Agent* a = Add(h1, "relay", "a/0");
  Add(h2, "recorder", "c/0");
  ASSERT_TRUE(Relate(h1, "r:1", a, "out", h2, h2->Find("c/0"), "in").ok());
  Fire(a, "action.set", {{"value", "1"}});
  ASSERT_TRUE(WaitFor([&] { return Fact(h2->Find("c/0"), "seen") == "1"; }));
  // Restart the receiver's host on the same KB and port-less address: the sender learns the new
  // address from the receiver's Hello... the receiver (c) sorts last, so a dials it: give a the
  // new address through a re-relate-free path: the receiver asks a to dial.
  const std::string dir = h2->options().data_dir;
  hosts_[1]->Shutdown();
  hosts_[1].reset();
  HostOptions o;
  o.data_dir = dir;
  o.tls.plaintext = true;
  o.reconnect_initial = absl::Milliseconds(20);
  auto h = Host::Start(o);
  ASSERT_TRUE(h.ok());
  hosts_[1] = std::move(*h);
  Agent* c = Add(hosts_[1].get(), "recorder", "c/0");
  Fire(a, "action.set", {{"value", "2"}});
  ASSERT_TRUE(WaitFor([&] { return Fact(c, "seen") == "1,2"; })) << Fact(c, "seen").value_or("");
}

// Timers a handler asks for fire as timer.<name> events, also across a restart of the host, and
// the optional periodic `update` timer fires `update`.
TEST_F(AgentTest, HandlerTimersAndUpdateTimerFire) {
  auto spec = [] {
    engine::ServiceSpec s;
    s.service = "clock";
    s.unit = "clock/0";
    auto add = [&](std::string name, std::vector<std::string> on,
                   std::function<absl::Status(engine::RunContext&)> fn) {
      s.handlers.push_back({std::move(name), {}, {}, std::move(on), engine::MakeAction(fn)});
    };
    add("arm", {"action.arm"},
        [](engine::RunContext& ctx) { return ctx.SetTimer("tick", absl::Milliseconds(300)); });
    add("tick", {"timer.tick"}, [](engine::RunContext& ctx) { return ctx.Set("ticked"); });
    add("update", {"update"}, [](engine::RunContext& ctx) {
      int n = 0;
      if (auto v = ctx.Value("updates")) (void)absl::SimpleAtoi(*v, &n);
      return ctx.Set("updates", absl::StrCat(n + 1));
    });
    return s;
  };
  Host* h = NewHost();
  auto a = h->AddAgent(spec());
  ASSERT_TRUE(a.ok()) << a.status();
  Fire(*a, "action.arm");
  ASSERT_TRUE(WaitFor([&] { return Fact(*a, "ticked").has_value(); }));

  // A timer pending when the host stops fires after the restart.
  Fire(*a, "action.arm");
  ASSERT_TRUE(
      WaitFor([&] { return OnStrand(*a, [&] { return (*a)->engine().timers().size(); }) == 1; }));
  const std::string dir = h->options().data_dir;
  hosts_.back()->Shutdown();
  hosts_.pop_back();
  HostOptions o;
  o.data_dir = dir;
  o.tls.plaintext = true;
  auto restarted = Host::Start(o);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  hosts_.push_back(std::move(*restarted));
  AgentOptions ao;
  ao.update_interval = absl::Milliseconds(50);
  auto b = hosts_.back()->AddAgent(spec(), ao);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(
      WaitFor([&] { return OnStrand(*b, [&] { return (*b)->engine().timers().empty(); }); }));
  auto traces = OnStrand(*b, [&] { return (*b)->engine().Traces(50); });
  ASSERT_TRUE(traces.ok());
  int ticks = 0;
  for (const auto& t : *traces) ticks += t.trigger().name() == "timer.tick";
  EXPECT_GE(ticks, 1);
  ASSERT_TRUE(WaitFor([&] {
    int n = 0;
    return absl::SimpleAtoi(Fact(*b, "updates").value_or("0"), &n) && n >= 3;
  }));
}

}  // namespace
}  // namespace parley::services
