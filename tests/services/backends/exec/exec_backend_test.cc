// The exec backend (services/backends/exec/exec_backend.h): real shell and python3 scripts run
// through a real engine on a real KB. Hook tools change facts, relation data and status only if the
// run commits; hanging, failing, flooding and garbage-speaking scripts each give a clear error and
// leave nothing half-applied.

#include <gmock/gmock.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "services/backends/backends.h"
#include "tests/services/backends/backend_test_util.h"

namespace parley::services {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using testing::Gone;
using ::testing::HasSubstr;
using testing::Joined;
using testing::Named;
using ::testing::Not;
using testing::Shell;
using ::testing::StartsWith;

constexpr char kHook[] = PARLEY_HOOK;

constexpr char kRedis[] = "required: {host: string, port: int}\n";
constexpr char kHttp[] = "required: {host: string, port: int}\noptional: {path: string}\n";

constexpr char kService[] = R"(name: webapp
requires:
  db: redis
provides:
  website: http
config:
  port: {type: int, default: 8080}
  title: {type: string}
actions:
  backup:
    params:
      path: {type: string, required: true}
events:
  app.ready: Fired by install.
  fail: Runs a script that changes things, then fails.
  hang: Runs a script that never ends.
  flood: Runs a script that writes 50 MiB.
  garbage: Speaks garbage on the hook socket.
  context: Reads the JSON context.
  schema: Checks the JSON context against its schema.
  environment: Reports its environment.
  leak: Leaves its socket path behind.
  state: Appends to a file in its state dir.
  refused: Asks for things the agent refuses.
  withdraw: Withdraws a published key.
  withdraw-bad: Withdraws a key the interface does not have.
handlers:
  - name: install
    on: [install]
    action:
      kind: exec
      command: [./bin/install.sh, "{{config.port}}"]
  - name: ready
    on: [app.ready]
    action: {kind: builtin, steps: [{set: fired}]}
  - name: publish
    on: [website.joined]
    action: {kind: exec, command: [./bin/publish.sh]}
  - name: withdraw
    on: [withdraw]
    action: {kind: exec, command: [sh, -c, 'parley-hook relation unset website host']}
  - name: withdraw-bad
    on: [withdraw-bad]
    action: {kind: exec, command: [sh, -c, 'parley-hook relation unset website nonsense']}
  - name: connect
    on: [db.joined]
    action: {kind: exec, command: [./bin/connect.sh]}
  - name: follow
    on: [db.joined]
    action: {kind: exec, command: [./bin/follow.sh]}
  - name: backup
    on: [action.backup]
    action: {kind: exec, command: [sh, -c, 'parley-hook action output path "$1"', sh, "{{event.path}}"]}
  - name: fail
    on: [fail]
    action: {kind: exec, command: [./bin/fail.sh]}
  - name: hang
    on: [hang]
    timeout: 1s
    action: {kind: exec, command: [./bin/hang.sh]}
  - name: flood
    on: [flood]
    action: {kind: exec, command: [python3, bin/flood.py]}
  - name: garbage
    on: [garbage]
    action: {kind: exec, command: [python3, bin/garbage.py]}
  - name: context
    on: [context]
    action: {kind: exec, command: [python3, bin/context.py]}
  - name: schema
    on: [schema, db.changed]
    action: {kind: exec, command: [python3, bin/check_context.py, context-file.schema.json]}
  - name: environment
    on: [environment]
    action:
      kind: exec
      command: [python3, bin/environment.py]
      env: {APP_PORT: "{{config.port}}"}
  - name: refused
    on: [refused]
    action: {kind: exec, command: [./bin/refused.sh]}
  - name: leak
    on: [leak]
    action: {kind: exec, command: [sh, -c, 'parley-hook fact set socket "$PARLEY_HOOK_SOCKET"']}
  - name: state
    on: [state]
    action: {kind: exec, command: [./bin/state.sh]}
)";

constexpr char kInstall[] = R"sh(#!/bin/sh
set -e
parley-hook fact set installed yes
parley-hook fact set port "$1"
parley-hook status set maintenance "installing on $1"
parley-hook timer set rotate 30
parley-hook log "hello from install"
parley-hook event fire app.ready
test "$(parley-hook fact get installed)" = yes
echo "some output"
)sh";

constexpr char kPublish[] = R"sh(#!/bin/sh
set -e
parley-hook relation set website host 10.0.0.5
parley-hook relation set website port "$(parley-hook config get port)"
parley-hook fact set relations "$(parley-hook relation list)"
parley-hook status set active serving
)sh";

