// The ansible backend (services/backends/ansible/ansible_backend.h): real playbooks run by the real
// ansible-playbook through a real engine on a real KB. Tasks render files from config and
// relation data and act on the run through parley-hook; their changes land only if the run
// commits. Each test runs at most one playbook: ansible-playbook takes about a second to start.

#include "services/backends/ansible/ansible_backend.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/backends/backends.h"
#include "tests/services/backends/backend_test_util.h"

namespace parley::services {
namespace {

using ::testing::AllOf;
using testing::Gone;
using ::testing::HasSubstr;
using testing::Joined;
using testing::Named;
using ::testing::Not;

constexpr char kHook[] = PARLEY_HOOK;

constexpr char kRedis[] = "required: {host: string, port: int}\noptional: {note: string}\n";
constexpr char kHttp[] =
    "required: {host: string, port: int}\nrequirer: {optional: {client: string}}\n";

constexpr char kService[] = R"(name: webapp
requires:
  db: redis
provides:
  website: http
config:
  port: {type: int, default: 8080}
  debug: {type: bool, default: false}
  title: {type: string, default: Hello}
actions:
  dump:
    params:
      level: {type: int, default: 1}
events:
  fail: Changes things, then a task fails.
  hang: A task that never ends.
handlers:
  - name: configure
    on: [db.joined]
    action:
      kind: ansible
      playbook: playbooks/configure.yml
      vars: {greeting: "{{config.title}} on port {{config.port}}"}
  - name: dump
    on: [action.dump]
    action: {kind: ansible, playbook: playbooks/dump.yml}
  - name: fail
    on: [fail]
    action: {kind: ansible, playbook: playbooks/fail.yml}
  - name: hang
    on: [hang]
    timeout: 5s
    action: {kind: ansible, playbook: playbooks/hang.yml}
)";

// The Chef-databag pattern: a config file rendered from the run's data.
constexpr char kConfigure[] = R"(- hosts: localhost
  gather_facts: false
  tasks:
    - name: render the config
      ansible.builtin.copy:
        dest: "{{ parley_state_dir }}/app.conf"
        mode: "0600"
        content: |
          title={{ parley_config.title }}
          port={{ parley_config.port }}
          {% for rel in parley_relations.db.values() %}
          {% for unit, data in rel.remote_units.items() %}
          redis={{ unit }} {{ data.host }}:{{ data.port }} {{ data.note }}
          {% endfor %}
          {% endfor %}
          greeting={{ greeting }}
    - name: tell the agent
      ansible.builtin.command:
        argv: [parley-hook, fact, set, configured, "{{ parley_state_dir }}/app.conf"]
    - name: report
      ansible.builtin.command:
        argv: [parley-hook, status, set, active, "configured by {{ parley_handler }}"]
)";

// Extra variables, typed where the definition declares a type.
constexpr char kDump[] = R"(- hosts: localhost
  gather_facts: false
  tasks:
    - name: dump
      ansible.builtin.command:
        argv:
          - parley-hook
          - fact
          - set
          - dump
          - "{{ parley_unit }}|{{ parley_service }}|{{ parley_handler }}|{{ parley_event.name }}|{{ parley_event.params.level + 1 }}|{{ parley_config.port + 1 }}|{{ parley_config.debug | ternary('debug', 'quiet') }}|{{ parley_relations.website['website:1'].remote_service }}|{{ parley_relations.website['website:1'].remote_units['lb/0'].client }}|{{ parley_relations.db | length }}|{{ parley_facts['website.joined'] is defined }}|{{ parley_unit_host }}"
)";

constexpr char kFail[] = R"(- hosts: localhost
  gather_facts: false
  tasks:
    - name: half done
      ansible.builtin.command: parley-hook fact set half-done yes
    - name: block
      ansible.builtin.command: parley-hook status set blocked "about to fail"
    - name: leave a file
      ansible.builtin.copy: {dest: "{{ parley_state_dir }}/left-behind", content: "x"}
    - name: give up
      ansible.builtin.fail:
        msg: "the disk is full"
    - name: never
      ansible.builtin.command: parley-hook fact set never yes
)";

// The shell's pid is the sleep's (exec): the test checks that it was killed with the group.
constexpr char kHang[] = R"(- hosts: localhost
  gather_facts: false
  tasks:
    - name: started
      ansible.builtin.command: parley-hook fact set hanging yes
    - name: sleep for a long time
      ansible.builtin.shell: echo $$ > "{{ parley_state_dir }}/sleep.pid"; exec sleep 60
)";

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

class AnsibleBackendTest : public testing::BackendTest {
 protected:
  void SetUp() override {
    Write("shared/redis.yaml", kRedis);
    Write("shared/http.yaml", kHttp);
    Write("svc/service.yaml", kService);
    Write("svc/playbooks/configure.yml", kConfigure);
    Write("svc/playbooks/dump.yml", kDump);
    Write("svc/playbooks/fail.yml", kFail);
    Write("svc/playbooks/hang.yml", kHang);
    BackendOptions options;
    options.process.extra_path = {std::filesystem::path(kHook).parent_path().string()};
    options.process.state_root = dir_.Sub("state");
    options.process.unit_host = "10.213.7.9";
    ASSERT_NO_FATAL_FAILURE(Start(options));
  }

