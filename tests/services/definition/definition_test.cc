// Service definitions and models (docs/service-definitions.md): every field of the format parses,
// builtin actions run end to end on a real engine and KB, and each kind of bad input is refused
// with the file, line and field named.

#include "services/definition/definition.h"

#include "services/backends/builtin/builtin_action.h"
#include "services/backends/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/clock.h"
#include "engine/engine.h"
#include "kb/kb.h"
#include "kb/store.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::StartsWith;

constexpr char kRedis[] = R"(name: redis
description: Address and credentials of a Redis server.
required:
  host: {type: string, description: Address clients connect to.}
  port: {type: int}
  password: string
)";

constexpr char kHttp[] = R"(name: http
required: {host: string, port: int}
optional: {path: string}
)";

// The 1-based number of the first line of `text` that contains `needle`, 0 if none does.
int LineOf(const std::string& text, const std::string& needle) {
  int line = 1;
  for (absl::string_view l : absl::StrSplit(text, '\n')) {
    if (absl::StrContains(l, needle)) return line;
    ++line;
  }
  ADD_FAILURE() << "no line contains '" << needle << "'";
  return 0;
}

class DefinitionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Write("shared/redis.yaml", kRedis);
    Write("shared/http.yaml", kHttp);
  }

  // Writes `text` to `rel` in the temp dir and returns its path.
  std::string Write(const std::string& rel, const std::string& text) {
    const std::string path = dir_.Sub(rel);
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream(path) << text;
    return path;
  }

  std::string Path(const std::string& rel) const { return dir_.Sub(rel); }

  absl::StatusOr<ServiceDefinition> LoadService(const std::string& yaml,
                                                const std::string& name = "svc") {
    Write(name + "/service.yaml", yaml);
    return LoadServiceDefinition(Path(name), Path("shared"));
  }

  // Loads `yaml` as svc/service.yaml, expects it refused, and returns the message.
  std::string ServiceError(const std::string& yaml) {
    auto def = LoadService(yaml);
    EXPECT_FALSE(def.ok()) << "accepted:\n" << yaml;
    if (def.ok()) return "";
    EXPECT_TRUE(absl::IsInvalidArgument(def.status())) << def.status();
    return std::string(def.status().message());
  }

  // The start every error about svc/service.yaml has: "<file>:<line of needle>: <field>: ".
  std::string At(const std::string& yaml, const std::string& needle, const std::string& field) {
    return absl::StrCat(Path("svc/service.yaml"), ":", LineOf(yaml, needle), ": ", field,
                        field.empty() ? "" : ": ");
  }

  ::parley::testing::TempDir dir_;
};

// ---------------------------------------------------------------------------------------------
// Valid definitions.

constexpr char kEveryKind[] = R"(name: webapp
description: A small web application.
requires:
  db: redis
provides:
  website:
    interface: http
    description: Where the app serves.
peers:
  cluster: {interface: webapp-peers}
config:
  port: {type: int, default: 8080, description: Port to serve on.}
  title: {type: string, default: Parley}
  debug: {type: bool, default: false}
  ratio: {type: float, default: 0.5}
  token: {type: string}
actions:
  rename:
    description: Sets the title.
    params:
      title: {type: string, required: true}
      shout: {type: bool, default: false}
events:
  app.restarted: Fired after the app restarts.
handlers:
  - name: install
    on: [install]
    timeout: 5m
    action:
      kind: exec
      command: [./bin/install, --port, "{{config.port}}"]
      env: {TITLE: "{{ config.title }}"}
  - name: configure
    when: [db.ready, db.remote.host]
    when_not: configured
    action:
      kind: ansible
      playbook: playbooks/site.yml
      vars: {redis_host: "{{fact.db.remote.host}}"}
  - name: run
    on: [start, config.changed]
    timeout: 90
    action:
      kind: container
      image: "webapp:{{config.title}}"
      command: [serve, --debug]
      env: {REDIS_HOST: "{{fact.db.remote.host}}"}
      ports: ["{{config.port}}:80", 9090, "8443:443"]
  - name: register
    when: [website.joined]
    action:
      kind: http
      method: POST
      url: "http://registry.local/services/{{config.title}}"
      body: '{"port": {{config.port}}}'
      headers: {Content-Type: application/json}
      expect: [200, 201]
      facts: {registry.id: "json:/id", registry.status: status, registry.etag: "header:ETag"}
  - name: rename
    on: action.rename
    action:
      kind: builtin
      steps:
        - set: title={{event.title}}
        - clear: configured
        - relation-set: {endpoint: website, key: path, value: "/{{event.title}}"}
        - status: {state: active, message: "renamed to {{event.title}}"}
        - fire: app.restarted
)";

