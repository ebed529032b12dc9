// Reading service.yaml (docs/service-definitions.md): every field of the format parses, and each
// kind of bad input is refused with the file, line and field named.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "services/definition/service.h"
#include "tests/services/definition/definition_test_util.h"

namespace parley::services {
namespace {

using testing::DefinitionTest;
using ::testing::ElementsAre;
using testing::EveryKindTest;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::kEveryKind;
using testing::kRedis;
using testing::LineOf;
using ::testing::Pair;
using ::testing::StartsWith;

TEST_F(EveryKindTest, ParsesEveryField) {
  auto def = LoadService(kEveryKind);
  ASSERT_TRUE(def.ok()) << def.status();
  EXPECT_EQ(def->name, "webapp");
  EXPECT_EQ(def->description, "A small web application.");
  EXPECT_EQ(def->file, Path("svc/service.yaml"));

  ASSERT_EQ(def->endpoints.size(), 3u);
  EXPECT_EQ(def->endpoints[0].name, "website");  // provides, requires, peers
  EXPECT_EQ(def->endpoints[0].role, engine::Role::kProvides);
  EXPECT_EQ(def->endpoints[0].interface, "http");
  EXPECT_EQ(def->endpoints[0].description, "Where the app serves.");
  EXPECT_EQ(def->endpoints[1].name, "db");
  EXPECT_EQ(def->endpoints[1].role, engine::Role::kRequires);
  EXPECT_EQ(def->endpoints[1].line, LineOf(kEveryKind, "db: redis"));
  EXPECT_EQ(def->endpoints[2].role, engine::Role::kPeers);
  EXPECT_EQ(def->interfaces.at("redis").file, Path("shared/redis.yaml"));
  EXPECT_EQ(def->interfaces.at("webapp-peers").file, Path("svc/interfaces/webapp-peers.yaml"));
  EXPECT_EQ(def->interfaces.at("redis").provider.Required(),
            (std::vector<std::string>{"host", "port", "password"}));

  ASSERT_EQ(def->config.size(), 5u);
  EXPECT_EQ(def->config[0].type, ValueType::kInt);
  EXPECT_EQ(def->config[0].default_value, "8080");
  EXPECT_EQ(def->config[0].description, "Port to serve on.");
  EXPECT_EQ(def->config[2].type, ValueType::kBool);
  EXPECT_EQ(def->config[3].type, ValueType::kFloat);
  EXPECT_EQ(def->config[4].default_value, std::nullopt);
  EXPECT_THAT(ConfigDefaults(*def), ElementsAre(Pair("debug", "false"), Pair("port", "8080"),
                                                Pair("ratio", "0.5"), Pair("title", "Parley")));

  ASSERT_EQ(def->actions.size(), 1u);
  ASSERT_EQ(def->actions[0].params.size(), 2u);
  EXPECT_TRUE(def->actions[0].params[0].required);
  EXPECT_EQ(def->actions[0].params[1].default_value, "false");
  ASSERT_EQ(def->events.size(), 1u);
  EXPECT_EQ(def->events[0].description, "Fired after the app restarts.");

  ASSERT_EQ(def->handlers.size(), 5u);
  const HandlerDef& install = def->handlers[0];
  EXPECT_EQ(install.timeout, absl::Minutes(5));
  EXPECT_EQ(install.line, LineOf(kEveryKind, "name: install"));
  ASSERT_EQ(install.action.kind(), ActionKind::kExec);
  const auto& exec = std::get<ExecAction>(install.action.detail);
  ASSERT_EQ(exec.command.size(), 3u);
  EXPECT_EQ(exec.command[0].source, "./bin/install");
  EXPECT_TRUE(exec.command[0].IsLiteral());
  EXPECT_FALSE(exec.command[2].IsLiteral());
  ASSERT_EQ(exec.command[2].parts.size(), 1u);
  EXPECT_EQ(exec.command[2].parts[0].kind, Template::Part::Kind::kConfig);
  EXPECT_EQ(exec.command[2].parts[0].text, "port");
  EXPECT_EQ(exec.env.at("TITLE").parts[0].text, "title");

  const HandlerDef& configure = def->handlers[1];
  EXPECT_THAT(configure.when, ElementsAre("db.ready", "db.remote.host"));
  EXPECT_THAT(configure.when_not, ElementsAre("configured"));
  EXPECT_EQ(configure.timeout, absl::Seconds(60));
  const auto& ansible = std::get<AnsibleAction>(configure.action.detail);
  EXPECT_EQ(ansible.playbook, "playbooks/site.yml");
  EXPECT_EQ(ansible.vars.at("redis_host").parts[0].text, "db.remote.host");

  const HandlerDef& run = def->handlers[2];
  EXPECT_EQ(run.timeout, absl::Seconds(90));
  EXPECT_THAT(run.on, ElementsAre("start", "config.changed"));
  const auto& container = std::get<ContainerAction>(run.action.detail);
  EXPECT_EQ(container.image.source, "webapp:{{config.title}}");
  ASSERT_EQ(container.ports.size(), 3u);
  EXPECT_EQ(container.ports[1].source, "9090");
  EXPECT_EQ(container.command.size(), 2u);
  EXPECT_EQ(container.state, ContainerAction::State::kRunning);  // the default

  const auto& http = std::get<HttpAction>(def->handlers[3].action.detail);
  EXPECT_EQ(http.method, "POST");
  EXPECT_THAT(http.expect, ElementsAre(200, 201));
  ASSERT_TRUE(http.body.has_value());
  EXPECT_EQ(http.body->parts.size(), 3u);  // '{"port": ', {{config.port}}, '}'
  ASSERT_EQ(http.facts.size(), 3u);
  EXPECT_EQ(http.facts[0].fact, "registry.id");
  EXPECT_EQ(http.facts[0].source, ResponseFact::Source::kJson);
  EXPECT_EQ(http.facts[0].arg, "/id");
  EXPECT_EQ(http.facts[1].source, ResponseFact::Source::kStatus);
  EXPECT_EQ(http.facts[2].source, ResponseFact::Source::kHeader);
  EXPECT_EQ(http.facts[2].arg, "ETag");

  const HandlerDef& rename = def->handlers[4];
  EXPECT_THAT(rename.on, ElementsAre("action.rename"));
  const auto& builtin = std::get<BuiltinAction>(rename.action.detail);
  ASSERT_EQ(builtin.steps.size(), 5u);
  EXPECT_EQ(builtin.steps[0].kind, BuiltinStep::Kind::kSet);
  EXPECT_EQ(builtin.steps[0].name, "title");
  EXPECT_EQ(builtin.steps[0].value.source, "{{event.title}}");
  EXPECT_EQ(builtin.steps[1].kind, BuiltinStep::Kind::kClear);
  EXPECT_EQ(builtin.steps[2].kind, BuiltinStep::Kind::kRelationSet);
  EXPECT_EQ(builtin.steps[2].name, "website");
  EXPECT_EQ(builtin.steps[2].key, "path");
  EXPECT_EQ(builtin.steps[3].state, v1::WORKLOAD_STATE_ACTIVE);
  EXPECT_EQ(builtin.steps[4].kind, BuiltinStep::Kind::kFire);
  EXPECT_EQ(builtin.steps[4].line, LineOf(kEveryKind, "fire: app.restarted"));
}

TEST_F(DefinitionTest, ResolvesActionParams) {
  auto def = LoadService(R"(name: svc
actions:
  backup:
    params:
      path: {type: string, required: true}
      level: {type: int, default: 3}
handlers:
  - name: backup
    on: [action.backup]
    action: {kind: builtin, steps: [{set: "backup={{event.path}}"}]}
)");
  ASSERT_TRUE(def.ok()) << def.status();
  auto params = ResolveActionParams(*def, "backup", {{"path", "/tmp/x"}});
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_THAT(*params, ElementsAre(Pair("level", "3"), Pair("path", "/tmp/x")));
  EXPECT_EQ(ResolveActionParams(*def, "backup", {}).status().message(),
            "action 'backup': parameter 'path' is required");
  EXPECT_EQ(
      ResolveActionParams(*def, "backup", {{"path", "p"}, {"level", "high"}}).status().message(),
      "action 'backup': parameter 'level': expected an int, got 'high'");
  EXPECT_EQ(ResolveActionParams(*def, "backup", {{"path", "p"}, {"x", "1"}}).status().message(),
            "action 'backup': unknown parameter 'x' (parameters: path, level)");
  EXPECT_FALSE(ResolveActionParams(*def, "restore", {}).ok());
}

// ---------------------------------------------------------------------------------------------
// Bad service.yaml: one test per rule, each naming file, line and field.

TEST_F(DefinitionTest, YamlSyntaxErrorsCiteTheLine) {
  const std::string yaml = "name: svc\nhandlers: [\n  {name: a\n";
  EXPECT_THAT(ServiceError(yaml),
              StartsWith(absl::StrCat(Path("svc/service.yaml"), ":4: not valid YAML: ")));
  auto missing = LoadServiceDefinition(Path("nowhere"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(),
            absl::StrCat(Path("nowhere/service.yaml"), ": cannot read the file"));
}

TEST_F(DefinitionTest, UnknownKeysAreRefusedAtEveryLevel) {
  std::string yaml = "name: svc\nhandler: []\n";
  EXPECT_EQ(
      ServiceError(yaml),
      At(yaml, "handler:", "") +
          "unknown key 'handler' (expected name, description, user, provides, requires, peers, "
          "config, handlers, actions, events, leadership, health)");

  yaml = R"(name: svc
handlers:
  - name: go
    on: [install]
    action:
      kind: exec
      comand: [/bin/true]
)";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "comand", "handlers[0].action") +
                                    "unknown key 'comand' (expected kind, command, env)");