constexpr char kConnect[] = R"sh(#!/bin/sh
set -e
parley-hook fact set redis "$(parley-hook relation get db - host):$(parley-hook relation get db redis/0 port)"
parley-hook fact set redis.all "$(parley-hook relation get db)"
)sh";

// Waits for a live peer without failing: retry-later, then exit 0.
constexpr char kFollow[] = R"sh(#!/bin/sh
set -e
host=$(parley-hook relation get db - host)
if [ "$host" = dead ]; then
  parley-hook status set waiting "waiting for a live redis"
  parley-hook retry-later 30s
  exit 0
fi
parley-hook fact set following "$host"
)sh";

constexpr char kFail[] = R"sh(#!/bin/sh
parley-hook fact set half-done yes
parley-hook relation set website port 1234
parley-hook status set blocked "about to fail"
echo "boom: the disk is full" >&2
exit 3
)sh";

// A child in the background keeps the pipes open: the whole process group must go.
constexpr char kHang[] = R"sh(#!/bin/sh
parley-hook fact set hanging yes
sleep 30 &
echo $! > background.pid
sleep 30
)sh";

constexpr char kFlood[] = R"sh(import sys
chunk = b"x" * (1 << 20)
for _ in range(50):
    sys.stdout.buffer.write(chunk)
sys.stdout.buffer.write(b"\nthe end of stdout\n")
sys.stdout.flush()
sys.stderr.write("flooded\n")
sys.exit(1)
)sh";

constexpr char kGarbage[] = R"sh(import os, socket, subprocess
def ask(data):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(os.environ["PARLEY_HOOK_SOCKET"])
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        reply += b
    return reply.decode("utf-8", "replace")
replies = [ask(b"\xff\x00garbage\n"), ask(b"4:fact,4:fold,"), ask(b"999999999:x,"), ask(b"")]
# A client that connects and goes away without a word.
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["PARLEY_HOOK_SOCKET"])
s.close()
subprocess.run(["parley-hook", "fact", "set", "replies", "~~".join(replies)], check=True)
)sh";

constexpr char kContext[] = R"sh(import json, os, subprocess
with open(os.environ["PARLEY_CONTEXT"]) as f:
    c = json.load(f)
rel = [r for r in c["relations"] if r["endpoint"] == "db"][0]
values = [c["unit"], c["service"], c["handler"], c["event"]["name"], c["config"]["port"],
          c["facts"]["installed"], rel["id"], rel["remote_unit_data"]["redis/0"]["host"],
          c["event"]["params"].get("mode", ""), rel["interface"], rel["remote_service"],
          "+".join(rel["remote_units"])]
subprocess.run(["parley-hook", "fact", "set", "seen", ",".join(values)], check=True)
)sh";

// Validates the context file against docs/context-file.schema.json (copied beside the
// definition); the handler fails with the validator's message when it does not follow it.
constexpr char kCheckContext[] = R"sh(import json, os, subprocess, sys
try:
    import jsonschema
except ImportError:
    sys.exit("python3 cannot import jsonschema: install the Debian package python3-jsonschema")
with open(sys.argv[1]) as f:
    schema = json.load(f)
with open(os.environ["PARLEY_CONTEXT"]) as f:
    context = json.load(f)
errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(context), key=str)
if errors:
    sys.exit("; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors))
subprocess.run(["parley-hook", "fact", "set", "schema." + os.environ["PARLEY_EVENT"],
                str(context["version"])], check=True)
)sh";

constexpr char kState[] = R"sh(#!/bin/sh
set -e
echo run >> "$PARLEY_STATE_DIR/runs"
parley-hook fact set state "$PARLEY_STATE_DIR $(stat -c %a "$PARLEY_STATE_DIR") $(wc -l < "$PARLEY_STATE_DIR/runs")"
)sh";

constexpr char kEnvironment[] = R"sh(import json, os, subprocess
subprocess.run(["parley-hook", "fact", "set", "env", json.dumps(dict(os.environ))], check=True)
)sh";

