// The parley CLI end to end: real `parley` and `parleyd` processes, a model of two services with
// builtin actions (no external software), every command against what the agents report.

#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "parley/v1/agent.grpc.pb.h"
#include "parley/v1/model.pb.h"
#include "tests/testing/child_process.h"
#include "tests/testing/etcd_process.h"
#include "tests/testing/run_command.h"
#include "tests/testing/temp_dir.h"

namespace parley {
namespace {

using testing::CommandResult;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::RunCommand;

// Running, as opposed to gone or a zombie waiting for whoever inherited it to reap it.
bool Running(int64_t pid) {
  if (kill(static_cast<pid_t>(pid), 0) != 0) return false;
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  std::getline(stat, line);
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z';
}

void Write(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}

// `web` publishes host/port on an http relation and has an action; `lb` reports the port it got.
constexpr char kWeb[] = R"(name: web
provides:
  website: http
peers:
  cluster: web-peers
config:
  port: {type: int, default: 8000}
  greeting: {type: string, default: hello}
actions:
  hello:
    params:
      who: {type: string, required: true}
handlers:
  - name: remember
    on: [install]
    action:
      kind: builtin
      steps:
        - set: "installed=yes"
  - name: publish
    when: [website.joined]
    on: [config.changed, website.joined, start]
    action:
      kind: builtin
      steps:
        - relation-set: {endpoint: website, key: host, value: "127.0.0.1"}
        - relation-set: {endpoint: website, key: port, value: "{{config.port}}"}
        - status: {state: active, message: "{{config.greeting}} on {{config.port}}"}
  - name: hello
    on: [action.hello]
    action:
      kind: builtin
      steps:
        - output: "reply=hi {{event.who}}"
)";

constexpr char kPeers[] = "name: web-peers\nrequired: {}\n";

constexpr char kLb[] = R"(name: lb
requires:
  backends: http
handlers:
  - name: wait
    when_not: [backends.ready]
    action:
      kind: builtin
      steps:
        - status: {state: waiting, message: "no backends"}
  - name: ready
    when: [backends.ready]
    action:
      kind: builtin
      steps:
        - status: {state: active, message: "port {{fact.backends.remote.port}}"}
)";

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Write(dir_.Sub("web/service.yaml"), kWeb);
    Write(dir_.Sub("web/interfaces/web-peers.yaml"), kPeers);
    Write(dir_.Sub("lb/service.yaml"), kLb);
    WriteModel(2, "9000");
  }

  void TearDown() override {
    CommandResult r = Parley({"down", "--purge"});
    // Never leave a daemon behind, whatever happened.
    if (r.code != 0 && status_.host().pid() > 0) {
      kill(static_cast<pid_t>(status_.host().pid()), SIGKILL);
    }
  }

  void WriteModel(int web_units, const std::string& port, bool with_lb = true) {
    std::string model = absl::StrCat("interfaces: ", PARLEY_SOURCE_DIR,
                                     "/examples/interfaces\nservices:\n  web:\n"
                                     "    definition: web\n    units: ",
                                     web_units, "\n    config: {port: ", port, "}\n");
    if (with_lb) {
      absl::StrAppend(&model,
                      "  lb:\n    definition: lb\nrelations:\n  - [web:website, lb:backends]\n");
    }
    Write(dir_.Sub("model.yaml"), model);
  }

  CommandResult Parley(std::vector<std::string> args) {
    args.insert(args.begin(), PARLEY_BIN);
    return RunCommand(args, {{"PARLEY_MODEL_DIR", dir_.Sub(".parley")}});
  }

  // Runs a command that must succeed.
  std::string Ok(std::vector<std::string> args) {
    CommandResult r = Parley(args);
    EXPECT_EQ(r.code, 0) << absl::StrJoin(args, " ") << "\nstdout: " << r.out
                         << "\nstderr: " << r.err;
    return r.out;
  }

  v1::ModelStatus Status() {
    const std::string json = Ok({"status", "--json"});
    v1::ModelStatus st;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(json, &st).ok()) << json;
    status_ = st;
    return st;
  }

  const v1::AgentStatus* Unit(const v1::ModelStatus& st, const std::string& name) {
    for (const auto& u : st.units()) {
      if (u.agent() == name) return &u;
    }
    return nullptr;
  }

  // Units named in the lb's relation data.
  std::vector<std::string> Backends() {
    std::vector<std::string> units;
    for (absl::string_view line : absl::StrSplit(Ok({"relation-data", "lb/0", "backends"}), '\n')) {
      if (absl::StrContains(line, " port ")) {
        std::vector<std::string> cols = absl::StrSplit(line, ' ', absl::SkipEmpty());
        units.push_back(cols[0].substr(5));  // "unit:web/0"
      }
    }
    return units;
  }

  testing::TempDir dir_;
  v1::ModelStatus status_;
};