  yaml = R"(name: svc
provides: {website: http}
handlers:
  - name: go
    on: [install]
    action:
      kind: builtin
      steps:
        - relation-set: {endpoint: website, key: port, valu: 80}
)";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "valu:", "handlers[0].action.steps[0].relation-set") +
                                    "unknown key 'valu' (expected endpoint, key, value)");

  yaml = "name: svc\nconfig:\n  port: {type: int, defualt: 80}\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "defualt", "config.port") +
                                    "unknown key 'defualt' (expected type, default, description)");
}

// Leadership (docs/coordination.md): declared as a flag or with lease settings checked against
// each other; a handler on the leadership events or facts needs it declared.
TEST_F(DefinitionTest, LeadershipIsDeclaredAndItsLeaseSettingsChecked) {
  auto plain = LoadService("name: svc\nleadership: true\n");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_TRUE(plain->leadership);
  EXPECT_EQ(plain->lease_ttl, absl::Seconds(5));
  EXPECT_EQ(plain->leading_interval, absl::Seconds(2));

  auto tuned = LoadService("name: svc\nleadership: {lease_ttl: 10s, leading_interval: 4s}\n");
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  EXPECT_TRUE(tuned->leadership);
  EXPECT_EQ(tuned->lease_ttl, absl::Seconds(10));

  auto none = LoadService("name: svc\n");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->leadership);

  std::string yaml = "name: svc\nleadership: {lease_ttl: 4s, leading_interval: 3s}\n";
  EXPECT_THAT(ServiceError(yaml), StartsWith(At(yaml, "leadership:", "leadership") +
                                             "leadership leading_interval 3s: must be above zero "
                                             "and at most half of lease_ttl (4s)"));
  yaml = "name: svc\nleadership: {lease_ttl: 1s, leading_interval: 0.5s}\n";
  EXPECT_THAT(ServiceError(yaml), HasSubstr("lease_ttl 1s: must be at least 2s"));
  yaml = "name: svc\nleadership: {ttl: 5s}\n";
  EXPECT_THAT(ServiceError(yaml),
              HasSubstr("unknown key 'ttl' (expected lease_ttl, leading_interval, "
                        "unhealthy_grace)"));
  EXPECT_EQ(plain->unhealthy_grace, absl::Seconds(10));
  auto graced = LoadService("name: svc\nleadership: {unhealthy_grace: 30s}\n");
  ASSERT_TRUE(graced.ok()) << graced.status();
  EXPECT_EQ(graced->unhealthy_grace, absl::Seconds(30));
  yaml = "name: svc\nleadership: {unhealthy_grace: 0s}\n";
  EXPECT_THAT(
      ServiceError(yaml),
      HasSubstr("service.yaml:2: leadership.unhealthy_grace: expected a positive duration"));

  yaml = R"(name: svc
