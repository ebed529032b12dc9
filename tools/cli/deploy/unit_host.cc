#include "tools/cli/deploy/unit_host.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "parley/v1/model.pb.h"
#include "tools/cli/common/client.h"
#include "tools/cli/deploy/bundle.h"

namespace parley::cli {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<v1::ModelState> LoadPlan(const std::string& file) {
  std::ifstream in(file);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the plan ", file));
  std::stringstream text;
  text << in.rdbuf();
  v1::ModelState plan;
  if (auto s = google::protobuf::util::JsonStringToMessage(text.str(), &plan); !s.ok()) {
    return absl::DataLossError(absl::StrCat(file, ": not a plan: ", s.message().ToString()));
  }
  return plan;
}

// "app-1" -> "app/1" (service names may hold '-', the number is after the last one).
absl::StatusOr<std::string> UnitFromPodName(const std::string& pod) {
  const size_t dash = pod.rfind('-');
  int n = 0;
  if (dash == std::string::npos || dash == 0 || !absl::SimpleAtoi(pod.substr(dash + 1), &n)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot tell the unit from the pod name '", pod,
                                                   "' (expected <service>-<number>); pass --unit"));
  }
  return absl::StrCat(pod.substr(0, dash), "/", n);
}

absl::StatusOr<std::string> WhichUnit(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* pod = getenv("POD_NAME"); pod != nullptr && *pod != '\0') {
    return UnitFromPodName(pod);
  }
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return UnitFromPodName(host);
}

// Hosts `unit` on the parleyd at `client` as the plan says, or brings its config up to date.
absl::Status Host(AgentClient& client, const v1::ModelState& plan, const v1::ServiceRecord& svc,
                  const std::string& unit) {
  v1::ListAgentsResponse agents;
  RETURN_IF_ERROR(client.Call(&v1::Agent::Stub::ListAgents, v1::ListAgentsRequest(), &agents));
  for (const auto& a : agents.agents()) {
    if (a.agent() != unit) continue;
    v1::GetConfigRequest get;
    get.set_agent(unit);
    v1::GetConfigResponse current;
    RETURN_IF_ERROR(client.Call(&v1::Agent::Stub::GetConfig, get, &current));
    v1::SetConfigRequest set;
    set.set_agent(unit);
    for (const auto& [k, v] : svc.config()) {
      auto it = current.config().find(k);
      if (it == current.config().end() || it->second != v) (*set.mutable_set())[k] = v;
    }
    if (set.set().empty()) return absl::OkStatus();
    v1::SetConfigResponse done;
    RETURN_IF_ERROR(client.Call(&v1::Agent::Stub::SetConfig, set, &done));
    std::fprintf(stderr, "parley host-unit: configured %s\n", unit.c_str());
    return absl::OkStatus();
  }
  v1::AddAgentRequest req;
  v1::AgentRecipe* r = req.mutable_recipe();
  r->set_agent(unit);
  r->set_definition_dir(svc.definition_dir());
  r->set_interfaces_dir(plan.interfaces_dir());
  *r->mutable_config() = svc.config();
  v1::AddAgentResponse resp;
  RETURN_IF_ERROR(client.Call(&v1::Agent::Stub::AddAgent, req, &resp, absl::Seconds(60)));
  std::fprintf(stderr, "parley host-unit: hosting %s\n", unit.c_str());
  return absl::OkStatus();
}

const v1::ServiceRecord* FindService(const v1::ModelState& plan, const std::string& name) {
  for (const auto& s : plan.services()) {
    if (s.name() == name) return &s;
  }
  return nullptr;
}

// What `unit` asks for where its service is a relation's asking side (as `parley up` does; peers:
// each pair once, asked by the lower-numbered unit).
std::vector<v1::RelateRequest> RelateRequests(const v1::ModelState& plan,
                                              const std::string& service, const std::string& unit) {
  std::vector<v1::RelateRequest> out;
  for (const auto& rel : plan.relations()) {
    if (rel.a_service() != service) continue;
    const v1::ServiceRecord* b = FindService(plan, rel.b_service());
    if (b == nullptr) continue;
    const bool peers = rel.a_service() == rel.b_service() && rel.a_endpoint() == rel.b_endpoint();
    bool seen_self = false;
    for (const auto& remote : b->units()) {
      if (remote.name() == unit) {
        seen_self = true;
        continue;
      }
      if (peers && !seen_self) continue;
      v1::RelateRequest req;
      req.set_agent(unit);
      req.set_relation_id(rel.id());
      req.set_endpoint(rel.a_endpoint());
      req.set_remote_agent(remote.name());
      req.set_remote_address(remote.address());
      req.set_remote_endpoint(rel.b_endpoint());
      out.push_back(std::move(req));
    }
  }
  return out;
}

