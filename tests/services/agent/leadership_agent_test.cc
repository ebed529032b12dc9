// A service's leadership end to end in one process (docs/coordination.md): units of a definition
// that declares leadership, on a real host with real backends and KB, campaign through a real
// etcd (Debian etcd-server). Exactly one leads; every unit's engine gets leader.changed and agrees
// on the leader and its term; the leader's handlers see leader.elected and `parley-hook leader
// get`; status and metrics show it. A removed leader resigns and another unit leads with a larger
// term; a leader whose lease etcd revokes stops leading and a new term begins; a unit without a
// coordinator says why in its status and never leads.

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "prometheus/text_serializer.h"
#include "services/backends/backends.h"
#include "services/coord/etcd_coordinator.h"
#include "services/definition/definition.h"
#include "services/host/host.h"
#include "tests/services/agent/agent_test_util.h"
#include "tests/services/coord/etcd_ready.h"
#include "tests/testing/etcd_process.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;
using testing::Fact;
using ::testing::HasSubstr;
using testing::OnStrand;
using testing::WaitFor;

constexpr char kHook[] = PARLEY_HOOK;

constexpr char kPg[] = R"yaml(name: pg
leadership: {lease_ttl: 3s, leading_interval: 1s}
handlers:
  - name: elected
    on: [leader.elected]
    action:
      kind: exec
      command: [sh, -c, 'parley-hook fact set elected "$(parley-hook leader get term)"']
  - name: follow
    on: [leader.changed]
    when: [leader.unit]
    when_not: [leader]
    action:
      kind: exec
      command: [sh, -c, 'parley-hook fact set following "$(parley-hook leader get unit)"']
)yaml";

// Each unit's workload is a listener on its config port; its leader resigns once the probe has
// failed for a second.
constexpr char kWatchedPg[] = R"yaml(name: pg
leadership: {lease_ttl: 3s, leading_interval: 1s, unhealthy_grace: 1s}
config:
  port: {type: int}
health:
  port:
    tcp: {host: 127.0.0.1, port: "{{config.port}}"}
    interval: 100ms
    timeout: 100ms
    failure_threshold: 2
handlers:
  - name: started
    on: [start]
    action: {kind: builtin, steps: [{set: started}]}
)yaml";

// A loopback listener and its port.
int Listen(int* port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(listen(fd, 64), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  *port = ntohs(addr.sin_port);
  return fd;
}

class LeadershipAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(etcd_.Start(), "");
    ASSERT_EQ(parley::testing::WaitUntilEtcdAnswers(etcd_), "");
    BackendOptions b;
    b.process.extra_path.push_back(fs::path(kHook).parent_path().string());
    backends_ = MakeBackends(b);
  }

  void StartHost(bool with_etcd) {
    HostOptions o;
    o.data_dir = dir_.Sub("kb");
    o.tls.plaintext = true;
    o.registry = registry_;
    if (with_etcd) o.etcd.endpoints = {etcd_.endpoint()};
    o.election_prefix = "parley/test/leader/";
    auto host = Host::Start(o);
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::move(*host);
  }

  Agent* Add(const std::string& unit, const char* yaml = kPg,
             std::map<std::string, std::string> config = {}) {
    const fs::path d = fs::path(dir_.path()) / "pg";
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

  v1::AgentStatus StatusOf(Agent* a) {
    return OnStrand(a, [a] { return a->Status(); });
  }

  // The one unit whose engine says it leads, when every unit in `units` agrees on it (the facts
  // leader.unit and leader.term the same everywhere, `leader` set on it alone) and its term is
  // above `after`; nullptr otherwise.
  Agent* AgreedLeader(const std::vector<Agent*>& units, int64_t after) {
    Agent* leader = nullptr;
    std::optional<std::string> unit, term;
    for (Agent* a : units) {
      std::optional<std::string> u = Fact(a, "leader.unit"), t = Fact(a, "leader.term");
      if (!u || !t) return nullptr;
      if (a == units.front()) {
        unit = u;
        term = t;
      } else if (u != unit || t != term) {
        return nullptr;
      }
      if (Fact(a, "leader").has_value()) {
        if (leader != nullptr || a->name() != *u) return nullptr;
        leader = a;
      }
    }
    if (leader == nullptr || std::stoll(*term) <= after) return nullptr;
    return leader;
  }

  int64_t TermOf(Agent* a) { return std::stoll(Fact(a, "leader.term").value_or("0")); }

  std::string Metrics() { return prometheus::TextSerializer().Serialize(registry_->Collect()); }

  // Revokes every lease etcd has, as an operator (or a partition long enough) would end them.
  void RevokeAllLeases() {
    const std::string base = absl::StrCat("ETCDCTL_API=3 etcdctl --endpoints=", etcd_.endpoint());
    FILE* list = popen((base + " lease list 2>&1").c_str(), "r");
    ASSERT_NE(list, nullptr);
    std::string out;
    char buf[4096];
    while (size_t n = fread(buf, 1, sizeof(buf), list)) out.append(buf, n);
    ASSERT_EQ(pclose(list), 0) << "etcdctl (Debian etcd-client) failed: " << out;
    int revoked = 0;
    for (absl::string_view line : absl::StrSplit(out, '\n')) {
      if (line.empty() || absl::StartsWith(line, "found")) continue;
      const std::string id(line.substr(0, line.find(',')));
      ASSERT_EQ(std::system((base + " lease revoke " + id + " >/dev/null").c_str()), 0) << id;
      ++revoked;
    }
    ASSERT_GT(revoked, 0) << "etcd listed no lease: " << out;
  }

  parley::testing::EtcdProcess etcd_;
  parley::testing::TempDir dir_;
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  std::unique_ptr<BackendRegistry> backends_;
  std::unique_ptr<Host> host_;
};