handlers:
  - name: become-primary
    on: [leader.elected]
    action: {kind: builtin, steps: []}
)";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "leader.elected", "handlers[0].on[0]") +
                                    "'leader.elected' is a leadership event, but the service "
                                    "declares no leadership (add `leadership: true`)");
  yaml = R"(name: svc
handlers:
  - name: primary-only
    when: [leader]
    action: {kind: builtin, steps: [{status: {state: active, message: primary}}]}
)";
  EXPECT_THAT(ServiceError(yaml),
              HasSubstr("names 'leader', but the service declares no leadership"));
}

TEST_F(DefinitionTest, WrongTypesAreRefused) {
  std::string yaml = R"(name: svc
handlers:
  - name: go
    when: {installed: true}
    action: {kind: builtin, steps: [{set: x}]}
)";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "when:", "handlers[0].when") + "expected a list, got a map");

  yaml = R"(name: svc
handlers:
  - name: go
    on: [install]
    timeout: soon
    action: {kind: builtin, steps: [{set: x}]}
)";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "timeout", "handlers[0].timeout") +
                "expected a positive duration such as 30 (seconds), 30s, 5m or 1h30m, got 'soon'");

  yaml = "name: [svc]\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "name", "name") + "expected a string, got a list");

  yaml = "name: svc\nhandlers:\n  - install\n";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "- install", "handlers[0]") + "expected a handler (a map), got 'install'");

  yaml = "name: svc\nconfig:\n  port: {type: integer}\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "port", "config.port.type") +
                                    "unknown type 'integer' (expected string, int, float or bool)");

  yaml = R"(name: svc