class EveryKindTest : public DefinitionTest {
 protected:
  void SetUp() override {
    DefinitionTest::SetUp();
    Write("svc/bin/install", "#!/bin/sh\n");
    Write("svc/playbooks/site.yml", "- hosts: all\n");
    Write("svc/interfaces/webapp-peers.yaml", "required: {address: string}\n");
  }
};

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

TEST_F(EveryKindTest, BuildSpecTakesRequiredKeysFromTheRemoteSide) {
  auto def = LoadService(kEveryKind);
  ASSERT_TRUE(def.ok()) << def.status();
  // A registry with the builtin kind only refuses the others, naming what it runs.
  BackendRegistry builtin;
  builtin.Add(ActionKind::kBuiltin, MakeBuiltinAction);
  auto refused = BuildSpec(*def, "web/0", builtin);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::IsUnimplemented(refused.status())) << refused.status();
  EXPECT_EQ(refused.status().message(),
            absl::StrCat(Path("svc/service.yaml"), ":", LineOf(kEveryKind, "kind: exec") - 1,
                         ": handler 'install': action kind 'exec' has no backend here (this "
                         "one runs builtin)"));

  // A factory that makes every kind: the spec carries endpoints, handlers and names.
  class AnyKind : public ActionFactory {
   public:
    absl::StatusOr<std::unique_ptr<engine::Action>> Make(const ServiceDefinition&,
                                                         const HandlerDef& h) override {
      kinds.push_back(std::string(ActionKindName(h.action.kind())));
      return engine::MakeAction([](engine::RunContext&) { return absl::OkStatus(); });
    }
    std::vector<std::string> kinds;
  } any;
  auto spec = BuildSpec(*def, "web/3", any);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_THAT(any.kinds, ElementsAre("exec", "ansible", "container", "http", "builtin"));
  EXPECT_EQ(spec->service, "web");
  EXPECT_EQ(spec->unit, "web/3");
  ASSERT_EQ(spec->endpoints.size(), 3u);
  EXPECT_EQ(spec->endpoints[0].name, "website");
  EXPECT_THAT(spec->endpoints[0].required_keys, IsEmpty());  // requirers publish nothing
  EXPECT_EQ(spec->endpoints[1].name, "db");
  EXPECT_THAT(spec->endpoints[1].required_keys, ElementsAre("host", "port", "password"));
  EXPECT_THAT(spec->endpoints[2].required_keys, ElementsAre("address"));
  ASSERT_EQ(spec->handlers.size(), 5u);
  EXPECT_EQ(spec->handlers[1].name, "configure");
  EXPECT_THAT(spec->handlers[1].when_not, ElementsAre("configured"));

  EXPECT_FALSE(BuildSpec(*def, "web", any).ok());
  EXPECT_FALSE(BuildSpec(*def, "Web/0", any).ok());
  EXPECT_FALSE(BuildSpec(*def, "web/x", any).ok());
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

