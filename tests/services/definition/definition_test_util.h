#pragma once

// What the tests of services/definition/ share: interface files, a definition using every field
// and a fixture that writes definitions into a temp dir and loads them.

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/definition/definition.h"
#include "tests/testing/temp_dir.h"

namespace parley::services::testing {

inline constexpr char kRedis[] = R"(name: redis
description: Address and credentials of a Redis server.
required:
  host: {type: string, description: Address clients connect to.}
  port: {type: int}
  password: string
)";

inline constexpr char kHttp[] = R"(name: http
required: {host: string, port: int}
optional: {path: string}
)";

// The 1-based number of the first line of `text` that contains `needle`, 0 if none does.
inline int LineOf(const std::string& text, const std::string& needle) {
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

inline constexpr char kEveryKind[] = R"(name: webapp
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

}  // namespace parley::services::testing
