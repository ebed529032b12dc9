// The commands that change the model: up, down, relate, unrelate, config, add-unit, remove-unit,
// resolve, cert (docs/cli.md).

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "engine/trace_format.h"
#include "services/definition/definition.h"
#include "tools/cli/commands.h"
#include "tools/cli/model/apply.h"
#include "tools/cli/model/plan.h"
#include "tools/cli/output.h"
#include "tools/cli/pki.h"

namespace parley::cli {
namespace {

namespace fs = std::filesystem;
using services::LoadModel;
using services::LoadServiceDefinition;
using services::Model;
using services::ModelService;

// Who runs this command, for the traces and logs of what it changes: "$USER@host".
std::string Operator() {
  std::string user;
  if (const char* env = getenv("USER"); env != nullptr && *env != '\0') {
    user = env;
  } else if (const passwd* pw = getpwuid(getuid()); pw != nullptr) {
    user = pw->pw_name;
  } else {
    user = absl::StrCat("uid ", getuid());
  }
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return user;
  return absl::StrCat(user, "@", host);
}

}  // namespace

// `up` without the model file: what the model directory recorded is started again (the local
// parleyd on its recorded ports and data, or the units' containers); each agent comes back from
// its knowledge base with the config it had, and gets `start`.
absl::Status Start(Session& s, const Args& args) {
  ASSIGN_OR_RETURN(absl::Duration timeout, ParseDuration(args.Get("--timeout", "300s")));
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  if (absl::Status st = s.LoadState(); absl::IsNotFound(st)) {
    return absl::FailedPreconditionError(
        absl::StrCat("no model in ", s.dir().path(), ": `parley up MODEL` starts one"));
  } else if (!st.ok()) {
    return st;
  }
  v1::ModelState& state = s.state();
  RETURN_IF_ERROR(s.dir().UseTls(state.tls()));
  s.UseRuntime();
  if (s.runtime() != nullptr) {
    RETURN_IF_ERROR(s.StartRuntime());
    std::fprintf(stderr, "started %zu containers\n", s.AllUnits().size());
  } else if (!state.host().address().empty()) {
    bool started = false;
    RETURN_IF_ERROR(s.dir().EnsureHost(FindBinary("parleyd"), *state.mutable_host(), &started));
    std::fprintf(stderr, "parleyd %s (pid %lld) %s, model directory %s\n",
                 state.host().address().c_str(), static_cast<long long>(state.host().pid()),
                 started ? "started" : "was running", s.dir().path().c_str());
  }
  RETURN_IF_ERROR(s.Save());
  // Units on hosts run by others are theirs to restart: say which do not answer.
  for (const v1::HostRecord& h : state.hosts()) {
    if (absl::StatusOr<v1::HostInfo> info = s.Client(h.address()).Host(absl::Seconds(5));
        !info.ok()) {
      std::fprintf(stderr, "parley: host %s at %s does not answer: %s\n", h.name().c_str(),
                   h.address().c_str(), std::string(info.status().message()).c_str());
    }
  }
  if (args.Has("--no-wait")) return absl::OkStatus();
  return s.Wait(timeout);
}

namespace {

// What `up` refuses before it changes anything: choices that belong to a new model (TLS, the
// runtime) asked of one that made them otherwise, and placements a runtime cannot honour.
absl::Status CheckUp(const v1::ModelState& state, const Args& args, const Model& model) {
  const bool is_new = state.host().name().empty();
  if (!is_new && args.Has("--plaintext") && state.tls()) {
    return absl::FailedPreconditionError(
        "this model runs with TLS; --plaintext applies to a new model (down --purge first)");
  }
  if (!is_new && args.Has("--runtime") && args.Get("--runtime") != state.runtime().engine()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this model runs ",
        state.runtime().engine().empty() ? "without containers" : "in " + state.runtime().engine(),
        "; --runtime applies to a new model (down --purge first)"));
  }
  const bool runtime = is_new ? args.Has("--runtime") : !state.runtime().engine().empty();
  if (args.Has("--image") && !runtime) {
    return absl::InvalidArgumentError("--image goes with --runtime");
  }
  if (!runtime) return absl::OkStatus();
  // Each unit's container is its host: the model places nothing.
  if (!model.hosts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(model.file, ": `hosts` and --runtime do not mix (each unit has a container)"));
  }
  for (const ModelService& m : model.services) {
    if (m.host != "local") {
      return absl::InvalidArgumentError(
          absl::StrCat(model.file, ": service ", m.name, " is placed on host ", m.host,
                       "; with --runtime each unit has a container of its own"));
    }
  }
  return absl::OkStatus();
}