TEST(RelationDataTest, ValidatesKeysAndTypesPerSide) {
  InterfaceSchema s;
  s.name = "db";
  s.provider.keys = {{"host", ValueType::kString, true, "", 1},
                     {"port", ValueType::kInt, true, "", 2},
                     {"ratio", ValueType::kFloat, false, "", 3},
                     {"tls", ValueType::kBool, false, "", 4}};
  s.requirer.keys = {{"user", ValueType::kString, false, "", 5}};
  EXPECT_TRUE(ValidateRelationData(s, "host", "").ok());
  EXPECT_TRUE(ValidateRelationData(s, "port", "6379").ok());
  EXPECT_TRUE(ValidateRelationData(s, "port", "-1").ok());
  EXPECT_TRUE(ValidateRelationData(s, "ratio", "0.25").ok());
  EXPECT_TRUE(ValidateRelationData(s, "ratio", "1e3").ok());
  EXPECT_TRUE(ValidateRelationData(s, "tls", "false").ok());
  EXPECT_TRUE(ValidateRelationData(s, "user", "app", engine::Role::kRequires).ok());
  EXPECT_TRUE(ValidateRelationData(s, "port", "1", engine::Role::kPeers).ok());

  EXPECT_EQ(ValidateRelationData(s, "port", "63 79").message(),
            "interface 'db': key 'port': expected an int, got '63 79'");
  EXPECT_FALSE(ValidateRelationData(s, "port", " 6379").ok());
  EXPECT_FALSE(ValidateRelationData(s, "port", "6379.5").ok());
  EXPECT_FALSE(ValidateRelationData(s, "port", "").ok());
  EXPECT_FALSE(ValidateRelationData(s, "ratio", "nan").ok());
  EXPECT_FALSE(ValidateRelationData(s, "ratio", "fast").ok());
  EXPECT_EQ(ValidateRelationData(s, "tls", "yes").message(),
            "interface 'db': key 'tls': expected a bool (true or false), got 'yes'");
  EXPECT_EQ(ValidateRelationData(s, "user", "app").message(),
            "interface 'db': the providing side publishes no key 'user' (keys: host, port, "
            "ratio, tls)");
  EXPECT_EQ(ValidateRelationData(s, "host", "h", engine::Role::kRequires).message(),
            "interface 'db': the requiring side publishes no key 'host' (keys: user)");
}

// ---------------------------------------------------------------------------------------------
// Builtin actions on a real engine.

constexpr char kBuiltinService[] = R"(name: web
requires:
  db: redis
provides:
  website: http
config:
  port: {type: int, default: 8080}
  title: {type: string}
actions:
  rename:
    params:
      title: {type: string, required: true}
  move:
    params:
      port: {type: string, required: true}
events:
  app.published: Fired once the website data is out.
  show-title: Shows the configured title.
  copy-fact: Copies a fact nobody set.
handlers:
  - name: install
    on: [install]
    action:
      kind: builtin
      steps:
        - set: installed
        - status: {state: maintenance, message: "installing on port {{config.port}}"}
  - name: connect
    when: [db.ready, installed]
    action:
      kind: builtin
      steps:
        - set: "redis={{fact.db.remote.host}}:{{fact.db.remote.port}}"
        - status: {state: active, message: "using redis at {{ fact.redis }}"}
  - name: publish
    when: [website.joined, installed]
    action:
      kind: builtin
      steps:
        - relation-set: {endpoint: website, key: host, value: 10.0.0.5}
        - relation-set: {endpoint: website, key: port, value: "{{config.port}}"}
        - fire: app.published
  - name: announce
    on: [app.published]
    action: {kind: builtin, steps: [{set: "published=http://10.0.0.5:{{config.port}}/"}]}
  - name: republish
    when: [website.joined]
    on: [config.changed]
    action:
      kind: builtin
      steps: [{relation-set: {endpoint: website, key: port, value: "{{config.port}}"}}]
  - name: rename
    on: [action.rename]
    action: {kind: builtin, steps: [{set: "title={{event.title}}"}, {clear: installed}]}
  - name: move
    on: [action.move]
    action:
      kind: builtin
      steps: [{relation-set: {endpoint: website, key: port, value: "{{event.port}}"}}]
  - name: show-title
    on: [show-title]
    action: {kind: builtin, steps: [{status: {state: active, message: "{{config.title}}"}}]}
  - name: copy
    on: [copy-fact]
    action: {kind: builtin, steps: [{set: "copy={{fact.nothing}}"}]}
)";

v1::Event Named(std::string name, std::map<std::string, std::string> params = {}) {
  v1::Event e;
  e.set_name(std::move(name));
  for (auto& [k, v] : params) (*e.mutable_params())[k] = v;
  return e;
}

