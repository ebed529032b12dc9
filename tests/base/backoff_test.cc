// Tests of the backoff (base/backoff.h): the delays a failed run's event, or a redial, waits.

#include "base/backoff.h"

#include <gtest/gtest.h>

namespace parley::base {
namespace {

BackoffOptions Options(double jitter) {
  BackoffOptions o;
  o.initial = absl::Seconds(1);
  o.max = absl::Seconds(10);
  o.jitter = jitter;
  o.seed = 42;
  return o;
}

TEST(BackoffTest, DoublesFromInitialUpToMaxWithoutJitter) {
  Backoff backoff(Options(0));
  EXPECT_EQ(backoff.Delay(1), absl::Seconds(1));
  EXPECT_EQ(backoff.Delay(2), absl::Seconds(2));
  EXPECT_EQ(backoff.Delay(3), absl::Seconds(4));
  EXPECT_EQ(backoff.Delay(4), absl::Seconds(8));
  EXPECT_EQ(backoff.Delay(5), absl::Seconds(10));
  EXPECT_EQ(backoff.Delay(1000), absl::Seconds(10));
}

TEST(BackoffTest, JitterShortensEachDelayByAtMostItsFraction) {
  Backoff backoff(Options(0.2));
  bool shortened = false;
  for (uint32_t attempt = 1; attempt < 200; ++attempt) {
    Backoff plain(Options(0));
    const absl::Duration full = plain.Delay(attempt);
    const absl::Duration d = backoff.Delay(attempt);
    EXPECT_LE(d, full) << "attempt " << attempt;
    EXPECT_GE(d, full * 0.8) << "attempt " << attempt;
    shortened |= d < full;
  }
  EXPECT_TRUE(shortened) << "jitter never shortened a delay";
}

TEST(BackoffTest, EqualSeedsGiveEqualDelays) {
  Backoff a(Options(0.5)), b(Options(0.5));
  for (uint32_t attempt = 1; attempt < 20; ++attempt) EXPECT_EQ(a.Delay(attempt), b.Delay(attempt));
}

}  // namespace
}  // namespace parley::base