TEST_F(LeadershipAgentTest, OneUnitLeadsAndARemovedLeaderIsReplaced) {
  StartHost(/*with_etcd=*/true);
  std::vector<Agent*> units = {Add("pg/0"), Add("pg/1"), Add("pg/2")};
  for (Agent* a : units) ASSERT_NE(a, nullptr);
  Agent* leader = nullptr;
  ASSERT_TRUE(
      WaitFor([&] { return (leader = AgreedLeader(units, 0)) != nullptr; }, absl::Seconds(30)));
  const int64_t term = TermOf(leader);
  // The leader's handler ran on leader.elected and read the term through parley-hook; the others
  // followed it, naming it through parley-hook.
  ASSERT_TRUE(WaitFor([&] { return Fact(leader, "elected").has_value(); }, absl::Seconds(30)));
  EXPECT_EQ(Fact(leader, "elected"), absl::StrCat(term));
  for (Agent* a : units) {
    const v1::AgentStatus s = StatusOf(a);
    EXPECT_EQ(s.leadership().leader(), leader->name()) << a->name();
    EXPECT_EQ(s.leadership().term(), term) << a->name();
    EXPECT_EQ(s.leadership().leads(), a == leader) << a->name();
    EXPECT_EQ(s.leadership().error(), "") << a->name();
    if (a == leader) continue;
    ASSERT_TRUE(WaitFor([&] { return Fact(a, "following").has_value(); }, absl::Seconds(30)))
        << a->name();
    EXPECT_EQ(Fact(a, "following"), leader->name());
    EXPECT_FALSE(Fact(a, "elected").has_value()) << a->name();
  }
  const std::string metrics = Metrics();
  EXPECT_THAT(metrics,
              HasSubstr(absl::StrCat("parley_agent_leader{agent=\"", leader->name(), "\"} 1")));
  EXPECT_THAT(metrics, HasSubstr(absl::StrCat("parley_agent_leader_term{agent=\"", units[0]->name(),
                                              "\"} ", term)));

  // The leader goes: it resigns as it stops, and another unit leads with a larger term.
  const std::string gone = leader->name();
  const absl::Time removed = absl::Now();
  ASSERT_TRUE(host_->RemoveAgent(gone).ok());
  std::vector<Agent*> rest;
  for (Agent* a : units) {
    if (a->name() != gone) rest.push_back(a);
  }
  Agent* next = nullptr;
  ASSERT_TRUE(
      WaitFor([&] { return (next = AgreedLeader(rest, term)) != nullptr; }, absl::Seconds(30)));
  std::printf("a removed leader was replaced in %.0f ms (lease TTL 3 s)\n",
              absl::ToDoubleMilliseconds(absl::Now() - removed));
  EXPECT_NE(next->name(), gone);
  ASSERT_TRUE(WaitFor([&] { return Fact(next, "elected").has_value(); }, absl::Seconds(30)));
  EXPECT_EQ(Fact(next, "elected"), absl::StrCat(TermOf(next)));
}

