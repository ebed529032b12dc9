#pragma once

// The action kinds an agent can run, each behind the same engine::Action interface: a registry
// maps a kind (`exec`, `ansible`, `http`, `container`, `builtin`) to the function that makes its
// actions. The daemon composes it (services/backends/backends.h); tests and embedding programs may
// register only the kinds they need. A handler of a kind nobody registered is refused when its
// spec is built, with an error naming the definition file, the line, the handler and the kinds
// that are registered.

#include <functional>
#include <map>
#include <memory>
#include <utility>

#include "absl/status/statusor.h"
#include "engine/spec.h"
#include "services/definition/build_spec.h"

namespace parley::services {

class BackendRegistry : public ActionFactory {
 public:
  using Maker = std::function<absl::StatusOr<std::unique_ptr<engine::Action>>(
      const ServiceDefinition& def, const HandlerDef& handler)>;

  // Registers the backend of `kind`, replacing an earlier one.
  BackendRegistry& Add(ActionKind kind, Maker make);
  bool Has(ActionKind kind) const { return makers_.contains(kind); }

  absl::StatusOr<std::unique_ptr<engine::Action>> Make(const ServiceDefinition& def,
                                                       const HandlerDef& handler) override;

  // Health probes (`health:`): unset, a definition that declares some is refused.
  using ProbeMaker = std::function<absl::StatusOr<std::shared_ptr<engine::HealthProbe>>(
      const ServiceDefinition& def, const ProbeDef& probe)>;
  BackendRegistry& SetProbes(ProbeMaker make) {
    probes_ = std::move(make);
    return *this;
  }
  absl::StatusOr<std::shared_ptr<engine::HealthProbe>> MakeProbe(const ServiceDefinition& def,
                                                                 const ProbeDef& probe) override {
    if (!probes_) return ActionFactory::MakeProbe(def, probe);
    return probes_(def, probe);
  }

 private:
  std::map<ActionKind, Maker> makers_;
  ProbeMaker probes_;
};

}  // namespace parley::services