handlers:
  - name: go
    on: [install]
    action: {kind: script, command: [x]}
)";
  EXPECT_EQ(
      ServiceError(yaml),
      At(yaml, "kind: script", "handlers[0].action.kind") +
          "unknown action kind 'script' (expected exec, ansible, container, http or builtin)");

  yaml = R"(name: svc
handlers:
  - name: go
    on: [install]
    action:
      kind: http
      url: "http://x/"
      expect: [200, "ok"]
)";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "expect", "handlers[0].action.expect[1]") +
                                    "expected an int, got the string \"ok\" (write it without "
                                    "quotes)");
}

// `user:` (docs/service-definitions.md, "The user programs run as") is read as a name; whether
// the user exists is checked where the programs run (ExecUserTest). The builtin step
// retry-later takes a positive duration.
TEST_F(DefinitionTest, UserAndRetryLaterAreRead) {
  std::string yaml = R"(name: svc
user: postgres
handlers:
  - name: wait
    on: [install]
    action: {kind: builtin, steps: [{retry-later: 1m30s}]}
)";
  auto def = LoadService(yaml);
  ASSERT_TRUE(def.ok()) << def.status();
  EXPECT_EQ(def->user, "postgres");
  EXPECT_EQ(def->user_line, 2);
  const auto& builtin = std::get<BuiltinAction>(def->handlers[0].action.detail);
  ASSERT_EQ(builtin.steps.size(), 1u);
  EXPECT_EQ(builtin.steps[0].kind, BuiltinStep::Kind::kRetryLater);
  EXPECT_EQ(builtin.steps[0].delay, absl::Seconds(90));

  yaml = "name: svc\nuser: 1000\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "user", "user") +
                                    "'1000' is not a user name (letters, digits, '_', '-' and '.', "
                                    "starting with a letter or '_', at most 32)");
  yaml = R"(name: svc
handlers:
  - name: wait
    on: [install]
    action: {kind: builtin, steps: [{retry-later: soon}]}
)";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "retry-later", "handlers[0].action.steps[0].retry-later") +
                "expected a positive duration such as 30 (seconds), 30s, 5m or 1h30m, got 'soon'");
}

