#pragma once

// The `builtin` action kind: steps a definition declares inline (set, output, clear, relation-set,
// status, fire), run through RunContext with no process at all. Each step's value is expanded
// (ExpandTemplate); relation-set values are checked against the endpoint's contract. A failing
// step fails the handler with an error naming the handler, the file and the step's line.

#include <memory>

#include "absl/status/statusor.h"
#include "engine/spec.h"
#include "services/definition/service.h"

namespace parley::services {

// Makes the action of `handler`, whose action must be of kind builtin. The action keeps copies of
// what it needs from `def` and `handler`.
absl::StatusOr<std::unique_ptr<engine::Action>> MakeBuiltinAction(const ServiceDefinition& def,
                                                                  const HandlerDef& handler);

}  // namespace parley::services
