#pragma once

// The kinds of health probe, beside the action kinds (docs/service-definitions.md, "Health"), each
// an engine::HealthProbe made from a definition's ProbeDef:
//  - exec: runs the command (templates expanded) as the definition's user, from its directory,
//    with PATH, PARLEY_UNIT, PARLEY_SERVICE, PARLEY_UNIT_HOST and (with a state root)
//    PARLEY_STATE_DIR; it passes when the command exits 0 within the timeout;
//  - tcp: connects to host:port (host unset: ProcessOptions::unit_host); it passes when the
//    connection is accepted within the timeout, and the connection is closed at once;
//  - http: GETs the URL; it passes on a response status from 200 to 399 within the timeout (no
//    redirect followed).
// A template that cannot be expanded yet (a fact not set) fails the check, saying which.

#include <memory>

#include "absl/status/statusor.h"
#include "engine/spec.h"
#include "services/backends/process/process_action.h"
#include "services/definition/service.h"

namespace parley::services {

// The check of `probe` of `def`. Errors of ResolveProgramUser for an exec probe.
absl::StatusOr<std::shared_ptr<engine::HealthProbe>> MakeHealthProbe(const ServiceDefinition& def,
                                                                     const ProbeDef& probe,
                                                                     const ProcessOptions& options);

// Connects to `host`:`port` within `timeout`: OK, or UNAVAILABLE / DEADLINE_EXCEEDED saying
// what failed ("connect 127.0.0.1:6379: Connection refused").
absl::Status CheckTcp(const std::string& host, int port, absl::Duration timeout);

}  // namespace parley::services