pid_t StartParleyd(const HostUnitOptions& o, const std::string& advertise) {
  std::vector<std::string> args = {o.parleyd,
                                   absl::StrCat("--data=", o.data_dir, "/kb"),
                                   absl::StrCat("--state_dir=", o.data_dir, "/units"),
                                   absl::StrCat("--listen=0.0.0.0:", o.port),
                                   absl::StrCat("--advertise=", advertise),
                                   absl::StrCat("--metrics_listen=0.0.0.0:", o.metrics_port),
                                   "--plaintext"};
  const pid_t pid = fork();
  if (pid != 0) return pid;
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  execv(o.parleyd.c_str(), argv.data());
  std::fprintf(stderr, "parley host-unit: cannot run %s: %s\n", o.parleyd.c_str(),
               std::strerror(errno));
  _exit(127);
}

absl::Status SetUp(const HostUnitOptions& o, const v1::ModelState& plan,
                   const v1::ServiceRecord& svc, const std::string& unit, pid_t parleyd) {
  AgentClient client(absl::StrCat("127.0.0.1:", o.port));
  client.set_wait_for_ready(true);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!client.Host(absl::Seconds(2)).ok()) {
    if (waitpid(parleyd, nullptr, WNOHANG) == parleyd) {
      return absl::UnavailableError("parleyd exited at startup (its output is above)");
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError("parleyd did not answer within 60 s");
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  client.set_wait_for_ready(false);
  return Host(client, plan, svc, unit);
}

// Relating asks the remote agent (CheckRelation), which may not be up yet: each request is tried
// again every `kRetry` until it is accepted, a signal comes (passed on to parleyd; returns it) or
// `kGiveUp` passes (fails: the container restarts and tries again). Relating again changes nothing.
constexpr absl::Duration kRetry = absl::Seconds(1);
constexpr absl::Duration kGiveUp = absl::Minutes(10);

absl::StatusOr<int> RelateAll(AgentClient& client, std::vector<v1::RelateRequest> pending,
                              const sigset_t& signals, pid_t parleyd) {
  const absl::Time deadline = absl::Now() + kGiveUp;
  std::map<std::string, std::string> last_error;
  while (!pending.empty()) {
    std::vector<v1::RelateRequest> left;
    for (const auto& req : pending) {
      v1::RelateResponse resp;
      absl::Status s = client.Call(&v1::Agent::Stub::Relate, req, &resp, absl::Seconds(5));
      const std::string what = absl::StrCat(req.relation_id(), " with ", req.remote_agent());
      if (s.ok()) {
        std::fprintf(stderr, "parley host-unit: related %s\n", what.c_str());
        continue;
      }
      if (last_error[what] != s.message()) {
        last_error[what] = std::string(s.message());
        std::fprintf(stderr, "parley host-unit: relating %s (will retry): %s\n", what.c_str(),
                     last_error[what].c_str());
      }
      left.push_back(req);
    }
    pending = std::move(left);
    if (pending.empty()) break;
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("could not relate within ",
                                                      absl::FormatDuration(kGiveUp), ": ",
                                                      last_error.begin()->second));
    }
    if (waitpid(parleyd, nullptr, WNOHANG) == parleyd)
      return absl::UnavailableError("parleyd exited");
    timespec wait = absl::ToTimespec(kRetry);
    const int sig = sigtimedwait(&signals, nullptr, &wait);
    if (sig == SIGTERM || sig == SIGINT) return sig;
  }
  return 0;
}

}  // namespace

