// The `container` action kind (services/backends/container/container_action.h) against a real
// container engine: a private `podman system service` (its own storage root, run root and network
// namespace) that the suite starts on a unix socket in a temp dir, with an image built from
// busybox-static and imported locally (no registry is reachable). Handlers create, update, stop and
// remove the unit's container; facts come from the daemon's inspection; failures name the API call
// and the daemon's message and roll the run back.
//
// Needs root, podman, runc (crun refuses hybrid cgroup hierarchies), unshare and /bin/busybox.

#include "services/backends/container/container_action.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/clock.h"
#include "engine/engine.h"
#include "kb/kb.h"
#include "kb/store.h"
#include "services/backends/backends.h"
#include "services/backends/common/http_client.h"
#include "services/backends/common/json.h"
#include "tests/testing/child_process.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kImage[] = "localhost/parley-test-busybox:1";

// runc, cgroupfs and a file event log work in containers like the ones tests run in (no systemd);
// the empty ulimits keep podman from raising limits the sandbox does not allow.
constexpr char kContainersConf[] = R"([containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
)";

constexpr char kRedis[] = "required: {host: string, port: int}\n";

// `halt` repeats `run`'s spec (the loader takes no YAML merge keys): stopping is not an update.
constexpr char kService[] = R"(name: web
requires:
  db: redis
config:
  greeting: {type: string, default: hello}
  image: {type: string, default: localhost/parley-test-busybox:1}
events:
  broken: Runs an image that does not exist.
  remove: Removes the container.
handlers:
  - name: run
    on: [db.joined, db.changed]
    when: [db.ready]
    action:
      kind: container
      image: "{{config.image}}"
      command: [sh, -c, "env; trap 'exit 0' TERM; while true; do sleep 1; done"]
      env:
        REDIS_HOST: "{{fact.db.remote.host}}"
        REDIS_PORT: "{{fact.db.remote.port}}"
        GREETING: "{{config.greeting}}"
      ports: ["18080:80", 9090]
  - name: halt
    on: [stop]
    action:
      kind: container
      image: "{{config.image}}"
      command: [sh, -c, "env; trap 'exit 0' TERM; while true; do sleep 1; done"]
      env:
        REDIS_HOST: "{{fact.db.remote.host}}"
        REDIS_PORT: "{{fact.db.remote.port}}"
        GREETING: "{{config.greeting}}"
      ports: ["18080:80", 9090]
      state: stopped
  - name: remove
    on: [remove]
    action: {kind: container, image: "{{config.image}}", state: absent}
  - name: mark
    on: [broken]
    action: {kind: builtin, steps: [{set: marked}]}
  - name: broken
    on: [broken]
    action: {kind: container, image: localhost/parley-test-missing:1}
)";

v1::Event Named(std::string name) {
  v1::Event e;
  e.set_name(std::move(name));
  return e;
}

v1::Event Relation(v1::RelationEventKind kind, std::string host) {
  v1::Event e;
  e.set_name(kind == v1::RELATION_EVENT_KIND_JOINED ? "db.joined" : "db.changed");
  auto* r = e.mutable_relation();
  r->set_relation_id("db:1");
  r->set_endpoint("db");
  r->set_remote_service("redis");
  r->set_remote_unit("redis/0");
  r->set_kind(kind);
  for (const auto& [k, v] : std::vector<std::pair<std::string, std::string>>{
           {"host", std::move(host)}, {"port", "6379"}}) {
    auto* c = r->add_unit_changes();
    c->set_key(k);
    c->set_value(v);
  }
  return e;
}

v1::Event Joined(std::string host) {
  return Relation(v1::RELATION_EVENT_KIND_JOINED, std::move(host));
}
v1::Event Changed(std::string host) {
  return Relation(v1::RELATION_EVENT_KIND_CHANGED, std::move(host));
}

// The podman service and the image, shared by the suite (starting podman takes a second or two).
struct Podman {
  ::parley::testing::TempDir dir;
  std::unique_ptr<::parley::testing::ChildProcess> service;
  std::string socket;
  std::string error;  // why it could not be set up

  std::vector<std::string> Cli() const {
    return {"podman",           "--root", dir.Sub("root"), "--runroot", dir.Sub("run"),
            "--storage-driver", "vfs"};
  }

