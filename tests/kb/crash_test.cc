// Crash safety of the KB and the engine: a child process (crash_child.cc) applying events is
// SIGKILLed at random moments, hundreds of times; after each kill the KB is reopened and must hold
// exactly the runs committed so far, none torn, none applied twice, none that were reported
// durable lost, and the inbox must resume at the first unprocessed event.
//
// PARLEY_CRASH_SEED=<n> replays a run (the seed is printed); PARLEY_CRASH_KILLS=<n> sets the kills
// per durability mode.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "base/clock.h"
#include "engine/engine.h"
#include "kb/kb.h"
#include "kb/store.h"
#include "tests/testing/temp_dir.h"

namespace parley {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::microseconds;

// The child enqueues ticks up to this while it is being killed: never reached, so every child of
// the kill loop is still working when it dies.
constexpr uint64_t kEndless = 1000000000;
// Ticks the final child applies beyond those already enqueued before it may exit.
constexpr uint64_t kFinalExtra = 200;
constexpr int kDefaultKillsPerMode = 200;

uint64_t EnvOr(const char* name, uint64_t dflt) {
  const char* v = getenv(name);
  uint64_t out = 0;
  return v != nullptr && absl::SimpleAtoi(v, &out) ? out : dflt;
}

// One kb_crash_child process and what it has said on stdout.
class Child {
 public:
  Child(const std::string& dir, const std::string& mode, uint64_t total) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      ADD_FAILURE() << "pipe2: " << strerror(errno);
      return;
    }
    std::string total_arg = absl::StrCat(total);
    std::vector<char*> argv = {const_cast<char*>(PARLEY_CRASH_CHILD),
                               const_cast<char*>(dir.c_str()), const_cast<char*>(mode.c_str()),
                               total_arg.data(), nullptr};
    started_ = Clock::now();
    pid_ = fork();
    if (pid_ == 0) {
      // Only async-signal-safe calls between fork and exec: the parent has threads.
      // Stderr too: the child's error lines become bad_output() and reach the failure message.
      if (dup2(fds[1], STDOUT_FILENO) < 0 || dup2(fds[1], STDERR_FILENO) < 0) _exit(126);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fds[1]);
    fd_ = fds[0];
    if (pid_ < 0) ADD_FAILURE() << "fork: " << strerror(errno);
  }
  ~Child() {
    if (pid_ > 0 && !reaped_) Kill();
    if (fd_ >= 0) close(fd_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // Reads the child's output until `deadline`, end of output, or (with `until_ready`) its ready
  // line. Returns false at end of output.
  bool Pump(Clock::time_point deadline, bool until_ready = false) {
    while (!eof_ && !(until_ready && ready_)) {
      const auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) return true;
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
      timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
      pollfd pfd{fd_, POLLIN, 0};
      const int r = ppoll(&pfd, 1, &ts, nullptr);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        ADD_FAILURE() << "ppoll: " << strerror(errno);
        return false;
      }
      if (r == 0) return true;
      ReadAvailable();
    }
    return !eof_;
  }

  // SIGKILLs the child, reaps it and collects what it wrote before dying.
  void Kill() {
    if (!reaped_ && !eof_) sent_kill_ = kill(pid_, SIGKILL) == 0;
    Reap();
    while (!eof_) ReadAvailable();
  }

  // Waits for the child to exit on its own; returns its wait status (or -1 on timeout).
  int WaitExit(Clock::time_point deadline) {
    while (Pump(deadline)) {
      if (Clock::now() >= deadline) return -1;
    }
    Reap();
    return status_;
  }

  bool ready() const { return ready_; }
  bool done() const { return done_; }
  // True when the child died of our SIGKILL, not of its own exit, abort or crash.
  bool killed_by_us() const {
    return reaped_ && sent_kill_ && WIFSIGNALED(status_) && WTERMSIG(status_) == SIGKILL;
  }
  int status() const { return status_; }
  // The highest n the child reported durable (0: none).
  uint64_t reported() const { return reported_; }
  uint64_t reports() const { return reports_; }
  uint64_t reports_out_of_order() const { return out_of_order_; }
  Clock::time_point started() const { return started_; }
  const std::string& bad_output() const { return bad_output_; }

 private:
  void ReadAvailable() {
    char buf[4096];
    const ssize_t n = read(fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) return;
    if (n <= 0) {
      eof_ = true;
      // A kill can cut nothing but whole lines (one write each); a fragment is bad output.
      if (!pending_.empty()) absl::StrAppend(&bad_output_, pending_, " (no newline)\n");
      return;
    }
    pending_.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = pending_.find('\n')) != std::string::npos) {
      Line(pending_.substr(0, nl));
      pending_.erase(0, nl + 1);
    }
  }

  void Line(absl::string_view line) {
    uint64_t n = 0;
    if (line == "ready") {
      ready_ = true;
    } else if (line == "done") {
      done_ = true;
    } else if (absl::ConsumePrefix(&line, "committed ") && absl::SimpleAtoi(line, &n)) {
      ++reports_;
      if (n < reported_) ++out_of_order_;
      reported_ = std::max(reported_, n);
    } else {
      absl::StrAppend(&bad_output_, line, "\n");
    }
  }

  void Reap() {
    if (reaped_ || pid_ <= 0) return;
    while (waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  Clock::time_point started_;
  std::string pending_;
  bool eof_ = false;
  bool reaped_ = false;
  bool sent_kill_ = false;
  int status_ = 0;
  bool ready_ = false;
  bool done_ = false;
  uint64_t reported_ = 0;
  uint64_t reports_ = 0;
  uint64_t out_of_order_ = 0;
  std::string bad_output_;
};

// What a reopened KB holds.
struct KbState {
  uint64_t applied = 0;   // n of the last applied tick (0: none)
  uint64_t enqueued = 0;  // applied + events waiting in the inbox
};

std::string Describe(const std::map<std::string, std::string>& facts) {
  std::string out;
  for (const auto& [k, v] : facts) absl::StrAppend(&out, k, "=", v, " ");
  return out;
}

// Reopens the KB at `dir` the way an agent restarting would and checks every rule; `min_applied`
// is the highest n reported durable so far.
void CheckKb(const std::string& dir, uint64_t min_applied, KbState* state) {
  if (!std::filesystem::exists(dir)) {
    // Killed before the KB was created: nothing can have been reported.
    EXPECT_EQ(min_applied, 0u) << "the KB is gone";
    *state = KbState{};
    return;
  }
  kb::StoreOptions options;
  options.durability = kb::Durability::kSync;
  options.create_if_missing = false;
  auto store = kb::Store::Open(dir, options);
  ASSERT_TRUE(store.ok()) << "reopen after kill: " << store.status();
  auto kb = kb::Kb::Open(store->get(), "crash/0");
  ASSERT_TRUE(kb.ok()) << kb.status();
  engine::ServiceSpec spec;
  spec.service = "crash";
  spec.unit = "crash/0";
  engine::HandlerSpec apply;
  apply.name = "apply";
  apply.on = {"tick"};
  apply.action = engine::MakeAction(
      [](engine::RunContext&) { return absl::InternalError("the checker never runs handlers"); });
  spec.handlers.push_back(std::move(apply));
  base::ManualClock clock;
  auto engine = engine::Engine::Create(std::move(spec), kb->get(), &clock);
  ASSERT_TRUE(engine.ok()) << "engine load after kill: " << engine.status();

  // Atomicity: k0..k9 and count all from the same run, count == n (each tick applied once).
  const std::map<std::string, std::string> facts = (*engine)->Facts();
  uint64_t n = 0;
  if (!facts.empty()) {
    auto count = facts.find("count");
    ASSERT_TRUE(count != facts.end()) << "facts without count: " << Describe(facts);
    ASSERT_TRUE(absl::SimpleAtoi(count->second, &n)) << Describe(facts);
    ASSERT_EQ(facts.size(), 11u) << "torn run: " << Describe(facts);
    for (int k = 0; k < 10; ++k) {
      auto it = facts.find(absl::StrCat("k", k));
      ASSERT_TRUE(it != facts.end()) << "torn run: " << Describe(facts);
      ASSERT_EQ(it->second, count->second)
          << "k" << k << " is not from the run that set count: " << Describe(facts);
    }
  }
  EXPECT_GE(n, min_applied) << "a run reported durable was lost";
  EXPECT_FALSE((*engine)->failure().has_value()) << (*engine)->failure()->ShortDebugString();
  if (n > 0) {
    auto traces = (*engine)->Traces(1);
    ASSERT_TRUE(traces.ok()) << traces.status();
    ASSERT_EQ(traces->size(), 1u);
    const v1::Trace& last = traces->front();
    EXPECT_EQ(last.run(), n) << "runs do not match applied ticks";
    EXPECT_EQ(last.result(), v1::Trace::RESULT_COMMITTED);
    EXPECT_EQ(last.trigger().params().at("n"), absl::StrCat(n)) << last.ShortDebugString();
  }

  // The inbox resumes at tick n+1 and holds the later ticks in order.
  uint64_t expect = n + 1;
  absl::Status parse;
  auto scan = (*kb)->Scan(kb::Space::kInbox, "", [&](absl::string_view key, absl::string_view v) {
    auto id = kb::DecodeU64(key);
    v1::Event event;
    if (!id.ok() || !event.ParseFromArray(v.data(), static_cast<int>(v.size()))) {
      parse = absl::DataLossError("inbox entry does not decode");
      return false;
    }
    const auto p = event.params().find("n");
    if (*id != expect || event.id() != expect || p == event.params().end() ||
        p->second != absl::StrCat(expect) || event.name() != "tick") {
      parse = absl::FailedPreconditionError(absl::StrCat(
          "inbox entry ", *id, " is ", event.ShortDebugString(), ", expected tick ", expect));
      return false;
    }
    ++expect;
    return true;
  });
  ASSERT_TRUE(scan.ok()) << scan;
  ASSERT_TRUE(parse.ok()) << parse << " (last applied tick: " << n << ")";
  EXPECT_EQ((*engine)->inbox_depth(), expect - 1 - n);
  state->applied = n;
  state->enqueued = expect - 1;
}

struct Stats {
  int kills = 0;
  int mid_run = 0;       // killed after the run loop started
  int unreported = 0;    // kills after which the KB held a commit the child never reported
  int out_of_order = 0;  // "committed" lines that came after a higher one
  uint64_t reports = 0;
};

void CrashLoop(const std::string& mode, uint64_t seed, int kills) {
  parley::testing::TempDir tmp;
  const std::string dir = tmp.Sub("kb");
  std::mt19937_64 random(seed);
  Stats stats;
  KbState state;
  uint64_t reported = 0;
  const auto t0 = Clock::now();
  for (int i = 0; i < kills && !::testing::Test::HasFailure(); ++i) {
    SCOPED_TRACE(absl::StrCat(mode, " mode, seed ", seed, ", kill #", i + 1));
    // Mostly kill within a few ms of the run loop starting; sometimes at any moment after the
    // spawn, which may be during open, recovery or loading. The first child always gets to
    // create the KB (the KillDuringCreation tests cover that window), so that a bug there does
    // not hide the rest.
    const bool from_start = i > 0 && random() % 5 == 0;
    const auto delay = microseconds(from_start ? random() % 15000 : random() % 3000);
    Child child(dir, mode, kEndless);
    if (from_start) {
      child.Pump(child.started() + delay);
    } else {
      child.Pump(Clock::now() + std::chrono::seconds(20), /*until_ready=*/true);
      ASSERT_TRUE(child.ready()) << "child did not start; output: " << child.bad_output();
      child.Pump(Clock::now() + delay);
    }
    child.Kill();
    ASSERT_TRUE(child.killed_by_us())
        << "child ended by itself, wait status " << child.status() << ": " << child.bad_output();
    ASSERT_TRUE(child.bad_output().empty()) << child.bad_output();
    ++stats.kills;
    if (child.ready()) ++stats.mid_run;
    stats.reports += child.reports();
    stats.out_of_order += static_cast<int>(child.reports_out_of_order());
    reported = std::max(reported, child.reported());

    const uint64_t before = state.applied;
    ASSERT_NO_FATAL_FAILURE(CheckKb(dir, std::max(reported, before), &state));
    if (state.applied > std::max(child.reported(), before)) ++stats.unreported;
    if (mode == "sync") {
      // Each run is durable before the child reports it and starts the next: at most the run
      // in flight at the kill is unreported.
      EXPECT_LE(state.applied, std::max(child.reported(), before) + 1);
    }
  }
  if (::testing::Test::HasFailure()) return;

  // A last child finishes the work: every enqueued tick and kFinalExtra more.
  const uint64_t total = state.enqueued + kFinalExtra;
  {
    SCOPED_TRACE(absl::StrCat(mode, " mode, seed ", seed, ", final run to ", total));
    Child child(dir, mode, total);
    const int status = child.WaitExit(Clock::now() + std::chrono::seconds(60));
    ASSERT_NE(status, -1) << "the final child did not finish in time";
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "final child status " << status << ": " << child.bad_output();
    EXPECT_TRUE(child.done());
    EXPECT_EQ(child.reported(), total);
    ASSERT_NO_FATAL_FAILURE(CheckKb(dir, total, &state));
    EXPECT_EQ(state.applied, total);
    EXPECT_EQ(state.enqueued, total) << "the inbox is not empty";
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  printf(
      "[ crash    ] %s: %d kills (%d mid-run, %d during startup), %d left a commit unreported, "
      "%llu runs reported durable (%d out of order), %llu ticks applied, %.1f s, seed %llu\n",
      mode.c_str(), stats.kills, stats.mid_run, stats.kills - stats.mid_run, stats.unreported,
      static_cast<unsigned long long>(stats.reports), stats.out_of_order,
      static_cast<unsigned long long>(state.applied), secs, static_cast<unsigned long long>(seed));
  EXPECT_GE(stats.kills, kills);
}

// The first start of an agent creates its KB; a kill at any moment of that must leave a
// directory the next start can use: no KB at all, or a complete one.
void CreationLoop(const std::string& mode, uint64_t seed, int kills) {
  std::mt19937_64 random(seed);
  // How long a child takes from spawn to ready on a fresh directory: the window to kill in. The
  // median of a few, so that one start slowed by a busy machine does not stretch it.
  std::vector<Clock::duration> startups;
  for (int i = 0; i < 5; ++i) {
    parley::testing::TempDir tmp;
    Child child(tmp.Sub("kb"), mode, kEndless);
    child.Pump(Clock::now() + std::chrono::seconds(20), /*until_ready=*/true);
    ASSERT_TRUE(child.ready()) << child.bad_output();
    startups.push_back(Clock::now() - child.started());
    child.Kill();
  }
  std::sort(startups.begin(), startups.end());
  const Clock::duration startup = startups[startups.size() / 2];
  const auto window = std::chrono::duration_cast<std::chrono::nanoseconds>(startup).count();
  int bricked = 0, killed_before_ready = 0, no_current_kills = 0, no_schema_kills = 0;
  std::string first_error;
  for (int i = 0; i < kills && !::testing::Test::HasFailure(); ++i) {
    SCOPED_TRACE(absl::StrCat(mode, " mode, seed ", seed, ", creation kill #", i + 1));
    parley::testing::TempDir tmp;
    const std::string dir = tmp.Sub("kb");
    const auto delay = std::chrono::nanoseconds(random() % static_cast<uint64_t>(window));
    {
      Child child(dir, mode, kEndless);
      child.Pump(child.started() + delay);
      child.Kill();
      ASSERT_TRUE(child.killed_by_us())
          << "child ended by itself, wait status " << child.status() << ": " << child.bad_output();
      if (!child.ready()) ++killed_before_ready;
    }
    // The agent starts again and gets some work done.
    Child restart(dir, mode, 3);
    const int status = restart.WaitExit(Clock::now() + std::chrono::seconds(20));
    ASSERT_NE(status, -1) << "the restarted child did not finish";
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ASSERT_TRUE(absl::StrContains(restart.bad_output(), "open store"))
          << "restart failed after the KB opened: " << restart.bad_output();
      const bool no_current = absl::StrContains(restart.bad_output(), "no CURRENT file");
      ++(no_current ? no_current_kills : no_schema_kills);
      if (bricked++ == 0) {
        first_error =
            absl::StrCat("killed ", delay.count() / 1000,
                         " us after spawn; restart: ", restart.bad_output(), "directory holds:");
        for (const auto& e : std::filesystem::directory_iterator(dir)) {
          absl::StrAppend(&first_error, " ", e.path().filename().string());
        }
      }
      continue;
    }
    KbState state;
    ASSERT_NO_FATAL_FAILURE(CheckKb(dir, 3, &state));
    EXPECT_GE(state.applied, 3u);
  }
  printf(
      "[ crash    ] %s creation: %d kills within %.1f ms of spawn (%d before ready), %d left a KB "
      "that does not open (%d: files but no CURRENT, %d: no schema version), seed %llu\n",
      mode.c_str(), kills, static_cast<double>(window) / 1e6, killed_before_ready, bricked,
      no_current_kills, no_schema_kills, static_cast<unsigned long long>(seed));
  EXPECT_EQ(bricked, 0) << bricked << " of " << kills
                        << " kills while the KB was being created left a KB that the next start "
                           "refuses to open; first: "
                        << first_error;
}

uint64_t Seed() {
  const uint64_t seed = EnvOr("PARLEY_CRASH_SEED", std::random_device{}());
  printf("[ crash    ] PARLEY_CRASH_SEED=%llu\n", static_cast<unsigned long long>(seed));
  return seed;
}

TEST(CrashTest, SyncCommitsSurviveSigkill) {
  CrashLoop("sync", Seed(), static_cast<int>(EnvOr("PARLEY_CRASH_KILLS", kDefaultKillsPerMode)));
}

TEST(CrashTest, GroupCommitsSurviveSigkill) {
  CrashLoop("group", Seed(), static_cast<int>(EnvOr("PARLEY_CRASH_KILLS", kDefaultKillsPerMode)));
}

constexpr int kCreationKills = 30;

TEST(CrashTest, SyncKillDuringCreation) { CreationLoop("sync", Seed(), kCreationKills); }

TEST(CrashTest, GroupKillDuringCreation) { CreationLoop("group", Seed(), kCreationKills); }

}  // namespace
}  // namespace parley