TEST_F(CliTest, UpConvergesAndStatusReportsEveryUnit) {
  CommandResult up = Parley({"up", dir_.Sub("model.yaml"), "--timeout", "60s"});
  ASSERT_EQ(up.code, 0) << up.err;
  EXPECT_THAT(up.err, HasSubstr("settled 3/3 units"));

  v1::ModelStatus st = Status();
  EXPECT_TRUE(st.host_up());
  ASSERT_EQ(st.units_size(), 3);
  for (const auto& u : st.units()) {
    EXPECT_EQ(u.agent_state(), v1::AGENT_STATE_IDLE) << u.agent();
    EXPECT_EQ(u.workload().state(), v1::WORKLOAD_STATE_ACTIVE) << u.agent();
  }
  EXPECT_EQ(Unit(st, "web/0")->workload().message(), "hello on 9000");
  EXPECT_EQ(Unit(st, "lb/0")->workload().message(), "port 9000");
  // The peer relation is implicit; the model's relation has a generated id.
  ASSERT_EQ(st.relations_size(), 2);
  EXPECT_EQ(st.relations(0).id(), "web:cluster#1");
  EXPECT_EQ(st.relations(1).id(), "web:website-lb:backends#2");
  EXPECT_THAT(Backends(), ::testing::ElementsAre("web/0", "web/1"));

  const std::string table = Ok({"status"});
  EXPECT_THAT(table,
              HasSubstr("web/1  active    -       idle   active  0      0       hello on 9000"));
  EXPECT_THAT(table, Not(HasSubstr("Links without a stream")));
  // Every unit knows its peers, and each link is up with nothing unacknowledged.
  for (const auto& u : st.units()) {
    EXPECT_GT(u.peers_size(), 0) << u.agent();
    for (const auto& p : u.peers()) {
      EXPECT_EQ(p.state(), v1::PEER_LINK_STATE_CONNECTED) << u.agent() << " -> " << p.agent();
      EXPECT_EQ(p.outbox_unacked(), 0u) << u.agent() << " -> " << p.agent();
    }
  }

  // Up again with the same model changes nothing.
  up = Parley({"up", dir_.Sub("model.yaml")});
  ASSERT_EQ(up.code, 0) << up.err;
  EXPECT_THAT(up.err, Not(HasSubstr("added")));
  EXPECT_EQ(Status().units_size(), 3);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// `up --dry-run` prints the plan and changes nothing: no model directory for a new model (no
// parleyd, no CA), and for a running one the same record, parleyd and units.
TEST_F(CliTest, UpDryRunPrintsThePlanAndChangesNothing) {
  CommandResult dry = Parley({"up", dir_.Sub("model.yaml"), "--dry-run"});
  ASSERT_EQ(dry.code, 0) << dry.err;
  EXPECT_THAT(dry.out, HasSubstr("add service web (definition "));
  EXPECT_THAT(dry.out, HasSubstr("configure web: port=9000\nadd units web/0, web/1\n"));
  EXPECT_THAT(dry.out, HasSubstr("relate web:website - lb:backends: web/0 - lb/0, web/1 - lb/0\n"));
  EXPECT_FALSE(std::filesystem::exists(dir_.Sub(".parley")));

  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml"), "--timeout", "60s"}).code, 0);
  const int64_t pid = Status().host().pid();
  const std::string record = ReadFile(dir_.Sub(".parley/model.json"));
  ASSERT_FALSE(record.empty());
  dry = Parley({"up", dir_.Sub("model.yaml"), "--dry-run"});
  ASSERT_EQ(dry.code, 0) << dry.err;
  EXPECT_EQ(dry.out, "nothing to change\n");

  WriteModel(3, "9200", /*with_lb=*/false);
  dry = Parley({"up", dir_.Sub("model.yaml"), "--dry-run"});
  ASSERT_EQ(dry.code, 0) << dry.err;
  EXPECT_EQ(dry.out,
            "unrelate web:website-lb:backends#2\n"
            "remove unit lb/0\n"
            "remove service lb\n"
            "configure web: port=9200\n"
            "add unit web/2\n"
            "relate web:cluster (peers): web/0 - web/2, web/1 - web/2\n");
  EXPECT_EQ(ReadFile(dir_.Sub(".parley/model.json")), record);
  v1::ModelStatus st = Status();
  EXPECT_EQ(st.host().pid(), pid);
  ASSERT_EQ(st.units_size(), 3);
  EXPECT_EQ(Unit(st, "web/2"), nullptr);
  EXPECT_NE(Unit(st, "lb/0"), nullptr);
  EXPECT_EQ(Unit(st, "web/0")->workload().message(), "hello on 9000");
  // What it refuses, it refuses as `up` would, before planning.
  CommandResult refused = Parley({"up", dir_.Sub("model.yaml"), "--dry-run", "--plaintext"});
  EXPECT_EQ(refused.code, 1);
  EXPECT_THAT(refused.err, HasSubstr("this model runs with TLS"));

  // Applied, the plan is what happens.
  CommandResult up = Parley({"up", dir_.Sub("model.yaml"), "--timeout", "60s"});
  ASSERT_EQ(up.code, 0) << up.err;
  EXPECT_THAT(up.err, HasSubstr("unrelated web:website-lb:backends#2"));
  EXPECT_THAT(up.err, HasSubstr("removed lb/0"));
  EXPECT_THAT(up.err, HasSubstr("added web/2"));
  st = Status();
  EXPECT_NE(Unit(st, "web/2"), nullptr);
  EXPECT_EQ(Unit(st, "lb/0"), nullptr);
}

// The command line of a running process, as it was started.
std::vector<std::string> CommandLine(int64_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/cmdline"), std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args = absl::StrSplit(raw, '\0', absl::SkipEmpty());
  return args;
}

// After a crash `parley start` brings the parleyd back without applying the model file again
// (`up` would reset the config changed with `parley config`); a parleyd restarted by hand (or by a
// supervisor) with its own command line is recognised as the model's.
TEST_F(CliTest, StartBringsACrashedParleydBackAsItWasAndAHandStartedOneIsRecognised) {
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml"), "--timeout", "60s"}).code, 0);
  Ok({"config", "web", "port=9100"});
  Ok({"wait", "--timeout", "60s"});
  v1::ModelStatus st = Status();
  ASSERT_EQ(Unit(st, "web/1")->workload().message(), "hello on 9100");
  const int64_t first = st.host().pid();
  const std::vector<std::string> argv = CommandLine(first);
  ASSERT_FALSE(argv.empty());

  kill(static_cast<pid_t>(first), SIGKILL);
  ASSERT_TRUE(testing::WaitFor([&] { return !Running(first); }, absl::Seconds(10)));
  st = Status();
  EXPECT_FALSE(st.host_up());
  EXPECT_THAT(Ok({"status"}), HasSubstr("NOT RUNNING: `parley start` brings it back"));

  CommandResult started = Parley({"start", "--timeout", "60s"});
  ASSERT_EQ(started.code, 0) << started.err;
  EXPECT_THAT(started.err, HasSubstr("started"));
  st = Status();
  EXPECT_TRUE(st.host_up());
  EXPECT_NE(st.host().pid(), first);
  // The config set with `parley config`, not the model file's 9000.
  EXPECT_EQ(Unit(st, "web/1")->workload().message(), "hello on 9100");
  EXPECT_EQ(Unit(st, "lb/0")->workload().message(), "port 9100");

  // Killed again and started by hand with the same command line: the model's parleyd.
  const int64_t second = st.host().pid();
  const std::vector<std::string> second_argv = CommandLine(second);
  ASSERT_FALSE(second_argv.empty());
  kill(static_cast<pid_t>(second), SIGKILL);
  ASSERT_TRUE(testing::WaitFor([&] { return !Running(second); }, absl::Seconds(10)));
  testing::ChildProcess by_hand(second_argv, dir_.Sub("by-hand.log"));
  ASSERT_GT(by_hand.pid(), 0);
  ASSERT_TRUE(testing::WaitFor([&] { return Status().host_up(); }, absl::Seconds(20)))
      << "a parleyd started by hand with the recorded command line is not recognised";
  st = Status();
  EXPECT_EQ(st.host().pid(), by_hand.pid());
  Ok({"wait", "--timeout", "60s"});
  EXPECT_EQ(Unit(Status(), "web/1")->workload().message(), "hello on 9100");
  // `start` finds it running and `down` stops it.
  started = Parley({"start", "--timeout", "60s"});
  ASSERT_EQ(started.code, 0) << started.err;
  EXPECT_THAT(started.err, HasSubstr("was running"));
  CommandResult down = Parley({"down"});
  EXPECT_EQ(down.code, 0) << down.err;
  EXPECT_EQ(by_hand.Wait(absl::Seconds(20)), 0) << "down did not stop the hand-started parleyd";
}

// A parleyd that does not answer in time (here paused with SIGSTOP for 3 s, as a loaded machine
// can hold it) is asked again with a longer deadline and a progress line, instead of failing.
TEST_F(CliTest, ASlowParleydIsAskedAgainWithAProgressLine) {
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml"), "--timeout", "60s"}).code, 0);
  const pid_t pid = static_cast<pid_t>(Status().host().pid());
  ASSERT_EQ(kill(pid, SIGSTOP), 0);
  std::thread resume([pid] {
    absl::SleepFor(absl::Seconds(3));  // the fault: longer than GetHost's 2 s deadline
    kill(pid, SIGCONT);
  });
  CommandResult r = Parley({"status"});
  resume.join();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("did not answer GetHost within 2s (load average "));
  EXPECT_THAT(r.err, HasSubstr("(attempt 2 of 3)"));
  EXPECT_THAT(r.out, Not(HasSubstr("NOT RUNNING")));
  EXPECT_THAT(r.out, HasSubstr("web/0"));
}