v1::Event Joined(std::string endpoint, std::string id, std::string unit,
                 std::vector<std::pair<std::string, std::string>> data = {}) {
  v1::Event e;
  e.set_name(endpoint + ".joined");
  auto* r = e.mutable_relation();
  r->set_relation_id(id);
  r->set_endpoint(endpoint);
  r->set_remote_service(unit.substr(0, unit.find('/')));
  r->set_remote_unit(unit);
  r->set_kind(v1::RELATION_EVENT_KIND_JOINED);
  for (auto& [k, v] : data) {
    auto* c = r->add_unit_changes();
    c->set_key(k);
    c->set_value(v);
  }
  return e;
}

class BuiltinEngineTest : public DefinitionTest {
 protected:
  void SetUp() override {
    DefinitionTest::SetUp();
    auto def = LoadService(kBuiltinService);
    ASSERT_TRUE(def.ok()) << def.status();
    BackendRegistry factory;
    factory.Add(ActionKind::kBuiltin, MakeBuiltinAction);
    auto spec = BuildSpec(*def, "web/0", factory);
    ASSERT_TRUE(spec.ok()) << spec.status();
    kb::StoreOptions o;
    o.durability = kb::Durability::kGroupCommit;
    auto store = kb::Store::Open(Path("kb"), o);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto kb = kb::Kb::Open(store_.get(), "web/0");
    ASSERT_TRUE(kb.ok()) << kb.status();
    kb_ = std::move(*kb);
    auto engine = engine::Engine::Create(std::move(*spec), kb_.get(), &clock_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }

  engine::RunResult Run(v1::Event e) {
    auto id = engine_->Enqueue(std::move(e));
    EXPECT_TRUE(id.ok()) << id.status();
    auto r = engine_->RunOnce();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : engine::RunResult{};
  }

  std::map<std::string, std::string> LocalBag(const std::string& relation) {
    auto bag = engine_->Bag(relation, "lu");
    EXPECT_TRUE(bag.ok()) << bag.status();
    return bag.ok() ? *bag : std::map<std::string, std::string>{};
  }

  base::ManualClock clock_;
  std::unique_ptr<kb::Store> store_;
  std::unique_ptr<kb::Kb> kb_;
  std::unique_ptr<engine::Engine> engine_;
};

TEST_F(BuiltinEngineTest, StepsSetFactsRelationDataAndStatus) {
  EXPECT_EQ(Run(Named("install")).outcome, engine::RunOutcome::kCommitted);
  EXPECT_EQ(engine_->FactValue("installed"), "");
  EXPECT_EQ(engine_->workload_status().state(), v1::WORKLOAD_STATE_MAINTENANCE);
  EXPECT_EQ(engine_->workload_status().message(), "installing on port 8080");  // the default

  // A load balancer joins: publish writes the website data, fires app.published, announce runs.
  engine::RunResult r = Run(Joined("website", "website:1", "lb/0"));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kCommitted);
  EXPECT_THAT(LocalBag("website:1"), ElementsAre(Pair("host", "10.0.0.5"), Pair("port", "8080")));
  EXPECT_EQ(engine_->FactValue("published"), "http://10.0.0.5:8080/");
  ASSERT_TRUE(r.trace);
  ASSERT_EQ(r.trace->messages_size(), 1);
  EXPECT_EQ(r.trace->messages(0).destination(), "lb/0");

  // Redis joins with its data: facts from relation data expand in templates.
  Run(Joined("db", "db:1", "redis/0",
             {{"host", "10.0.0.9"}, {"port", "6379"}, {"password", "secret"}}));
  EXPECT_EQ(engine_->FactValue("redis"), "10.0.0.9:6379");
  EXPECT_EQ(engine_->workload_status().state(), v1::WORKLOAD_STATE_ACTIVE);
  EXPECT_EQ(engine_->workload_status().message(), "using redis at 10.0.0.9:6379");

  // The run's config wins over the default.
  v1::Event changed = Named("config.changed");
  auto* c = changed.add_config_changes();
  c->set_key("port");
  c->set_value("9090");
  Run(std::move(changed));
  EXPECT_EQ(LocalBag("website:1").at("port"), "9090");

  // Event parameters; clear.
  Run(Named("action.rename", {{"title", "Hello"}}));
  EXPECT_EQ(engine_->FactValue("title"), "Hello");
  EXPECT_FALSE(engine_->IsSet("installed"));
}

