// A unit's removal (Host::RemoveAgentLater without `force`): the unit dies first — its removal's
// `stop` is queued, its relations are departed, only handlers that run while dying run — and is
// removed once dead or after a bounded grace, its processes stopped. Real exec handlers, real
// daemons, a real host and KB.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "services/backends/backends.h"
#include "services/definition/definition.h"
#include "services/host/host.h"
#include "tests/services/agent/agent_test_util.h"
#include "tests/services/host/processes_util.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;
using testing::Alive;
using ::testing::ElementsAre;
using testing::Fact;
using ::testing::HasSubstr;
using testing::KillOnExit;
using ::testing::Not;
using testing::OnStrand;
using testing::PidIn;
using testing::ReadFile;
using testing::Settled;
using testing::WaitFor;
using testing::Write;

constexpr char kHook[] = PARLEY_HOOK;

// A database whose daemon a naive `departed` handler would start again (as in the issue: the
// unit's own departures restarted postgres after its stop had stopped it).
constexpr char kDb[] = R"(name: db
provides:
  clients: kv
handlers:
  - name: run
    on: [start]
    action: {kind: exec, command: [./bin/run.sh, start]}
  - name: publish
    on: [clients.joined]
    action:
      kind: builtin
      steps:
        - relation-set: {endpoint: clients, key: port, value: "7001"}
  - name: restart
    on: [clients.departed]
    action: {kind: exec, command: [./bin/run.sh, restart]}
  - name: farewell
    on: [clients.departed]
    dying: true
    action: {kind: exec, command: [./bin/farewell.sh]}
  - name: halt
    on: [stop]
    action: {kind: exec, command: [./bin/halt.sh]}
)";

constexpr char kRun[] = R"sh(#!/bin/sh
set -e
echo "$1" >> JOURNAL
setsid /bin/sh -c 'echo $$ > "$PARLEY_STATE_DIR/daemon.pid"; exec sleep 86431' \
  </dev/null >/dev/null 2>&1 &
)sh";

constexpr char kFarewell[] = R"sh(#!/bin/sh
set -e
echo "farewell dying=$(parley-hook fact get dying >/dev/null 2>&1 && echo yes || echo no)" >> JOURNAL
)sh";

constexpr char kHalt[] = R"sh(#!/bin/sh
echo halt >> JOURNAL
kill "$(cat "$PARLEY_STATE_DIR/daemon.pid")"
exit HALT_EXIT
)sh";

constexpr char kWeb[] = R"(name: web
requires:
  db: kv
handlers:
  - name: use
    when: [db.ready]
    action:
      kind: builtin
      steps:
        - set: "db_port={{fact.db.remote.port}}"
  - name: lost
    on: [db.departed]
    action:
      kind: builtin
      steps:
        - set: "db_gone=yes"
)";

std::vector<std::string> Lines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

class UnitDeathTest : public ::testing::Test {
 protected:
  // `halt_exit`: what db's stop handler exits with (non-zero: the unit cannot finish dying).
  void Start(int halt_exit) {
    const std::string journal = (root_ / "journal").string();
    auto script = [&](const char* text) {
      return absl::StrReplaceAll(text,
                                 {{"JOURNAL", journal}, {"HALT_EXIT", absl::StrCat(halt_exit)}});
    };
    Write(root_ / "interfaces/kv.yaml", "required: {port: int}\n");
    Write(root_ / "db/service.yaml", kDb);
    Write(root_ / "db/bin/run.sh", script(kRun), true);
    Write(root_ / "db/bin/farewell.sh", script(kFarewell), true);
    Write(root_ / "db/bin/halt.sh", script(kHalt), true);
    Write(root_ / "web/service.yaml", kWeb);
    HostOptions o;
    o.data_dir = (root_ / "kb").string();
    o.tls.plaintext = true;
    o.remove_blocked_after = absl::Seconds(2);
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
    db_ = Add("db", "db/0");
    web_ = Add("web", "web/0");
    ASSERT_NE(db_, nullptr);
    ASSERT_NE(web_, nullptr);
    auto related =
        testing::Relate(host_.get(), "db:1", web_, "db", host_->address(), "db/0", "clients");
    ASSERT_TRUE(related.ok()) << related.status();
    ASSERT_TRUE(WaitFor([&] { return Fact(web_, "db_port") == "7001"; }));
    ASSERT_TRUE(WaitFor([&] { return Settled({host_.get()}); }));
    // The daemon writes its pid itself, after run.sh returned.
    const std::string pidfile = (root_ / "state/db-0/daemon.pid").string();
    ASSERT_TRUE(WaitFor([&] { return PidIn(pidfile) > 0; })) << pidfile;
    daemon_ = PidIn(pidfile);
    cleanup_.pids.push_back(daemon_);
    ASSERT_TRUE(Alive(daemon_));
    EXPECT_EQ(OnStrand(db_, [&] { return db_->Status().stage(); }), v1::UNIT_STAGE_ACTIVE);
  }

  Agent* Add(const std::string& service, const std::string& unit) {
    auto def = LoadServiceDefinition((root_ / service).string(), (root_ / "interfaces").string());
    EXPECT_TRUE(def.ok()) << def.status();
    if (!def.ok()) return nullptr;
    auto spec = BuildSpec(*def, unit, *backends_);
    EXPECT_TRUE(spec.ok()) << spec.status();
    if (!spec.ok()) return nullptr;
    auto agent = host_->AddAgent(std::move(*spec));
    EXPECT_TRUE(agent.ok()) << agent.status();
    return agent.ok() ? *agent : nullptr;
  }

