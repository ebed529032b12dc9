#pragma once

// Services whose handlers are C++ functions, hosted by parleyd with --agents unit=kind. They are
// what the agent tests, the benchmarks and the protocol examples run; service definitions with
// script, Ansible, container and HTTP actions come with the CLI.
//
//   relay     requires `in`, provides `out` (interface "relay", key `value`): forwards the value
//             it receives on `in` to every `out` relation; `action.set value=V` publishes V.
//   recorder  requires `in` (interface "relay"): appends every value received to fact `seen`
//             and counts the events in fact `count`, one run per event.
//   flaky     a relay whose forward fails the first `fail_times` attempts (config, default 2).
//   proposer  requires `negotiate` (interface "negotiate"): proposes config `port` (default 80),
//             adopts the acceptor's counter-proposal, and sets fact `agreed` once both agree.
//   acceptor  provides `negotiate`: accepts a proposed port >= 1024, counters lower ones with
//             port + 8000; `answer_to` says which proposal an answer is for.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/spec.h"

namespace parley::services {

absl::StatusOr<engine::ServiceSpec> BuiltinService(absl::string_view kind, absl::string_view unit);
std::vector<std::string> BuiltinKinds();

}  // namespace parley::services
