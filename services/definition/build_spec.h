#pragma once

// From a definition to the engine's ServiceSpec of one unit. An ActionFactory makes each
// handler's engine::Action; the backends (services/backends/, one folder per action kind, behind
// services/backends/registry.h) implement it.

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/spec.h"
#include "services/definition/service.h"

namespace parley::services {

// Makes the engine::Action of a handler. Implementations for the kinds they do not support return
// UNIMPLEMENTED.
class ActionFactory {
 public:
  virtual ~ActionFactory() = default;
  // `def` and `handler` may be destroyed once BuildSpec returns: the action keeps copies of what
  // it needs.
  virtual absl::StatusOr<std::unique_ptr<engine::Action>> Make(const ServiceDefinition& def,
                                                               const HandlerDef& handler) = 0;
  // Makes the check of a health probe (`health:`). By default UNIMPLEMENTED naming the probe:
  // a factory that runs no probes builds no spec of a definition that declares some.
  virtual absl::StatusOr<std::shared_ptr<engine::HealthProbe>> MakeProbe(
      const ServiceDefinition& def, const ProbeDef& probe);
};

// The spec of unit `unit` ("<service>/<number>") of a service built from `def`. Endpoint
// required_keys are the required keys of the data the remote side publishes.
absl::StatusOr<engine::ServiceSpec> BuildSpec(const ServiceDefinition& def, absl::string_view unit,
                                              ActionFactory& factory);

// The part of a spec of service `service` that a config value is checked against: the service's
// name and its declared config options (BuildSpec builds them the same way). For callers that
// check config without building a unit, such as the CLI before it sends `parley config`: the one
// check is engine::CheckConfig (engine/spec.h), wherever config is checked.
engine::ServiceSpec ConfigSpec(const ServiceDefinition& def, absl::string_view service);

}  // namespace parley::services
