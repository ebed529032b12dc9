// Reconnect backoff on the host's clock: a link whose attempts fail is tried again exactly when
// its backoff says (doubling up to the maximum), never earlier, with no real waiting for it.

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "base/clock.h"
#include "services/fixtures/builtin_services.h"
#include "services/host/host.h"
#include "tests/services/agent/agent_test_util.h"
#include "tests/testing/free_port.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

using testing::Advance;
using testing::OnStrand;
using testing::WaitFor;

TEST(RedialTest, FailedDialsAreRetriedWhenTheirBackoffEndsOnTheHostsClock) {
  parley::testing::TempDir dir;
  base::ManualClock clock;
  HostOptions o;
  o.data_dir = dir.Sub("host");
  o.tls.plaintext = true;
  o.clock = &clock;
  o.reconnect_initial = absl::Seconds(1);
  o.reconnect_max = absl::Seconds(4);
  o.reconnect_jitter = 0;
  auto host = Host::Start(o);
  ASSERT_TRUE(host.ok()) << host.status();
  Host* h = host->get();
  auto spec = BuiltinService("relay", "a/0");
  ASSERT_TRUE(spec.ok());
  auto added = h->AddAgent(std::move(*spec));
  ASSERT_TRUE(added.ok()) << added.status();
  Agent* a = *added;

  // Nothing listens there: every dial fails at once. a/0 sorts first, so it dials z/0.
  const std::string nowhere = absl::StrCat("127.0.0.1:", parley::testing::PickFreePort());
  const absl::Time t0 = clock.Now();
  ASSERT_TRUE(OnStrand(a, [&] { return a->RememberAddress("z/0", nowhere, true); }).ok());
  auto link = [&] { return h->links().Get("a/0", "z/0"); };
  auto ended_and_next = [&](absl::Time next) {
    return WaitFor([&] {
      const PeerLinks::View v = link();
      return !v.active && v.next_attempt == next;
    });
  };
  ASSERT_TRUE(ended_and_next(t0 + absl::Seconds(1)))
      << "next attempt " << link().next_attempt << ", error " << link().last_error;
  EXPECT_FALSE(link().last_error.empty());

  // Each wait doubles up to the maximum: 1s, 2s, 4s, 4s.
  absl::Time next = t0 + absl::Seconds(1);
  for (absl::Duration wait : {absl::Seconds(2), absl::Seconds(4), absl::Seconds(4)}) {
    Advance(clock, h, a, next - clock.Now() - absl::Milliseconds(1));
    EXPECT_FALSE(link().active) << "dialed again before the backoff ended";
    EXPECT_EQ(link().next_attempt, next) << "an attempt ended before the backoff did";
    Advance(clock, h, a, absl::Milliseconds(1));
    next += wait;
    ASSERT_TRUE(ended_and_next(next))
        << "expected the next attempt at " << next << ", it is at " << link().next_attempt;
  }

  // Status shows the link backing off until the host's-clock time of the next attempt.
  const v1::AgentStatus s = OnStrand(a, [&] { return a->Status(); });
  ASSERT_EQ(s.peers_size(), 1);
  EXPECT_EQ(s.peers(0).state(), v1::PEER_LINK_STATE_BACKING_OFF);
  EXPECT_EQ(s.peers(0).next_attempt_unix_ms(), absl::ToUnixMillis(next));
}

}  // namespace
}  // namespace parley::services
