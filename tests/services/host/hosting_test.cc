// Hosting work from the agent API runs on the host's one hosting executor: Shutdown waits for
// the work in flight, and work queued behind it does not run on agents being freed.

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "services/fixtures/builtin_services.h"
#include "services/host/host.h"
#include "tests/services/agent/agent_test_util.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

using testing::WaitFor;

TEST(HostingTest, ShutdownWaitsForHostingInFlightAndDropsWhatIsQueued) {
  parley::testing::TempDir dir;
  auto building = std::make_shared<absl::Notification>();
  auto release = std::make_shared<absl::Notification>();
  HostOptions o;
  o.data_dir = dir.Sub("host");
  o.tls.plaintext = true;
  // A definition that takes long to read: the AddAgent in flight when Shutdown begins.
  o.build_agent = [building, release](const v1::AgentRecipe& r) {
    building->Notify();
    release->WaitForNotification();
    return BuiltinService("relay", r.agent());
  };
  auto started = Host::Start(o);
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<Host> host = std::move(*started);
  auto spec = BuiltinService("relay", "x/0");
  ASSERT_TRUE(spec.ok());
  ASSERT_TRUE(host->AddAgent(std::move(*spec)).ok());

  absl::Notification added, removed;
  absl::StatusOr<std::string> add_result;
  absl::StatusOr<v1::RemoveAgentResponse> remove_result;
  v1::AgentRecipe recipe;
  recipe.set_agent("y/0");
  host->AddAgentLater(recipe, [&](absl::StatusOr<std::string> r) {
    add_result = std::move(r);
    added.Notify();
  });
  ASSERT_TRUE(building->WaitForNotificationWithTimeout(absl::Seconds(20)));
  // Queued behind it: a removal of an agent that Shutdown is about to free.
  v1::RemoveAgentRequest remove;
  remove.set_agent("x/0");
  host->RemoveAgentLater(remove, [&](absl::StatusOr<v1::RemoveAgentResponse> r) {
    remove_result = std::move(r);
    removed.Notify();
  });

  std::atomic<bool> shut_down{false};
  std::thread stopper([&] {
    host->Shutdown();
    shut_down = true;
  });
  // Once Shutdown began, new hosting work is refused at once...
  // A probe queued before Shutdown began is answered later (UNAVAILABLE, behind the work in
  // flight): its state outlives this scope.
  struct Probe {
    absl::Notification answered;
    std::atomic<bool> unavailable{false};
  };
  ASSERT_TRUE(WaitFor([&] {
    auto probe = std::make_shared<Probe>();
    host->AddAgentLater(recipe, [probe](absl::StatusOr<std::string> r) {
      probe->unavailable = absl::IsUnavailable(r.status());
      probe->answered.Notify();
    });
    return probe->answered.HasBeenNotified() && probe->unavailable;
  }));
  // ... but Shutdown waits for the work in flight.
  EXPECT_FALSE(shut_down) << "Shutdown returned while hosting work was in flight";
  EXPECT_FALSE(added.HasBeenNotified());
  release->Notify();
  stopper.join();
  EXPECT_TRUE(shut_down);
  ASSERT_TRUE(added.HasBeenNotified());
  EXPECT_FALSE(add_result.ok()) << "an agent was added to a host shutting down";
  ASSERT_TRUE(removed.HasBeenNotified()) << "the queued removal was never answered";
  EXPECT_TRUE(absl::IsUnavailable(remove_result.status())) << remove_result.status();
}

}  // namespace
}  // namespace parley::services