TEST_F(BuiltinEngineTest, UnresolvedReferenceFailsTheRunNamingTheHandler) {
  // `title` has no default and the model gave none.
  engine::RunResult r = Run(Named("show-title"));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_EQ(engine_->failure()->handler(), "show-title");
  EXPECT_THAT(engine_->failure()->message(),
              HasSubstr(absl::StrCat("handler 'show-title': ", Path("svc/service.yaml"), ":",
                                     LineOf(kBuiltinService, "message: \"{{config.title}}\""),
                                     ": '{{config.title}}': config option 'title' has no value "
                                     "and no default")));
  EXPECT_EQ(engine_->workload_status().state(), v1::WORKLOAD_STATE_UNSPECIFIED);
}

TEST_F(BuiltinEngineTest, RelationDataIsCheckedAgainstTheInterface) {
  Run(Named("install"));
  Run(Joined("website", "website:1", "lb/0"));
  ASSERT_EQ(LocalBag("website:1").at("port"), "8080");
  engine::RunResult r = Run(Named("action.move", {{"port", "eighty"}}));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_THAT(engine_->failure()->message(),
              HasSubstr(absl::StrCat("handler 'move': ", Path("svc/service.yaml"), ":",
                                     LineOf(kBuiltinService, "value: \"{{event.port}}\""),
                                     ": relation-set website.port: interface 'http': key "
                                     "'port': expected an int, got 'eighty'")));
  EXPECT_EQ(LocalBag("website:1").at("port"), "8080");  // rolled back
}

TEST_F(BuiltinEngineTest, MissingEventParameterFailsTheRun) {
  engine::RunResult r = Run(Named("action.rename"));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_THAT(engine_->failure()->message(),
              HasSubstr("'{{event.title}}': event 'action.rename' has no parameter 'title'"));
  EXPECT_FALSE(engine_->IsSet("title"));
}

TEST_F(BuiltinEngineTest, UnsetFactFailsTheRun) {
  engine::RunResult r = Run(Named("copy-fact"));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_THAT(engine_->failure()->message(), HasSubstr("handler 'copy': "));
  EXPECT_THAT(engine_->failure()->message(),
              HasSubstr("'{{fact.nothing}}': fact 'nothing' is not set"));
  EXPECT_FALSE(engine_->IsSet("copy"));
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
  EXPECT_EQ(ServiceError(yaml),
            At(yaml, "handler:", "") +
                "unknown key 'handler' (expected name, description, provides, requires, peers, "
                "config, handlers, actions, events)");

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

// ---------------------------------------------------------------------------------------------
// Models.

constexpr char kWebService[] = R"(name: webapp
requires: {db: redis}
provides: {website: http}
peers: {cluster: http}
config:
  port: {type: int, default: 8080}
  debug: {type: bool, default: false}
)";

constexpr char kRedisService[] = R"(name: redis
provides: {db: redis}
requires: {web: http}
config:
  password: {type: string}
)";

class ModelTest : public DefinitionTest {
 protected:
  void SetUp() override {
    DefinitionTest::SetUp();
    Write("defs/webapp/service.yaml", kWebService);
    Write("defs/redis/service.yaml", kRedisService);
  }

  // Writes `yaml` as stack/model.yaml, loads it, expects it refused and returns the message.
  std::string ModelError(const std::string& yaml) {
    auto model = LoadModel(Write("stack/model.yaml", yaml));
    EXPECT_FALSE(model.ok()) << "accepted:\n" << yaml;
    return model.ok() ? "" : std::string(model.status().message());
  }

  std::string ModelAt(const std::string& yaml, const std::string& needle,
                      const std::string& field) {
    return absl::StrCat(Path("stack/model.yaml"), ":", LineOf(yaml, needle), ": ", field,
                        field.empty() ? "" : ": ");
  }
};

constexpr char kModel[] = R"(description: A web app and its database.
interfaces: ../shared
services:
  web:
    definition: ../defs/webapp
    units: 3
    config: {port: 9000, debug: true}
  cache:
    definition: ../defs/redis
    config:
      password: 1234
relations:
  - [web:db, cache:db]
  - [cache:web, web:website]
)";