// Makes the model's parleyds ready for its units: the choices of a new model recorded, the
// runtime's containers running, the hosts run by others answering, the local parleyd started
// when the model places anything on it.
absl::Status PrepareHosts(Session& s, const Args& args, const Model& model) {
  v1::ModelState& state = s.state();
  state.set_model_file(AbsolutePath(model.file));
  state.set_interfaces_dir(model.interfaces_dir.empty() ? "" : AbsolutePath(model.interfaces_dir));
  // Mutual TLS from the model's CA unless the model was first brought up with --plaintext; a
  // model keeps its choice, and its runtime, until `down --purge`.
  if (state.host().name().empty()) {
    state.set_tls(!args.Has("--plaintext"));
    if (args.Has("--runtime")) {
      ASSIGN_OR_RETURN(*state.mutable_runtime(),
                       ContainerRuntime::NewRecord(args.Get("--runtime"),
                                                   args.Get("--image", "localhost/parley:latest"),
                                                   AbsolutePath(s.dir().path())));
    }
    state.mutable_host()->set_name("local");
  }
  // A new image serves the units added from now on.
  if (args.Has("--image")) state.mutable_runtime()->set_image(args.Get("--image"));
  RETURN_IF_ERROR(s.dir().UseTls(state.tls()));
  s.UseRuntime();
  if (s.runtime() != nullptr) RETURN_IF_ERROR(s.StartRuntime());

  // Hosts run by others must answer before anything changes.
  state.clear_hosts();
  for (const services::ModelHost& h : model.hosts) {
    v1::HostRecord* rec = state.add_hosts();
    rec->set_name(h.name);
    rec->set_address(h.address);
    rec->set_model_root(h.model_root);
    absl::StatusOr<v1::HostInfo> info = s.Client(h.address).Host(absl::Seconds(5));
    if (!info.ok()) {
      return absl::UnavailableError(absl::StrCat("host ", h.name, " (", model.file, ":", h.line,
                                                 ") does not answer: ", info.status().message()));
    }
    if (!info->hosts_definitions()) {
      return absl::FailedPreconditionError(absl::StrCat("host ", h.name, " at ", h.address,
                                                        " does not host agents from definitions"));
    }
    rec->set_pid(info->pid());
    rec->set_data_dir(info->data_dir());
    rec->set_metrics_address(info->metrics_address());
  }
  // The local parleyd, when the model places anything on it.
  const bool local = s.runtime() == nullptr &&
                     (std::any_of(model.services.begin(), model.services.end(),
                                  [](const ModelService& m) { return m.host == "local"; }) ||
                      std::any_of(state.services().begin(), state.services().end(),
                                  [](const auto& svc) { return svc.host() == "local"; }));
  if (local) {
    RETURN_IF_ERROR(s.dir().EnsureHost(FindBinary("parleyd"), *state.mutable_host()));
    std::fprintf(stderr, "parleyd %s (pid %lld), model directory %s\n",
                 state.host().address().c_str(), static_cast<long long>(state.host().pid()),
                 s.dir().path().c_str());
  }
  return s.Save();
}

}  // namespace

