// Unsticking a unit (agent API ResolveEvent, docs/operations.md "Unsticking a unit"): a handler
// fails on an event and every later event waits behind it; an operator retries it once the cause
// is fixed, or skips it. Real host, real RocksDB, the agent API over gRPC on 127.0.0.1.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "parley/v1/agent.grpc.pb.h"
#include "prometheus/text_serializer.h"
#include "services/agent/agent.h"
#include "services/host/host.h"
#include "tests/services/agent/agent_test_util.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

using ::testing::HasSubstr;
using testing::Settled;
using testing::WaitFor;

constexpr char kUnit[] = "stuck/0";

class ResolveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    flag_ = dir_.Sub("fixed");
    StartHost();
  }

  // The host and its agent, from the KB of an earlier start if there is one. Retries are an hour
  // apart: whatever runs again in a test was asked for.
  void StartHost() {
    HostOptions o;
    o.data_dir = dir_.Sub("host");
    o.tls.plaintext = true;
    auto h = Host::Start(o);
    ASSERT_TRUE(h.ok()) << h.status();
    if (getenv("PARLEY_TEST_LOG") != nullptr) (*h)->logs().set_echo(true);
    host_ = std::move(*h);
    AgentOptions ao;
    ao.engine.retry_initial = absl::Hours(1);
    ao.engine.retry_max = absl::Hours(1);
    auto a = host_->AddAgent(Spec(), ao);
    ASSERT_TRUE(a.ok()) << a.status();
    stub_ = v1::Agent::NewStub(
        grpc::CreateChannel(host_->address(), grpc::InsecureChannelCredentials()));
  }

  void Restart() {
    stub_.reset();
    host_->Shutdown();
    host_.reset();
    StartHost();
  }

  // `apply` fails until the flag file exists; `later` just records that it ran.
  engine::ServiceSpec Spec() const {
    engine::ServiceSpec s;
    s.service = "stuck";
    s.unit = kUnit;
    const std::string flag = flag_;
    s.handlers.push_back({"apply",
                          {},
                          {},
                          {"action.apply"},
                          engine::MakeAction([flag](engine::RunContext& ctx) -> absl::Status {
                            if (!std::filesystem::exists(flag)) {
                              return absl::FailedPreconditionError(
                                  absl::StrCat("flag file ", flag, " missing"));
                            }
                            return ctx.Set("applied", ctx.event().params().at("v"));
                          })});
    s.handlers.push_back({"later", {}, {}, {"action.later"}, engine::MakeAction([](auto& ctx) {
                            return ctx.Set("later");
                          })});
    return s;
  }

  void Fix() { std::ofstream(flag_) << "fixed\n"; }

  uint64_t Fire(const std::string& event, const std::string& v = "") {
    v1::FireEventRequest req;
    req.set_agent(kUnit);
    req.set_event(event);
    if (!v.empty()) (*req.mutable_params())["v"] = v;
    v1::FireEventResponse resp;
    grpc::ClientContext ctx;
    grpc::Status st = stub_->FireEvent(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.event_id();
  }

  grpc::Status Resolve(v1::ResolveMode mode, uint64_t event_id, const std::string& by,
                       v1::ResolveEventResponse* resp, const std::string& agent = kUnit) {
    v1::ResolveEventRequest req;
    req.set_agent(agent);
    req.set_mode(mode);
    req.set_event_id(event_id);
    req.set_by(by);
    grpc::ClientContext ctx;
    return stub_->ResolveEvent(&ctx, req, resp);
  }

  v1::AgentStatus Status() {
    v1::GetStatusRequest req;
    req.set_agent(kUnit);
    v1::AgentStatus st;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->GetStatus(&ctx, req, &st).ok());
    return st;
  }

  std::vector<v1::Trace> Traces() {
    v1::GetTracesRequest req;
    req.set_agent(kUnit);
    req.set_last(100);
    v1::GetTracesResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->GetTraces(&ctx, req, &resp).ok());
    return {resp.traces().begin(), resp.traces().end()};
  }

  std::optional<std::string> Fact(const std::string& name) {
    return testing::Fact(host_->Find(kUnit), name);
  }

  // Waits until the agent is in error on `event_id`.
  bool FailingOn(uint64_t event_id) {
    return WaitFor([&] {
      v1::AgentStatus st = Status();
      return st.agent_state() == v1::AGENT_STATE_ERROR && st.failure().event_id() == event_id;
    });
  }

  std::string Metrics() {
    return prometheus::TextSerializer().Serialize(host_->options().registry->Collect());
  }

  parley::testing::TempDir dir_;
  std::string flag_;
  std::unique_ptr<Host> host_;
  std::unique_ptr<v1::Agent::Stub> stub_;
};

