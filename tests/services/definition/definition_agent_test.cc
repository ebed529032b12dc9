// Agents running service definitions: YAML definitions whose exec actions drive real scripts
// through parley-hook, related over the agent protocol, converge on shared relation data.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "services/backends/backends.h"
#include "services/definition/definition.h"
#include "services/host/host.h"
#include "tests/services/agent/agent_test_util.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;
using testing::Fact;
using testing::OnStrand;
using testing::Settled;
using testing::WaitFor;

constexpr char kHook[] = PARLEY_HOOK;

constexpr char kCache[] = R"(name: cache
provides:
  db: redis
config:
  port: {type: int, default: 6379}
handlers:
  - name: publish
    on: [db.joined]
    action: {kind: exec, command: [./bin/publish.sh]}
)";

constexpr char kPublish[] = R"sh(#!/bin/sh
set -e
parley-hook relation set db host 127.0.0.1
parley-hook relation set db port "$(parley-hook config get port)"
parley-hook status set active "serving on $(parley-hook config get port)"
)sh";

constexpr char kWeb[] = R"(name: web
requires:
  db: redis
handlers:
  - name: configure
    when: [db.ready]
    action: {kind: exec, command: [./bin/configure.sh]}
  - name: waiting
    when_not: [db.ready]
    action:
      kind: builtin
      steps:
        - status: {state: waiting, message: "waiting for a database"}
)";

constexpr char kConfigure[] = R"sh(#!/bin/sh
set -e
parley-hook fact set redis "$(parley-hook relation get db - host):$(parley-hook relation get db - port)"
parley-hook status set active "using redis"
)sh";

void Write(const fs::path& path, const std::string& text, bool executable = false) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
  if (executable) fs::permissions(path, fs::perms::owner_all, fs::perm_options::add);
}

TEST(DefinitionAgentTest, ExecDefinitionsConvergeOverARelation) {
  parley::testing::TempDir dir;
  const fs::path root(dir.path());
  Write(root / "interfaces/redis.yaml", "required: {host: string, port: int}\n");
  Write(root / "cache/service.yaml", kCache);
  Write(root / "cache/bin/publish.sh", kPublish, true);
  Write(root / "web/service.yaml", kWeb);
  Write(root / "web/bin/configure.sh", kConfigure, true);

  HostOptions o;
  o.data_dir = dir.Sub("kb");
  o.tls.plaintext = true;
  auto host = Host::Start(o);
  ASSERT_TRUE(host.ok()) << host.status();

  BackendOptions exec;
  exec.process.extra_path.push_back(fs::path(kHook).parent_path().string());
  std::unique_ptr<BackendRegistry> backends = MakeBackends(exec);
  BackendRegistry& factory = *backends;
  std::vector<Agent*> agents;
  for (const auto& [unit, name] :
       {std::pair<std::string, std::string>{"cache/0", "cache"}, {"web/0", "web"}}) {
    auto def = LoadServiceDefinition((root / name).string(), (root / "interfaces").string());
    ASSERT_TRUE(def.ok()) << def.status();
    auto spec = BuildSpec(*def, unit, factory);
    ASSERT_TRUE(spec.ok()) << spec.status();
    auto agent = (*host)->AddAgent(std::move(*spec));
    ASSERT_TRUE(agent.ok()) << agent.status();
    agents.push_back(*agent);
  }
  Agent* cache = agents[0];
  Agent* web = agents[1];
  ASSERT_TRUE(WaitFor([&] {
    return OnStrand(web, [&] { return web->Status().workload().message(); }) ==
           "waiting for a database";
  }));

  auto related =
      testing::Relate(host->get(), "db:1", web, "db", (*host)->address(), "cache/0", "db");
  ASSERT_TRUE(related.ok()) << related.status();
  ASSERT_TRUE(WaitFor([&] { return Fact(web, "redis") == "127.0.0.1:6379"; }))
      << Fact(web, "redis").value_or("-");
  ASSERT_TRUE(WaitFor([&] { return Settled({host->get()}); }));
  EXPECT_EQ(OnStrand(web, [&] { return web->Status().workload().message(); }), "using redis");
  EXPECT_EQ(OnStrand(cache, [&] { return cache->Status().workload().message(); }),
            "serving on 6379");
}

constexpr char kBackup[] = R"(name: store
actions:
  backup:
    description: Dumps the database.
    params:
      path: {type: string, required: true}
      level: {type: int, default: 3}
handlers:
  - name: backup
    on: [action.backup]
    action:
      kind: builtin
      steps:
        - set: "last_backup={{event.path}} at level {{event.level}}"
)";

// The agent API checks a fired action as the CLI does: a missing or ill-typed parameter, an
// unknown one or an unknown action is refused at once (INVALID_ARGUMENT), so it never reaches the
// inbox where its handler would fail on every retry; defaults are filled in.
TEST(DefinitionAgentTest, FiredActionsAreCheckedAndDefaultedByTheAgent) {
  parley::testing::TempDir dir;
  const fs::path root(dir.path());
  Write(root / "store/service.yaml", kBackup);
  HostOptions o;
  o.data_dir = dir.Sub("kb");
  o.tls.plaintext = true;
  auto host = Host::Start(o);
  ASSERT_TRUE(host.ok()) << host.status();
  auto backends = MakeBackends({});
  auto def = LoadServiceDefinition((root / "store").string());
  ASSERT_TRUE(def.ok()) << def.status();
  auto spec = BuildSpec(*def, "store/0", *backends);
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto agent = (*host)->AddAgent(std::move(*spec));
  ASSERT_TRUE(agent.ok()) << agent.status();
  Agent* a = *agent;

  auto fire = [&](const std::string& event, std::map<std::string, std::string> params) {
    v1::FireEventRequest r;
    r.set_agent("store/0");
    r.set_event(event);
    for (const auto& [k, v] : params) (*r.mutable_params())[k] = v;
    return OnStrand(a, [&] { return a->FireEvent(r); });
  };
  auto missing = fire("action.backup", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(missing.status())) << missing.status();
  EXPECT_THAT(std::string(missing.status().message()),
              ::testing::HasSubstr("parameter 'path' is required"));
  auto typed = fire("action.backup", {{"path", "/tmp/x"}, {"level", "high"}});
  ASSERT_FALSE(typed.ok());
  EXPECT_THAT(std::string(typed.status().message()), ::testing::HasSubstr("parameter 'level'"));
  auto unknown_param = fire("action.backup", {{"path", "/tmp/x"}, {"compress", "yes"}});
  ASSERT_FALSE(unknown_param.ok());
  EXPECT_THAT(std::string(unknown_param.status().message()),
              ::testing::HasSubstr("unknown parameter 'compress'"));
  auto unknown_action = fire("action.restore", {});
  ASSERT_FALSE(unknown_action.ok());
  EXPECT_THAT(std::string(unknown_action.status().message()),
              ::testing::HasSubstr("has no action 'restore' (actions: backup)"));

  auto ok = fire("action.backup", {{"path", "/tmp/x"}});
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_TRUE(WaitFor([&] { return Fact(a, "last_backup") == "/tmp/x at level 3"; }))
      << Fact(a, "last_backup").value_or("-");
  ASSERT_TRUE(WaitFor([&] { return Settled({host->get()}); }));
}

}  // namespace
}  // namespace parley::services
