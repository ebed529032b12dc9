// The health probe kinds (services/backends/probes/probes.h) against real things: a TCP
// listener, a tiny HTTP server on a thread, commands run as processes; and the monitor driving a
// real TCP probe through a listener that goes away and comes back.

#include "services/backends/probes/probes.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "services/definition/definition.h"
#include "services/health/monitor.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

using ::testing::HasSubstr;

// A listening socket on 127.0.0.1; with `http_status`, a thread answers every connection with
// that status (one request per connection).
class Listener {
 public:
  explicit Listener(int http_status = 0) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(fd_, 16), 0);
    EXPECT_EQ(getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port_ = ntohs(addr.sin_port);
    if (http_status != 0) {
      thread_ = std::thread([this, http_status] {
        while (true) {
          const int c = accept(fd_, nullptr, nullptr);
          if (c < 0) return;
          char buf[4096];
          (void)read(c, buf, sizeof(buf));
          const std::string body = absl::StrCat("status ", http_status, "\n");
          const std::string response =
              absl::StrCat("HTTP/1.1 ", http_status, " X\r\nContent-Length: ", body.size(),
                           "\r\nConnection: close\r\n\r\n", body);
          (void)write(c, response.data(), response.size());
          close(c);
        }
      });
    }
  }
  ~Listener() { Close(); }
  void Close() {
    if (fd_ >= 0) {
      shutdown(fd_, SHUT_RDWR);
      close(fd_);
      fd_ = -1;
    }
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

class ProbesTest : public ::testing::Test {
 protected:
  // Writes svc/service.yaml with `health` as its health section, loads it and makes probe 0.
  std::shared_ptr<engine::HealthProbe> Make(const std::string& health) {
    const std::string dir = dir_.Sub("svc");
    std::filesystem::create_directories(dir + "/bin");
    std::ofstream(dir + "/bin/check")
        << "#!/bin/sh\n"
           "[ \"$PARLEY_UNIT\" = svc/0 ] || { echo \"unit $PARLEY_UNIT\" >&2; exit 9; }\n"
           "case \"$1\" in\n"
           "  ok) exit 0 ;;\n"
           "  sleep) exec sleep 5 ;;\n"
           "  *) echo \"not serving: $1\" >&2; exit 3 ;;\n"
           "esac\n";
    chmod((dir + "/bin/check").c_str(), 0755);
    std::ofstream(dir + "/service.yaml")
        << "name: svc\nconfig:\n  port: {type: int, default: 1}\nhealth:\n"
        << health;
    auto def = LoadServiceDefinition(dir);
    EXPECT_TRUE(def.ok()) << def.status();
    if (!def.ok()) return nullptr;
    auto probe = MakeHealthProbe(*def, def->health[0], ProcessOptions());
    EXPECT_TRUE(probe.ok()) << probe.status();
    return probe.ok() ? *probe : nullptr;
  }

  engine::ProbeContext Context(std::map<std::string, std::string> config = {},
                               std::map<std::string, std::string> facts = {}) {
    engine::ProbeContext ctx;
    ctx.unit = "svc/0";
    ctx.config = std::move(config);
    ctx.facts = std::move(facts);
    ctx.timeout = absl::Seconds(2);
    return ctx;
  }

  ::parley::testing::TempDir dir_;
};

TEST_F(ProbesTest, TcpPassesWhileSomethingListensAndSaysWhyNot) {
  Listener l;
  auto probe = Make("  port: {tcp: {host: 127.0.0.1, port: \"{{fact.port}}\"}}\n");
  ASSERT_NE(probe, nullptr);
  const std::string port = absl::StrCat(l.port());
  EXPECT_TRUE(probe->Check(Context({}, {{"port", port}})).ok());
  l.Close();
  absl::Status down = probe->Check(Context({}, {{"port", port}}));
  EXPECT_TRUE(absl::IsUnavailable(down)) << down;
  EXPECT_THAT(down.message(), HasSubstr(absl::StrCat("connect 127.0.0.1:", port)));
  EXPECT_THAT(down.message(), HasSubstr("refused"));
  // A fact the template needs is not set yet: a failed check naming it.
  absl::Status unset = probe->Check(Context());
  EXPECT_THAT(unset.message(), HasSubstr("fact 'port' is not set"));
}

TEST_F(ProbesTest, TcpTakesTheConfigDefaultAndTheUnitsHost) {
  Listener l;
  auto probe = Make("  port: {tcp: {port: \"{{config.port}}\"}}\n");  // host: unit_host
  ASSERT_NE(probe, nullptr);
  EXPECT_TRUE(probe->Check(Context({{"port", absl::StrCat(l.port())}})).ok());
  // The default (1) has no listener.
  EXPECT_FALSE(probe->Check(Context()).ok());
}

TEST_F(ProbesTest, HttpPassesOnSuccessAndRedirectStatusesOnly) {
  Listener ok(200), redirect(302), failing(503);
  auto probe = Make("  web: {http: \"http://127.0.0.1:{{fact.port}}/health\"}\n");
  ASSERT_NE(probe, nullptr);
  EXPECT_TRUE(probe->Check(Context({}, {{"port", absl::StrCat(ok.port())}})).ok());
  EXPECT_TRUE(probe->Check(Context({}, {{"port", absl::StrCat(redirect.port())}})).ok());
  absl::Status s = probe->Check(Context({}, {{"port", absl::StrCat(failing.port())}}));
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("status 503"));
  failing.Close();
  EXPECT_FALSE(probe->Check(Context({}, {{"port", absl::StrCat(failing.port())}})).ok());
}