TEST_F(ResolveTest, SkipLetsLaterEventsRunAndIsNotAppliedAfterARestart) {
  const uint64_t failing = Fire("action.apply", "1");
  ASSERT_TRUE(FailingOn(failing));
  EXPECT_THAT(Status().failure().message(), HasSubstr("missing"));
  // The later event waits behind the failing one (FireEvent answers after the agent looked at
  // its inbox again).
  Fire("action.later");
  v1::AgentStatus st = Status();
  EXPECT_EQ(st.agent_state(), v1::AGENT_STATE_ERROR);
  EXPECT_EQ(st.inbox_depth(), 2u);
  EXPECT_FALSE(Fact("later").has_value());

  v1::ResolveEventResponse resp;
  grpc::Status s = Resolve(v1::RESOLVE_MODE_SKIP, failing, "alice@ops-1", &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.failure().event_id(), failing);
  EXPECT_EQ(resp.failure().event_name(), "action.apply");
  EXPECT_EQ(resp.failure().attempt(), 1u);
  EXPECT_EQ(resp.mode(), v1::RESOLVE_MODE_SKIP);
  EXPECT_GT(resp.run(), 0u);
  EXPECT_EQ(resp.by(), "alice@ops-1");
  ASSERT_TRUE(WaitFor([&] { return Fact("later").has_value(); }));
  ASSERT_TRUE(WaitFor([&] { return Settled({host_.get()}); }));
  EXPECT_FALSE(Fact("applied").has_value());
  const std::string m = Metrics();
  EXPECT_THAT(m,
              HasSubstr("parley_agent_events_resolved_total{agent=\"stuck/0\",mode=\"skip\"} 1"));
  EXPECT_THAT(m, HasSubstr("parley_agent_in_error{agent=\"stuck/0\"} 0"));

  // Fixed now: were the skipped event still anywhere, the restarted agent would apply it.
  Fix();
  Restart();
  ASSERT_TRUE(WaitFor([&] { return Settled({host_.get()}); }));
  EXPECT_FALSE(Fact("applied").has_value());
  int skipped = 0;
  for (const v1::Trace& t : Traces()) {
    if (t.trigger().id() != failing) continue;
    EXPECT_NE(t.result(), v1::Trace::RESULT_COMMITTED);
    if (t.result() == v1::Trace::RESULT_SKIPPED) {
      ++skipped;
      EXPECT_EQ(t.run(), resp.run());
      EXPECT_EQ(t.resolved_by(), "alice@ops-1");
      EXPECT_EQ(t.trigger().name(), "action.apply");
      EXPECT_THAT(t.error(), HasSubstr("handler apply: flag file"));
    }
  }
  EXPECT_EQ(skipped, 1);
  // The same event fired anew applies.
  Fire("action.apply", "3");
  ASSERT_TRUE(WaitFor([&] { return Fact("applied") == "3"; }));
}

TEST_F(ResolveTest, RetryAfterFixingTheCauseAppliesIt) {
  const uint64_t failing = Fire("action.apply", "2");
  ASSERT_TRUE(FailingOn(failing));
  Fire("action.later");
  Fix();
  // Fixed, but the next automatic attempt is an hour away.
  EXPECT_EQ(Status().agent_state(), v1::AGENT_STATE_ERROR);
  EXPECT_FALSE(Fact("applied").has_value());

  v1::ResolveEventResponse resp;
  grpc::Status s = Resolve(v1::RESOLVE_MODE_RETRY, 0, "bob@ops-2", &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.failure().event_id(), failing);
  EXPECT_EQ(resp.mode(), v1::RESOLVE_MODE_RETRY);
  EXPECT_EQ(resp.run(), 0u);
  ASSERT_TRUE(WaitFor([&] { return Fact("applied") == "2" && Fact("later").has_value(); }));
  ASSERT_TRUE(WaitFor([&] { return Settled({host_.get()}); }));
  bool retried = false;
  for (const v1::Trace& t : Traces()) {
    if (t.trigger().id() != failing || t.result() != v1::Trace::RESULT_COMMITTED) continue;
    retried = true;
    EXPECT_EQ(t.attempt(), 2u);
    EXPECT_EQ(t.resolved_by(), "bob@ops-2");
  }
  EXPECT_TRUE(retried);
  EXPECT_THAT(Metrics(),
              HasSubstr("parley_agent_events_resolved_total{agent=\"stuck/0\",mode=\"retry\"} 1"));
}

TEST_F(ResolveTest, ResolveWithoutAFailingHeadIsRefused) {
  ASSERT_TRUE(WaitFor([&] { return Settled({host_.get()}); }));
  v1::ResolveEventResponse resp;
  for (v1::ResolveMode mode : {v1::RESOLVE_MODE_RETRY, v1::RESOLVE_MODE_SKIP}) {
    grpc::Status s = Resolve(mode, 0, "alice", &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
    EXPECT_THAT(s.error_message(),
                HasSubstr("agent stuck/0 has no failing event to resolve: its inbox is empty"));
  }
  EXPECT_EQ(Resolve(v1::RESOLVE_MODE_UNSPECIFIED, 0, "alice", &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Resolve(v1::RESOLVE_MODE_SKIP, 0, "alice", &resp, "nobody/0").error_code(),
            grpc::StatusCode::NOT_FOUND);

  // Failing now: a request about another event, or with a `by` that is no single line, is
  // refused and the failing event stays.
  const uint64_t failing = Fire("action.apply", "1");
  ASSERT_TRUE(FailingOn(failing));
  grpc::Status s = Resolve(v1::RESOLVE_MODE_SKIP, failing + 1, "alice", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(),
              HasSubstr(absl::StrCat("event ", failing + 1, " is not the failing event; event ",
                                     failing, " 'action.apply' is")));
  s = Resolve(v1::RESOLVE_MODE_SKIP, failing, "alice\nforged log line", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("ResolveEventRequest.by"));
  v1::AgentStatus st = Status();
  EXPECT_EQ(st.agent_state(), v1::AGENT_STATE_ERROR);
  EXPECT_EQ(st.failure().event_id(), failing);
  EXPECT_EQ(st.inbox_depth(), 1u);
}

}  // namespace
}  // namespace parley::services
