// The commands that bring the model up and down: up, start, down (docs/cli.md).

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "services/definition/definition.h"
#include "tools/cli/commands/commands.h"
#include "tools/cli/model/apply.h"
#include "tools/cli/model/plan.h"

namespace parley::cli {
namespace {

namespace fs = std::filesystem;
using services::LoadModel;
using services::Model;
using services::ModelService;

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
    // A changed coordinator reaches a parleyd that is already running when it next starts.
    v1::HostRecord& host = *state.mutable_host();
    host.clear_etcd();
    for (const std::string& member : model.etcd) host.add_etcd(member);
    host.set_election_prefix(
        absl::StrCat("parley/", absl::StripPrefix(AbsolutePath(s.dir().path()), "/"), "/leader/"));
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
    // Purged, each unit dies (its removal's stop, then only handlers that run while dying) and
    // is removed before its container goes; else it is stopped and kept.
    absl::Status st = purge ? s.RemoveAgent(u->name(), u->address(), "down --purge")
                            : s.Fire(u->name(), u->address(), "stop");
    if (!st.ok()) {
      std::fprintf(stderr, "parley: %s: %s\n", u->name().c_str(), st.ToString().c_str());
    }
  }
  if (all_up && !purge) {
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
  if (!args.Has("--purge")) {
    for (const v1::UnitRecord* u : s.AllUnits()) {
      if (u->address() == s.state().host().address() && !local_up) continue;
      if (absl::Status st = s.Fire(u->name(), u->address(), "stop"); !st.ok()) {
        std::fprintf(stderr, "parley: %s: %s\n", u->name().c_str(), st.ToString().c_str());
      }
    }
    if (absl::Status st = s.Wait(absl::Seconds(60), /*failed_settles=*/true); !st.ok()) {
      std::fprintf(stderr, "parley: stopping anyway: %s\n", std::string(st.message()).c_str());
    }
  }
  {
    // Units on hosts run by others stay hosted there (stopped) unless the model is purged. Purged,
    // every unit dies (its removal's stop, then only the handlers that run while dying) and is
    // removed, so that its parleyd stops what its handlers left running.
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

}  // namespace parley::cli