// A model directory given relative to the working directory works with TLS (the default): the
// CA and certificates are made by openssl running in the pki directory.
TEST_F(CliTest, RelativeModelDirectoryWithTls) {
  CommandResult up =
      RunCommand({"/bin/sh", "-c",
                  absl::StrCat("cd '", dir_.path(), "' && exec '", PARLEY_BIN,
                               "' --model-dir rel-model up model.yaml --timeout 60s")},
                 {});
  EXPECT_EQ(up.code, 0) << up.err;
  CommandResult down = RunCommand({"/bin/sh", "-c",
                                   absl::StrCat("cd '", dir_.path(), "' && exec '", PARLEY_BIN,
                                                "' --model-dir rel-model down --purge")},
                                  {});
  EXPECT_EQ(down.code, 0) << down.err;
}

TEST_F(CliTest, ConfigScaleAndActions) {
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);

  Ok({"config", "web", "port=9100", "greeting=howdy"});
  Ok({"wait", "--timeout", "60s"});
  v1::ModelStatus st = Status();
  EXPECT_EQ(Unit(st, "web/1")->workload().message(), "howdy on 9100");
  EXPECT_EQ(Unit(st, "lb/0")->workload().message(), "port 9100");
  EXPECT_THAT(Ok({"config", "web"}), HasSubstr("greeting  string  howdy  hello"));

  // A new unit gets the service's current config and joins every relation.
  Ok({"add-unit", "web"});
  Ok({"wait"});
  EXPECT_THAT(Backends(), ::testing::ElementsAre("web/0", "web/1", "web/2"));
  EXPECT_EQ(Unit(Status(), "web/2")->workload().message(), "howdy on 9100");

  CommandResult run = Parley({"run", "web/2", "hello", "who=bob"});
  EXPECT_EQ(run.code, 0) << run.err;
  EXPECT_EQ(run.out, "reply: hi bob\n");
  // The output is the run's own, not a fact: the same answer again is printed again.
  run = Parley({"run", "web/2", "hello", "who=bob"});
  EXPECT_EQ(run.out, "reply: hi bob\n") << run.err;

  // Removing a unit departs its relations: the lb forgets it.
  Ok({"remove-unit", "web/1"});
  Ok({"wait"});
  EXPECT_THAT(Backends(), ::testing::ElementsAre("web/0", "web/2"));
  EXPECT_EQ(Unit(Status(), "web/1"), nullptr);
  // Unit numbers are never reused.
  Ok({"add-unit", "web"});
  EXPECT_NE(Unit(Status(), "web/3"), nullptr);
}