int HostUnit(const HostUnitOptions& o) {
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "parley host-unit: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  absl::StatusOr<v1::ModelState> plan = LoadPlan(o.plan_file);
  if (!plan.ok()) return fail(plan.status());
  absl::StatusOr<std::string> unit = WhichUnit(o.unit);
  if (!unit.ok()) return fail(unit.status());
  const v1::ServiceRecord* svc = nullptr;
  const v1::UnitRecord* record = nullptr;
  for (const auto& s : plan->services()) {
    for (const auto& u : s.units()) {
      if (u.name() == *unit) {
        svc = &s;
        record = &u;
      }
    }
  }
  if (record == nullptr) {
    return fail(
        absl::NotFoundError(absl::StrCat("the plan ", o.plan_file, " has no unit ", *unit,
                                         " (scaled beyond the export? export the model again)")));
  }
  // The definitions as the plan names them, from their bundles.
  const fs::path bundles(o.bundles_dir);
  if (absl::Status s = RestoreBundle((bundles / svc->name()).string(), svc->definition_dir());
      !s.ok()) {
    return fail(s);
  }
  if (!plan->interfaces_dir().empty()) {
    if (absl::Status s = RestoreBundle((bundles / "interfaces").string(), plan->interfaces_dir());
        !s.ok()) {
      return fail(s);
    }
  }

  // SIGTERM and SIGINT are taken here and passed on; parleyd gets them unblocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGCHLD);
  sigprocmask(SIG_BLOCK, &signals, nullptr);
  const pid_t parleyd = StartParleyd(o, record->address());
  if (parleyd < 0) return fail(absl::InternalError(std::strerror(errno)));
  absl::Status set_up = SetUp(o, *plan, *svc, *unit, parleyd);
  absl::StatusOr<int> signalled = 0;
  if (set_up.ok()) {
    AgentClient client(absl::StrCat("127.0.0.1:", o.port));
    signalled = RelateAll(client, RelateRequests(*plan, svc->name(), *unit), signals, parleyd);
  }
  if (!set_up.ok() || !signalled.ok()) {
    kill(parleyd, SIGTERM);
    waitpid(parleyd, nullptr, 0);
    return fail(set_up.ok() ? signalled.status() : set_up);
  }
  if (*signalled != 0) kill(parleyd, *signalled);
  std::fprintf(stderr, "parley host-unit: %s at %s\n", unit->c_str(), record->address().c_str());
  while (true) {
    int status = 0;
    if (waitpid(parleyd, &status, WNOHANG) == parleyd) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    timespec wait = {1, 0};
    const int sig = sigtimedwait(&signals, nullptr, &wait);
    if (sig == SIGTERM || sig == SIGINT) kill(parleyd, sig);
  }
}

absl::Status Probe(const std::string& address, bool ready, const std::string& plan_file) {
  AgentClient client(address);
  RETURN_IF_ERROR(client.Host(absl::Seconds(3)).status());
  if (!ready) return absl::OkStatus();
  v1::ListAgentsResponse agents;
  RETURN_IF_ERROR(client.Call(&v1::Agent::Stub::ListAgents, v1::ListAgentsRequest(), &agents,
                              absl::Seconds(3)));
  if (agents.agents().empty()) return absl::UnavailableError("no agent hosted yet");
  absl::StatusOr<v1::ModelState> plan = v1::ModelState();
  if (!plan_file.empty()) plan = LoadPlan(plan_file);
  RETURN_IF_ERROR(plan.status());
  for (const auto& a : agents.agents()) {
    ASSIGN_OR_RETURN(v1::CheckIdleResponse idle, client.CheckIdle(a.agent()));
    if (!idle.idle()) return absl::UnavailableError(absl::StrCat(a.agent(), " is busy"));
    ASSIGN_OR_RETURN(v1::AgentStatus st, client.Status(a.agent(), absl::Seconds(3)));
    std::map<std::string, int> joined;
    for (const auto& rel : st.relations()) {
      joined[rel.relation_id()] = rel.remote_units_size();
      if (rel.remote_units().empty()) {
        return absl::UnavailableError(
            absl::StrCat(a.agent(), ": no remote unit has joined ", rel.relation_id()));
      }
    }
    // Every relation of the plan, with every remote unit.
    for (const auto& rel : plan->relations()) {
      for (const auto& [mine, other] : {std::pair{rel.a_service(), rel.b_service()},
                                        std::pair{rel.b_service(), rel.a_service()}}) {
        if (mine != a.service()) continue;
        const v1::ServiceRecord* remote = FindService(*plan, other);
        const int want = remote == nullptr ? 0 : remote->units_size() - (mine == other ? 1 : 0);
        if (joined[rel.id()] < want) {
          return absl::UnavailableError(absl::StrCat(a.agent(), ": ", joined[rel.id()], " of ",
                                                     want, " remote units joined ", rel.id()));
        }
        break;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace parley::cli