absl::Status Up(Session& s, const Args& args) {
  ASSIGN_OR_RETURN(absl::Duration timeout, ParseDuration(args.Get("--timeout", "300s")));
  ASSIGN_OR_RETURN(Model model, LoadModel(args.positional[0]));
  // As the record keeps them, so that the plan compares like with like.
  for (ModelService& m : model.services) m.definition_dir = AbsolutePath(m.definition_dir);
  if (args.Has("--dry-run")) {
    // Reads the record without the lock, the CA or a parleyd: nothing is started or written.
    absl::StatusOr<v1::ModelState> applied = s.dir().Load();
    if (!applied.ok() && !absl::IsNotFound(applied.status())) return applied.status();
    const v1::ModelState state = applied.ok() ? *applied : v1::ModelState();
    RETURN_IF_ERROR(CheckUp(state, args, model));
    std::printf("%s", FormatPlan(Plan(state, model)).c_str());
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  if (absl::Status st = s.LoadState(); !st.ok() && !absl::IsNotFound(st)) return st;
  RETURN_IF_ERROR(CheckUp(s.state(), args, model));
  RETURN_IF_ERROR(PrepareHosts(s, args, model));
  RETURN_IF_ERROR(Apply(Plan(s.state(), model), s));
  std::fprintf(stderr, "applied %s: %zu services, %zu units, %d relations\n", model.file.c_str(),
               model.services.size(), s.AllUnits().size(), s.state().relations_size());
  if (args.Has("--no-wait")) return absl::OkStatus();
  return s.Wait(timeout);
}

namespace {

// `down` of a model in containers: the units' stop handlers run, then their containers stop
// (volumes kept: `up` starts them again, from their KBs); --purge removes containers, volumes, the
// network and the model directory.
absl::Status DownContainers(Session& s, bool purge) {
  ContainerRuntime& rt = *s.runtime();
  std::vector<std::string> containers;
  bool all_up = true;
  for (const v1::UnitRecord* u : s.AllUnits()) {
    containers.push_back(u->container());
    absl::StatusOr<v1::HostInfo> info = s.Client(u->address()).Host(absl::Seconds(2));
    if (!info.ok()) {
      all_up = false;
      continue;
    }
    if (absl::Status st = s.Fire(u->name(), u->address(), "stop"); !st.ok()) {
      std::fprintf(stderr, "parley: %s: %s\n", u->name().c_str(), st.ToString().c_str());
    }
  }
  if (all_up) {
    if (absl::Status st = s.Wait(absl::Seconds(60), /*failed_settles=*/true); !st.ok()) {
      std::fprintf(stderr, "parley: stopping anyway: %s\n", std::string(st.message()).c_str());
    }
  }
  if (!purge) {
    RETURN_IF_ERROR(rt.Stop(containers, 20));
    std::fprintf(stderr, "stopped %zu containers (their volumes are kept)\n", containers.size());
    return absl::OkStatus();
  }
  for (const std::string& c : containers) RETURN_IF_ERROR(rt.Remove(c));
  RETURN_IF_ERROR(rt.RemoveNetwork());
  std::fprintf(stderr, "removed %zu containers, their volumes and the network %s\n",
               containers.size(), rt.record().network().c_str());
  std::error_code ec;
  fs::remove_all(s.dir().path(), ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot delete ", s.dir().path(), ": ", ec.message()));
  }
  std::fprintf(stderr, "deleted %s\n", s.dir().path().c_str());
  return absl::OkStatus();
}

}  // namespace

absl::Status Down(Session& s, const Args& args) {
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  absl::Status loaded = s.LoadState();
  if (absl::IsNotFound(loaded) && args.Has("--purge") && fs::exists(s.dir().path())) {
    fs::remove_all(s.dir().path());
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(loaded);
  if (s.runtime() != nullptr) return DownContainers(s, args.Has("--purge"));
  const bool local_up = s.RunningLocalHost().ok();
  {
    for (const v1::UnitRecord* u : s.AllUnits()) {
      if (u->address() == s.state().host().address() && !local_up) continue;
      if (absl::Status st = s.Fire(u->name(), u->address(), "stop"); !st.ok()) {
        std::fprintf(stderr, "parley: %s: %s\n", u->name().c_str(), st.ToString().c_str());
      }
    }
    if (absl::Status st = s.Wait(absl::Seconds(60), /*failed_settles=*/true); !st.ok()) {
      std::fprintf(stderr, "parley: stopping anyway: %s\n", std::string(st.message()).c_str());
    }
    // Units on hosts run by others stay hosted there (stopped) unless the model is purged. Purged,
    // every unit is removed, so that its parleyd stops what its handlers left running.
    if (args.Has("--purge")) {
      bool unchecked = false;
      for (const v1::UnitRecord* u : s.AllUnits()) {
        if (u->address() == s.state().host().address() && !local_up) {
          unchecked = true;
          continue;
        }
        absl::Status st = s.RemoveAgent(u->name(), u->address(), "down --purge");
        if (!st.ok()) {
          std::fprintf(stderr, "parley: removing %s at %s: %s\n", u->name().c_str(),
                       u->address().c_str(), std::string(st.message()).c_str());
        }
      }
      if (unchecked) {
        std::fprintf(stderr,
                     "parley: the local parleyd is not running: processes its units may have left "
                     "running are not looked for\n");
      }
    }
    if (local_up) {
      RETURN_IF_ERROR(s.dir().StopHost(s.state().host(), absl::Seconds(20)));
      std::fprintf(stderr, "stopped parleyd (pid %lld)\n",
                   static_cast<long long>(s.state().host().pid()));
    }
  }
  if (args.Has("--purge")) {
    std::error_code ec;
    fs::remove_all(s.dir().path(), ec);
    if (ec)
      return absl::InternalError(
          absl::StrCat("cannot delete ", s.dir().path(), ": ", ec.message()));
    std::fprintf(stderr, "deleted %s\n", s.dir().path().c_str());
  }
  return absl::OkStatus();
}

namespace {

// Checks both ends against the definitions and returns the interface.
absl::StatusOr<std::string> CheckEnds(Session& s, const std::pair<std::string, std::string>& a,
                                      const std::pair<std::string, std::string>& b) {
  std::string interface;
  std::vector<engine::Role> roles;
  for (const auto& end : {a, b}) {
    v1::ServiceRecord* svc = s.FindService(end.first);
    if (svc == nullptr) {
      return absl::NotFoundError(absl::StrCat("no service '", end.first, "' in the model"));
    }
    ASSIGN_OR_RETURN(services::ServiceDefinition def,
                     LoadServiceDefinition(svc->definition_dir(), s.state().interfaces_dir()));
    const auto* ep = def.FindEndpoint(end.second);
    if (ep == nullptr) {
      std::vector<std::string> names;
      for (const auto& e : def.endpoints) names.push_back(e.name);
      return absl::InvalidArgumentError(
          absl::StrCat("service ", end.first, " has no endpoint '", end.second,
                       "' (it has: ", absl::StrJoin(names, ", "), ")"));
    }
    if (!interface.empty() && interface != ep->interface) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot relate ", a.first, ":", a.second, " (interface ", interface, ") to ",
                       b.first, ":", b.second, " (interface ", ep->interface, ")"));
    }
    interface = ep->interface;
    roles.push_back(ep->role);
  }
  const bool ok = (roles[0] == engine::Role::kPeers) == (roles[1] == engine::Role::kPeers) &&
                  (roles[0] == engine::Role::kPeers || roles[0] != roles[1]);
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot relate ", a.first, ":", a.second, " (", engine::RoleName(roles[0]),
                     ") to ", b.first, ":", b.second, " (", engine::RoleName(roles[1]),
                     "): roles must be provides/requires or peers/peers"));
  }
  return interface;
}

}  // namespace