  // Removes `unit` as the agent API does and waits for the answer.
  absl::StatusOr<v1::RemoveAgentResponse> Remove(const std::string& unit, uint32_t grace_seconds,
                                                 absl::Duration wait = absl::Seconds(60)) {
    v1::RemoveAgentRequest r;
    r.set_agent(unit);
    r.set_grace_seconds(grace_seconds);
    auto answer =
        std::make_shared<std::pair<absl::Notification, absl::StatusOr<v1::RemoveAgentResponse>>>();
    host_->RemoveAgentLater(r, [answer](absl::StatusOr<v1::RemoveAgentResponse> removed) {
      answer->second = std::move(removed);
      answer->first.Notify();
    });
    if (!answer->first.WaitForNotificationWithTimeout(wait)) {
      return absl::DeadlineExceededError("RemoveAgentLater did not answer");
    }
    return answer->second;
  }

  parley::testing::TempDir dir_;
  const fs::path root_{dir_.path()};
  std::unique_ptr<Host> host_;
  std::unique_ptr<BackendRegistry> backends_;
  Agent* db_ = nullptr;
  Agent* web_ = nullptr;
  int daemon_ = 0;
  KillOnExit cleanup_;
};

// The bug of the issue, fixed: the removal's stop halts the daemon, and the unit's own
// departures no longer run the handler that would start it again; only the handler declared to
// run while dying does, and sees the fact `dying`. The peer learns of the departure, and the unit
// is removed only once dead: nothing was left for the reaper.
TEST_F(UnitDeathTest, ARemovedUnitDiesRunningOnlyItsDyingHandlers) {
  ASSERT_NO_FATAL_FAILURE(Start(/*halt_exit=*/0));
  absl::StatusOr<v1::RemoveAgentResponse> removed = Remove("db/0", 30);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(removed->stage(), v1::UNIT_STAGE_DEAD);
  EXPECT_LT(removed->dying_ms(), 30'000);
  EXPECT_THAT(removed->stopped_processes(), ::testing::IsEmpty());
  EXPECT_THAT(Lines((root_ / "journal").string()),
              ElementsAre("start", "halt", "farewell dying=yes"));
  EXPECT_TRUE(WaitFor([&] { return !Alive(daemon_); }, absl::Seconds(5)));
  EXPECT_EQ(host_->Find("db/0"), nullptr);
  EXPECT_TRUE(WaitFor([&] { return Fact(web_, "db_gone") == "yes"; }));
  // Removing it again: it is gone.
  EXPECT_TRUE(absl::IsNotFound(Remove("db/0", 30).status()));
}

// A unit that cannot finish dying (its stop handler fails, and is retried) is removed when its
// grace has passed, and the log says why.
TEST_F(UnitDeathTest, AUnitThatCannotDieIsRemovedAfterItsGrace) {
  ASSERT_NO_FATAL_FAILURE(Start(/*halt_exit=*/1));
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::RemoveAgentResponse> removed = Remove("db/0", 2);
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(removed.ok()) << removed.status();
  // Its removal's stop never committed: the unit did not even become dying.
  EXPECT_EQ(removed->stage(), v1::UNIT_STAGE_ACTIVE);
  EXPECT_GE(removed->dying_ms(), 2'000);
  EXPECT_GE(took, absl::Seconds(2));
  EXPECT_LT(took, absl::Seconds(20));
  EXPECT_EQ(host_->Find("db/0"), nullptr);
  const std::vector<std::string> journal = Lines((root_ / "journal").string());
  ASSERT_GE(journal.size(), 2u);
  EXPECT_EQ(journal[0], "start");
  EXPECT_EQ(journal[1], "halt");
  EXPECT_THAT(journal, Not(::testing::Contains("restart")));
  // The log says why it was removed undead.
  v1::StreamLogsRequest filter;
  filter.set_agent("db/0");
  std::string said;
  for (const v1::LogRecord& r : host_->logs().Snapshot(filter))
    absl::StrAppend(&said, r.message(), "\n");
  EXPECT_THAT(said, HasSubstr("not dead after 2s (UNIT_STAGE_ACTIVE"));
  EXPECT_THAT(said, HasSubstr("failing: "));
}

// Shutdown answers a removal still waiting for its unit to die (UNAVAILABLE) instead of leaving
// the API call unanswered; the unit dies on after a restart.
TEST_F(UnitDeathTest, ShutdownAnswersARemovalWaitingForItsUnit) {
  ASSERT_NO_FATAL_FAILURE(Start(/*halt_exit=*/1));
  v1::RemoveAgentRequest r;
  r.set_agent("db/0");
  r.set_grace_seconds(600);
  absl::Notification answered;
  absl::StatusOr<v1::RemoveAgentResponse> result;
  host_->RemoveAgentLater(r, [&](absl::StatusOr<v1::RemoveAgentResponse> removed) {
    result = std::move(removed);
    answered.Notify();
  });
  ASSERT_TRUE(WaitFor([&] {
    return OnStrand(db_, [&] { return db_->Status().has_failure(); }) &&
           Lines((root_ / "journal").string()).size() >= 2;
  }));
  const absl::Time start = absl::Now();
  host_->Shutdown();
  ASSERT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
  EXPECT_TRUE(absl::IsUnavailable(result.status())) << result.status();
}

}  // namespace
}  // namespace parley::services
