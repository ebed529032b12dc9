// Reading `health:` (docs/service-definitions.md, "Health"): every field parses with Kubernetes'
// defaults, bad values are refused naming the file, the line and the field, and handlers may
// name the health fact and events only when probes are declared.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "services/definition/service.h"
#include "tests/services/definition/definition_test_util.h"

namespace parley::services {
namespace {

using testing::DefinitionTest;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kHealthy[] = R"(name: cache
config:
  port: {type: int, default: 6379}
health:
  port:
    tcp: {port: "{{config.port}}"}
  ping:
    exec: [./bin/check, "{{fact.cache.running}}"]
    interval: 2s
    timeout: 500ms
    initial_delay: 5s
    failure_threshold: 2
    success_threshold: 3
  web:
    http: "http://{{fact.unit.host}}:{{config.port}}/health"
    interval: 30
  web2:
    http: {url: "https://example.test/"}
handlers:
  - name: restart
    on: [workload.unhealthy]
    action: {kind: builtin, steps: [{set: restarted}]}
  - name: serving
    when: [workload.healthy]
    action: {kind: builtin, steps: [{set: serving}]}
)";

class HealthReaderTest : public DefinitionTest {};

TEST_F(HealthReaderTest, ParsesEveryFieldWithKubernetesDefaults) {
  const std::string yaml = kHealthy;
  auto def = LoadService(yaml);
  ASSERT_TRUE(def.ok()) << def.status();
  ASSERT_EQ(def->health.size(), 4u);
  const ProbeDef& port = def->health[0];
  EXPECT_EQ(port.name, "port");
  EXPECT_EQ(port.kind, ProbeDef::Kind::kTcp);
  EXPECT_FALSE(port.host.has_value());
  EXPECT_EQ(port.port.source, "{{config.port}}");
  EXPECT_EQ(port.interval, absl::Seconds(10));
  EXPECT_EQ(port.timeout, absl::Seconds(1));
  EXPECT_EQ(port.initial_delay, absl::ZeroDuration());
  EXPECT_EQ(port.failure_threshold, 3u);
  EXPECT_EQ(port.success_threshold, 1u);
  EXPECT_EQ(port.line, testing::LineOf(yaml, "health:") + 1);
  EXPECT_EQ(port.Target(), "tcp $PARLEY_UNIT_HOST:{{config.port}}");
  const ProbeDef& ping = def->health[1];
  EXPECT_EQ(ping.kind, ProbeDef::Kind::kExec);
  ASSERT_EQ(ping.command.size(), 2u);
  EXPECT_EQ(ping.command[0].source, "./bin/check");
  EXPECT_EQ(ping.interval, absl::Seconds(2));
  EXPECT_EQ(ping.timeout, absl::Milliseconds(500));
  EXPECT_EQ(ping.initial_delay, absl::Seconds(5));
  EXPECT_EQ(ping.failure_threshold, 2u);
  EXPECT_EQ(ping.success_threshold, 3u);
  EXPECT_EQ(def->health[2].kind, ProbeDef::Kind::kHttp);
  EXPECT_EQ(def->health[2].interval, absl::Seconds(30));
  EXPECT_EQ(def->health[2].Target(), "http http://{{fact.unit.host}}:{{config.port}}/health");
  EXPECT_EQ(def->health[3].url.source, "https://example.test/");
}

TEST_F(HealthReaderTest, ADefinitionWithoutHealthHasNoProbes) {
  auto def = LoadService(
      "name: plain\nhandlers:\n  - name: a\n    on: [start]\n"
      "    action: {kind: builtin, steps: [{set: a}]}\n");
  ASSERT_TRUE(def.ok()) << def.status();
  EXPECT_TRUE(def->health.empty());
}

TEST_F(HealthReaderTest, BadValuesNameFileLineAndField) {
  struct Case {
    std::string replace, with, line, field, what;
  };
  const std::string base = R"(name: cache
config:
  port: {type: int, default: 6379}
health:
  port:
    tcp: {port: 6379}
    interval: 5s
)";
  const std::vector<Case> cases = {
      {"    interval: 5s\n", "    interval: 0s\n", "interval: 0s", "health.port.interval",
       "expected a positive duration"},
      {"    interval: 5s\n", "    interval: 5s\n    timeout: 10s\n", "timeout: 10s",
       "health.port.timeout", "longer than the interval"},
      {"    interval: 5s\n", "    failure_threshold: 0\n", "failure_threshold: 0",
       "health.port.failure_threshold", "expected an int from 1 to 1000"},
      {"    interval: 5s\n", "    success_threshold: many\n", "success_threshold: many",
       "health.port.success_threshold", "int"},
      {"    interval: 5s\n", "    initial_delay: -1s\n", "initial_delay: -1s",
       "health.port.initial_delay", "positive duration"},
      {"    tcp: {port: 6379}\n", "    tcp: {port: 70000}\n", "tcp: {port: 70000}",
       "health.port.tcp.port", "from 1 to 65535"},
      {"    tcp: {port: 6379}\n", "    tcp: {host: x}\n", "tcp: {host: x}", "health.port.tcp",
       "port"},
      {"    tcp: {port: 6379}\n", "    tcp: {port: \"{{config.nope}}\"}\n", "config.nope",
       "health.port.tcp.port", "does not declare"},
      {"    tcp: {port: 6379}\n", "    tcp: {port: \"{{event.x}}\"}\n", "event.x",
       "health.port.tcp.port", "outside any event"},
      {"    tcp: {port: 6379}\n", "    http: ftp://x\n", "http: ftp://x", "health.port.http",
       "http:// or https://"},
      {"    tcp: {port: 6379}\n", "    exec: ./bin/check\n", "exec: ./bin/check",
       "health.port.exec", "as a list"},
      {"    tcp: {port: 6379}\n", "    exec: []\n", "exec: []", "health.port.exec", "empty"},
      {"    tcp: {port: 6379}\n", "    tcp: {port: 1}\n    http: http://x/\n", "http: http://x/",
       "health.port.http", "checks one thing"},
      {"    tcp: {port: 6379}\n", "    timeout: 1s\n", "  port:\n", "health.port",
       "names no check"},
      {"    tcp: {port: 6379}\n", "    tcp: {port: 1}\n    retries: 3\n", "retries: 3",
       "health.port", "unknown key 'retries'"},
  };
  for (const Case& c : cases) {
    std::string yaml = base;
    yaml.replace(yaml.find(c.replace), c.replace.size(), c.with);
    const std::string error = ServiceError(yaml);
    // "  port:\n" is the probe's own line (the config option is on an earlier one).
    const std::string needle = c.line == "  port:\n" ? "health:" : c.line;
    const int line = testing::LineOf(yaml, needle) + (c.line == "  port:\n" ? 1 : 0);
    EXPECT_THAT(error,
                StartsWith(absl::StrCat(Path("svc/service.yaml"), ":", line, ": ", c.field, ": ")))
        << yaml;
    EXPECT_THAT(error, HasSubstr(c.what)) << yaml;
  }
}

TEST_F(HealthReaderTest, HealthFactsAndEventsNeedProbes) {
  const std::string on = R"(name: cache
handlers:
  - name: restart
    on: [workload.unhealthy]
    action: {kind: builtin, steps: [{set: restarted}]}
)";
  EXPECT_THAT(ServiceError(on), HasSubstr("fired by the health probes, and this service "
                                          "declares none"));
  const std::string when = R"(name: cache
handlers:
  - name: serving
    when: [workload.healthy]
    action: {kind: builtin, steps: [{set: serving}]}
)";
  EXPECT_THAT(ServiceError(when), HasSubstr("set by the health probes"));
  const std::string other = R"(name: cache
health:
  port: {tcp: {port: 1}}
handlers:
  - name: restart
    on: [workload.sick]
    action: {kind: builtin, steps: [{set: restarted}]}
)";
  EXPECT_THAT(ServiceError(other), HasSubstr("workload.healthy and workload.unhealthy"));
  const std::string endpoint = R"(name: cache
provides:
  workload: redis
)";
  EXPECT_THAT(ServiceError(endpoint), HasSubstr("reserved for internal events"));
}

}  // namespace
}  // namespace parley::services