// Each refusal exits 1 with the reason; the script goes on and the run commits.
constexpr char kRefused[] = R"sh(#!/bin/sh
try() { "$@" 2>"$HOME/err"; echo "$?: $(cat "$HOME/err")"; }
{
  try parley-hook relation set website port eighty
  try parley-hook fact set db.ready
  try parley-hook fact get nothing
  try parley-hook status set sleepy zzz
  try parley-hook relation get nowhere
  try parley-hook config get title
  try parley-hook timer set t soon
  try parley-hook retry-later soon
} > "$HOME/out"
parley-hook fact set refusals "$(cat "$HOME/out")"
)sh";

class ExecBackendTest : public testing::BackendTest {
 protected:
  void SetUp() override {
    Write("shared/redis.yaml", kRedis);
    Write("shared/http.yaml", kHttp);
    Write("svc/service.yaml", kService);
    Script("svc/bin/install.sh", kInstall);
    Script("svc/bin/publish.sh", kPublish);
    Script("svc/bin/connect.sh", kConnect);
    Script("svc/bin/follow.sh", kFollow);
    Script("svc/bin/fail.sh", kFail);
    Script("svc/bin/hang.sh", kHang);
    Script("svc/bin/refused.sh", kRefused);
    Script("svc/bin/state.sh", kState);
    Write("svc/bin/flood.py", kFlood);
    Write("svc/bin/garbage.py", kGarbage);
    Write("svc/bin/context.py", kContext);
    Write("svc/bin/check_context.py", kCheckContext);
    std::filesystem::copy_file(PARLEY_CONTEXT_SCHEMA, dir_.Sub("svc/context-file.schema.json"));
    Write("svc/bin/environment.py", kEnvironment);
    BackendOptions options;
    options.process.extra_path = {std::filesystem::path(kHook).parent_path().string()};
    options.process.state_root = dir_.Sub("state");
    ASSERT_NO_FATAL_FAILURE(Start(options));
  }
};

TEST_F(ExecBackendTest, HookToolsActOnTheRun) {
  engine::RunResult r = Run(Named("install"));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(engine_->FactValue("installed"), "yes");
  EXPECT_EQ(engine_->FactValue("port"), "8080");  // {{config.port}} from the default
  EXPECT_EQ(engine_->workload_status().state(), v1::WORKLOAD_STATE_MAINTENANCE);
  EXPECT_EQ(engine_->workload_status().message(), "installing on 8080");
  EXPECT_TRUE(engine_->timers().contains("rotate"));
  EXPECT_TRUE(engine_->IsSet("fired"));  // the event the script fired ran its handler
  EXPECT_THAT(logs_, Contains("install|log|hello from install"));
  EXPECT_THAT(logs_, Contains("install|stdout|some output\n"));

  // Relation data: written by the script, sent to the peer once the run commits.
  r = Run(Joined("website", "website:1", "lb/0"));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(LocalBag("website:1"),
            (std::map<std::string, std::string>{{"host", "10.0.0.5"}, {"port", "8080"}}));
  ASSERT_TRUE(r.trace);
  EXPECT_EQ(r.trace->messages_size(), 1);
  EXPECT_EQ(engine_->FactValue("relations"),
            R"([{"id":"website:1","endpoint":"website","remote_service":"lb",)"
            R"("remote_units":["lb/0"]}])");
  EXPECT_EQ(engine_->workload_status().state(), v1::WORKLOAD_STATE_ACTIVE);

  // A key published can be withdrawn: the peer is sent its deletion.
  r = Run(Named("withdraw"));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(LocalBag("website:1"), (std::map<std::string, std::string>{{"port", "8080"}}));
  ASSERT_EQ(r.trace->messages_size(), 1);
  ASSERT_EQ(r.trace->messages(0).event().unit_changes_size(), 1);
  EXPECT_EQ(r.trace->messages(0).event().unit_changes(0).key(), "host");
  EXPECT_TRUE(r.trace->messages(0).event().unit_changes(0).deleted());
  // A key the interface does not let this side publish is refused, naming it.
  r = Run(Named("withdraw-bad"));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kFailed);
  EXPECT_THAT(FailureMessage(), HasSubstr("side publishes no key 'nonsense'"));
  ASSERT_TRUE(engine_->Resolve(engine::ResolveMode::kSkip, 0, "test").ok());

  // Reading the remote unit's data.
  r = Run(Joined("db", "db:1", "redis/0", {{"host", "10.0.0.9"}, {"port", "6379"}}));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(engine_->FactValue("redis"), "10.0.0.9:6379");
  EXPECT_EQ(engine_->FactValue("redis.all"), R"({"host":"10.0.0.9","port":"6379"})");

  // Action output, with a parameter passed as an argument (never through a shell string).
  r = Run(Named("action.backup", {{"path", "/tmp/x; rm -rf /"}}));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  auto traces = engine_->Traces(1);
  ASSERT_TRUE(traces.ok()) << traces.status();
  ASSERT_EQ(traces->size(), 1u);
  EXPECT_EQ(traces->back().outputs().at("path"), "/tmp/x; rm -rf /");
  EXPECT_FALSE(engine_->FactValue("action.output.path").has_value());
}

