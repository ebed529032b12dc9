// An agent's workload health end to end in one process: a definition's tcp probe against a real
// listener, through a real host, backends and KB. The probe's transitions become events in the
// inbox (the fact, a handler on workload.unhealthy with the probe's error), the status and the
// metrics show them; a definition without `health:` runs none of it.

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"
#include "services/backends/backends.h"
#include "services/definition/definition.h"
#include "services/host/host.h"
#include "tests/services/agent/agent_test_util.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;
using testing::Fact;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::OnStrand;
using testing::WaitFor;

constexpr char kWatched[] = R"(name: watched
config:
  port: {type: int}
health:
  port:
    tcp: {host: 127.0.0.1, port: "{{config.port}}"}
    interval: 100ms
    timeout: 100ms
    failure_threshold: 2
handlers:
  - name: restart
    on: [workload.unhealthy]
    action: {kind: builtin, steps: [{set: "restarted={{event.reason}}"}]}
  - name: serving
    when: [workload.healthy]
    action: {kind: builtin, steps: [{set: "served"}]}
)";

constexpr char kPlain[] = R"(name: plain
handlers:
  - name: started
    on: [start]
    action: {kind: builtin, steps: [{set: started}]}
)";

int Listen() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(listen(fd, 64), 0);
  return fd;
}

int PortOf(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return ntohs(addr.sin_port);
}

class HealthAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HostOptions o;
    o.data_dir = dir_.Sub("kb");
    o.tls.plaintext = true;
    o.registry = registry_;
    auto host = Host::Start(o);
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::move(*host);
    backends_ = MakeBackends(BackendOptions());
  }

  Agent* Add(const std::string& unit, const std::string& yaml,
             std::map<std::string, std::string> config = {}) {
    const fs::path d = fs::path(dir_.path()) / unit.substr(0, unit.find('/'));
    fs::create_directories(d);
    std::ofstream(d / "service.yaml") << yaml;
    auto def = LoadServiceDefinition(d.string());
    EXPECT_TRUE(def.ok()) << def.status();
    auto spec = BuildSpec(*def, unit, *backends_);
    EXPECT_TRUE(spec.ok()) << spec.status();
    AgentOptions options;
    options.initial_config = std::move(config);
    auto agent = host_->AddAgent(std::move(*spec), options);
    EXPECT_TRUE(agent.ok()) << agent.status();
    return agent.ok() ? *agent : nullptr;
  }

  std::vector<std::pair<std::string, std::string>> Triggers(Agent* a) {
    auto traces = OnStrand(a, [a] { return a->engine().Traces(100); });
    std::vector<std::pair<std::string, std::string>> out;
    if (!traces.ok()) return out;
    for (const v1::Trace& t : *traces) out.emplace_back(t.trigger().name(), t.trigger().source());
    return out;
  }

  std::string Metrics() { return prometheus::TextSerializer().Serialize(registry_->Collect()); }

  parley::testing::TempDir dir_;
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  std::unique_ptr<Host> host_;
  std::unique_ptr<BackendRegistry> backends_;
};

TEST_F(HealthAgentTest, ProbeTransitionsBecomeEventsFactsStatusAndMetrics) {
  int fd = Listen();
  Agent* a = Add("watched/0", kWatched, {{"port", absl::StrCat(PortOf(fd))}});
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Fact(a, "served").has_value(); }));
  EXPECT_TRUE(Fact(a, "workload.healthy").has_value());
  v1::AgentStatus s = OnStrand(a, [a] { return a->Status(); });
  EXPECT_EQ(s.health(), v1::WORKLOAD_HEALTH_HEALTHY);
  ASSERT_EQ(s.probes_size(), 1);
  EXPECT_EQ(s.probes(0).name(), "port");
  EXPECT_EQ(s.probes(0).target(), "tcp 127.0.0.1:{{config.port}}");
  EXPECT_GT(s.probes(0).last_check_unix_ms(), 0);

  close(fd);
  ASSERT_TRUE(WaitFor([&] { return Fact(a, "restarted").has_value(); }));
  EXPECT_THAT(*Fact(a, "restarted"), HasSubstr("Connection refused"));
  EXPECT_FALSE(Fact(a, "workload.healthy").has_value());
  s = OnStrand(a, [a] { return a->Status(); });
  EXPECT_EQ(s.health(), v1::WORKLOAD_HEALTH_UNHEALTHY);
  EXPECT_GT(s.unhealthy_since_unix_ms(), 0);
  EXPECT_GE(s.probes(0).consecutive_failures(), 2u);
  EXPECT_THAT(s.probes(0).last_error(), HasSubstr("refused"));
  EXPECT_TRUE(OnStrand(a, [a] { return a->UnhealthySince().has_value(); }));
  // Many failed checks, one event per transition.
  ASSERT_TRUE(WaitFor([&] {
    return OnStrand(a, [a] { return a->Status().probes(0).consecutive_failures(); }) >= 6;
  }));
  int unhealthy = 0, healthy = 0;
  for (const auto& [name, source] : Triggers(a)) {
    if (name == "workload.unhealthy") {
      ++unhealthy;
      EXPECT_EQ(source, "health");
    }
    if (name == "workload.healthy") ++healthy;
  }
  EXPECT_EQ(unhealthy, 1);
  EXPECT_EQ(healthy, 1);
  const std::string m = Metrics();
  EXPECT_THAT(m, HasSubstr("parley_agent_workload_healthy{agent=\"watched/0\"} 0"));
  EXPECT_THAT(m, HasSubstr("parley_agent_probe_healthy{agent=\"watched/0\",probe=\"port\"} 0"));
  EXPECT_THAT(m, HasSubstr("parley_agent_probe_checks_total{agent=\"watched/0\",probe=\"port\","
                           "result=\"fail\"}"));
}

TEST_F(HealthAgentTest, ADefinitionWithoutHealthRunsNoneOfIt) {
  Agent* a = Add("plain/0", kPlain);
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Fact(a, "started").has_value(); }));
  ASSERT_TRUE(WaitFor([&] { return testing::Settled({host_.get()}); }));
  v1::AgentStatus s = OnStrand(a, [a] { return a->Status(); });
  EXPECT_EQ(s.health(), v1::WORKLOAD_HEALTH_UNSPECIFIED);
  EXPECT_EQ(s.probes_size(), 0);
  EXPECT_EQ(s.unhealthy_since_unix_ms(), 0);
  EXPECT_FALSE(OnStrand(a, [a] { return a->UnhealthySince().has_value(); }));
  for (const auto& [name, source] : Triggers(a)) EXPECT_NE(source, "health") << name;
  EXPECT_THAT(Metrics(), Not(HasSubstr("agent=\"plain/0\",probe=")));
  EXPECT_THAT(Metrics(), Not(HasSubstr("parley_agent_workload_healthy{agent=\"plain/0\"}")));
}

}  // namespace
}  // namespace parley::services