TEST_F(ModelTest, LoadsServicesRelationsAndConfig) {
  auto model = LoadModel(Write("stack/model.yaml", kModel));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->description, "A web app and its database.");
  EXPECT_EQ(model->interfaces_dir, Path("shared"));
  ASSERT_EQ(model->services.size(), 2u);
  const ModelService& web = model->services[0];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.definition_path, "../defs/webapp");
  EXPECT_EQ(web.definition_dir, Path("defs/webapp"));
  EXPECT_EQ(web.definition.name, "webapp");
  EXPECT_EQ(web.units, 3);
  EXPECT_THAT(web.config, ElementsAre(Pair("debug", "true"), Pair("port", "9000")));
  EXPECT_EQ(model->services[1].units, 1);
  EXPECT_THAT(model->services[1].config, ElementsAre(Pair("password", "1234")));
  ASSERT_EQ(model->relations.size(), 2u);
  EXPECT_EQ(model->relations[0].a.service, "web");
  EXPECT_EQ(model->relations[0].a.endpoint, "db");
  EXPECT_EQ(model->relations[0].b.service, "cache");
  EXPECT_EQ(model->relations[1].line, LineOf(kModel, "[cache:web"));
  EXPECT_EQ(model->FindService("cache")->definition.name, "redis");
}

TEST_F(ModelTest, BadModelsAreRefused) {
  const std::string head =
      "interfaces: ../shared\nservices:\n  web: {definition: ../defs/webapp}\n"
      "  cache: {definition: ../defs/redis}\nrelations:\n";

  std::string yaml = head + "  - [web:db, redsi:db]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "redsi", "relations[0][1]") +
                                  "service 'redsi' is not in this model (services: web, cache)");

  yaml = head + "  - [web:dbx, cache:db]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "dbx", "relations[0][0]") +
                                  "service 'web' (definition 'webapp') has no endpoint 'dbx' "
                                  "(endpoints: website, db, cluster)");

  yaml = head + "  - [web:db, cache:web]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "cache:web", "relations[0]") +
                                  "web:db has interface 'redis' but cache:web has interface "
                                  "'http'");

  yaml = head + "  - [web:website, web:cluster]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "web:cluster", "relations[0]") +
                                  "web:website (provides) cannot relate to web:cluster (peers): "
                                  "a relation joins provides to requires, or peers to peers");

  yaml = head + "  - [cache:web, web:website]\n  - [web:website, cache:web]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "[web:website, cache:web]", "relations[1]") +
                                  "the same relation as relations[0]");

  yaml = head + "  - [web.db, cache:db]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "web.db", "relations[0][0]") +
                                  "expected '<service>:<endpoint>', got 'web.db'");

  yaml = head + "  - [web:db]\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "[web:db]", "relations[0]") +
                                  "expected a pair [<service>:<endpoint>, <service>:<endpoint>], "
                                  "got a list");

  yaml =
      "interfaces: ../shared\nservices:\n  web:\n    definition: ../defs/webapp\n"
      "    units: 0\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "units", "services.web.units") +
                                  "expected an int from 1 to 100000, got 0");

  yaml =
      "interfaces: ../shared\nservices:\n  web:\n    definition: ../defs/webapp\n"
      "    units: two\n";
  EXPECT_EQ(ModelError(yaml),
            ModelAt(yaml, "units", "services.web.units") + "expected an int, got 'two'");

  yaml =
      "interfaces: ../shared\nservices:\n  web:\n    definition: ../defs/webapp\n"
      "    config: {prot: 1}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "prot", "services.web.config.prot") +
                                  "'prot' is not a config option of definition 'webapp' "
                                  "(options: port, debug)");

  yaml =
      "interfaces: ../shared\nservices:\n  web:\n    definition: ../defs/webapp\n"
      "    config: {debug: maybe}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "debug", "services.web.config.debug") +
                                  "expected a bool (true or false), got 'maybe'");

  yaml = "interfaces: ../shared\nservices:\n  web:\n    definitoin: ../defs/webapp\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "definitoin", "services.web") +
                                  "unknown key 'definitoin' (expected definition, units, config, host)");

  yaml = "interfaces: ../shared\nservices:\n  web: {units: 2}\n";
  EXPECT_EQ(ModelError(yaml),
            ModelAt(yaml, "web:", "services.web") + "missing required field 'definition'");

  yaml = "interfaces: ../shared\nservices:\n  Web: {definition: ../defs/webapp}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "Web:", "services.Web") +
                                  "service name 'Web' must be lowercase letters, digits and '-', "
                                  "starting with a letter");

  yaml = "interfaces: ../shared\nservicse: {}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "servicse", "") +
                                  "unknown key 'servicse' (expected description, interfaces, "
                                  "hosts, services, relations)");
}