TEST_F(ProbesTest, ExecPassesOnExitZeroAndQuotesItsErrorOtherwise) {
  auto ok = Make("  cmd: {exec: [./bin/check, ok]}\n");
  ASSERT_NE(ok, nullptr);
  EXPECT_TRUE(ok->Check(Context()).ok());
  auto bad = Make("  cmd: {exec: [./bin/check, \"{{config.port}}\"]}\n");
  ASSERT_NE(bad, nullptr);
  absl::Status s = bad->Check(Context({{"port", "6380"}}));
  EXPECT_TRUE(absl::IsAborted(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("exited with status 3"));
  EXPECT_THAT(s.message(), HasSubstr("not serving: 6380"));
}

TEST_F(ProbesTest, ExecIsKilledAtItsTimeout) {
  auto slow = Make("  cmd: {exec: [./bin/check, sleep]}\n");
  ASSERT_NE(slow, nullptr);
  engine::ProbeContext ctx = Context();
  ctx.timeout = absl::Milliseconds(200);
  const absl::Time start = absl::Now();
  absl::Status s = slow->Check(ctx);
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST_F(ProbesTest, AMissingProgramIsRefusedWhenTheProbeIsMade) {
  const std::string dir = dir_.Sub("svc");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/service.yaml") << "name: svc\nhealth:\n  cmd: {exec: [no-such-check]}\n";
  auto def = LoadServiceDefinition(dir);
  ASSERT_TRUE(def.ok()) << def.status();
  auto probe = MakeHealthProbe(*def, def->health[0], ProcessOptions());
  EXPECT_TRUE(absl::IsNotFound(probe.status())) << probe.status();
  EXPECT_THAT(probe.status().message(), HasSubstr("service.yaml:3: health.cmd"));
}

TEST_F(ProbesTest, TheMonitorFollowsARealListenerDownAndUp) {
  auto l = std::make_unique<Listener>();
  const std::string port = absl::StrCat(l->port());
  engine::HealthCheckSpec spec;
  spec.name = "port";
  spec.interval = absl::Milliseconds(50);
  spec.timeout = absl::Milliseconds(50);
  spec.failure_threshold = 2;
  spec.probe = Make("  port: {tcp: {host: 127.0.0.1, port: \"{{fact.port}}\"}}\n");
  ASSERT_NE(spec.probe, nullptr);
  absl::Mutex mu;
  std::vector<HealthChange> changes;
  HealthMonitorOptions o;
  o.on_change = [&](const HealthChange& c) {
    absl::MutexLock lock(&mu);
    changes.push_back(c);
  };
  HealthMonitor m("svc/0", {spec}, o);
  m.SetContext({}, {{"port", port}});
  m.Start();
  auto wait = [&](v1::WorkloadHealth want) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (m.health() != want && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
    return m.health() == want;
  };
  ASSERT_TRUE(wait(v1::WORKLOAD_HEALTH_HEALTHY));
  l->Close();
  ASSERT_TRUE(wait(v1::WORKLOAD_HEALTH_UNHEALTHY));
  ASSERT_TRUE(m.unhealthy_since().has_value());
  {
    absl::MutexLock lock(&mu);
    ASSERT_EQ(changes.size(), 2u);
    EXPECT_THAT(changes[1].reason, HasSubstr("refused"));
  }
  // Something listens on the port again (another listener: the port is told through the facts).
  Listener again;
  m.SetContext({}, {{"port", absl::StrCat(again.port())}});
  ASSERT_TRUE(wait(v1::WORKLOAD_HEALTH_HEALTHY));
  absl::MutexLock lock(&mu);
  EXPECT_EQ(changes.size(), 3u);
}

}  // namespace
}  // namespace parley::services
