// The dialer's handshake timeout on the host's clock: a dialed stream whose listener never
// answers the Hello is cancelled exactly when the timeout ends, and the link backs off from then.

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "base/clock.h"
#include "services/fixtures/builtin_services.h"
#include "services/host/host.h"
#include "tests/services/agent/agent_test_util.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

using testing::Advance;
using testing::OnStrand;
using testing::WaitFor;

std::unique_ptr<Host> StartHost(const std::string& dir, base::Clock* clock) {
  HostOptions o;
  o.data_dir = dir;
  o.tls.plaintext = true;
  o.clock = clock;
  o.handshake_timeout = absl::Seconds(3);
  o.reconnect_initial = absl::Seconds(1);
  o.reconnect_jitter = 0;
  auto h = Host::Start(o);
  EXPECT_TRUE(h.ok()) << h.status();
  return h.ok() ? std::move(*h) : nullptr;
}

Agent* Add(Host* h, const std::string& unit) {
  auto spec = BuiltinService("relay", unit);
  EXPECT_TRUE(spec.ok());
  auto a = h->AddAgent(std::move(*spec));
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? *a : nullptr;
}

TEST(HandshakeTimeoutTest, DialWithoutAnswerIsCancelledWhenTheTimeoutEnds) {
  parley::testing::TempDir dir;
  base::ManualClock clock;
  // The listener's agent is busy (its strand blocked), so the Hello it was sent is never
  // answered: the stream is open and silent, as with a peer that hangs.
  std::unique_ptr<Host> listener = StartHost(dir.Sub("listener"), base::SystemClock::Get());
  ASSERT_NE(listener, nullptr);
  Agent* z = Add(listener.get(), "z/0");
  ASSERT_NE(z, nullptr);
  // Started before blocking: its start must not wait behind the block.
  ASSERT_TRUE(WaitFor([&] { return OnStrand(z, [&] { return z->CheckIdle().idle(); }); }));
  auto release = std::make_shared<absl::Notification>();
  z->strand()->Post([release] { release->WaitForNotification(); });
  // Also when an assertion ends the test early: the listener's shutdown drains the strand.
  auto unblock = absl::MakeCleanup([release] {
    if (!release->HasBeenNotified()) release->Notify();
  });

  std::unique_ptr<Host> dialer = StartHost(dir.Sub("dialer"), &clock);
  ASSERT_NE(dialer, nullptr);
  Agent* a = Add(dialer.get(), "a/0");
  ASSERT_NE(a, nullptr);
  const absl::Time t0 = clock.Now();
  ASSERT_TRUE(
      OnStrand(a, [&] { return a->RememberAddress("z/0", listener->address(), true); }).ok());
  auto link = [&] { return dialer->links().Get("a/0", "z/0"); };
  ASSERT_TRUE(link().active);

  Advance(clock, dialer.get(), a, absl::Seconds(3) - absl::Milliseconds(1));
  EXPECT_TRUE(link().active) << "the dial ended before its handshake timeout: "
                             << link().last_error;
  Advance(clock, dialer.get(), a, absl::Milliseconds(1));
  ASSERT_TRUE(WaitFor([&] { return !link().active; })) << "the unanswered dial was not cancelled";
  EXPECT_EQ(link().next_attempt, t0 + absl::Seconds(3) + absl::Seconds(1));
  EXPECT_TRUE(absl::StrContains(link().last_error, "no answer to the Hello from z/0 within 3s"))
      << link().last_error;

  dialer->Shutdown();
}

}  // namespace
}  // namespace parley::services
