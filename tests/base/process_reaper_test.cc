// Tests of the process reaper (base/process_reaper.h) on real processes: how it finds the ones a
// unit tagged (by environment, by label, after the environment was wiped) and how it stops them.

#include "base/process_reaper.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/testing/temp_dir.h"

namespace parley::base {

// How gtest shows them in failures.
void PrintTo(const TaggedProcess& p, std::ostream* os) {
  *os << "{pid " << p.pid << ", start " << p.start_ticks << ", \"" << p.command << "\"}";
}
void PrintTo(const ReapedProcess& r, std::ostream* os) {
  PrintTo(r.process, os);
  *os << " fate " << static_cast<int>(r.fate) << (r.error.empty() ? "" : " error ") << r.error;
}

namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::IsEmpty;

// Polls `condition` until it holds or `timeout` passes; returns whether it held.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return condition();
}

// Children of the test, killed and reaped at the end whatever happened.
class Children {
 public:
  ~Children() {
    for (pid_t pid : pids_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
    std::vector<char*> args, envp;
    std::vector<std::string> a = argv, e = env;
    for (auto& s : a) args.push_back(s.data());
    args.push_back(nullptr);
    for (auto& s : e) envp.push_back(s.data());
    envp.push_back(nullptr);
    pid_t pid = -1;
    EXPECT_EQ(posix_spawn(&pid, a[0].c_str(), nullptr, nullptr, args.data(), envp.data()), 0);
    if (pid > 0) pids_.push_back(pid);
    return pid;
  }
  // Reaps `pid` (it must exit within `timeout`); its wait status, or -1.
  int Reap(pid_t pid, absl::Duration timeout = absl::Seconds(10)) {
    int status = -1;
    const bool done = WaitFor([&] { return waitpid(pid, &status, WNOHANG) == pid; }, timeout);
    if (!done) return -1;
    std::erase(pids_, pid);
    return status;
  }

 private:
  std::vector<pid_t> pids_;
};

bool Alive(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(stat)), {});
  const size_t close = text.rfind(')');
  return close != std::string::npos && close + 2 < text.size() && text[close + 2] != 'Z';
}

std::string Cookie() {
  absl::StatusOr<std::string> c = RandomHex(16);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : "";
}

std::string CookieEntry(const std::string& cookie) {
  return absl::StrCat(kUnitCookieVariable, "=", cookie);
}

TEST(ProcessReaperTest, CookiesAreDerivedStablyAndDiffer) {
  const std::string secret = Cookie();
  EXPECT_EQ(secret.size(), 32u);
  EXPECT_EQ(DeriveUnitCookie(secret, "web/0"), DeriveUnitCookie(secret, "web/0"));
  EXPECT_NE(DeriveUnitCookie(secret, "web/0"), DeriveUnitCookie(secret, "web/1"));
  EXPECT_NE(DeriveUnitCookie(secret, "web/0"), DeriveUnitCookie(Cookie(), "web/0"));
  EXPECT_EQ(DeriveUnitCookie(secret, "web/0").size(), 32u);
  EXPECT_NE(LocksLabel("a"), LocksLabel("b"));
  EXPECT_GE(LocksLabel("a"), uint64_t{1} << 62);
  EXPECT_LT(LocksLabel("a"), uint64_t{1} << 63);
}

TEST(ProcessReaperTest, FindsAProcessByTheCookieInItsEnvironment) {
  Children children;
  const std::string cookie = Cookie();
  pid_t pid = children.Spawn({"/bin/sleep", "86411"}, {CookieEntry(cookie)});
  ASSERT_GT(pid, 0);
  // posix_spawn returns once the child exec'd: its environment is the one given.
  EXPECT_THAT(FindTaggedProcesses(cookie),
              ElementsAre(AllOf(Field(&TaggedProcess::pid, pid),
                                Field(&TaggedProcess::command, "/bin/sleep 86411"))));
  EXPECT_THAT(FindTaggedProcesses(Cookie()), IsEmpty());
  EXPECT_THAT(FindTaggedProcesses(""), IsEmpty());
}

TEST(ProcessReaperTest, FindsAProcessByItsLabelWithoutTheCookie) {
  Children children;
  const std::string cookie = Cookie();
  pid_t pid = children.Spawn({"/bin/sleep", "86412"}, {});
  ASSERT_GT(pid, 0);
  EXPECT_THAT(FindTaggedProcesses(cookie), IsEmpty());
  ASSERT_TRUE(LabelProcess(pid, cookie).ok());
  EXPECT_THAT(FindTaggedProcesses(cookie), ElementsAre(Field(&TaggedProcess::pid, pid)));
  EXPECT_THAT(FindTaggedProcesses(Cookie()), IsEmpty());
}