absl::Status Relate(Session& s, const Args& args, bool relate) {
  ASSIGN_OR_RETURN(auto a, ParseEnd(args.positional[0]));
  ASSIGN_OR_RETURN(auto b, ParseEnd(args.positional[1]));
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  services::ModelRelation want{{a.first, a.second}, {b.first, b.second}, 0};
  for (const auto& rel : s.state().relations()) {
    if (!SameRelation(rel, want)) continue;
    if (relate) {
      return absl::AlreadyExistsError(absl::StrCat("already related as ", rel.id()));
    }
    const std::string id = rel.id();  // DropRelation removes the record `rel` refers to
    return s.DropRelation(id);
  }
  if (!relate) {
    return absl::NotFoundError(
        absl::StrCat(args.positional[0], " and ", args.positional[1], " are not related"));
  }
  ASSIGN_OR_RETURN(std::string interface, CheckEnds(s, a, b));
  ASSIGN_OR_RETURN(std::string id, s.AddRelation(a.first, a.second, b.first, b.second, interface));
  for (const auto& rel : s.state().relations()) {
    if (rel.id() == id) RETURN_IF_ERROR(s.RelateUnits(rel));
  }
  std::fprintf(stderr, "related %s (interface %s)\n", id.c_str(), interface.c_str());
  return absl::OkStatus();
}