  std::string StateFile(const std::string& name) { return dir_.Sub("state/web-0/" + name); }
};

TEST_F(AnsibleBackendTest, APlaybookRendersRelationDataAndSetsFacts) {
  // The note would be 42 if Ansible evaluated peer data as a template.
  engine::RunResult r = Run(Joined(
      "db", "db:1", "redis/0", {{"host", "10.0.0.9"}, {"port", "6379"}, {"note", "{{ 6 * 7 }}"}}));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  EXPECT_EQ(engine_->FactValue("configured"), StateFile("app.conf"));
  EXPECT_EQ(ReadFile(StateFile("app.conf")),
            "title=Hello\n"
            "port=8080\n"
            "redis=redis/0 10.0.0.9:6379 {{ 6 * 7 }}\n"
            "greeting=Hello on port 8080\n");
  EXPECT_EQ(engine_->workload_status().state(), v1::WORKLOAD_STATE_ACTIVE);
  EXPECT_EQ(engine_->workload_status().message(), "configured by configure");
  struct stat st;
  ASSERT_EQ(stat(dir_.Sub("state/web-0").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST_F(AnsibleBackendTest, ExtraVarsHoldTheRunsDataWithTheirTypes) {
  // No handler answers website.joined: this run only records the relation and its data.
  ASSERT_EQ(Run(Joined("website", "website:1", "lb/0", {{"client", "nginx"}})).outcome,
            engine::RunOutcome::kCommitted)
      << FailureMessage();
  engine::RunResult r = Run(Named("action.dump", {{"level", "3"}}));
  ASSERT_EQ(r.outcome, engine::RunOutcome::kCommitted) << FailureMessage();
  // level and port are ints (3 + 1, 8080 + 1); debug is the bool false, not the string "false"
  // (which Jinja would find true); every declared endpoint is there, even without relations.
  EXPECT_EQ(engine_->FactValue("dump"),
            "web/0|web|dump|action.dump|4|8081|quiet|lb|nginx|0|True|10.213.7.9");
}

TEST_F(AnsibleBackendTest, AFailingTaskRollsTheRunBack) {
  const v1::WorkloadStatus before = engine_->workload_status();
  engine::RunResult r = Run(Named("fail"));
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  ASSERT_TRUE(engine_->failure().has_value());
  EXPECT_EQ(engine_->failure()->handler(), "fail");
  EXPECT_THAT(FailureMessage(),
              AllOf(HasSubstr("handler 'fail': ansible-playbook playbooks/fail.yml exited with "
                              "status 2; failed task: "
                              "TASK [give up]\nfatal: [localhost]: FAILED!"),
                    HasSubstr("the disk is full")));
  EXPECT_THAT(FailureMessage(), Not(HasSubstr("PLAY RECAP")));
  EXPECT_FALSE(engine_->IsSet("half-done"));
  EXPECT_FALSE(engine_->IsSet("never"));
  EXPECT_EQ(engine_->workload_status().SerializeAsString(), before.SerializeAsString());
  // Files are not transactional: what the playbook wrote stays.
  EXPECT_TRUE(std::filesystem::exists(StateFile("left-behind")));
}

TEST_F(AnsibleBackendTest, AHangingPlaybookIsKilledAtItsTimeout) {
  const absl::Time start = absl::Now();
  engine::RunResult r = Run(Named("hang"));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.outcome, engine::RunOutcome::kFailed);
  EXPECT_THAT(
      FailureMessage(),
      HasSubstr(
          "handler 'hang': ansible-playbook playbooks/hang.yml timed out after 5s and was killed; "
          "running TASK [sleep for a long time]"));
  EXPECT_GE(took, absl::Seconds(5));
  EXPECT_LT(took, absl::Seconds(8));
  EXPECT_FALSE(engine_->IsSet("hanging"));

  // The task's process was in the killed process group.
  std::ifstream pid_file(StateFile("sleep.pid"));
  int pid = 0;
  ASSERT_TRUE(pid_file >> pid) << "the sleep task never started";
  EXPECT_TRUE(Gone(pid, absl::Now() + absl::Seconds(2))) << "process " << pid << " survived";
}

TEST_F(AnsibleBackendTest, VariablesNamedLikeOursAreRefused) {
  Write("bad/service.yaml", R"(name: bad
handlers:
  - name: install
    on: [install]
    action: {kind: ansible, playbook: site.yml, vars: {parley_unit: x}}
)");
  Write("bad/site.yml", kFail);
  auto def = LoadServiceDefinition(dir_.Sub("bad"));
  ASSERT_TRUE(def.ok()) << def.status();
  std::unique_ptr<BackendRegistry> backends = MakeBackends({});
  BackendRegistry& factory = *backends;
  auto spec = BuildSpec(*def, "bad/0", factory);
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(spec.status().message(), AllOf(HasSubstr("handler 'install': variable 'parley_unit'"),
                                             HasSubstr("service.yaml:5")));
}

}  // namespace
}  // namespace parley::services