TEST_F(DefinitionTest, MissingRequiredFieldsAreRefused) {
  std::string yaml = "description: nameless\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "description", "") + "missing required field 'name'");

  yaml = R"(name: svc
handlers:
  - name: first
    on: [install]
    action: {kind: builtin, steps: [{set: x}]}
  - name: second
    on: [install]
)";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "name: second", "handlers[1]") + "missing required field 'action'");

  yaml = "name: svc\nrequires:\n  db:\n    description: no interface\n";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "db:", "requires.db") + "missing required field 'interface'");

  yaml = "name: svc\nconfig:\n  port: {default: 80}\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "port", "config.port") + "missing required field 'type'");
}

TEST_F(DefinitionTest, DuplicateNamesAreRefused) {
  std::string yaml = R"(name: svc
handlers:
  - name: go
    on: [install]
    action: {kind: builtin, steps: [{set: x}]}
  - name: go
    on: [start]
    action: {kind: builtin, steps: [{set: y}]}
)";
  EXPECT_EQ(ServiceError(yaml), absl::StrCat(Path("svc/service.yaml"),
                                             ":6: handlers[1].name: "
                                             "handler 'go' is already declared at line 3"));

  yaml = "name: svc\nprovides: {db: redis}\nrequires:\n  db: redis\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "  db: redis", "requires.db") +
                                    "endpoint 'db' is already declared at line 2 (provides)");

  yaml = "name: svc\nconfig:\n  port: {type: int}\n  port: {type: string}\n";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "port: {type: string}", "config.port") + "given twice (first at line 3)");
}

TEST_F(DefinitionTest, EndpointsNeedADefinedInterface) {
  const std::string yaml = "name: svc\nrequires:\n  db: mysql\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "db: mysql", "requires.db") +
                                    absl::StrCat("interface 'mysql' is not defined (looked for ",
                                                 Path("svc/interfaces/mysql.yaml"), " and ",
                                                 Path("shared/mysql.yaml"), ")"));

  const std::string map_form = "name: svc\nrequires:\n  db:\n    interface: mysql\n";
  EXPECT_THAT(ServiceError(map_form),
              StartsWith(At(map_form, "interface: mysql", "requires.db.interface") +
                         "interface 'mysql' is not defined"));
}

TEST_F(DefinitionTest, InterfaceFilesAreCheckedToo) {
  Write("svc/interfaces/cache.yaml", "required:\n  host: string\n  port: integer\n");
  EXPECT_EQ(ServiceError("name: svc\nrequires: {c: cache}\n"),
            absl::StrCat(Path("svc/interfaces/cache.yaml"),
                         ":3: required.port: unknown type 'integer' (expected string, int, float "
                         "or bool)"));

  Write("svc/interfaces/cache.yaml", "name: kv\nrequired: {host: string}\n");
  EXPECT_EQ(ServiceError("name: svc\nrequires: {c: cache}\n"),
            absl::StrCat(Path("svc/interfaces/cache.yaml"),
                         ":1: name: interface 'kv' must be in kv.yaml; this file defines "
                         "interface 'cache'"));

  Write("svc/interfaces/cache.yaml", "required: {host: string}\noptional: {host: string}\n");
  EXPECT_EQ(ServiceError("name: svc\nrequires: {c: cache}\n"),
            absl::StrCat(Path("svc/interfaces/cache.yaml"),
                         ":2: optional.host: key 'host' is already declared at line 1; a key is "
                         "required or optional"));

  // A local copy of a shared interface must be the same contract.
  Write("svc/interfaces/redis.yaml", "required: {host: string, port: string, password: string}\n");
  EXPECT_THAT(ServiceError("name: svc\nrequires: {db: redis}\n"),
              HasSubstr(absl::StrCat("requires.db: interface 'redis' is defined differently in ",
                                     Path("svc/interfaces/redis.yaml"), " and ",
                                     Path("shared/redis.yaml"))));
  Write("svc/interfaces/redis.yaml", kRedis);
  EXPECT_TRUE(LoadService("name: svc\nrequires: {db: redis}\n").ok());
}