TEST_F(ModelTest, HostsPlaceServicesOnOtherParleyds) {
  const std::string ok =
      "interfaces: ../shared\nhosts:\n  east: {address: '10.77.0.1:7000', model_root: /srv/m}\n"
      "services:\n  web: {definition: ../defs/webapp, host: east}\n"
      "  cache: {definition: ../defs/redis}\n";
  auto model = LoadModel(Write("stack/model.yaml", ok));
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(model->hosts.size(), 1u);
  EXPECT_EQ(model->hosts[0].name, "east");
  EXPECT_EQ(model->hosts[0].address, "10.77.0.1:7000");
  EXPECT_EQ(model->hosts[0].model_root, "/srv/m");
  EXPECT_EQ(model->FindService("web")->host, "east");
  EXPECT_EQ(model->FindService("cache")->host, "local");

  std::string yaml =
      "hosts:\n  east: {address: '10.77.0.1'}\nservices:\n"
      "  web: {definition: ../defs/webapp}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "10.77.0.1", "hosts.east.address") +
                                  "expected <host>:<port> of a parleyd, got '10.77.0.1'");
  yaml =
      "hosts:\n  local: {address: '10.0.0.1:1'}\nservices:\n"
      "  web: {definition: ../defs/webapp}\n";
  EXPECT_THAT(ModelError(yaml), HasSubstr("'local' is the parleyd `parley up` starts"));
  yaml =
      "hosts:\n  east: {address: '10.0.0.1:1', model_root: rel}\nservices:\n"
      "  web: {definition: ../defs/webapp}\n";
  EXPECT_THAT(ModelError(yaml), HasSubstr("expected an absolute path, got 'rel'"));
  yaml =
      "hosts:\n  east: {address: '10.0.0.1:1'}\nservices:\n"
      "  web: {definition: ../defs/webapp, host: west}\n";
  EXPECT_EQ(ModelError(yaml), ModelAt(yaml, "west", "services.web.host") +
                                  "host 'west' is not declared under hosts (local, east)");
}

TEST_F(ModelTest, DefinitionErrorsNameBothFiles) {
  Write("defs/broken/service.yaml", "name: broken\nrequires: {db: mysql}\n");
  const std::string yaml = "interfaces: ../shared\nservices:\n  b: {definition: ../defs/broken}\n";
  const std::string message = ModelError(yaml);
  EXPECT_THAT(message, StartsWith(absl::StrCat(Path("defs/broken/service.yaml"),
                                               ":2: requires.db: interface 'mysql' is not "
                                               "defined")));
  EXPECT_THAT(message, HasSubstr(absl::StrCat("(the definition of services.b.definition at ",
                                              Path("stack/model.yaml"), ":3)")));
}

TEST_F(ModelTest, InterfacesOfBothSidesMustBeTheSameContract) {
  // The redis definition carries its own, different, http interface.
  Write("defs/redis/interfaces/http.yaml", "required: {host: string, port: string}\n");
  const std::string yaml =
      "services:\n  web: {definition: ../defs/webapp}\n  cache: {definition: ../defs/redis}\n"
      "relations:\n  - [cache:web, web:website]\n";
  Write("defs/webapp/interfaces/http.yaml", kHttp);
  Write("defs/webapp/interfaces/redis.yaml", kRedis);
  Write("defs/redis/interfaces/redis.yaml", kRedis);
  EXPECT_EQ(ModelError(yaml),
            ModelAt(yaml, "[cache:web", "relations[0]") +
                absl::StrCat("cache:web and web:website both use interface 'http' but its schemas "
                             "differ (",
                             Path("defs/redis/interfaces/http.yaml"), " and ",
                             Path("defs/webapp/interfaces/http.yaml"), ")"));
}

}  // namespace
}  // namespace parley::services
