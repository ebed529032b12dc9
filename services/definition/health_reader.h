#pragma once

// Internal to services/definition/: reading `health:`, the workload's probes
// (docs/service-definitions.md, "Health").

#include "absl/status/status.h"
#include "services/definition/service.h"
#include "services/definition/yaml_fields.h"

namespace parley::services::definition_internal {

// Reads `at`, the `health` field, into `def.health`. `def` has its config options read: the
// probes' templates are checked against them.
absl::Status ReadHealth(const At& at, ServiceDefinition& def);

}  // namespace parley::services::definition_internal