TEST_F(DefinitionTest, HandlersNamingUnknownEndpointsAreRefused) {
  const std::string head = "name: svc\nrequires: {db: redis}\nhandlers:\n  - name: go\n";
  const std::string tail = "    action: {kind: builtin, steps: [{set: x}]}\n";

  std::string yaml = head + "    when: [installed, dbx.ready]\n" + tail;
  EXPECT_EQ(ServiceError(yaml), At(yaml, "dbx.ready", "handlers[0].when[1]") +
                                    "'dbx.ready' names endpoint 'dbx', which this service does "
                                    "not declare (endpoints: db)");

  yaml = head + "    when: [db.redy]\n" + tail;
  EXPECT_EQ(ServiceError(yaml), At(yaml, "db.redy", "handlers[0].when[0]") +
                                    "'db.redy' names endpoint 'db', whose facts are db.joined, "
                                    "db.ready and db.remote.<key>");

  yaml = head + "    when_not: cache.joined\n" + tail;
  EXPECT_EQ(ServiceError(yaml), At(yaml, "cache.joined", "handlers[0].when_not") +
                                    "'cache.joined' names endpoint 'cache', which this service "
                                    "does not declare (endpoints: db)");

  yaml = head + "    when: [db.remote.hots]\n" + tail;
  EXPECT_EQ(ServiceError(yaml), At(yaml, "db.remote.hots", "handlers[0].when[0]") +
                                    "'db.remote.hots' names key 'hots', which interface 'redis' "
                                    "does not let the providing side publish (keys: host, "
                                    "password, port)");

  yaml = head + "    on: [dbx.changed]\n" + tail;
  EXPECT_EQ(ServiceError(yaml), At(yaml, "dbx.changed", "handlers[0].on[0]") +
                                    "'dbx.changed' names endpoint 'dbx', which this service does "
                                    "not declare (endpoints: db)");

  yaml = head + "    when: [x]\n    when_not: [x]\n" + tail;
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "when_not", "handlers[0].when_not[0]") + "'x' is in both when and when_not");
}

TEST_F(DefinitionTest, OnNamingUnknownEventsIsRefused) {
  const std::string head =
      "name: svc\nrequires: {db: redis}\nevents: {app.restarted: }\nhandlers:\n  - name: go\n";
  const std::string tail = "    action: {kind: builtin, steps: [{set: x}]}\n";

  std::string yaml = head + "    on: [instal]\n" + tail;
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "instal", "handlers[0].on[0]") +
                "'instal' is not an event this service knows: expected install, start, stop, "
                "update, config.changed, timer.<name>, file.changed.<path>, action.<action>, "
                "workload.healthy|unhealthy, "
                "<endpoint>.joined|changed|departed|broken or an event declared under events "
                "(events: app.restarted)");

  yaml = head + "    on: [db.ready]\n" + tail;
  EXPECT_EQ(ServiceError(yaml), At(yaml, "db.ready", "handlers[0].on[0]") +
                                    "'db.ready' names endpoint 'db', whose events are "
                                    "db.joined, .changed, .departed and .broken");

  yaml = head + "    on: [config.change]\n" + tail;
  EXPECT_EQ(ServiceError(yaml), At(yaml, "config.change", "handlers[0].on[0]") +
                                    "'config.change' is not an event: the config event is "
                                    "config.changed");

  yaml = head + "    on: [action.backup]\n" + tail;
  EXPECT_EQ(ServiceError(yaml), At(yaml, "action.backup", "handlers[0].on[0]") +
                                    "'action.backup' names action 'backup', which this service "
                                    "does not declare under actions (actions: none)");

  yaml = head + "    on: [file.modified.x]\n" + tail;
  EXPECT_EQ(ServiceError(yaml), At(yaml, "file.modified", "handlers[0].on[0]") +
                                    "'file.modified.x' is not an event: file events are "
                                    "file.changed.<path>");

  // Every kind of event that exists is accepted.
  yaml = head +
         "    on: [install, start, stop, update, config.changed, timer.rotate, "
         "file.changed./etc/x, db.joined, db.changed, db.departed, db.broken, app.restarted]\n" +
         tail;
  EXPECT_TRUE(LoadService(yaml).ok()) << LoadService(yaml).status();
}

