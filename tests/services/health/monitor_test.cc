// The health monitor (services/health/monitor.h): thresholds of consecutive results, the
// workload's health from its probes', changes reported only on transitions, the schedule on an
// injected clock (a manual one: no real waits for intervals) and stopping.

#include "services/health/monitor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <deque>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace parley::services {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ProbeTrackerTest, CountsConsecutiveResultsAgainstBothThresholds) {
  ProbeTracker t(3, 2);
  EXPECT_EQ(t.health(), v1::WORKLOAD_HEALTH_UNSPECIFIED);
  EXPECT_FALSE(t.Record(false));
  EXPECT_FALSE(t.Record(false));
  EXPECT_FALSE(t.Record(true));  // a success resets the failures
  EXPECT_EQ(t.failures(), 0u);
  EXPECT_FALSE(t.Record(false));
  EXPECT_FALSE(t.Record(false));
  EXPECT_TRUE(t.Record(false));  // the third in a row
  EXPECT_EQ(t.health(), v1::WORKLOAD_HEALTH_UNHEALTHY);
  EXPECT_FALSE(t.Record(false));  // still unhealthy: no change
  EXPECT_EQ(t.failures(), 4u);
  EXPECT_FALSE(t.Record(true));
  EXPECT_TRUE(t.Record(true));  // the second success in a row
  EXPECT_EQ(t.health(), v1::WORKLOAD_HEALTH_HEALTHY);
  EXPECT_FALSE(t.Record(true));
}

TEST(ProbeTrackerTest, ThresholdsOfOneDecideOnEveryChange) {
  ProbeTracker t(1, 1);
  EXPECT_TRUE(t.Record(true));
  EXPECT_TRUE(t.Record(false));
  EXPECT_TRUE(t.Record(true));
}

TEST(CombineTest, AnyUnhealthyProbeMakesTheWorkloadUnhealthy) {
  using H = v1::WorkloadHealth;
  const H u = v1::WORKLOAD_HEALTH_UNHEALTHY, h = v1::WORKLOAD_HEALTH_HEALTHY,
          n = v1::WORKLOAD_HEALTH_UNSPECIFIED;
  EXPECT_EQ(Combine({}), n);
  EXPECT_EQ(Combine({h, h}), h);
  EXPECT_EQ(Combine({h, n}), n);
  EXPECT_EQ(Combine({n, u}), u);
  EXPECT_EQ(Combine({h, u}), u);
}

// A probe that answers from a script (then keeps the last answer) and counts its checks.
class ScriptedProbe : public engine::HealthProbe {
 public:
  explicit ScriptedProbe(std::deque<absl::Status> script) : script_(std::move(script)) {}
  absl::Status Check(const engine::ProbeContext& ctx) override {
    absl::MutexLock lock(&mu_);
    ++checks_;
    seen_port_ = ctx.config.contains("port") ? ctx.config.at("port") : "";
    absl::Status s = script_.front();
    if (script_.size() > 1) script_.pop_front();
    return s;
  }
  int checks() {
    absl::MutexLock lock(&mu_);
    return checks_;
  }
  std::string seen_port() {
    absl::MutexLock lock(&mu_);
    return seen_port_;
  }

 private:
  absl::Mutex mu_;
  std::deque<absl::Status> script_;
  int checks_ = 0;
  std::string seen_port_;
};

bool WaitFor(const std::function<bool()>& cond) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return cond();
}

class MonitorTest : public ::testing::Test {
 protected:
  std::unique_ptr<HealthMonitor> Make(std::vector<std::shared_ptr<ScriptedProbe>> probes,
                                      uint32_t failures = 3, uint32_t successes = 1) {
    std::vector<engine::HealthCheckSpec> checks;
    for (size_t i = 0; i < probes.size(); ++i) {
      engine::HealthCheckSpec c;
      c.name = absl::StrCat("p", i);
      c.target = "scripted";
      c.initial_delay = absl::Seconds(5);
      c.interval = absl::Seconds(2);
      c.timeout = absl::Seconds(1);
      c.failure_threshold = failures;
      c.success_threshold = successes;
      c.probe = probes[i];
      checks.push_back(std::move(c));
    }
    HealthMonitorOptions o;
    o.clock = &clock_;
    o.error_limit = 12;
    o.on_change = [this](const HealthChange& c) {
      absl::MutexLock lock(&mu_);
      changes_.push_back(c);
    };
    o.on_check = [this](size_t, bool, absl::Duration, v1::WorkloadHealth) {
      absl::MutexLock lock(&mu_);
      ++checks_;
    };
    return std::make_unique<HealthMonitor>("svc/0", std::move(checks), std::move(o));
  }

