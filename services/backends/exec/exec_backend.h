#pragma once

// The `exec` action backend: runs a handler's program, in any language, as a child process of the
// agent, and lets it act on the run through hook tools (`parley-hook`, tools/hook/parley_hook.cc).
//
// For each run of an exec action:
//  - a private temp dir (mode 0700) holds a unix socket and a JSON context file (the config with
//    defaults, the facts, the data of every relation, the event with its parameters);
//  - the program is spawned without a shell, from the definition directory, in its own process
//    group, with a clean environment: PATH, HOME (the temp dir), PARLEY_HOOK_SOCKET,
//    PARLEY_CONTEXT, PARLEY_STATE_DIR (the unit's persistent state dir, when
//    ProcessOptions::state_root is set), PARLEY_UNIT_HOST (where peers reach the unit), PARLEY_UNIT,
//    PARLEY_SERVICE, PARLEY_EVENT, PARLEY_HANDLER and the handler's `env` templates;
//  - hook requests are served on the calling thread (the agent's serial executor) while the
//    program runs, by calling RunContext: every change lands in the run's transaction and only if
//    the run commits;
//  - the handler's timeout is enforced (the process group is killed with SIGKILL); stdout and
//    stderr are captured, keeping only their last `output_limit` bytes;
//  - a non-zero exit, a signal or a timeout fails the handler (and so rolls the run back) with an
//    error naming the handler, the exit status and the tail of stderr.
// The temp dir is removed when the action returns, so a hook tool called later fails with
// "not inside a run".
//
// The hook protocol: services/backends/process/hook_protocol.h.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/spec.h"
#include "services/backends/common/backend_log.h"
#include "services/backends/process/process_action.h"
#include "services/definition/service.h"

namespace parley::services {

// Makes the action of `handler`, whose action must be of kind exec (the command expanded for each
// run). The action keeps copies of what it needs.
absl::StatusOr<std::unique_ptr<engine::Action>> MakeExecAction(const ServiceDefinition& def,
                                                               const HandlerDef& handler,
                                                               const ProcessOptions& options,
                                                               BackendLog log);

}  // namespace parley::services