TEST_F(CliTest, AServiceEmptiedAndScaledAgainRelatesAgain) {
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  // The web units break their relation when its last lb unit departs; a new lb unit relates
  // under a new id (the broken one is a tombstone on the web side).
  Ok({"remove-unit", "lb/0"});
  Ok({"add-unit", "lb"});
  Ok({"wait", "--timeout", "60s"});
  v1::ModelStatus st = Status();
  EXPECT_EQ(Unit(st, "lb/1")->workload().message(), "port 9000");
  EXPECT_EQ(st.relations(1).id(), "web:website-lb:backends#3");
  EXPECT_EQ(Unit(st, "web/0")->relations_size(), 2);
}

TEST_F(CliTest, RelateAndUnrelate) {
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  Ok({"unrelate", "lb:backends", "web:website"});
  Ok({"wait"});
  v1::ModelStatus st = Status();
  EXPECT_EQ(Unit(st, "lb/0")->workload().message(), "no backends");
  EXPECT_EQ(Unit(st, "lb/0")->relations_size(), 0);

  CommandResult again = Parley({"unrelate", "lb:backends", "web:website"});
  EXPECT_EQ(again.code, 1);
  EXPECT_THAT(again.err, HasSubstr("are not related"));

  Ok({"relate", "web:website", "lb:backends"});
  Ok({"wait"});
  st = Status();
  EXPECT_EQ(Unit(st, "lb/0")->workload().message(), "port 9000");
  // A new relation gets a new id: the old one is a tombstone in the agents' KBs.
  EXPECT_EQ(st.relations(1).id(), "web:website-lb:backends#3");

  CommandResult bad = Parley({"relate", "web:cluster", "lb:backends"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_THAT(bad.err, HasSubstr("(interface web-peers) to lb:backends (interface http)"));
}

TEST_F(CliTest, ChangedModelIsAppliedAsADifference) {
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  WriteModel(3, "9200", /*with_lb=*/false);
  CommandResult up = Parley({"up", dir_.Sub("model.yaml")});
  ASSERT_EQ(up.code, 0) << up.err;
  EXPECT_THAT(up.err, HasSubstr("added web/2"));
  EXPECT_THAT(up.err, HasSubstr("removed lb/0"));
  v1::ModelStatus st = Status();
  ASSERT_EQ(st.units_size(), 3);
  EXPECT_EQ(st.relations_size(), 1);
  for (const auto& u : st.units()) {
    // Nothing relates to the website any more, so nothing publishes the status again; the
    // config reached every unit all the same.
    EXPECT_EQ(u.agent_state(), v1::AGENT_STATE_IDLE);
  }
  CommandResult cfg = Parley({"config", "web"});
  EXPECT_THAT(cfg.out, HasSubstr("port      int     9200"));
}

TEST_F(CliTest, AReplacedDefinitionGetsNewUnitNumbers) {
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  // The same lb job from another definition directory: its units are replaced, with new numbers
  // (and so new state directories); the service keeps its place in the model.
  Write(dir_.Sub("lb2/service.yaml"), kLb);
  std::string model;
  {
    std::ifstream in(dir_.Sub("model.yaml"));
    std::stringstream text;
    text << in.rdbuf();
    model = text.str();
  }
  absl::StrReplaceAll({{"definition: lb", "definition: lb2"}}, &model);
  Write(dir_.Sub("model.yaml"), model);
  CommandResult up = Parley({"up", dir_.Sub("model.yaml")});
  ASSERT_EQ(up.code, 0) << up.err;
  EXPECT_THAT(up.err, HasSubstr("removed lb/0"));
  EXPECT_THAT(up.err, HasSubstr("added lb/1"));
  v1::ModelStatus st = Status();
  ASSERT_EQ(st.services_size(), 2);
  EXPECT_EQ(st.services(0).name(), "web");
  EXPECT_EQ(st.services(1).name(), "lb");
  EXPECT_EQ(Unit(st, "lb/1")->workload().message(), "port 9000");
}

TEST_F(CliTest, DownKeepsStateAndUpResumes) {
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  const int64_t first_pid = Status().host().pid();
  Ok({"config", "web", "greeting=kept"});
  Ok({"wait"});
  Ok({"down"});
  v1::ModelStatus st = Status();
  EXPECT_FALSE(st.host_up());
  EXPECT_FALSE(Running(first_pid));

  // Up again: the agents come back from their KBs (installed once, facts kept); the model's
  // config is applied again, as `up` makes the model what the file says.
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  st = Status();
  EXPECT_TRUE(st.host_up());
  EXPECT_NE(st.host().pid(), first_pid);
  EXPECT_THAT(Ok({"facts", "web/0"}), HasSubstr("installed"));
  EXPECT_EQ(Unit(st, "web/0")->workload().message(), "hello on 9000");
  EXPECT_EQ(Unit(st, "lb/0")->workload().message(), "port 9000");

  Ok({"down", "--purge"});
  EXPECT_FALSE(std::filesystem::exists(dir_.Sub(".parley")));
  CommandResult none = Parley({"status"});
  EXPECT_EQ(none.code, 1);
  EXPECT_THAT(none.err, HasSubstr("no model in"));
}

// A unit whose start handler detaches a daemon and whose stop handler forgets it.
constexpr char kLeaky[] = R"(name: leaky
handlers:
  - name: launch
    on: [start]
    action: {kind: exec, command: [./launch.sh]}
  - name: forget
    on: [stop]
    action: {kind: builtin, steps: [{status: {state: maintenance, message: stopped}}]}
)";
constexpr char kLaunch[] = R"sh(#!/bin/sh
setsid /bin/sh -c 'echo $$ > "$PARLEY_STATE_DIR/daemon.pid"; exec sleep 86431' \
  </dev/null >/dev/null 2>&1 &
)sh";