  int checks() {
    absl::MutexLock lock(&mu_);
    return checks_;
  }
  std::vector<std::string> Changes() {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> out;
    for (const HealthChange& c : changes_) {
      out.push_back(absl::StrCat(v1::WorkloadHealth_Name(c.health), " ", c.probe, " ", c.reason));
    }
    return out;
  }
  // Advances the clock by `d` and waits until `n` checks in all were recorded.
  void Step(absl::Duration d, int n) {
    clock_.Advance(d);
    ASSERT_TRUE(WaitFor([&] { return checks() >= n; })) << "checks: " << checks() << " of " << n;
  }

  base::ManualClock clock_;
  absl::Mutex mu_;
  std::vector<HealthChange> changes_;
  int checks_ = 0;
};

TEST_F(MonitorTest, ReportsOnlyTransitionsAfterTheThresholds) {
  auto probe = std::make_shared<ScriptedProbe>(std::deque<absl::Status>{
      absl::OkStatus(), absl::UnavailableError("connect 127.0.0.1:1: Connection refused"),
      absl::UnavailableError("connect 127.0.0.1:1: Connection refused"),
      absl::UnavailableError("connect 127.0.0.1:1: Connection refused"),
      absl::UnavailableError("connect 127.0.0.1:1: Connection refused"), absl::OkStatus()});
  auto m = Make({probe});
  m->SetContext({{"port", "6379"}}, {});
  m->Start();
  // Nothing before the initial delay.
  clock_.Advance(absl::Seconds(4));
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(checks(), 0);
  Step(absl::Seconds(1), 1);
  EXPECT_EQ(probe->seen_port(), "6379");
  EXPECT_EQ(m->health(), v1::WORKLOAD_HEALTH_HEALTHY);
  Step(absl::Seconds(2), 2);
  Step(absl::Seconds(2), 3);
  EXPECT_EQ(m->health(), v1::WORKLOAD_HEALTH_HEALTHY);  // two failures of three
  EXPECT_FALSE(m->unhealthy_since().has_value());
  const absl::Time third = clock_.Now() + absl::Seconds(2);
  Step(absl::Seconds(2), 4);
  EXPECT_EQ(m->health(), v1::WORKLOAD_HEALTH_UNHEALTHY);
  EXPECT_EQ(m->unhealthy_since(), third);
  Step(absl::Seconds(2), 5);  // a fourth failure changes nothing
  std::vector<v1::ProbeStatus> probes = m->Probes();
  ASSERT_EQ(probes.size(), 1u);
  EXPECT_EQ(probes[0].consecutive_failures(), 4u);
  EXPECT_EQ(probes[0].last_error(), "connect 127....");  // truncated to the limit
  Step(absl::Seconds(2), 6);
  EXPECT_EQ(m->health(), v1::WORKLOAD_HEALTH_HEALTHY);
  EXPECT_THAT(Changes(), ElementsAre("WORKLOAD_HEALTH_HEALTHY p0 ",
                                     "WORKLOAD_HEALTH_UNHEALTHY p0 connect 127....",
                                     "WORKLOAD_HEALTH_HEALTHY p0 "));
}

TEST_F(MonitorTest, TheWorkloadIsHealthyOnlyOnceEveryProbeIs) {
  auto good = std::make_shared<ScriptedProbe>(std::deque<absl::Status>{absl::OkStatus()});
  auto late = std::make_shared<ScriptedProbe>(
      std::deque<absl::Status>{absl::UnavailableError("no"), absl::OkStatus(), absl::OkStatus()});
  auto m = Make({good, late}, /*failures=*/2, /*successes=*/2);
  m->Start();
  Step(absl::Seconds(5), 2);
  Step(absl::Seconds(2), 4);  // good: healthy; late: one failure, one success
  EXPECT_EQ(m->health(), v1::WORKLOAD_HEALTH_UNSPECIFIED);
  EXPECT_THAT(Changes(), ::testing::IsEmpty());
  Step(absl::Seconds(2), 6);
  EXPECT_EQ(m->health(), v1::WORKLOAD_HEALTH_HEALTHY);
  EXPECT_THAT(Changes(), ElementsAre("WORKLOAD_HEALTH_HEALTHY p1 "));
}

TEST_F(MonitorTest, StoppedMonitorChecksNoMore) {
  auto probe = std::make_shared<ScriptedProbe>(std::deque<absl::Status>{absl::OkStatus()});
  auto m = Make({probe});
  m->Start();
  Step(absl::Seconds(5), 1);
  m->Stop();
  clock_.Advance(absl::Seconds(10));
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(probe->checks(), 1);
  m.reset();  // joins the thread
  EXPECT_EQ(probe->checks(), 1);
}

}  // namespace
}  // namespace parley::services