  // Runs a command to its end (at most a minute); "" or what went wrong, with its output.
  std::string Command(std::vector<std::string> args) {
    const std::string log = dir.Sub("command.log");
    fs::remove(log);
    ::parley::testing::ChildProcess p(args, log);
    const int code = p.Wait(absl::Minutes(1));
    if (code == 0) return "";
    std::ifstream f(log);
    return absl::StrCat("`", absl::StrJoin(args, " "), "` ",
                        code < 0 ? "did not finish in a minute" : absl::StrCat("exited ", code),
                        ": ", std::string(std::istreambuf_iterator<char>(f), {}));
  }

  void Start() {
    std::ofstream(dir.Sub("containers.conf")) << kContainersConf;
    setenv("CONTAINERS_CONF", dir.Sub("containers.conf").c_str(), 1);
    // The image: busybox and the applets the tests run.
    const fs::path rootfs = dir.Sub("rootfs");
    fs::create_directories(rootfs / "bin");
    fs::create_directories(rootfs / "tmp");
    std::error_code ec;
    fs::copy_file("/bin/busybox", rootfs / "bin/busybox", ec);
    if (ec) {
      error = "cannot copy /bin/busybox (install busybox-static): " + ec.message();
      return;
    }
    for (const char* applet : {"sh", "sleep", "env", "cat", "echo"}) {
      fs::create_symlink("busybox", rootfs / "bin" / applet);
    }
    error = Command({"tar", "-C", rootfs.string(), "-cf", dir.Sub("image.tar"), "."});
    if (!error.empty()) return;
    std::vector<std::string> import = Cli();
    for (const char* a : {"import", "--change", "CMD [\"sh\"]"}) import.push_back(a);
    import.push_back(dir.Sub("image.tar"));
    import.push_back(kImage);
    error = Command(import);
    if (!error.empty()) return;

    // Its own network namespace: the bridge, firewall rules and published ports stay private.
    socket = dir.Sub("podman.sock");
    std::vector<std::string> args = {"unshare", "--net", "--"};
    for (const std::string& a : Cli()) args.push_back(a);
    for (const char* a : {"system", "service", "--time=0"}) args.push_back(a);
    args.push_back("unix://" + socket);
    service = std::make_unique<::parley::testing::ChildProcess>(args, dir.Sub("service.log"));
    HttpRequest ping;
    ping.url = "http://localhost/_ping";
    ping.unix_socket = socket;
    ping.timeout = absl::Seconds(5);
    const bool up = ::parley::testing::WaitFor(
        [&] {
          if (!service->Running()) return true;
          auto r = SendHttpRequest(ping);
          return r.ok() && r->status == 200;
        },
        absl::Seconds(60));
    if (!up || !service->Running()) {
      std::ifstream f(dir.Sub("service.log"));
      error = absl::StrCat("podman system service did not come up: ",
                           std::string(std::istreambuf_iterator<char>(f), {}));
    }
  }

  ~Podman() {
    if (service && service->Running()) {
      // Containers are removed through the API so that their mounts and namespaces go too.
      HttpRequest list;
      list.url = "http://localhost/v1.41/containers/json?all=true";
      list.unix_socket = socket;
      if (auto r = SendHttpRequest(list); r.ok()) {
        if (auto doc = ParseJson(r->body); doc.ok() && doc->has_list_value()) {
          for (const auto& c : doc->list_value().values()) {
            HttpRequest rm;
            rm.method = "DELETE";
            rm.url = absl::StrCat("http://localhost/v1.41/containers/",
                                  c.struct_value().fields().at("Id").string_value(), "?force=true");
            rm.unix_socket = socket;
            (void)SendHttpRequest(rm);
          }
        }
      }
    }
    service.reset();
  }
};

class ContainerActionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    podman_ = new Podman;
    podman_->Start();
  }
  static void TearDownTestSuite() {
    delete podman_;
    podman_ = nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(podman_->error.empty()) << podman_->error;
    Write("shared/redis.yaml", kRedis);
    Write("svc/service.yaml", kService);
    auto def = LoadServiceDefinition(dir_.Sub("svc"), dir_.Sub("shared"));
    ASSERT_TRUE(def.ok()) << def.status();
    def_ = std::move(*def);
  }

  // Each test's container goes with it: units of one daemon share its host ports.
  void TearDown() override {
    if (!unit_.empty() && podman_->service) {
      Api("DELETE", "/containers/" + ContainerName(unit_) + "?force=true");
    }
  }

  // An engine for `unit` whose container actions use `socket`.
  void Start(const std::string& unit, std::string socket = "") {
    unit_ = unit;
    BackendOptions options;
    options.container.socket = socket.empty() ? podman_->socket : socket;
    options.container.stop_grace = absl::Seconds(3);
    options.log = [this](absl::string_view, absl::string_view handler, absl::string_view source,
                         absl::string_view text) {
      logs_.push_back(absl::StrCat(handler, "|", source, "|", text));
    };
    std::unique_ptr<BackendRegistry> backends = MakeBackends(options);
    BackendRegistry& factory = *backends;
    auto spec = BuildSpec(def_, unit, factory);
    ASSERT_TRUE(spec.ok()) << spec.status();
    auto store = kb::Store::Open(dir_.Sub("kb"), kb::StoreOptions{});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto kb = kb::Kb::Open(store_.get(), unit);
    ASSERT_TRUE(kb.ok()) << kb.status();
    kb_ = std::move(*kb);
    auto engine = engine::Engine::Create(std::move(*spec), kb_.get(), &clock_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }

  void Write(const std::string& rel, const std::string& text) {
    const std::string path = dir_.Sub(rel);
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream(path) << text;
  }

  engine::RunOutcome Run(v1::Event e) {
    auto id = engine_->Enqueue(std::move(e));
    EXPECT_TRUE(id.ok()) << id.status();
    auto r = engine_->RunOnce();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->outcome : engine::RunOutcome{};
  }

  std::string FailureMessage() const {
    return engine_->failure() ? engine_->failure()->message() : "(no failure)";
  }

  std::string Fact(const std::string& name) const {
    return engine_->FactValue(name).value_or("<unset>");
  }

  // An API call to the suite's podman.
  static HttpResponse Api(const std::string& method, const std::string& path,
                          std::optional<std::string> body = std::nullopt) {
    HttpRequest r;
    r.method = method;
    r.url = "http://localhost/v1.41" + path;
    r.unix_socket = podman_->socket;
    r.timeout = absl::Seconds(30);
    if (body) {
      r.body = std::move(body);
      r.headers.emplace_back("Content-Type", "application/json");
    }
    auto resp = SendHttpRequest(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : HttpResponse{};
  }

  // The container's inspection (a null value when there is none).
  static google::protobuf::Value Inspect(const std::string& name) {
    HttpResponse r = Api("GET", "/containers/" + name + "/json");
    if (r.status != 200) return {};
    auto doc = ParseJson(r.body);
    EXPECT_TRUE(doc.ok()) << doc.status();
    return doc.ok() ? *doc : google::protobuf::Value{};
  }

  static std::vector<std::string> Env(const google::protobuf::Value& inspect) {
    std::vector<std::string> env;
    auto list = ResolveJsonPointer(inspect, "/Config/Env");
    if (!list.ok()) return env;
    for (const auto& v : (*list)->list_value().values()) env.push_back(v.string_value());
    return env;
  }

  // Whether the container's output (its command prints its environment first) comes to hold
  // `text` within 10 seconds. Logs, not exec: exec sessions leave conmon processes behind.
  static bool LogsShow(const std::string& name, const std::string& text) {
    return ::parley::testing::WaitFor(
        [&] {
          return absl::StrContains(
              Api("GET", "/containers/" + name + "/logs?stdout=true&stderr=true").body, text);
        },
        absl::Seconds(10));
  }

  static Podman* podman_;
  ::parley::testing::TempDir dir_;
  std::string unit_;
  ServiceDefinition def_;
  base::ManualClock clock_;
  std::unique_ptr<kb::Store> store_;
  std::unique_ptr<kb::Kb> kb_;
  std::unique_ptr<engine::Engine> engine_;
  std::vector<std::string> logs_;
};

Podman* ContainerActionTest::podman_ = nullptr;

TEST_F(ContainerActionTest, CreatesAndStartsTheUnitsContainer) {
  Start("web/0");
  ASSERT_EQ(Run(Joined("10.0.0.9")), engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_THAT(Fact("container.id"), MatchesRegex("[0-9a-f]{64}"));
  EXPECT_EQ(Fact("container.state"), "running");
  EXPECT_THAT(Fact("container.ip"), MatchesRegex("[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+"));
  EXPECT_EQ(Fact("container.port.80"), "18080");
  EXPECT_EQ(Fact("container.port.9090"), "9090");

  const google::protobuf::Value c = Inspect("parley-web-0");
  EXPECT_EQ(JsonValueText(**ResolveJsonPointer(c, "/Id")), Fact("container.id"));
  EXPECT_THAT(Env(c), AllOf(Contains("REDIS_HOST=10.0.0.9"), Contains("REDIS_PORT=6379"),
                            Contains("GREETING=hello")));
  EXPECT_THAT(JsonValueText(**ResolveJsonPointer(c, "/Config/Labels/parley.unit")), "web/0");
  EXPECT_TRUE(LogsShow("parley-web-0", "REDIS_HOST=10.0.0.9"));
  EXPECT_THAT(logs_, Contains(StartsWith("run|container|created parley-web-0 from " +
                                         std::string(kImage))));

  // The same spec again: nothing to do, the same container.
  const std::string id = Fact("container.id");
  logs_.clear();
  ASSERT_EQ(Run(Changed("10.0.0.9")), engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(Fact("container.id"), id);
  EXPECT_THAT(logs_, Not(Contains(HasSubstr("run|container|"))));
}

TEST_F(ContainerActionTest, AChangedSpecRecreatesTheContainer) {
  Start("web/1");
  ASSERT_EQ(Run(Joined("10.0.0.9")), engine::RunOutcome::kCommitted) << FailureMessage();
  const std::string old_id = Fact("container.id");

  ASSERT_EQ(Run(Changed("10.0.0.10")), engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_THAT(Fact("container.id"), AllOf(MatchesRegex("[0-9a-f]{64}"), Not(old_id)));
  EXPECT_EQ(Fact("container.state"), "running");
  EXPECT_THAT(Env(Inspect("parley-web-1")), Contains("REDIS_HOST=10.0.0.10"));
  EXPECT_TRUE(LogsShow("parley-web-1", "REDIS_HOST=10.0.0.10"));
  EXPECT_EQ(Api("GET", "/containers/" + old_id + "/json").status, 404);
}

TEST_F(ContainerActionTest, StateStoppedStopsAndAbsentRemoves) {
  Start("web/2");
  ASSERT_EQ(Run(Joined("10.0.0.9")), engine::RunOutcome::kCommitted) << FailureMessage();
  const std::string id = Fact("container.id");

  ASSERT_EQ(Run(Named("stop")), engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(Fact("container.id"), id);  // the same spec: stopped, not replaced
  EXPECT_EQ(Fact("container.state"), "exited");
  EXPECT_EQ(JsonValueText(**ResolveJsonPointer(Inspect("parley-web-2"), "/State/Running")),
            "false");

  ASSERT_EQ(Run(Named("remove")), engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(Api("GET", "/containers/parley-web-2/json").status, 404);
  for (const auto& [fact, value] : engine_->Facts()) {
    EXPECT_THAT(fact, Not(StartsWith("container."))) << value;
  }
  // Removing what is not there is done already.
  ASSERT_EQ(Run(Named("remove")), engine::RunOutcome::kCommitted) << FailureMessage();
}

TEST_F(ContainerActionTest, AMissingImageFailsAndRollsBack) {
  Start("web/3");
  ASSERT_EQ(Run(Named("broken")), engine::RunOutcome::kFailed);
  EXPECT_THAT(FailureMessage(),
              AllOf(StartsWith(absl::StrCat("handler 'broken': container API at ", podman_->socket,
                                            ": POST /v1.41/containers/create?name=parley-web-3: "
                                            "status 404: ")),
                    HasSubstr("localhost/parley-test-missing:1")));
  EXPECT_FALSE(engine_->IsSet("marked"));  // set by the handler before it: rolled back
  EXPECT_FALSE(engine_->IsSet("container.id"));
  EXPECT_EQ(Api("GET", "/containers/parley-web-3/json").status, 404);
}

TEST_F(ContainerActionTest, AMissingDaemonFails) {
  const std::string nowhere = dir_.Sub("no-daemon.sock");
  Start("web/4", nowhere);
  ASSERT_EQ(Run(Joined("10.0.0.9")), engine::RunOutcome::kFailed);
  EXPECT_THAT(
      FailureMessage(),
      StartsWith(absl::StrCat("handler 'run': container API at ", nowhere,
                              ": GET http://localhost/v1.41/containers/parley-web-4/json: ")));
  EXPECT_THAT(FailureMessage(), HasSubstr(absl::StrCat("cannot connect to unix socket ", nowhere,
                                                       ": No such file or directory")));
  EXPECT_FALSE(engine_->IsSet("container.id"));
}

TEST(ContainerNameTest, IsPerUnitAndSanitized) {
  EXPECT_EQ(ContainerName("web/0"), "parley-web-0");
  EXPECT_EQ(ContainerName("my-db/12"), "parley-my-db-12");
  EXPECT_EQ(ContainerName("we b:x/1"), "parley-we-b-x-1");
}

}  // namespace
}  // namespace parley::services
