// Removing an agent stops every process its handlers started (Host::RemoveAgent): a daemon a
// handler detached with setsid, and, when the agent is blocked in a hanging handler, the handler
// too. Real exec handlers, real processes, a real host and KB.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/process_reaper.h"
#include "services/backends/backends.h"
#include "services/definition/definition.h"
#include "services/host/host.h"
#include "tests/services/agent/agent_test_util.h"
#include "tests/services/host/processes_util.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using testing::Fact;
using ::testing::Property;
using ::testing::UnorderedElementsAre;
using testing::Alive;
using testing::CommandLine;
using testing::KillOnExit;
using testing::PidIn;
using testing::ReadFile;
using testing::WaitFor;
using testing::Write;

constexpr char kHook[] = PARLEY_HOOK;

// Starts a detached daemon (which writes its pid) and returns.
constexpr char kKeeper[] = R"(name: keeper
handlers:
  - name: launch
    on: [start]
    action: {kind: exec, command: [./bin/launch.sh]}
)";
constexpr char kLaunch[] = R"sh(#!/bin/sh
set -e
setsid /bin/sh -c 'echo $$ > "$PARLEY_STATE_DIR/daemon.pid"; exec sleep 86421' \
  </dev/null >/dev/null 2>&1 &
parley-hook fact set launched
)sh";

// Starts a detached daemon that ignores SIGTERM, then hangs far past any test.
constexpr char kHanger[] = R"(name: hanger
handlers:
  - name: launch
    on: [start]
    timeout: 1h
    action: {kind: exec, command: [./bin/hang.sh]}
)";
constexpr char kHang[] = R"sh(#!/bin/sh
setsid /bin/sh -c 'trap "" TERM; echo $$ > "$PARLEY_STATE_DIR/daemon.pid"; exec sleep 86422' \
  </dev/null >/dev/null 2>&1 &
echo $$ > "$PARLEY_STATE_DIR/handler.pid"
exec sleep 86423
)sh";

class RemoveAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Write(root_ / "keeper/service.yaml", kKeeper);
    Write(root_ / "keeper/bin/launch.sh", kLaunch, true);
    Write(root_ / "hanger/service.yaml", kHanger);
    Write(root_ / "hanger/bin/hang.sh", kHang, true);
    StartHost();
  }

  // A host on the test's data directory (again, after a previous one ended: a restart).
  void StartHost() {
    backends_.reset();
    host_.reset();
    HostOptions o;
    o.data_dir = (root_ / "kb").string();
    o.tls.plaintext = true;
    o.remove_blocked_after = absl::Seconds(1);
    o.remove_kill_grace = absl::Seconds(1);
    auto host = Host::Start(o);
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::move(*host);
    BackendOptions b;
    b.process.extra_path.push_back(fs::path(kHook).parent_path().string());
    b.process.state_root = (root_ / "state").string();
    b.process.unit_cookie = [host = host_.get()](const std::string& unit) {
      return host->UnitCookie(unit);
    };
    backends_ = MakeBackends(b);
  }

  Agent* Add(const std::string& service, const std::string& unit) {
    auto def = LoadServiceDefinition((root_ / service).string());
    EXPECT_TRUE(def.ok()) << def.status();
    if (!def.ok()) return nullptr;
    auto spec = BuildSpec(*def, unit, *backends_);
    EXPECT_TRUE(spec.ok()) << spec.status();
    if (!spec.ok()) return nullptr;
    auto agent = host_->AddAgent(std::move(*spec));
    EXPECT_TRUE(agent.ok()) << agent.status();
    return agent.ok() ? *agent : nullptr;
  }

  std::string StateFile(const std::string& unit_dir, const std::string& name) const {
    return (root_ / "state" / unit_dir / name).string();
  }

  parley::testing::TempDir dir_;
  const fs::path root_{dir_.path()};
  std::unique_ptr<Host> host_;
  std::unique_ptr<BackendRegistry> backends_;
};

TEST_F(RemoveAgentTest, StopsTheDaemonAHandlerDetachedAndReportsIt) {
  Agent* agent = Add("keeper", "keeper/0");
  ASSERT_NE(agent, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Fact(agent, "launched").has_value(); }));
  const std::string pidfile = StateFile("keeper-0", "daemon.pid");
  ASSERT_TRUE(WaitFor([&] { return PidIn(pidfile) > 0; }));
  const int daemon = PidIn(pidfile);
  KillOnExit cleanup{{daemon}};
  ASSERT_TRUE(WaitFor([&] { return CommandLine(daemon) == "sleep 86421"; })) << CommandLine(daemon);
  // The run is over and its process group was killed: the daemon, in a session of its own,
  // outlived it, tagged with the unit's cookie.
  ASSERT_TRUE(WaitFor([&] { return testing::Settled({host_.get()}); }));
  ASSERT_TRUE(Alive(daemon));
  auto cookie = host_->UnitCookie("keeper/0");
  ASSERT_TRUE(cookie.ok()) << cookie.status();
  EXPECT_NE(ReadFile(absl::StrCat("/proc/", daemon, "/environ"))
                .find(absl::StrCat("PARLEY_UNIT_COOKIE=", *cookie)),
            std::string::npos);
  // ... and labelled, which survives a daemon rewriting its environment.
  EXPECT_THAT(ReadFile(absl::StrCat("/proc/", daemon, "/limits")),
              ::testing::HasSubstr(absl::StrCat(base::LocksLabel(*cookie))));

  absl::StatusOr<v1::RemoveAgentResponse> removed = host_->RemoveAgent("keeper/0");
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_FALSE(removed->was_blocked());
  EXPECT_THAT(removed->stopped_processes(),
              UnorderedElementsAre(
                  AllOf(Property(&v1::StoppedProcess::pid, daemon),
                        Property(&v1::StoppedProcess::command, "sleep 86421"),
                        Property(&v1::StoppedProcess::fate, v1::PROCESS_FATE_TERMINATED))));
  EXPECT_TRUE(WaitFor([&] { return !Alive(daemon); }, absl::Seconds(5)));
  EXPECT_TRUE(absl::IsNotFound(host_->UnitCookie("keeper/0").status()));
  EXPECT_EQ(host_->Find("keeper/0"), nullptr);
}