TEST_F(DefinitionTest, ConfigDefaultsMustHaveTheOptionType) {
  std::string yaml = "name: svc\nconfig:\n  port: {type: int, default: eighty}\n";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "port", "config.port.default") + "expected an int, got 'eighty'");

  yaml = "name: svc\nconfig:\n  port: {type: int, default: \"8080\"}\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "port", "config.port.default") +
                                    "expected an int, got the string \"8080\" (write it without "
                                    "quotes)");

  yaml = "name: svc\nconfig:\n  debug:\n    type: bool\n    default: yes\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "default", "config.debug.default") +
                                    "expected a bool (true or false), got 'yes'");

  yaml = "name: svc\nconfig:\n  ratio: {type: float, default: [1]}\n";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "ratio", "config.ratio.default") + "expected a float, got a list");
}

TEST_F(DefinitionTest, TemplatesAreChecked) {
  const std::string head =
      "name: svc\nconfig: {port: {type: int}}\nactions:\n  go: {params: {level: {type: int}}}\n"
      "handlers:\n  - name: go\n";
  std::string yaml = head + "    on: [install]\n" +
                     "    action: {kind: builtin, steps: [{set: \"p={{config.prot}}\"}]}\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "config.prot", "handlers[0].action.steps[0].set") +
                                    "'{{config.prot}}' names config option 'prot', which this "
                                    "service does not declare (options: port)");

  yaml = head + "    on: [action.go]\n" +
         "    action: {kind: builtin, steps: [{set: \"p={{event.levle}}\"}]}\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "event.levle", "handlers[0].action.steps[0].set") +
                                    "'{{event.levle}}' names parameter 'levle', which action "
                                    "'go' does not declare (parameters: level)");

  yaml = head + "    when: [x]\n" +
         "    action: {kind: builtin, steps: [{set: \"p={{event.level}}\"}]}\n" +
         "  - {name: other, on: [action.go], action: {kind: builtin, steps: [{set: y}]}}\n";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "event.level", "handlers[0].action.steps[0].set") +
                "'{{event.level}}' refers to an event parameter, but the handler has no `on` "
                "events");

  yaml = head + "    on: [action.go]\n" +
         "    action: {kind: exec, command: [/bin/echo, \"{{config.port\"]}\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "{{config.port\"", "handlers[0].action.command[1]") +
                                    "unterminated '{{' in '{{config.port' (a reference is "
                                    "{{config.<option>}}, {{fact.<name>}} or {{event.<param>}})");

  yaml = head + "    on: [action.go]\n" +
         "    action: {kind: exec, command: [/bin/echo, \"{{ env.HOME }}\"]}\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "env.HOME", "handlers[0].action.command[1]") +
                                    "'{{env.HOME}}' is not a reference: expected "
                                    "{{config.<option>}}, {{fact.<name>}} or {{event.<param>}}");
}

