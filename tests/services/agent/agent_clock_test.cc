// The agent's time runs on its host's clock: the retry of a failed run, handler timers (also
// across a restart of the host) and the periodic update fire when a manual clock reaches their
// time, never earlier, with no real waiting for them.

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "engine/engine.h"
#include "services/host/host.h"
#include "tests/services/agent/agent_test_util.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

using testing::Advance;
using testing::Fact;
using testing::FireEvent;
using testing::OnStrand;
using testing::WaitFor;

class AgentClockTest : public ::testing::Test {
 protected:
  Host* StartHost() {
    HostOptions o;
    o.data_dir = dir_.Sub("host");
    o.tls.plaintext = true;
    o.clock = &clock_;
    auto h = Host::Start(o);
    EXPECT_TRUE(h.ok()) << h.status();
    host_ = std::move(*h);
    return host_.get();
  }
  void StopHost() {
    host_->Shutdown();
    host_.reset();
  }

  Agent* Add(engine::ServiceSpec spec, AgentOptions options = {}) {
    auto a = host_->AddAgent(std::move(spec), options);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? *a : nullptr;
  }
  void AdvanceBy(Agent* a, absl::Duration d) { Advance(clock_, host_.get(), a, d); }

  static void Handle(engine::ServiceSpec& s, std::string name, std::string on,
                     std::function<absl::Status(engine::RunContext&)> fn) {
    s.handlers.push_back({std::move(name), {}, {}, {std::move(on)}, engine::MakeAction(fn)});
  }

  parley::testing::TempDir dir_;
  base::ManualClock clock_;
  std::unique_ptr<Host> host_;
};

// A run that fails is tried again after the engine's backoff (10s, then 20s), on the clock.
TEST_F(AgentClockTest, FailedRunIsRetriedWhenItsBackoffEnds) {
  StartHost();
  auto calls = std::make_shared<std::atomic<int>>(0);
  engine::ServiceSpec s;
  s.service = "flaky";
  s.unit = "flaky/0";
  Handle(s, "go", "action.go", [calls](engine::RunContext& ctx) {
    if (++*calls <= 2) return absl::UnavailableError("not yet");
    return ctx.Set("done");
  });
  AgentOptions ao;
  ao.engine.retry_initial = absl::Seconds(10);
  ao.engine.retry_max = absl::Minutes(1);
  ao.engine.retry_jitter = 0;
  Agent* a = Add(std::move(s), ao);
  ASSERT_NE(a, nullptr);
  const absl::Time t0 = clock_.Now();
  ASSERT_TRUE(FireEvent(a, "action.go").ok());
  ASSERT_TRUE(WaitFor([&] { return *calls == 1; }));
  auto next_retry = [&] {
    return OnStrand(a, [&] {
      return a->engine().failure() ? a->engine().failure()->next_retry_unix_ms() : int64_t{0};
    });
  };
  ASSERT_TRUE(WaitFor([&] { return next_retry() != 0; }));
  EXPECT_EQ(next_retry(), absl::ToUnixMillis(t0 + absl::Seconds(10)));

  AdvanceBy(a, absl::Seconds(10) - absl::Milliseconds(1));
  EXPECT_EQ(*calls, 1) << "retried before the backoff ended";
  AdvanceBy(a, absl::Milliseconds(1));
  ASSERT_TRUE(WaitFor([&] { return *calls == 2; })) << "not retried when the backoff ended";
  ASSERT_TRUE(WaitFor(
      [&] { return next_retry() == absl::ToUnixMillis(clock_.Now() + absl::Seconds(20)); }));

  AdvanceBy(a, absl::Seconds(20) - absl::Milliseconds(1));
  EXPECT_EQ(*calls, 2);
  AdvanceBy(a, absl::Milliseconds(1));
  ASSERT_TRUE(WaitFor([&] { return Fact(a, "done").has_value(); }));
  EXPECT_EQ(*calls, 3);
}

engine::ServiceSpec TimerSpec() {
  engine::ServiceSpec s;
  s.service = "clock";
  s.unit = "clock/0";
  auto handle = [&](std::string name, std::string on,
                    std::function<absl::Status(engine::RunContext&)> fn) {
    s.handlers.push_back({std::move(name), {}, {}, {std::move(on)}, engine::MakeAction(fn)});
  };
  handle("arm", "action.arm",
         [](engine::RunContext& ctx) { return ctx.SetTimer("tick", absl::Minutes(10)); });
  handle("tick", "timer.tick", [](engine::RunContext& ctx) { return ctx.Set("ticked"); });
  handle("update", "update", [](engine::RunContext& ctx) {
    int n = 0;
    if (auto v = ctx.Value("updates")) (void)absl::SimpleAtoi(*v, &n);
    return ctx.Set("updates", absl::StrCat(n + 1));
  });
  return s;
}

// A timer set before the host stops fires at its due time after the restart: not when the host
// comes back, not later.
TEST_F(AgentClockTest, TimerSetBeforeARestartFiresAtItsDueTimeAfterIt) {
  StartHost();
  Agent* a = Add(TimerSpec());
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(FireEvent(a, "action.arm").ok());
  ASSERT_TRUE(
      WaitFor([&] { return OnStrand(a, [&] { return a->engine().timers().size(); }) == 1; }));
  const absl::Time due = OnStrand(a, [&] { return a->engine().timers().at("tick"); });
  EXPECT_EQ(due, clock_.Now() + absl::Minutes(10));
  AdvanceBy(a, absl::Minutes(4));
  EXPECT_FALSE(Fact(a, "ticked").has_value());

  StopHost();
  StartHost();
  Agent* b = Add(TimerSpec());
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(WaitFor([&] { return OnStrand(b, [&] { return b->CheckIdle().idle(); }); }));
  AdvanceBy(b, due - clock_.Now() - absl::Milliseconds(1));
  ASSERT_TRUE(WaitFor([&] { return OnStrand(b, [&] { return b->CheckIdle().idle(); }); }));
  EXPECT_FALSE(Fact(b, "ticked").has_value()) << "the timer fired before its due time";
  EXPECT_EQ(OnStrand(b, [&] { return b->engine().timers().size(); }), 1u);
  AdvanceBy(b, absl::Milliseconds(1));
  ASSERT_TRUE(WaitFor([&] { return Fact(b, "ticked").has_value(); }))
      << "the timer did not fire at its due time";
  EXPECT_TRUE(OnStrand(b, [&] { return b->engine().timers().empty(); }));
}

// The periodic `update` fires once per interval of the clock.
TEST_F(AgentClockTest, UpdateFiresOncePerInterval) {
  StartHost();
  AgentOptions ao;
  ao.update_interval = absl::Minutes(5);
  Agent* a = Add(TimerSpec(), ao);
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(WaitFor([&] { return OnStrand(a, [&] { return a->CheckIdle().idle(); }); }));
  auto updates = [&] { return Fact(a, "updates").value_or("0"); };
  for (int i = 1; i <= 3; ++i) {
    AdvanceBy(a, absl::Minutes(5) - absl::Milliseconds(1));
    ASSERT_TRUE(WaitFor([&] { return OnStrand(a, [&] { return a->CheckIdle().idle(); }); }));
    EXPECT_EQ(updates(), absl::StrCat(i - 1));
    AdvanceBy(a, absl::Milliseconds(1));
    ASSERT_TRUE(WaitFor([&] { return updates() == absl::StrCat(i); })) << updates();
  }
}

}  // namespace
}  // namespace parley::services