TEST(ProcessReaperTest, TermsTheWillingKillsTheStubbornAndReportsBoth) {
  Children children;
  const std::string cookie = Cookie();
  pid_t willing = children.Spawn({"/bin/sleep", "86413"}, {CookieEntry(cookie)});
  // An ignored signal stays ignored across exec: this sleep does not die of SIGTERM.
  pid_t stubborn = children.Spawn({"/bin/sh", "-c", "trap '' TERM; exec /bin/sleep 86414"},
                                  {CookieEntry(cookie)});
  ASSERT_GT(willing, 0);
  ASSERT_GT(stubborn, 0);
  ASSERT_TRUE(WaitFor([&] {
    auto found = FindTaggedProcesses(cookie);
    // The stubborn one has exec'd its sleep: the trap is in place.
    return found.size() == 2 && found[1].command == "/bin/sleep 86414";
  }));
  ReapOptions options;
  options.grace = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  std::vector<ReapedProcess> reaped = ReapTaggedProcesses(cookie, options);
  const absl::Duration took = absl::Now() - start;
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_GE(took, options.grace);  // the stubborn one had its grace period
  ASSERT_EQ(reaped.size(), 2u);
  for (const ReapedProcess& r : reaped) {
    if (r.process.pid == willing) {
      EXPECT_EQ(r.fate, ProcessFate::kTerminated);
      EXPECT_EQ(r.process.command, "/bin/sleep 86413");
    } else {
      EXPECT_EQ(r.process.pid, stubborn);
      EXPECT_EQ(r.fate, ProcessFate::kKilled);
      EXPECT_EQ(r.process.command, "/bin/sleep 86414");
    }
    EXPECT_EQ(r.error, "");
  }
  int status = children.Reap(willing);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << status;
  status = children.Reap(stubborn);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  // Nothing left: a second reap finds nothing and returns at once.
  EXPECT_THAT(ReapTaggedProcesses(cookie, options), IsEmpty());
}

TEST(ProcessReaperTest, ReapsWhatStoppingProcessesStartLater) {
  Children children;
  const std::string cookie = Cookie();
  // On SIGTERM it starts a detached process (which inherits the cookie) and exits.
  pid_t parent = children.Spawn(
      {"/bin/sh", "-c",
       "trap 'setsid /bin/sleep 86415 & exit 0' TERM; while :; do /bin/sleep 1; done"},
      {CookieEntry(cookie), "PATH=/usr/bin:/bin"});
  ASSERT_GT(parent, 0);
  std::vector<TaggedProcess> before;
  ASSERT_TRUE(WaitFor([&] {
    before = FindTaggedProcesses(cookie);
    return before.size() == 2;  // the shell and its `sleep 1`
  }));
  ReapOptions options;
  options.grace = absl::Seconds(5);
  std::vector<ReapedProcess> reaped = ReapTaggedProcesses(cookie, options);
  // The shell, its sleep, and what its trap started (caught as the forked shell or as the
  // sleep it became): found by a later look.
  EXPECT_GE(reaped.size(), 3u);
  for (const ReapedProcess& r : reaped) EXPECT_NE(r.fate, ProcessFate::kSurvived);
  EXPECT_THAT(FindTaggedProcesses(cookie), IsEmpty());
  EXPECT_NE(children.Reap(parent), -1);
}

// redis-server rewrites its argv and environment area to change what ps shows: the cookie in its
// environment is gone within moments, and only the label still says whose it is.
TEST(ProcessReaperTest, FindsARedisServerThatWipedItsEnvironmentByItsLabel) {
  if (access("/usr/bin/redis-server", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/redis-server";
  Children children;
  parley::testing::TempDir dir;
  const std::string cookie = Cookie();
  pid_t pid = children.Spawn({"/usr/bin/redis-server", "--port", "0", "--unixsocket",
                              dir.path() + "/redis.sock", "--dir", dir.path(), "--save", ""},
                             {CookieEntry(cookie)});
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(LabelProcess(pid, cookie).ok());
  auto environment_has_cookie = [&] {
    std::ifstream env(absl::StrCat("/proc/", pid, "/environ"));
    std::string text((std::istreambuf_iterator<char>(env)), {});
    return text.find(CookieEntry(cookie)) != std::string::npos;
  };
  ASSERT_TRUE(WaitFor([&] { return !environment_has_cookie(); }))
      << "redis-server kept its environment: this test no longer shows why the label exists";
  ASSERT_TRUE(Alive(pid));
  EXPECT_THAT(FindTaggedProcesses(cookie), ElementsAre(Field(&TaggedProcess::pid, pid)));
  ReapOptions options;
  options.grace = absl::Seconds(5);
  EXPECT_THAT(ReapTaggedProcesses(cookie, options),
              ElementsAre(Field(&ReapedProcess::fate, ProcessFate::kTerminated)));
  EXPECT_NE(children.Reap(pid), -1);
}

}  // namespace
}  // namespace parley::base