TEST_F(DefinitionTest, ActionFieldsAreChecked) {
  const std::string head =
      "name: svc\nprovides: {website: http}\nrequires: {db: redis}\nevents: {e: }\n"
      "handlers:\n  - name: go\n    on: [install]\n    action:\n";

  std::string yaml = head + "      kind: builtin\n      steps:\n        - set: db.ready\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "set: db.ready", "handlers[0].action.steps[0].set") +
                                    "'db.ready' is a relationship fact of endpoint 'db': "
                                    "handlers read it but cannot set or clear it");

  yaml = head +
         "      kind: builtin\n      steps:\n"
         "        - relation-set: {endpoint: website, key: hots, value: x}\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "hots", "handlers[0].action.steps[0].relation-set.key") +
                                    "interface 'http' does not let the providing side publish "
                                    "'hots' (keys: host, path, port)");

  yaml = head +
         "      kind: builtin\n      steps:\n"
         "        - relation-set: {endpoint: website, key: port, value: http}\n";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "value: http", "handlers[0].action.steps[0].relation-set.value") +
                "interface 'http': key 'port': expected an int, got 'http'");

  yaml = head +
         "      kind: builtin\n      steps:\n"
         "        - relation-set: {endpoint: db, key: host, value: x}\n";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "key: host", "handlers[0].action.steps[0].relation-set.key") +
                "interface 'redis' does not let the requiring side publish "
                "'host' (keys: none)");

  yaml = head + "      kind: builtin\n      steps:\n        - status: {state: happy}\n";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "happy", "handlers[0].action.steps[0].status.state") +
                "unknown state 'happy' (expected maintenance, blocked, waiting, active or error)");

  yaml = head + "      kind: builtin\n      steps:\n        - fire: f\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "fire: f", "handlers[0].action.steps[0].fire") +
                                    "'f' is not declared under events (events: e)");

  yaml = head + "      kind: builtin\n      steps:\n        - {set: a, clear: b}\n";
  EXPECT_THAT(ServiceError(yaml), StartsWith(At(yaml, "set: a", "handlers[0].action.steps[0]") +
                                             "a step is a map with one key: "));

  yaml = head + "      kind: exec\n      command: [./missing.sh]\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "missing.sh", "handlers[0].action.command[0]") +
                                    absl::StrCat("'./missing.sh' is not a file in ", Path("svc")));

  yaml = head + "      kind: ansible\n      playbook: site.yml\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "site.yml", "handlers[0].action.playbook") +
                                    absl::StrCat("'site.yml' is not a file in ", Path("svc")));

  yaml = head + "      kind: container\n      image: x\n      ports: [\"80:http\"]\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "80:http", "handlers[0].action.ports[0]") +
                                    "expected '<host port>:<container port>' or '<port>' with "
                                    "ports from 1 to 65535, got '80:http'");

  yaml = head + "      kind: container\n      image: x\n      state: paused\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "paused", "handlers[0].action.state") +
                                    "unknown state 'paused' (expected running, stopped or absent)");

  yaml = head + "      kind: http\n      url: ftp://x/\n";
  EXPECT_EQ(ServiceError(yaml), At(yaml, "ftp:", "handlers[0].action.url") +
                                    "expected an http:// or https:// URL, got 'ftp://x/'");

  yaml = head + "      kind: http\n      url: http://x/\n      facts: {id: \"xml:/id\"}\n";
  EXPECT_THAT(ServiceError(yaml), StartsWith(At(yaml, "xml:", "handlers[0].action.facts.id") +
                                             "unknown response source 'xml:/id'"));
}

TEST_F(DefinitionTest, ActionsNeedAHandler) {
  const std::string yaml = "name: svc\nactions:\n  backup: {description: Backs up.}\n";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "backup", "actions.backup") + "no handler is on 'action.backup'");
}

// `dying:` says whether a handler runs while its unit is being removed (docs/engine.md, "A unit's
// life"); unset, the engine decides (handlers on stop, or needing the fact dying, do).
TEST_F(DefinitionTest, HandlersSayWhetherTheyRunWhileDying) {
  auto def = LoadService(R"(name: svc
handlers:
  - {name: stop, on: [stop], action: {kind: builtin, steps: [{set: stopped}]}}
  - {name: cleanup, on: [install], dying: true, action: {kind: builtin, steps: [{set: a}]}}
  - {name: keep, on: [install], dying: false, action: {kind: builtin, steps: [{set: b}]}}
)");
  ASSERT_TRUE(def.ok()) << def.status();
  ASSERT_EQ(def->handlers.size(), 3u);
  EXPECT_EQ(def->handlers[0].while_dying, std::nullopt);
  EXPECT_EQ(def->handlers[1].while_dying, std::optional<bool>(true));
  EXPECT_EQ(def->handlers[2].while_dying, std::optional<bool>(false));

  const std::string yaml = R"(name: svc
handlers:
  - name: odd
    when: [dying]
    dying: false
    action: {kind: builtin, steps: [{set: a}]}
)";
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "dying: false", "handlers[0].dying") +
                "'dying: false' contradicts 'when: [dying]': the fact is set only while the unit "
                "is dying");
}

}  // namespace
}  // namespace parley::services
