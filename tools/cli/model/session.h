#pragma once

// A command's view of the model as applied: the model directory's record (model.json) and the
// clients of its parleyds, with what changing the model takes (adding and removing units,
// relating, config, containers). Every command that reads or changes the model has one.

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "parley/v1/model.pb.h"
#include "services/definition/definition.h"
#include "tools/cli/common/client.h"
#include "tools/cli/deploy/container_runtime.h"
#include "tools/cli/model/model_dir.h"

namespace parley::cli {

// The model as applied, as one command sees it.
class Session {
 public:
  explicit Session(std::string model_dir) : dir_(std::move(model_dir)) {}

  ModelDir& dir() { return dir_; }
  v1::ModelState& state() { return state_; }

  // Reads model.json (NOT_FOUND when nothing was applied yet) and sets up the runtime and the
  // credentials it records.
  absl::Status LoadState();
  // The container runtime the state records, or none.
  void UseRuntime() {
    runtime_.reset();
    if (!state_.runtime().engine().empty()) {
      runtime_ = std::make_unique<ContainerRuntime>(state_.runtime());
    }
  }
  ContainerRuntime* runtime() { return runtime_.get(); }
  absl::Status Save() { return dir_.Save(state_); }

  AgentClient& Client(const std::string& address) {
    auto& c = clients_[address];
    if (!c) c = std::make_unique<AgentClient>(address, dir_.credentials());
    return *c;
  }

  // A host of the model: "local" or one under `hosts`.
  const v1::HostRecord* FindHost(const std::string& name) const {
    if (name.empty() || name == "local") return &state_.host();
    for (const auto& h : state_.hosts()) {
      if (h.name() == name) return &h;
    }
    return nullptr;
  }

  // `path` (a definition or interfaces directory here) as the host of `svc` sees it.
  std::string OnHost(const v1::HostRecord& host, const std::string& path) const;
  AgentClient& Host() { return Client(state_.host().address()); }
  // Queues `event` (stop, update...) for `unit`, hosted by the parleyd at `address`.
  absl::Status Fire(const std::string& unit, const std::string& address, const std::string& event);
  // The local parleyd's identity; NOT_FOUND, without dialing, when the model never started one
  // (every service placed on other hosts).
  absl::StatusOr<v1::HostInfo> LocalHostInfo() {
    if (state_.host().address().empty()) {
      return absl::NotFoundError("no parleyd on this machine: the model's units run on its hosts");
    }
    return Host().Host();
  }
  // The model's local parleyd if it runs (ModelDir::Serves: whoever started it); the record then
  // carries its pid. NOT_FOUND without a local parleyd, UNAVAILABLE when it is gone.
  absl::StatusOr<v1::HostInfo> RunningLocalHost() {
    absl::StatusOr<v1::HostInfo> info = LocalHostInfo();
    if (!info.ok()) return info;
    if (!ModelDir::Serves(*info, state_.host())) {
      return absl::UnavailableError(absl::StrCat("the server at ", state_.host().address(),
                                                 " is not this model's parleyd (it serves ",
                                                 info->data_dir(), ")"));
    }
    state_.mutable_host()->set_pid(info->pid());
    return info;
  }

  v1::ServiceRecord* FindService(const std::string& name) {
    for (auto& s : *state_.mutable_services()) {
      if (s.name() == name) return &s;
    }
    return nullptr;
  }
  // The unit and the service it belongs to.
  std::pair<v1::ServiceRecord*, const v1::UnitRecord*> FindUnit(const std::string& unit) {
    for (auto& s : *state_.mutable_services()) {
      for (const auto& u : s.units()) {
        if (u.name() == unit) return {&s, &u};
      }
    }
    return {nullptr, nullptr};
  }
  absl::StatusOr<std::pair<v1::ServiceRecord*, const v1::UnitRecord*>> RequireUnit(
      const std::string& unit);
  std::vector<const v1::UnitRecord*> AllUnits() const {
    std::vector<const v1::UnitRecord*> out;
    for (const auto& s : state_.services()) {
      for (const auto& u : s.units()) out.push_back(&u);
    }
    return out;
  }

  // --- Changing the model ---

  absl::Status AddUnit(v1::ServiceRecord& svc);

  // Stops the unit, departs its relations, waits for the departures to be delivered, removes it.
  // `unit` is a copy: the record it names is deleted on the way. `command` prefixes what it says
  // about processes removal had to stop.
  absl::Status RemoveUnit(std::string unit, absl::string_view command = "remove-unit");

  // How long a unit being removed may take to die (its removal's stop and the handlers that run
  // while dying applied, its departures acknowledged) before its parleyd removes it anyway.
  static constexpr int kDyingGraceSeconds = 60;
  // Removes `unit`'s agent from the parleyd at `address` (RemoveAgent: the unit dies first) and
  // prints on stderr,
  // after "<command>: <unit>: ", the processes its handlers had left running, which the server
  // stopped ("killed 1 process left running: 1234 java ...").
  absl::Status RemoveAgent(const std::string& unit, const std::string& address,
                           absl::string_view command);

  // Relates every unit pair of `rel` that is not related yet (relating is idempotent).
  absl::Status RelateUnits(const v1::RelationRecordState& rel);

  absl::Status UnrelateUnits(const v1::RelationRecordState& rel);

  absl::StatusOr<std::string> AddRelation(const std::string& a_service, const std::string& a_ep,
                                          const std::string& b_service, const std::string& b_ep,
                                          const std::string& interface);

  absl::Status DropRelation(const std::string& id);

  // Sets config on every unit of `svc` so that it matches `want`.
  absl::Status ApplyConfig(v1::ServiceRecord& svc, const std::map<std::string, std::string>& want);

  // Waits until every unit is idle and nothing changed between two polls (SettleJudge, which
  // also says when waiting ends early). Shows progress on stderr ("settled n/m units", counting
  // only up; redrawn in place on a terminal, else a line per change) and prints each unit's
  // failures once. DEADLINE_EXCEEDED past `timeout`, or at once when a failing unit's next retry
  // is due after it; ABORTED when a unit failed the same way kSameFailures times running, naming
  // unit, handler and error. With `failed_settles`, a unit whose inbox head is failing counts as
  // settled (it will not get further before its retry), and waiting never ends early.
  absl::Status Wait(absl::Duration timeout, bool failed_settles = false);

  // --- Containers (a model with a runtime) ---

  // Prepares the runtime for `up`: the image is there, the network exists (recorded), and every
  // unit's container runs and answers (a container stopped by `down` resumes from its KB).
  absl::Status StartRuntime();

  // Runs a new unit's container; returns the address its parleyd answers at.
  absl::StatusOr<std::string> StartContainer(const std::string& unit, const std::string& container);

  // Waits until the parleyd in `container` answers at `address`.
  absl::Status AwaitContainer(const std::string& address, const std::string& container);

 private:
  ModelDir dir_;
  v1::ModelState state_;
  std::unique_ptr<ContainerRuntime> runtime_;
  std::map<std::string, std::unique_ptr<AgentClient>> clients_;
};

// "service:endpoint"
absl::StatusOr<std::pair<std::string, std::string>> ParseEnd(const std::string& text);

// `p` made absolute, with symbolic links resolved where it exists.
std::string AbsolutePath(const std::string& p);

// Whether the recorded relation `r` is the model's relation `m` (either way round).
bool SameRelation(const v1::RelationRecordState& r, const services::ModelRelation& m);

}  // namespace parley::cli