absl::Status Config(Session& s, const Args& args) {
  const std::string service = args.positional[0];
  const std::vector<std::string> items(args.positional.begin() + 1, args.positional.end());
  ASSIGN_OR_RETURN(auto assignments, ParseAssignments(items));
  if (!items.empty()) RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  v1::ServiceRecord* svc = s.FindService(service);
  if (svc == nullptr) {
    return absl::NotFoundError(absl::StrCat("no service '", service, "' in the model"));
  }
  ASSIGN_OR_RETURN(services::ServiceDefinition def,
                   LoadServiceDefinition(svc->definition_dir(), s.state().interfaces_dir()));
  if (items.empty()) {
    std::map<std::string, std::string> current;
    if (svc->units_size() > 0) {
      v1::GetConfigRequest req;
      req.set_agent(svc->units(0).name());
      v1::GetConfigResponse resp;
      RETURN_IF_ERROR(
          s.Client(svc->units(0).address()).Call(&v1::Agent::Stub::GetConfig, req, &resp));
      current.insert(resp.config().begin(), resp.config().end());
    }
    Table t({"Option", "Type", "Value", "Default", "Description"});
    for (const auto& o : def.config) {
      auto it = current.find(o.name);
      t.Add({o.name, std::string(services::ValueTypeName(o.type)),
             it == current.end() ? "" : it->second, o.default_value.value_or(""), o.description});
    }
    std::printf("%s", t.Render().c_str());
    return absl::OkStatus();
  }
  std::map<std::string, std::string> want(svc->config().begin(), svc->config().end());
  for (const auto& [k, v] : assignments) {
    const auto* option = def.FindConfig(k);
    if (option == nullptr) {
      std::vector<std::string> names;
      for (const auto& o : def.config) names.push_back(o.name);
      return absl::InvalidArgumentError(absl::StrCat("service ", service, " has no config option '",
                                                     k, "' (it has: ", absl::StrJoin(names, ", "),
                                                     ")"));
    }
    if (v.empty()) {
      want.erase(k);
      continue;
    }
    if (absl::Status st = services::CheckValue(option->type, v); !st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config option ", service, ".", k, ": ", st.message()));
    }
    want[k] = v;
  }
  return s.ApplyConfig(*svc, want);
}

absl::Status AddUnit(Session& s, const Args& args) {
  int n = 1;
  if (args.Has("-n") && (!absl::SimpleAtoi(args.Get("-n"), &n) || n < 1 || n > 1000)) {
    return absl::InvalidArgumentError(
        absl::StrCat("-n: expected a number from 1 to 1000, got '", args.Get("-n"), "'"));
  }
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  v1::ServiceRecord* svc = s.FindService(args.positional[0]);
  if (svc == nullptr) {
    return absl::NotFoundError(absl::StrCat("no service '", args.positional[0], "' in the model"));
  }
  for (int i = 0; i < n; ++i) RETURN_IF_ERROR(s.AddUnit(*svc));
  for (const auto& rel : s.state().relations()) RETURN_IF_ERROR(s.RelateUnits(rel));
  return absl::OkStatus();
}

absl::Status RemoveUnit(Session& s, const Args& args) {
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  for (const auto& unit : args.positional) RETURN_IF_ERROR(s.RequireUnit(unit).status());
  for (const auto& unit : args.positional) RETURN_IF_ERROR(s.RemoveUnit(unit));
  return absl::OkStatus();
}