// Nothing ties a handler's life to its parleyd's: after a SIGKILL of the parleyd, a handler may
// still be running when a new parleyd hosts the agent on the same data and retries its run (the
// webstack campaign saw two redis-hook starts at once lose redis.pid). The agent stops what is left
// of its handlers before it runs anything, and leaves the daemons they detached alone.
TEST_F(RemoveAgentTest, AHandlerLeftByAParleydThatDiedIsStoppedWhenTheAgentIsHostedAgain) {
  Agent* agent = Add("keeper", "keeper/0");
  ASSERT_NE(agent, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Fact(agent, "launched").has_value(); }));
  const std::string pidfile = StateFile("keeper-0", "daemon.pid");
  ASSERT_TRUE(WaitFor([&] { return PidIn(pidfile) > 0; }));
  const int daemon = PidIn(pidfile);
  auto cookie = host_->UnitCookie("keeper/0");
  ASSERT_TRUE(cookie.ok()) << cookie.status();
  // What a handler of a killed parleyd is: tagged with the unit's cookie, in a process group of
  // its own in the parleyd's session (as process::Spawn starts it), not detached.
  const std::string tag = absl::StrCat(base::kUnitCookieVariable, "=", *cookie);
  std::vector<char*> env = {const_cast<char*>(tag.c_str()), nullptr};
  std::vector<char*> argv = {const_cast<char*>("sleep"), const_cast<char*>("86424"), nullptr};
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  pid_t leftover = 0;
  ASSERT_EQ(posix_spawn(&leftover, "/bin/sleep", nullptr, &attr, argv.data(), env.data()), 0);
  posix_spawnattr_destroy(&attr);
  KillOnExit cleanup{{daemon, leftover}};
  ASSERT_TRUE(WaitFor([&] { return CommandLine(leftover) == "sleep 86424"; }));

  StartHost();  // the parleyd came back on the same data
  agent = Add("keeper", "keeper/0");
  ASSERT_NE(agent, nullptr);
  EXPECT_TRUE(WaitFor([&] { return !Alive(leftover); }, absl::Seconds(10)))
      << "the leftover handler " << leftover << " still runs";
  EXPECT_TRUE(Alive(daemon)) << "the detached daemon was stopped too";
  if (Alive(leftover)) kill(leftover, SIGKILL);
  waitpid(leftover, nullptr, 0);  // it is this test's child
  ASSERT_TRUE(host_->RemoveAgent("keeper/0").ok());  // stops the daemons
}

TEST_F(RemoveAgentTest, StopsAHangingHandlerAndItsDaemonWithinABound) {
  Agent* agent = Add("hanger", "hanger/0");
  ASSERT_NE(agent, nullptr);
  const std::string daemon_file = StateFile("hanger-0", "daemon.pid");
  const std::string handler_file = StateFile("hanger-0", "handler.pid");
  ASSERT_TRUE(WaitFor([&] { return PidIn(daemon_file) > 0 && PidIn(handler_file) > 0; }));
  const int daemon = PidIn(daemon_file);
  const int handler = PidIn(handler_file);
  KillOnExit cleanup{{daemon, handler}};
  ASSERT_TRUE(WaitFor([&] {
    return CommandLine(daemon) == "sleep 86422" && CommandLine(handler) == "sleep 86423";
  }));
  // The agent is stuck in its run: the handler hangs (its timeout is an hour) and holds the
  // agent's strand.

  const absl::Time start = absl::Now();
  absl::StatusOr<v1::RemoveAgentResponse> removed;
  absl::Duration took;
  std::thread remover([&] {
    removed = host_->RemoveAgent("hanger/0");
    took = absl::Now() - start;
  });
  // While it is being removed, none of its programs may start (a handler that tries fails).
  EXPECT_TRUE(
      WaitFor([&] { return absl::IsFailedPrecondition(host_->UnitCookie("hanger/0").status()); },
              absl::Seconds(5)));
  remover.join();
  ASSERT_TRUE(removed.ok()) << removed.status();
  // 1 s for the run to end, 1 s of grace for the daemon that ignores SIGTERM, then the handler
  // returns (its output drained) and the run rolls back: far below the handler's hour.
  EXPECT_GE(took, absl::Seconds(1));
  EXPECT_LT(took, absl::Seconds(15));
  EXPECT_TRUE(removed->was_blocked());
  EXPECT_THAT(
      removed->stopped_processes(),
      UnorderedElementsAre(AllOf(Property(&v1::StoppedProcess::pid, handler),
                                 Property(&v1::StoppedProcess::command, "sleep 86423"),
                                 Property(&v1::StoppedProcess::fate, v1::PROCESS_FATE_TERMINATED)),
                           AllOf(Property(&v1::StoppedProcess::pid, daemon),
                                 Property(&v1::StoppedProcess::command, "sleep 86422"),
                                 Property(&v1::StoppedProcess::fate, v1::PROCESS_FATE_KILLED))));
  EXPECT_FALSE(Alive(handler));
  EXPECT_TRUE(WaitFor([&] { return !Alive(daemon); }, absl::Seconds(5)));
  EXPECT_EQ(host_->Find("hanger/0"), nullptr);
}

}  // namespace
}  // namespace parley::services
