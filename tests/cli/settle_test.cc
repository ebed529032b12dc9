// When `parley wait` stops waiting (tools/cli/model/settle.h), from polls alone.

#include "tools/cli/model/settle.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace parley::cli {
namespace {

using Outcome = SettleVerdict::Outcome;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

UnitPoll Idle(std::string unit, uint64_t progress) {
  UnitPoll p;
  p.unit = std::move(unit);
  p.idle = true;
  p.progress = progress;
  return p;
}

UnitPoll Busy(std::string unit, uint64_t progress) {
  UnitPoll p = Idle(std::move(unit), progress);
  p.idle = false;
  p.status.emplace();
  p.status->set_agent_state(v1::AGENT_STATE_EXECUTING);
  return p;
}

// A unit whose head event 7 failed in handler `h` with `message`, attempt `attempt`, retried at
// `next`.
UnitPoll Failing(std::string unit, uint64_t progress, uint32_t attempt, std::string message,
                 absl::Time next, std::string h = "start") {
  UnitPoll p = Busy(std::move(unit), progress);
  p.status->set_agent_state(v1::AGENT_STATE_ERROR);
  v1::RunFailure* f = p.status->mutable_failure();
  f->set_event_id(7);
  f->set_event_name("config.changed");
  f->set_handler(std::move(h));
  f->set_message(std::move(message));
  f->set_attempt(attempt);
  f->set_next_retry_unix_ms(absl::ToUnixMillis(next));
  return p;
}

v1::Trace Attempt(uint64_t run, uint64_t event, const std::string& error) {
  v1::Trace t;
  t.set_run(run);
  t.mutable_trigger()->set_id(event);
  t.set_result(v1::Trace::RESULT_ROLLED_BACK);
  t.set_error(error);
  return t;
}

TEST(SettleJudgeTest, SettledWhenEveryUnitIsIdleWithTheSameProgressTwice) {
  SettleJudge judge(kNow + absl::Minutes(1), false);
  SettleVerdict v = judge.Observe({Idle("a/0", 3), Idle("b/0", 5)});
  EXPECT_EQ(v.outcome, Outcome::kWaiting);
  EXPECT_EQ(v.settled, 0u);
  EXPECT_THAT(v.pending, ElementsAre("a/0", "b/0"));
  v = judge.Observe({Idle("a/0", 3), Idle("b/0", 6)});
  EXPECT_EQ(v.outcome, Outcome::kWaiting);
  EXPECT_THAT(v.pending, ElementsAre("b/0"));
  v = judge.Observe({Idle("a/0", 3), Idle("b/0", 6)});
  EXPECT_EQ(v.outcome, Outcome::kSettled);
  EXPECT_EQ(v.settled, 2u);
}

TEST(SettleJudgeTest, TheProgressLineNeverCountsDownForTheSameUnits) {
  SettleJudge judge(kNow + absl::Minutes(1), false);
  judge.Observe({Idle("a/0", 1), Idle("b/0", 1)});
  SettleVerdict v = judge.Observe({Idle("a/0", 1), Idle("b/0", 1)});
  ASSERT_EQ(v.outcome, Outcome::kSettled);
  // A second judge sees a unit settle, then move again (a relation event arrived).
  SettleJudge again(kNow + absl::Minutes(1), false);
  again.Observe({Idle("a/0", 1), Busy("b/0", 1)});
  v = again.Observe({Idle("a/0", 1), Busy("b/0", 2)});
  EXPECT_EQ(v.settled, 1u);
  v = again.Observe({Busy("a/0", 2), Busy("b/0", 3)});
  EXPECT_EQ(v.settled, 0u);
  EXPECT_EQ(v.shown, 1u);
  // Another set of units starts from its own count.
  v = again.Observe({Busy("a/0", 2), Busy("b/0", 3), Idle("c/0", 1)});
  EXPECT_EQ(v.shown, 0u);
}

TEST(SettleJudgeTest, TheSameFailureAttemptAfterAttemptIsPermanent) {
  SettleJudge judge(kNow + absl::Minutes(5), false, /*same_failures=*/3);
  const absl::Time soon = kNow + absl::Seconds(2);
  SettleVerdict v = judge.Observe({Failing("a/0", 1, 1, "disk on fire", soon)});
  EXPECT_EQ(v.outcome, Outcome::kWaiting);
  EXPECT_THAT(v.new_failures,
              ElementsAre("a/0: config.changed failed (attempt 1): disk on fire; `parley resolve "
                          "a/0` retries it now, `--skip` drops it"));
  // Polled again during the same attempt: counted once, reported once.
  v = judge.Observe({Failing("a/0", 1, 1, "disk on fire", soon)});
  EXPECT_THAT(v.new_failures, IsEmpty());
  // Between two attempts the unit executes the retry: the count is kept.
  v = judge.Observe({Busy("a/0", 2)});
  v = judge.Observe({Failing("a/0", 3, 2, "disk on fire", soon)});
  EXPECT_EQ(v.outcome, Outcome::kWaiting);
  v = judge.Observe({Failing("a/0", 4, 3, "disk on fire", soon)});
  EXPECT_EQ(v.outcome, Outcome::kFailedPermanently);
  EXPECT_THAT(v.reason, HasSubstr("a/0: event 7 (config.changed) failed 3 attempts running in "
                                  "handler 'start', each with: disk on fire\n"));
  EXPECT_THAT(v.reason, HasSubstr("`parley resolve a/0` retries it now"));
}

TEST(SettleJudgeTest, AnotherErrorStartsTheCountAgain) {
  SettleJudge judge(kNow + absl::Minutes(5), false, /*same_failures=*/3);
  const absl::Time soon = kNow + absl::Seconds(2);
  judge.Observe({Failing("a/0", 1, 1, "peer not ready", soon)});
  judge.Observe({Failing("a/0", 2, 2, "peer not ready", soon)});
  SettleVerdict v = judge.Observe({Failing("a/0", 3, 3, "peer refused", soon)});
  EXPECT_EQ(v.outcome, Outcome::kWaiting);
  EXPECT_EQ(v.new_failures.size(), 1u);
  v = judge.Observe({Failing("a/0", 4, 4, "peer refused", soon)});
  EXPECT_EQ(v.outcome, Outcome::kWaiting);
  v = judge.Observe({Failing("a/0", 5, 5, "peer refused", soon)});
  EXPECT_EQ(v.outcome, Outcome::kFailedPermanently);
}

TEST(SettleJudgeTest, TracesCountTheAttemptsBeforeTheWaitBegan) {
  SettleJudge judge(kNow + absl::Minutes(5), false, /*same_failures=*/3);
  UnitPoll p = Failing("a/0", 9, 6, "disk on fire", kNow + absl::Seconds(30));
  // Runs 10..12 failed the same way; run 9 failed otherwise; newest first or not, in any order.
  p.traces = {Attempt(11, 7, "handler start: disk on fire"), Attempt(9, 7, "handler start: x"),
              Attempt(12, 7, "handler start: disk on fire"),
              Attempt(10, 7, "handler start: disk on fire")};
  EXPECT_EQ(judge.Observe({p}).outcome, Outcome::kFailedPermanently);

  SettleJudge other(kNow + absl::Minutes(5), false, /*same_failures=*/3);
  p.traces = {Attempt(11, 7, "handler start: x"), Attempt(12, 7, "handler start: disk on fire")};
  EXPECT_EQ(other.Observe({p}).outcome, Outcome::kWaiting);
}

TEST(SettleJudgeTest, ARetryDueAfterTheDeadlineEndsTheWait) {
  SettleJudge judge(kNow + absl::Seconds(10), false);
  SettleVerdict v =
      judge.Observe({Idle("a/0", 1), Failing("b/0", 1, 1, "no", kNow + absl::Seconds(5))});
  EXPECT_EQ(v.outcome, Outcome::kWaiting);
  v = judge.Observe({Idle("a/0", 1), Failing("b/0", 2, 2, "no", kNow + absl::Seconds(11))});
  EXPECT_EQ(v.outcome, Outcome::kCannotSettleInTime);
  EXPECT_THAT(v.reason, HasSubstr("the next retry of b/0 (config.changed failed in handler "
                                  "'start', next retry at "));
  EXPECT_THAT(v.pending, ElementsAre("b/0"));
}

TEST(SettleJudgeTest, WithFailedSettlesAFailingUnitThatDoesNotMoveIsSettled) {
  SettleJudge judge(kNow + absl::Seconds(10), true, /*same_failures=*/1);
  const absl::Time late = kNow + absl::Minutes(5);
  SettleVerdict v = judge.Observe({Idle("a/0", 1), Failing("b/0", 4, 3, "no", late)});
  EXPECT_EQ(v.outcome, Outcome::kWaiting);
  v = judge.Observe({Idle("a/0", 1), Failing("b/0", 4, 3, "no", late)});
  EXPECT_EQ(v.outcome, Outcome::kSettled);
}

}  // namespace
}  // namespace parley::cli
