// PeerLinks decides, for every link of a host, whether an attempt may start. The interleavings
// here are the ones that left two in-process agents without a session and without a retry.

#include "services/host/peer_links.h"

#include <gtest/gtest.h>

namespace parley::services {
namespace {

using Claim = PeerLinks::Claim;

const absl::Time kT0 = absl::FromUnixSeconds(1000);

PeerLinksOptions NoJitter() {
  PeerLinksOptions o;
  o.initial_backoff = absl::Milliseconds(50);
  o.max_backoff = absl::Milliseconds(400);
  o.jitter = 0;
  return o;
}

TEST(PeerLinksTest, BothAgentsPairingAtOnceGetOneClaimBetweenThem) {
  PeerLinks links(NoJitter());
  EXPECT_EQ(links.BeginPair("a/0", "c/0", kT0), Claim::kGo);
  EXPECT_EQ(links.BeginPair("c/0", "a/0", kT0), Claim::kBusy);
  EXPECT_TRUE(links.Get("a/0", "c/0").active);
  EXPECT_TRUE(links.Get("c/0", "a/0").active);
}

TEST(PeerLinksTest, PairRefusedWhileTheSessionIsTornDownLeavesNothingClaimed) {
  PeerLinks links(NoJitter());
  ASSERT_EQ(links.BeginPair("a/0", "c/0", kT0), Claim::kGo);
  // The session closes: c's direction ends first, and c tries again before a's direction ends.
  links.Ended("c/0", "a/0", true, kT0);
  EXPECT_EQ(links.BeginPair("c/0", "a/0", kT0 + absl::Seconds(1)), Claim::kBusy);
  EXPECT_FALSE(links.Get("c/0", "a/0").active) << "a refused pair must not claim its own direction";
  links.Ended("a/0", "c/0", true, kT0);
  // Either side may pair again once the backoff is over; the first one wins.
  EXPECT_EQ(links.BeginPair("a/0", "c/0", kT0 + absl::Seconds(1)), Claim::kGo);
  EXPECT_EQ(links.BeginPair("c/0", "a/0", kT0 + absl::Seconds(1)), Claim::kBusy);
}

TEST(PeerLinksTest, FailedAttemptsBackOffExponentiallyUpToTheMaximum) {
  PeerLinks links(NoJitter());
  absl::Time now = kT0;
  const absl::Duration expected[] = {absl::Milliseconds(50), absl::Milliseconds(100),
                                     absl::Milliseconds(200), absl::Milliseconds(400),
                                     absl::Milliseconds(400)};
  for (absl::Duration d : expected) {
    ASSERT_EQ(links.Begin("a/0", "c/0", now), Claim::kGo);
    EXPECT_EQ(links.Begin("a/0", "c/0", now), Claim::kBusy);
    const absl::Time next = links.Ended("a/0", "c/0", false, now);
    EXPECT_EQ(next - now, d);
    EXPECT_EQ(links.Begin("a/0", "c/0", next - absl::Milliseconds(1)), Claim::kLater);
    now = next;
  }
  // A session that carried frames starts over at the initial backoff.
  ASSERT_EQ(links.Begin("a/0", "c/0", now), Claim::kGo);
  EXPECT_EQ(links.Ended("a/0", "c/0", true, now) - now, absl::Milliseconds(50));
}

TEST(PeerLinksTest, OneRetryTimerPerLink) {
  PeerLinks links(NoJitter());
  EXPECT_TRUE(links.MarkRetryScheduled("a/0", "c/0"));
  EXPECT_FALSE(links.MarkRetryScheduled("a/0", "c/0"));
  EXPECT_TRUE(links.MarkRetryScheduled("c/0", "a/0"));
  links.RetryFired("a/0", "c/0");
  EXPECT_TRUE(links.MarkRetryScheduled("a/0", "c/0"));
}

TEST(PeerLinksTest, JitterWaitsBetweenTheMinimumFractionAndTheFullBackoff) {
  PeerLinksOptions o = NoJitter();
  o.jitter = 0.5;
  PeerLinks links(o);
  for (int i = 0; i < 100; ++i) {
    const std::string remote = "c/" + std::to_string(i);
    ASSERT_EQ(links.Begin("a/0", remote, kT0), Claim::kGo);
    const absl::Duration waited = links.Ended("a/0", remote, true, kT0) - kT0;
    EXPECT_GT(waited, absl::Milliseconds(25));
    EXPECT_LE(waited, absl::Milliseconds(50));
  }
}

}  // namespace
}  // namespace parley::services