TEST_F(CliTest, RemovalStopsWhatHandlersLeftRunningAndSaysSo) {
  Write(dir_.Sub("leaky/service.yaml"), kLeaky);
  Write(dir_.Sub("leaky/launch.sh"), kLaunch);
  // Executable by the unprivileged user the programs run as (parleyd --program_user).
  namespace fs = std::filesystem;
  fs::permissions(dir_.Sub("leaky/launch.sh"), fs::perms::owner_all | fs::perms::group_read |
                                                   fs::perms::group_exec | fs::perms::others_read |
                                                   fs::perms::others_exec);
  Write(dir_.Sub("leaky-model.yaml"), "services:\n  leaky:\n    definition: leaky\n    units: 2\n");
  CommandResult up = Parley({"up", dir_.Sub("leaky-model.yaml")});
  ASSERT_EQ(up.code, 0) << up.err;
  auto daemon_of = [&](const std::string& unit_dir) {
    std::ifstream in(dir_.Sub(".parley/units/" + unit_dir + "/daemon.pid"));
    int64_t pid = 0;
    in >> pid;
    return pid;
  };
  int64_t first = 0, second = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while ((first == 0 || second == 0) && absl::Now() < deadline) {
    first = daemon_of("leaky-0");
    second = daemon_of("leaky-1");
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_GT(first, 0);
  ASSERT_GT(second, 0);
  ASSERT_TRUE(Running(first));
  ASSERT_TRUE(Running(second));

  CommandResult removed = Parley({"remove-unit", "leaky/1"});
  EXPECT_EQ(removed.code, 0) << removed.err;
  EXPECT_THAT(removed.err, HasSubstr(absl::StrCat(
                               "remove-unit: leaky/1: killed 1 process left running: ", second,
                               " sleep 86431\n")));
  EXPECT_FALSE(Running(second));
  EXPECT_TRUE(Running(first));

  CommandResult down = Parley({"down", "--purge"});
  EXPECT_EQ(down.code, 0) << down.err;
  EXPECT_THAT(down.err, HasSubstr(absl::StrCat(
                            "down --purge: leaky/0: killed 1 process left running: ", first,
                            " sleep 86431\n")));
  EXPECT_FALSE(Running(first));
  if (Running(first)) kill(static_cast<pid_t>(first), SIGKILL);
  if (Running(second)) kill(static_cast<pid_t>(second), SIGKILL);
}

// Asks the parleyd at `address` for its identity without any certificate.
grpc::Status PlaintextGetHost(const std::string& address) {
  auto stub = v1::Agent::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  v1::HostInfo info;
  return stub->GetHost(&ctx, v1::GetHostRequest(), &info);
}

TEST_F(CliTest, MutualTlsByDefaultPlaintextOnRequest) {
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  v1::ModelStatus st = Status();
  EXPECT_TRUE(std::filesystem::exists(dir_.Sub(".parley/pki/ca.pem")));
  // Without a certificate from the model's CA, parleyd does not talk.
  EXPECT_FALSE(PlaintextGetHost(st.host().address()).ok());
  CommandResult r = Parley({"up", dir_.Sub("model.yaml"), "--plaintext"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("this model runs with TLS"));
  Ok({"down", "--purge"});

  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml"), "--plaintext"}).code, 0);
  st = Status();
  EXPECT_EQ(Unit(st, "lb/0")->workload().message(), "port 9000");
  EXPECT_TRUE(PlaintextGetHost(st.host().address()).ok());
}

// A certificate's subjectAltName, as openssl prints it.
std::string Sans(const std::string& cert) {
  return RunCommand({"/usr/bin/openssl", "x509", "-in", cert, "-noout", "-ext", "subjectAltName"},
                    {})
      .out;
}

TEST_F(CliTest, CertificatesCarryRolesAndRolelessOnesAreReplaced) {
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  const std::string pki = dir_.Sub(".parley/pki");
  EXPECT_THAT(Sans(pki + "/cli/cert.pem"), HasSubstr("URI:parley:role/operator"));
  EXPECT_THAT(Sans(pki + "/local/cert.pem"), HasSubstr("URI:parley:role/host"));

  // The CLI's certificate of a model directory made before roles: replaced by the next command,
  // which may then change config (an operator's call).
  const std::string old_cli = absl::StrCat(
      "cd '", pki, "/cli' && printf 'subjectAltName=DNS:parley-cli\\n' >old.cnf && ",
      "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem ",
      "-out old.csr -subj /CN=cli && openssl x509 -req -in old.csr -CA ../ca.pem -CAkey ../ca.key ",
      "-CAcreateserial -days 2 -extfile old.cnf -out cert.pem");
  ASSERT_EQ(std::system(absl::StrCat("(", old_cli, ") >/dev/null 2>&1").c_str()), 0);
  ASSERT_THAT(Sans(pki + "/cli/cert.pem"), Not(HasSubstr("URI:")));
  Ok({"config", "web", "port=9001"});
  EXPECT_THAT(Sans(pki + "/cli/cert.pem"), HasSubstr("URI:parley:role/operator"));
  EXPECT_THAT(Ok({"config", "web"}), HasSubstr("9001"));

  // parley cert: an operator's needs no address; a name keeps its role; a host's needs one.
  EXPECT_THAT(Ok({"cert", "ops", "--operator"}), HasSubstr("operator certificate"));
  const std::string ops = Sans(pki + "/ops/cert.pem");
  EXPECT_THAT(ops, HasSubstr("URI:parley:role/operator"));
  EXPECT_THAT(ops, Not(HasSubstr("IP")));
  CommandResult r = Parley({"cert", "ops", "--ip", "10.0.0.1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("parley:role/operator, not parley:role/host"));
  EXPECT_EQ(Parley({"cert", "east"}).code, 2);
  Ok({"cert", "east", "--ip", "10.0.0.1"});
  EXPECT_THAT(Sans(pki + "/east/cert.pem"), HasSubstr("URI:parley:role/host"));
}

TEST_F(CliTest, BadInputIsRefusedWithNothingApplied) {
  Write(dir_.Sub("bad.yaml"), "services:\n  web:\n    definition: web\n    unitz: 3\n");
  CommandResult r = Parley({"up", dir_.Sub("bad.yaml")});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("bad.yaml:4: services.web: unknown key 'unitz'"));
  EXPECT_FALSE(std::filesystem::exists(dir_.Sub(".parley/model.json")));

  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  r = Parley({"config", "web", "port=abc"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("service web: config option 'port': expected an int, got 'abc'"));
  r = Parley({"config", "web", "nope=1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("has no config option 'nope' (it has: port, greeting)"));
  r = Parley({"run", "web/0", "hello"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("parameter 'who' is required"));
  r = Parley({"run", "web/9", "hello", "who=x"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("no unit 'web/9'"));
  EXPECT_EQ(Parley({"frobnicate"}).code, 2);
  EXPECT_EQ(Parley({"status", "--bogus"}).code, 2);
  EXPECT_EQ(Parley({"relate", "web:website"}).code, 2);
  EXPECT_EQ(Parley({"wait", "--timeout", "soon"}).code, 2);
  // Nothing of the refused changes reached the agents.
  EXPECT_EQ(Unit(Status(), "web/0")->workload().message(), "hello on 9000");

  // The scrape config names the parleyd's metrics address and passes Prometheus's own check.
  const std::string scrape = Ok({"metrics-config", dir_.Sub("model.yaml"), "--interval", "5s"});
  EXPECT_THAT(scrape, HasSubstr("job_name: parley"));
  EXPECT_THAT(scrape, HasSubstr(absl::StrCat("- ", Status().host().metrics_address())));
  Write(dir_.Sub("prometheus.yml"), scrape);
  CommandResult check =
      RunCommand({"/usr/bin/promtool", "check", "config", dir_.Sub("prometheus.yml")});
  EXPECT_EQ(check.code, 0) << check.out << check.err;
  EXPECT_EQ(Parley({"metrics-config", dir_.Sub("other.yaml")}).code, 1);

  CommandResult help = Parley({"--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, HasSubstr("remove-unit"));
  EXPECT_THAT(Ok({"version"}), HasSubstr("parleyd"));
}

TEST_F(CliTest, AFailingScriptIsReportedInStatusLogsAndCli) {
  // An exec handler that prints garbage and fails: the run rolls back (the fact it set is not
  // kept) and the error reaches `run`, `status` and `logs` with the tail of stderr.
  Write(dir_.Sub("web/service.yaml"), absl::StrCat(kWeb, R"(  - name: crash
    on: [action.hello]
    timeout: 5s
    action:
      kind: exec
      command: [sh, -c, 'parley-hook fact set half done; printf "\001\002 garbage"; echo "disk on fire" >&2; exit 3']
)"));
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  CommandResult run = Parley({"run", "web/0", "hello", "who=x", "--timeout", "30s"});
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("handler crash"));
  EXPECT_THAT(run.err, HasSubstr("exited with status 3"));
  EXPECT_THAT(run.err, HasSubstr("disk on fire"));
  EXPECT_THAT(Ok({"status"}), HasSubstr("disk on fire"));
  EXPECT_THAT(Ok({"facts", "web/0"}), Not(HasSubstr("half")));
  EXPECT_THAT(Ok({"logs", "--unit", "web/0", "--level", "warning"}), HasSubstr("crash"));
}

TEST_F(CliTest, AConfigValueThatFailsCanBeCorrected) {
  Write(dir_.Sub("web/service.yaml"), absl::StrCat(kWeb, R"(  - name: check
    on: [config.changed]
    action:
      kind: exec
      command: [sh, -c, '[ "$1" != bad ] || { echo "greeting bad refused" >&2; exit 1; }', sh, "{{config.greeting}}"]
)"));
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  Ok({"config", "web", "greeting=bad"});
  // Its next retry is due after the timeout: the wait ends at once, a failure (exit 1).
  CommandResult wait = Parley({"wait", "--timeout", "3s"});
  EXPECT_EQ(wait.code, 1) << wait.err;
  EXPECT_THAT(wait.err, HasSubstr("greeting bad refused"));
  EXPECT_THAT(wait.err, HasSubstr("is due after the timeout"));
  // Resetting the value corrects the queued change: the units settle without waiting out the
  // retries of the failed one.
  Ok({"config", "web", "greeting="});
  Ok({"wait", "--timeout", "20s"});
  v1::ModelStatus st = Status();
  EXPECT_EQ(Unit(st, "web/0")->agent_state(), v1::AGENT_STATE_IDLE);
  EXPECT_EQ(Unit(st, "web/0")->workload().message(), "hello on 9000");
}

TEST_F(CliTest, WaitTimesOutOnAFailingUnitAndSaysWhy) {
  // A handler that fails on every attempt: the unit never settles.
  Write(dir_.Sub("web/service.yaml"), absl::StrCat(kWeb, R"(  - name: broken
    on: [action.hello]
    action:
      kind: builtin
      steps:
        - set: "x={{fact.missing}}"
)"));
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  CommandResult run = Parley({"run", "web/0", "hello", "who=x"});
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("action.hello failed on web/0"));
  EXPECT_THAT(run.err, HasSubstr("broken"));
  CommandResult wait = Parley({"wait", "--timeout", "2s"});
  EXPECT_EQ(wait.code, 1) << wait.err;
  EXPECT_THAT(wait.err, HasSubstr("stopped waiting: the next retry of web/0"));
  EXPECT_THAT(wait.err, HasSubstr("web/0: action.hello failed"));
  EXPECT_THAT(wait.err, HasSubstr("still busy: web/0"));
  EXPECT_THAT(Ok({"status"}), HasSubstr("action.hello failed:"));
}

// A unit whose install always fails the same way.
constexpr char kStuck[] = R"(name: stuck
handlers:
  - name: broken
    on: [install]
    action:
      kind: builtin
      steps:
        - set: "x={{fact.missing}}"
)";

// The "settled n/m units" counts in `err`, in order.
std::vector<int> SettledCounts(const std::string& err) {
  std::vector<int> counts;
  for (absl::string_view line : absl::StrSplit(err, '\n')) {
    int n = 0;
    if (absl::ConsumePrefix(&line, "settled ") &&
        absl::SimpleAtoi(line.substr(0, line.find('/')), &n)) {
      counts.push_back(n);
    }
  }
  return counts;
}

// `up` and `wait` stop waiting on a permanent failure instead of waiting out --timeout: exit 1,
// naming the unit, the handler and the error, and how to unstick it.
TEST_F(CliTest, UpAndWaitEndEarlyOnAPermanentFailure) {
  Write(dir_.Sub("stuck/service.yaml"), kStuck);
  Write(dir_.Sub("stuck-model.yaml"), absl::StrCat("interfaces: ", PARLEY_SOURCE_DIR,
                                                   "/examples/interfaces\nservices:\n"
                                                   "  web:\n    definition: web\n    units: 2\n"
                                                   "  stuck:\n    definition: stuck\n"));
  absl::Time start = absl::Now();
  CommandResult up = Parley({"up", dir_.Sub("stuck-model.yaml"), "--timeout", "300"});
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(up.code, 1) << up.err;
  // Five attempts with the engine's backoff (1 s, doubling) take about 15 s.
  EXPECT_LT(took, absl::Seconds(90));
  EXPECT_THAT(up.err, HasSubstr("parley up: stopped waiting: stuck/0: event 1 (install) failed 5 "
                                "attempts running, each with: handler 'broken': "));
  EXPECT_THAT(up.err, HasSubstr("fact.missing"));
  EXPECT_THAT(up.err, HasSubstr("`parley resolve stuck/0` retries it now"));
  // Not a terminal: one line per change of the count, which only goes up.
  const std::vector<int> counts = SettledCounts(up.err);
  ASSERT_FALSE(counts.empty()) << up.err;
  for (size_t i = 1; i < counts.size(); ++i) {
    EXPECT_GT(counts[i], counts[i - 1]) << up.err;
  }
  EXPECT_EQ(counts.back(), 2) << up.err;  // web/0 and web/1

  // A later wait counts the failures in the unit's traces: it ends at once.
  start = absl::Now();
  CommandResult wait = Parley({"wait", "--timeout", "300"});
  EXPECT_EQ(wait.code, 1) << wait.err;
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
  EXPECT_THAT(wait.err,
              HasSubstr("parley wait: stopped waiting: stuck/0: event 1 (install) failed 5 "
                        "attempts running, each with: handler 'broken': "));
  EXPECT_THAT(wait.err, HasSubstr("fact.missing"));
  EXPECT_EQ(Unit(Status(), "stuck/0")->agent_state(), v1::AGENT_STATE_ERROR);
  // Skipped, the unit gets through, and waiting settles as before.
  Ok({"resolve", "stuck/0", "--skip"});
  CommandResult settled = Parley({"wait", "--timeout", "60s"});
  EXPECT_EQ(settled.code, 0) << settled.err;
  EXPECT_THAT(settled.err, HasSubstr("settled 3/3 units"));
}

TEST_F(CliTest, ResolveRetriesOrSkipsAFailingEvent) {
  // `gate` fails while the file `open` is missing: the action's event jams web/0's inbox.
  const std::string open = dir_.Sub("open");
  Write(dir_.Sub("web/service.yaml"), absl::StrCat(kWeb, R"(  - name: gate
    on: [action.hello]
    action:
      kind: exec
      command: [sh, -c, '[ -e "$1" ] || { echo "gate closed" >&2; exit 1; }', sh, ")",
                                                   open, R"("]
)"));
  ASSERT_EQ(Parley({"up", dir_.Sub("model.yaml")}).code, 0);
  auto resolve = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {PARLEY_BIN, "resolve"});
    return RunCommand(args, {{"PARLEY_MODEL_DIR", dir_.Sub(".parley")}, {"USER", "tester"}});
  };
  // Nothing failing: refused, saying why.
  CommandResult r = resolve({"web/0"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("agent web/0 has no failing event to resolve"));
  EXPECT_EQ(resolve({"web/0", "--retry", "--skip"}).code, 2);
  EXPECT_EQ(resolve({"nope/0"}).code, 1);

  CommandResult run = Parley({"run", "web/0", "hello", "who=x", "--timeout", "30s"});
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("`parley resolve web/0 --skip` drops it"));
  const std::string status = Ok({"status"});
  EXPECT_THAT(status, HasSubstr("action.hello failed: handler 'gate'"));
  EXPECT_THAT(status, HasSubstr("gate closed ("));
  EXPECT_THAT(status, HasSubstr("`parley resolve web/0` retries it now, `--skip` drops it"));
  const uint64_t failing = Unit(Status(), "web/0")->failure().event_id();
  ASSERT_GT(failing, 0u);
  const std::string event = absl::StrCat("event ", failing, " (action.hello)");

  // Retried while still broken: it fails again, and says how to drop it.
  r = resolve({"web/0", "--retry", "--timeout", "30s"});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("retrying ", event, " on web/0 now")));
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat(event, " failed again on web/0")));
  EXPECT_THAT(r.err, HasSubstr("gate closed"));
  // Fixed: the retry (the default) applies it, and the unit settles.
  Write(open, "");
  r = resolve({"web/0", "--timeout", "30s"});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat(event, " applied on attempt")));
  Ok({"wait", "--timeout", "20s"});
  EXPECT_THAT(Ok({"trace", "web/0", "--last", "20"}), HasSubstr("retried at once for tester@"));

  // Broken again: skipped, it is never applied, and the events behind it run.
  std::filesystem::remove(open);
  run = Parley({"run", "web/0", "hello", "who=y", "--timeout", "30s"});
  EXPECT_EQ(run.code, 1);
  const uint64_t second = Unit(Status(), "web/0")->failure().event_id();
  ASSERT_GT(second, failing);
  Ok({"config", "web", "greeting=hey"});
  r = resolve({"web/0", "--skip"});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("skipped event ", second, " (action.hello) on web/0")));
  EXPECT_THAT(r.out, HasSubstr("last error: handler 'gate'"));
  EXPECT_THAT(r.out, HasSubstr("stderr: gate closed"));
  // Who asked, and with mutual TLS the certificate they called with.
  EXPECT_THAT(r.out, HasSubstr("by tester@"));
  EXPECT_THAT(r.out, HasSubstr("(certificate CN=cli)"));
  Ok({"wait", "--timeout", "20s"});
  v1::ModelStatus st = Status();
  EXPECT_EQ(Unit(st, "web/0")->agent_state(), v1::AGENT_STATE_IDLE);
  EXPECT_EQ(Unit(st, "web/0")->workload().message(), "hey on 9000");
  EXPECT_THAT(Ok({"trace", "web/0", "--last", "20"}), HasSubstr("SKIPPED by tester@"));
  EXPECT_THAT(Ok({"logs", "--unit", "web/0", "--contains", "skipped by tester@"}),
              HasSubstr(absl::StrCat("event ", second, " 'action.hello'")));
  r = resolve({"web/0", "--skip"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("has no failing event to resolve"));
}

// A model that names an etcd in `coordinator:`: `parley up` starts its parleyd with it, and the
// units of a service that declares leadership elect one leader, which status shows. A bad member
// address is refused naming the file and line, with nothing started.
TEST_F(CliTest, UpRunsTheModelsCoordinatorAndOneUnitLeads) {
  testing::EtcdProcess etcd;
  ASSERT_EQ(etcd.Start(), "");
  Write(dir_.Sub("pg/service.yaml"), R"(name: pg
leadership: {lease_ttl: 3s, leading_interval: 1s}
handlers:
  - name: lead
    when: [leader]
    action: {kind: builtin, steps: [{status: {state: active, message: "leads"}}]}
  - name: follow
    when_not: [leader]
    action: {kind: builtin, steps: [{status: {state: active, message: "follows"}}]}
)");
  Write(dir_.Sub("bad.yaml"),
        "coordinator:\n  etcd: [nowhere]\nservices:\n  pg: {definition: pg}\n");
  CommandResult bad = Parley({"up", dir_.Sub("bad.yaml"), "--timeout", "10s"});
  EXPECT_NE(bad.code, 0);
  EXPECT_THAT(bad.err, HasSubstr("bad.yaml:2: coordinator.etcd[0]"));
  EXPECT_THAT(bad.err, HasSubstr("expected <host>:<port> of an etcd member, got 'nowhere'"));
  EXPECT_FALSE(std::filesystem::exists(dir_.Sub(".parley/parleyd.address")));

  Write(dir_.Sub("model.yaml"), absl::StrCat("coordinator:\n  etcd: [", etcd.endpoint(),
                                             "]\nservices:\n  pg: {definition: pg, units: 2}\n"));
  CommandResult up = Parley({"up", dir_.Sub("model.yaml"), "--timeout", "60s"});
  ASSERT_EQ(up.code, 0) << up.err;
  std::string leader;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  v1::ModelStatus st;
  while (absl::Now() < deadline) {
    st = Status();
    int leading = 0;
    leader.clear();
    for (const auto& u : st.units()) {
      if (u.leadership().leads()) {
        ++leading;
        leader = u.agent();
      }
    }
    bool agreed = leading == 1 && st.units_size() == 2;
    for (const auto& u : st.units()) {
      agreed = agreed && u.leadership().leader() == leader && u.leadership().term() > 0 &&
               u.workload().message() == (u.agent() == leader ? "leads" : "follows");
    }
    if (agreed) break;
    leader.clear();
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_FALSE(leader.empty()) << "no agreed leader; the last status: " << st.DebugString()
                               << "\netcd's log:\n"
                               << etcd.ReadLog();
  EXPECT_EQ(Unit(st, "pg/0")->leadership().term(), Unit(st, "pg/1")->leadership().term());
  EXPECT_EQ(Unit(st, leader)->leadership().error(), "");
}

}  // namespace
}  // namespace parley