TEST_F(ExecBackendTest, AFailingScriptLeavesNothing) {
  ASSERT_EQ(Run(Named("install")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  ASSERT_EQ(Run(Joined("website", "website:1", "lb/0")).outcome, engine::RunOutcome::kCommitted);
  const v1::WorkloadStatus before = engine_->workload_status();

  engine::RunResult r = Run(Named("fail"));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_EQ(engine_->failure()->handler(), "fail");
  EXPECT_THAT(FailureMessage(),
              AllOf(HasSubstr("handler 'fail': ./bin/fail.sh exited with status 3"),
                    HasSubstr("boom: the disk is full")));
  EXPECT_FALSE(engine_->IsSet("half-done"));
  EXPECT_EQ(LocalBag("website:1").at("port"), "8080");
  EXPECT_EQ(engine_->workload_status().SerializeAsString(), before.SerializeAsString());
  EXPECT_EQ(engine_->Outbox().value().size(), 1u);  // only the publish of the earlier run
}

TEST_F(ExecBackendTest, RefusedRequestsExitOneWithTheReason) {
  ASSERT_EQ(Run(Joined("website", "website:1", "lb/0")).outcome, engine::RunOutcome::kCommitted)
      << FailureMessage();
  ASSERT_EQ(Run(Named("refused")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  std::vector<std::string> lines = absl::StrSplit(engine_->FactValue("refusals").value(), '\n');
  ASSERT_EQ(lines.size(), 8u) << engine_->FactValue("refusals").value();
  EXPECT_THAT(lines[0], StartsWith("1: parley-hook: interface 'http': key 'port': expected an int, "
                                   "got 'eighty'"));
  EXPECT_THAT(lines[1], StartsWith("1: parley-hook: "));
  EXPECT_THAT(lines[1], HasSubstr("db.ready"));
  EXPECT_EQ(lines[2], "1: parley-hook: fact 'nothing' is not set");
  EXPECT_THAT(lines[3], StartsWith("1: parley-hook: unknown state 'sleepy'"));
  EXPECT_EQ(lines[4],
            "1: parley-hook: 'nowhere' is neither an endpoint nor the id of a current relation");
  EXPECT_EQ(lines[5], "1: parley-hook: config option 'title' has no value and no default");
  EXPECT_EQ(lines[6], "1: parley-hook: timer set: expected a number of seconds, got 'soon'");
  EXPECT_EQ(lines[7],
            "1: parley-hook: retry-later: expected a positive duration such as 30 (seconds), 30s, "
            "5m or 1h30m, got 'soon'");
  EXPECT_FALSE(engine_->IsSet("db.ready"));
  EXPECT_EQ(LocalBag("website:1").at("port"), "8080");  // from publish, not "eighty"
}

TEST_F(ExecBackendTest, AHangingScriptIsKilledAtItsTimeout) {
  const absl::Time start = absl::Now();
  engine::RunResult r = Run(Named("hang"));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  EXPECT_THAT(FailureMessage(),
              HasSubstr("handler 'hang': ./bin/hang.sh timed out after 1s and was killed"));
  EXPECT_GE(took, absl::Seconds(1));
  EXPECT_LT(took, absl::Seconds(5)) << "the background sleep held the run";
  EXPECT_FALSE(engine_->IsSet("hanging"));

  // The background child was killed too (its process group was).
  std::ifstream pid_file(dir_.Sub("svc/background.pid"));
  int pid = 0;
  ASSERT_TRUE(pid_file >> pid);
  EXPECT_TRUE(Gone(pid, absl::Now() + absl::Seconds(2))) << "process " << pid << " survived";
}

TEST_F(ExecBackendTest, AnOutputFloodIsBounded) {
  const absl::Time start = absl::Now();
  engine::RunResult r = Run(Named("flood"));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  EXPECT_THAT(FailureMessage(),
              AllOf(HasSubstr("exited with status 1"), HasSubstr("flooded"),
                    HasSubstr("stdout truncated (52428819 bytes, the last 65536 kept)")));
  EXPECT_LT(took, absl::Seconds(20));
  ASSERT_THAT(logs_, Contains(StartsWith("flood|stdout|[truncated: 52363283 of 52428819 bytes")));
  for (const std::string& l : logs_) EXPECT_LT(l.size(), 70000u);
}

TEST_F(ExecBackendTest, GarbageOnTheSocketGetsAnErrorReply) {
  engine::RunResult r = Run(Named("garbage"));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  std::vector<std::string> replies = absl::StrSplit(engine_->FactValue("replies").value(), "~~");
  ASSERT_EQ(replies.size(), 4u);
  EXPECT_THAT(replies[0], StartsWith("1malformed hook request at byte 0"));
  EXPECT_THAT(replies[1], StartsWith("1unknown request 'fact fold'"));
  EXPECT_THAT(replies[2], StartsWith("1malformed hook request"));
  EXPECT_EQ(replies[3], "1malformed hook request at byte 0: empty request");
}

TEST_F(ExecBackendTest, HookToolsOutsideARunExitTwo) {
  auto [out, status] = Shell(absl::StrCat("env -i ", kHook, " fact set x"));
  EXPECT_EQ(status, 2);
  EXPECT_EQ(out, "parley-hook: not inside a run\n");

  // The socket of a finished run is gone.
  ASSERT_EQ(Run(Named("leak")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  const std::string socket = engine_->FactValue("socket").value();
  EXPECT_FALSE(std::filesystem::exists(socket));
  std::tie(out, status) =
      Shell(absl::StrCat("env -i PARLEY_HOOK_SOCKET=", socket, " ", kHook, " fact set x"));
  EXPECT_EQ(status, 2);
  EXPECT_THAT(out, StartsWith("parley-hook: not inside a run"));

  std::tie(out, status) = Shell(absl::StrCat(kHook, " fact frobnicate"));
  EXPECT_EQ(status, 64);
  EXPECT_THAT(out, HasSubstr("usage: parley-hook"));
}

TEST_F(ExecBackendTest, TheContextFileHoldsConfigFactsAndRelationData) {
  ASSERT_EQ(Run(Named("install")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  v1::Event joined = Joined("db", "db:1", "redis/0", {{"host", "10.0.0.9"}, {"port", "6379"}});
  joined.mutable_relation()->set_interface("redis");
  ASSERT_EQ(Run(joined).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  engine::RunResult r = Run(Named("context", {{"mode", "full"}}));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(engine_->FactValue("seen"),
            "web/0,web,context,context,8080,yes,db:1,10.0.0.9,full,redis,redis,redis/0");
}

// What the backend writes follows docs/context-file.schema.json, the schema the docs' table is
// checked against (tests/docs/context_schema_test.py): for an event with parameters and for a
// relation event, with relations whose bags are full and empty.
TEST_F(ExecBackendTest, TheContextFileFollowsItsSchema) {
  ASSERT_EQ(Run(Named("install")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  ASSERT_EQ(Run(Joined("website", "website:1", "lb/0")).outcome, engine::RunOutcome::kCommitted)
      << FailureMessage();
  v1::Event joined = Joined("db", "db:1", "redis/0", {{"host", "10.0.0.9"}, {"port", "6379"}});
  joined.mutable_relation()->set_interface("redis");
  ASSERT_EQ(Run(joined).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  ASSERT_EQ(Run(Named("schema", {{"mode", "full"}})).outcome, engine::RunOutcome::kCommitted)
      << FailureMessage();
  EXPECT_EQ(engine_->FactValue("schema.schema"), "1");
  v1::Event changed = Joined("db", "db:1", "redis/0", {{"port", "6380"}});
  changed.set_name("db.changed");
  changed.mutable_relation()->set_kind(v1::RELATION_EVENT_KIND_CHANGED);
  ASSERT_EQ(Run(changed).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(engine_->FactValue("schema.db.changed"), "1");
}

// parley-hook retry-later (docs/engine.md, "Retrying later"): the handler waits for a live peer
// without failing; the run commits, and after the delay the handler runs again on the newest data.
TEST_F(ExecBackendTest, RetryLaterThroughTheHook) {
  v1::Event joined = Joined("db", "db:1", "redis/0", {{"host", "dead"}, {"port", "6379"}});
  ASSERT_EQ(Run(joined).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_FALSE(engine_->failure().has_value());
  EXPECT_EQ(engine_->workload_status().message(), "waiting for a live redis");
  EXPECT_FALSE(engine_->IsSet("following"));
  const std::string timer = "retry-later follow db.joined db:1 redis/0";
  ASSERT_TRUE(engine_->timers().contains(timer));
  EXPECT_EQ(engine_->timers().at(timer), clock_.Now() + absl::Seconds(30));
  v1::Event changed = Joined("db", "db:1", "redis/0", {{"host", "10.0.0.9"}});
  changed.set_name("db.changed");
  changed.mutable_relation()->set_kind(v1::RELATION_EVENT_KIND_CHANGED);
  ASSERT_EQ(Run(changed).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  clock_.Advance(absl::Seconds(30));
  ASSERT_TRUE(engine_->EnqueueTimer(timer).ok());
  auto r = engine_->RunOnce();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(r->trace->trigger().retry_handler(), "follow");
  EXPECT_EQ(engine_->FactValue("following"), "10.0.0.9");
  EXPECT_TRUE(engine_->timers().empty());
}

TEST_F(ExecBackendTest, TheEnvironmentIsClean) {
  setenv("PARLEY_TEST_SECRET", "leaked", 1);
  engine::RunResult r = Run(Named("environment"));
  unsetenv("PARLEY_TEST_SECRET");
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  const std::string env = engine_->FactValue("env").value();
  EXPECT_THAT(env, Not(HasSubstr("PARLEY_TEST_SECRET")));
  EXPECT_THAT(env, HasSubstr(R"("APP_PORT": "8080")"));
  EXPECT_THAT(env, HasSubstr(R"("PARLEY_UNIT": "web/0")"));
  EXPECT_THAT(env, HasSubstr(R"("PARLEY_SERVICE": "web")"));
  EXPECT_THAT(env, HasSubstr(R"("PARLEY_EVENT": "environment")"));
  EXPECT_THAT(env, HasSubstr(R"("PARLEY_HANDLER": "environment")"));
  EXPECT_THAT(env, HasSubstr("\"PARLEY_HOOK_SOCKET\": \""));
  EXPECT_THAT(env, HasSubstr("\"PARLEY_CONTEXT\": \""));
  EXPECT_THAT(env,
              HasSubstr(absl::StrCat("\"PARLEY_STATE_DIR\": \"", dir_.Sub("state/web-0"), "\"")));
  EXPECT_THAT(env, HasSubstr(absl::StrCat("\"PATH\": \"",
                                          std::filesystem::path(kHook).parent_path().string(),
                                          ":/usr/local/bin:/usr/bin:/bin\"")));
}

TEST_F(ExecBackendTest, EachUnitHasAPersistentStateDir) {
  ASSERT_EQ(Run(Named("state")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(engine_->FactValue("state"), absl::StrCat(dir_.Sub("state/web-0"), " 700 1"));
  ASSERT_EQ(Run(Named("state")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(engine_->FactValue("state"), absl::StrCat(dir_.Sub("state/web-0"), " 700 2"));
}

// Who programs run as (docs/service-definitions.md, "The user programs run as"). The suite runs
// as root; the `parley` user is made by tools/setup.
class ExecUserTest : public testing::BackendTest {
 protected:
  // The definition, with `user_line` (e.g. "user: parley\n", or "" for none) as its second line.
  void Define(const std::string& user_line) {
    Write("shared/.keep", "");
    Write("svc/service.yaml", absl::StrCat("name: webapp\n", user_line, R"(events:
  whoami: Reports who it runs as.
handlers:
  - name: whoami
    on: [whoami]
    action: {kind: exec, command: [./bin/whoami.sh]}
)"));
    Script("svc/bin/whoami.sh", R"sh(#!/bin/sh
set -e
touch "$HOME/writable" "$PARLEY_STATE_DIR/writable"
cat "$PARLEY_CONTEXT" > /dev/null
parley-hook fact set id "$(id -u) $(id -g) $(id -G)"
parley-hook fact set names "$USER $LOGNAME"
)sh");
  }

  BackendOptions Options(const std::string& default_user = "") {
    BackendOptions options;
    options.process.extra_path = {std::filesystem::path(kHook).parent_path().string()};
    options.process.state_root = dir_.Sub("state");
    options.process.default_user = default_user;
    return options;
  }

  // "uid gid groups..." of `name`, as id(1) prints them.
  static std::string IdOf(const std::string& name) {
    auto [out, status] =
        Shell(absl::StrCat("id -u ", name, " && id -g ", name, " && id -G ", name));
    EXPECT_EQ(status, 0) << out;
    std::vector<std::string> lines = absl::StrSplit(absl::StripTrailingAsciiWhitespace(out), '\n');
    return absl::StrJoin(lines, " ");
  }

  static void RequireParleyUser() {
    if (getpwnam("parley") == nullptr) {
      GTEST_FAIL() << "no user 'parley' on this machine: tools/setup adds it";
    }
  }
};

TEST_F(ExecUserTest, ProgramsRunAsTheUserTheDefinitionNames) {
  ASSERT_NO_FATAL_FAILURE(RequireParleyUser());
  Define("user: parley\n");
  ASSERT_NO_FATAL_FAILURE(Start(Options()));
  engine::RunResult r = Run(Named("whoami"));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(engine_->FactValue("id"), IdOf("parley"));
  EXPECT_EQ(engine_->FactValue("names"), "parley parley");
  // The state dir is the user's, mode 0700, and so is what it wrote there.
  const passwd* pw = getpwnam("parley");
  struct stat st;
  ASSERT_EQ(stat(dir_.Sub("state/web-0").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, pw->pw_uid);
  EXPECT_EQ(st.st_gid, pw->pw_gid);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(stat(dir_.Sub("state/web-0/writable").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, pw->pw_uid);
  ASSERT_EQ(stat(dir_.Sub("state").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
}

TEST_F(ExecUserTest, WithoutUserTheAgentsDefaultUserIsUsed) {
  ASSERT_NO_FATAL_FAILURE(RequireParleyUser());
  Define("");
  ASSERT_NO_FATAL_FAILURE(Start(Options("parley")));
  ASSERT_EQ(Run(Named("whoami")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(engine_->FactValue("id"), IdOf("parley"));
}

TEST_F(ExecUserTest, RootOnlyWhenAskedFor) {
  ASSERT_NO_FATAL_FAILURE(RequireParleyUser());
  Define("user: root\n");
  ASSERT_NO_FATAL_FAILURE(Start(Options("parley")));
  ASSERT_EQ(Run(Named("whoami")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(engine_->FactValue("id"), IdOf("root"));
}

// A state dir another user owned (the definition's user changed) is given to the new one whole.
TEST_F(ExecUserTest, AStateDirOfAnotherUserIsGivenToTheUnitsUser) {
  ASSERT_NO_FATAL_FAILURE(RequireParleyUser());
  Define("user: parley\n");
  Write("state/web-0/data/old", "kept\n");
  chmod(dir_.Sub("state/web-0").c_str(), 0755);
  ASSERT_NO_FATAL_FAILURE(Start(Options()));
  ASSERT_EQ(Run(Named("whoami")).outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  const passwd* pw = getpwnam("parley");
  struct stat st;
  ASSERT_EQ(stat(dir_.Sub("state/web-0/data/old").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, pw->pw_uid);
  ASSERT_EQ(stat(dir_.Sub("state/web-0").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
}

TEST_F(ExecUserTest, AnUnknownUserIsAnErrorNamingFileLineAndUser) {
  Define("user: no-such-user\n");
  auto def = LoadServiceDefinition(dir_.Sub("svc"), dir_.Sub("shared"));
  ASSERT_TRUE(def.ok()) << def.status();
  auto backends = MakeBackends(Options());
  auto spec = BuildSpec(*def, "web/0", *backends);
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(spec.status().message(),
              HasSubstr(absl::StrCat(dir_.Sub("svc/service.yaml"),
                                     ":2: user: no user 'no-such-user' on this machine")));
}

TEST_F(ExecUserTest, AMissingDefaultUserIsAnError) {
  Define("");
  auto def = LoadServiceDefinition(dir_.Sub("svc"), dir_.Sub("shared"));
  ASSERT_TRUE(def.ok()) << def.status();
  auto backends = MakeBackends(Options("no-such-user"));
  auto spec = BuildSpec(*def, "web/0", *backends);
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(spec.status().message(),
              HasSubstr("the default user 'no-such-user' for programs does not exist"));
}

TEST_F(ExecUserTest, ANameThatIsNoUserNameIsRefusedWhenLoading) {
  Define("user: 'root; rm'\n");
  auto def = LoadServiceDefinition(dir_.Sub("svc"), dir_.Sub("shared"));
  ASSERT_FALSE(def.ok());
  EXPECT_THAT(def.status().message(),
              HasSubstr(absl::StrCat(dir_.Sub("svc/service.yaml"),
                                     ":2: user: 'root; rm' is not a user name")));
}

// An agent that is not root runs programs as itself and cannot be asked for another user. The
// agent is a child of the test that gives up root (to nobody) before it builds the spec.
TEST_F(ExecUserTest, AnAgentNotRunningAsRootCannotSwitch) {
  ASSERT_NO_FATAL_FAILURE(RequireParleyUser());
  Define("user: parley\n");
  auto def = LoadServiceDefinition(dir_.Sub("svc"), dir_.Sub("shared"));
  ASSERT_TRUE(def.ok()) << def.status();
  const passwd* nobody = getpwnam("nobody");
  ASSERT_NE(nobody, nullptr);
  const uid_t nobody_uid = nobody->pw_uid;
  const gid_t nobody_gid = nobody->pw_gid;
  auto resolve_as_nobody = [&](const ServiceDefinition& d, const std::string& default_user) {
    int p[2];
    EXPECT_EQ(pipe(p), 0);
    const pid_t pid = fork();
    if (pid == 0) {
      close(p[0]);
      std::string said;
      if (setgroups(0, nullptr) != 0 || setresgid(nobody_gid, nobody_gid, nobody_gid) != 0 ||
          setresuid(nobody_uid, nobody_uid, nobody_uid) != 0) {
        said = "cannot become nobody";
      } else {
        auto backends = MakeBackends(Options(default_user));
        auto spec = BuildSpec(d, "web/0", *backends);
        said = spec.ok() ? "ok" : std::string(spec.status().message());
      }
      (void)!write(p[1], said.data(), said.size());
      _exit(0);
    }
    close(p[1]);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof(buf))) > 0) out.append(buf, n);
    close(p[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return out;
  };
  EXPECT_THAT(
      resolve_as_nobody(*def, "parley"),
      HasSubstr(absl::StrCat(
          dir_.Sub("svc/service.yaml"), ":2: user: the agent runs as 'nobody' (uid ", nobody_uid,
          "), not root, and cannot run programs as 'parley': run parleyd as root, "
          "or drop user: to run them as 'nobody'")));
  ServiceDefinition no_user = *def;
  no_user.user.clear();
  EXPECT_EQ(resolve_as_nobody(no_user, "parley"), "ok");
}

TEST_F(ExecUserTest, AStateDirTheUserCannotReachIsAClearError) {
  ASSERT_NO_FATAL_FAILURE(RequireParleyUser());
  Define("user: parley\n");
  BackendOptions options = Options();
  options.process.state_root = dir_.Sub("private/state");
  std::filesystem::create_directories(dir_.Sub("private"));
  chmod(dir_.Sub("private").c_str(), 0700);
  ASSERT_NO_FATAL_FAILURE(Start(options));
  ASSERT_EQ(Run(Named("whoami")).outcome, engine::RunOutcome::kFailed);
  EXPECT_THAT(FailureMessage(),
              HasSubstr(absl::StrCat("handler 'whoami': user 'parley' cannot reach the state dir ",
                                     dir_.Sub("private/state/web-0"), ": ", dir_.Sub("private"),
                                     " is mode 0700, owned by root:root")));
}

// A directory on the way that only an ACL entry opens to the user (what tools/setup does for
// a clone under /root: setfacl -m u:parley:x) is reachable: the mode bits alone say it is not.
TEST_F(ExecUserTest, AStateDirReachableThroughAnAclEntryIsReached) {
  ASSERT_NO_FATAL_FAILURE(RequireParleyUser());
  ASSERT_EQ(std::system("command -v setfacl >/dev/null"), 0)
      << "setfacl is missing: install the Debian package acl (tools/setup does)";
  Define("user: parley\n");
  BackendOptions options = Options();
  options.process.state_root = dir_.Sub("private/state");
  std::filesystem::create_directories(dir_.Sub("private"));
  chmod(dir_.Sub("private").c_str(), 0700);
  ASSERT_EQ(std::system(absl::StrCat("setfacl -m u:parley:x ", dir_.Sub("private")).c_str()), 0);
  ASSERT_NO_FATAL_FAILURE(Start(options));
  const engine::RunOutcome outcome = Run(Named("whoami")).outcome;
  EXPECT_EQ(outcome, engine::RunOutcome::kCommitted) << FailureMessage();
}

}  // namespace
}  // namespace parley::services
