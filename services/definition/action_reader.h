#pragma once

// Internal to services/definition/: reading a handler's `action` field, one kind at a time (exec,
// ansible, container, http, builtin), with its templates checked against the definition.

#include "absl/status/status.h"
#include "services/definition/service.h"
#include "services/definition/yaml_fields.h"

namespace parley::services::definition_internal {

// Reads `at`, the `action` field of handler `h`, into `h.action`. `def` has its endpoints,
// interfaces, config options, user actions and events read, and `h` its `on` events: templates
// and steps are checked against them.
absl::Status ReadHandlerAction(const ServiceDefinition& def, const At& at, HandlerDef& h);

}  // namespace parley::services::definition_internal