absl::Status Resolve(Session& s, const Args& args, int& exit_code) {
  if (args.Has("--retry") && args.Has("--skip")) {
    return absl::InvalidArgumentError("--retry and --skip exclude each other");
  }
  const bool skip = args.Has("--skip");
  if (skip && args.Has("--no-wait")) {
    return absl::InvalidArgumentError("--no-wait goes with --retry");
  }
  ASSIGN_OR_RETURN(absl::Duration timeout, ParseDuration(args.Get("--timeout", "60s")));
  const std::string unit = args.positional[0];
  RETURN_IF_ERROR(s.LoadState());
  ASSIGN_OR_RETURN(auto found, s.RequireUnit(unit));
  AgentClient& client = s.Client(found.second->address());
  // Name the event seen failing, so that what the agent resolves is what was meant; the agent
  // refuses, saying why, when nothing is failing.
  ASSIGN_OR_RETURN(v1::AgentStatus status, client.Status(unit));
  v1::ResolveEventRequest req;
  req.set_agent(unit);
  req.set_mode(skip ? v1::RESOLVE_MODE_SKIP : v1::RESOLVE_MODE_RETRY);
  if (status.agent_state() == v1::AGENT_STATE_ERROR) req.set_event_id(status.failure().event_id());
  req.set_by(Operator());
  auto traces = [&]() -> absl::StatusOr<v1::GetTracesResponse> {
    v1::GetTracesRequest treq;
    treq.set_agent(unit);
    treq.set_last(100);
    v1::GetTracesResponse got;
    RETURN_IF_ERROR(client.Call(&v1::Agent::Stub::GetTraces, treq, &got));
    return got;
  };
  v1::ResolveEventResponse resp;
  absl::Status called = client.Call(&v1::Agent::Stub::ResolveEvent, req, &resp);
  if (absl::IsFailedPrecondition(called) && req.event_id() != 0) {
    // Refused, unless this is a call repeated after a late answer (AgentClient::Call) that finds
    // its first attempt's work done: the event's trace then names this operator.
    ASSIGN_OR_RETURN(v1::GetTracesResponse got, traces());
    for (const v1::Trace& t : got.traces()) {
      if (t.trigger().id() != req.event_id() || !absl::StartsWith(t.resolved_by(), req.by()) ||
          (skip ? t.result() != v1::Trace::RESULT_SKIPPED
                : t.attempt() <= status.failure().attempt())) {
        continue;
      }
      called = absl::OkStatus();
      *resp.mutable_failure() = status.failure();
      resp.set_mode(req.mode());
      resp.set_run(skip ? t.run() : 0);
      resp.set_by(t.resolved_by());
    }
  }
  RETURN_IF_ERROR(called);
  const v1::RunFailure& f = resp.failure();
  const std::string event = absl::StrCat("event ", f.event_id(), " (", f.event_name(), ")");
  const std::string attempts =
      absl::StrCat(f.attempt(), f.attempt() == 1 ? " failed attempt" : " failed attempts");
  if (skip) {
    std::printf(
        "skipped %s on %s after %s: it is not applied, and the events behind it run now\n"
        "last error: %s\nrecorded as run %llu by %s (parley trace %s)\n",
        event.c_str(), unit.c_str(), attempts.c_str(), f.message().c_str(),
        static_cast<unsigned long long>(resp.run()), resp.by().c_str(), unit.c_str());
    return absl::OkStatus();
  }
  std::printf("retrying %s on %s now (%s so far)\n", event.c_str(), unit.c_str(), attempts.c_str());
  if (args.Has("--no-wait")) return absl::OkStatus();
  std::fflush(stdout);
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    ASSIGN_OR_RETURN(v1::GetTracesResponse got, traces());
    for (const v1::Trace& t : got.traces()) {
      if (t.trigger().id() != f.event_id() || t.attempt() <= f.attempt()) continue;
      if (t.result() == v1::Trace::RESULT_COMMITTED) {
        std::printf("%s applied on attempt %u\n", event.c_str(), t.attempt());
        return absl::OkStatus();
      }
      return absl::AbortedError(absl::StrCat(event, " failed again on ", unit, " (attempt ",
                                             t.attempt(), "): ", t.error(), "\n`parley resolve ",
                                             unit, " --skip` drops it"));
    }
    if (absl::Now() > deadline) {
      exit_code = kTimedOut;
      return absl::DeadlineExceededError(absl::StrCat(event, " was not retried on ", unit,
                                                      " within ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

absl::Status Cert(Session& s, const Args& args) {
  auto list = [](const std::string& text) {
    std::vector<std::string> out = absl::StrSplit(text, ',', absl::SkipEmpty());
    return out;
  };
  const std::string name = args.positional[0];
  if (name == "cli" || name == "local" || name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("'", name, "' is reserved or not a host name"));
  }
  // The lock keeps two commands from making the model's CA at once.
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  const bool op = args.Has("--operator");
  ASSIGN_OR_RETURN(CertFiles files,
                   IssueCert(s.dir().pki_dir(), name, op ? CertRole::kOperator : CertRole::kHost,
                             list(args.Get("--ip")), list(args.Get("--dns")), args.Get("--out")));
  if (files.reissued) {
    std::fprintf(stderr, "replaced %s: it was made before certificates had roles\n",
                 files.cert.c_str());
  }
  std::printf("%s\n%s\n%s\n\n", files.cert.c_str(), files.key.c_str(), files.ca.c_str());
  if (op) {
    std::printf(
        "An operator certificate: a client of the agent API presents cert.pem with key.pem and "
        "trusts ca.pem (docs/api.md).\n");
  } else {
    std::printf(
        "On that host:\n  parleyd --data DIR --listen ADDRESS:PORT --tls_cert %s --tls_key %s "
        "--tls_ca %s\n",
        files.cert.c_str(), files.key.c_str(), files.ca.c_str());
  }
  return absl::OkStatus();
}

}  // namespace parley::cli