TEST_F(LeadershipAgentTest, ALeaderWhoseLeaseEndsStopsLeadingAndANewTermBegins) {
  StartHost(/*with_etcd=*/true);
  std::vector<Agent*> units = {Add("pg/0"), Add("pg/1")};
  for (Agent* a : units) ASSERT_NE(a, nullptr);
  Agent* leader = nullptr;
  ASSERT_TRUE(
      WaitFor([&] { return (leader = AgreedLeader(units, 0)) != nullptr; }, absl::Seconds(30)));
  const int64_t term = TermOf(leader);
  const absl::Time revoked = absl::Now();
  RevokeAllLeases();
  // Every unit's campaign takes a new lease; whoever wins leads in a new, larger term, and the
  // old term's leader does not lead in it unless it won again.
  Agent* next = nullptr;
  ASSERT_TRUE(
      WaitFor([&] { return (next = AgreedLeader(units, term)) != nullptr; }, absl::Seconds(30)));
  std::printf("after its lease was revoked, a new term began in %.0f ms\n",
              absl::ToDoubleMilliseconds(absl::Now() - revoked));
  EXPECT_GT(TermOf(next), term);
  int leading = 0;
  for (Agent* a : units) leading += StatusOf(a).leadership().leads() ? 1 : 0;
  EXPECT_EQ(leading, 1);
}

TEST_F(LeadershipAgentTest, ALeaderWhoseWorkloadStaysUnhealthyResignsAfterItsGrace) {
  StartHost(/*with_etcd=*/true);
  int ports[2];
  int fds[2] = {Listen(&ports[0]), Listen(&ports[1])};
  std::vector<Agent*> units = {Add("pg/0", kWatchedPg, {{"port", absl::StrCat(ports[0])}}),
                               Add("pg/1", kWatchedPg, {{"port", absl::StrCat(ports[1])}})};
  for (Agent* a : units) ASSERT_NE(a, nullptr);
  Agent* leader = nullptr;
  ASSERT_TRUE(WaitFor(
      [&] {
        leader = AgreedLeader(units, 0);
        return leader != nullptr && StatusOf(units[0]).health() == v1::WORKLOAD_HEALTH_HEALTHY &&
               StatusOf(units[1]).health() == v1::WORKLOAD_HEALTH_HEALTHY;
      },
      absl::Seconds(30)));
  const int64_t term = TermOf(leader);
  const int i = leader == units[0] ? 0 : 1;
  const absl::Time closed = absl::Now();
  close(fds[i]);  // the leader's workload goes
  Agent* next = nullptr;
  ASSERT_TRUE(
      WaitFor([&] { return (next = AgreedLeader(units, term)) != nullptr; }, absl::Seconds(30)));
  const absl::Duration took = absl::Now() - closed;
  std::printf("an unhealthy leader (grace 1 s) was replaced %.0f ms after its workload went\n",
              absl::ToDoubleMilliseconds(took));
  EXPECT_EQ(next, units[1 - i]);
  // Not before the probe judged it unhealthy (two failures 100 ms apart) and the grace ran out.
  EXPECT_GE(took, absl::Seconds(1));
  EXPECT_EQ(StatusOf(leader).health(), v1::WORKLOAD_HEALTH_UNHEALTHY);
  EXPECT_FALSE(StatusOf(leader).leadership().leads());
  close(fds[1 - i]);
}

TEST_F(LeadershipAgentTest, WithoutACoordinatorNoUnitLeadsAndStatusSaysWhy) {
  StartHost(/*with_etcd=*/false);
  Agent* a = Add("pg/0");
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(
      WaitFor([&] { return StatusOf(a).stage() == v1::UNIT_STAGE_ACTIVE; }, absl::Seconds(30)));
  const v1::AgentStatus s = StatusOf(a);
  EXPECT_FALSE(s.leadership().leads());
  EXPECT_THAT(s.leadership().error(), HasSubstr("--etcd"));
  EXPECT_FALSE(Fact(a, "leader").has_value());
  EXPECT_FALSE(Fact(a, "leader.unit").has_value());
  EXPECT_THAT(Metrics(), HasSubstr("parley_agent_leader{agent=\"pg/0\"} 0"));
}

}  // namespace
}  // namespace parley::services
