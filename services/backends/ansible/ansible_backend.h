#pragma once

// The `ansible` action backend: runs a handler's playbook with a real `ansible-playbook` against
// the unit's own host (`-i localhost, -c local`), the run's data passed as extra variables — the
// pattern of Chef's data bags: the playbook reads what it needs from variables, nothing from the
// agent's state files.
//
// It is the exec backend's run (services/backends/process/process_action.h) with another program:
// the same clean environment, temp dir, context file, hook socket, timeout and bounded capture;
// tasks can call `parley-hook` (in PATH, with PARLEY_HOOK_SOCKET set) and their changes land only
// if the run commits. The extra variables (a JSON file in the temp dir, `-e @<file>`):
//   parley_unit, parley_service, parley_handler   strings
//   parley_event      {name, params, and for relation events relation_id, endpoint, remote_unit}
//   parley_config     the config, defaults filled in
//   parley_facts      every fact set, name -> value
//   parley_relations  endpoint -> relation id -> {interface, remote_service, remote_units
//                     (unit -> its data), remote_service_data, local_unit_data,
//                     local_service_data}; every declared endpoint is present
//   parley_state_dir  the unit's persistent state dir (only with ProcessOptions::state_root)
//   the action's `vars`, their templates expanded
// Config values and action parameters have their declared types (int, float and bool are JSON
// numbers and booleans); everything else is a string. Every string that comes from data (facts,
// relation data, config, parameters, expanded `vars`) is marked unsafe for Ansible, so a `{{` in
// a peer's relation data is text, never a template Ansible would evaluate.
//
// Ansible gets a writable home and temp dirs inside the run's temp dir, no retry files, no
// cowsay, no colour, unbuffered output, and ansible_python_interpreter set to the Python that
// runs ansible-playbook (no interpreter discovery). A non-zero exit fails the handler with an
// error naming the handler, the playbook, the exit status and the failing task with its message
// as ansible printed it on stdout (or the tail of stdout), and the tail of stderr; a timeout
// names the task that was running.

#include <memory>

#include "absl/status/statusor.h"
#include "engine/spec.h"
#include "services/backends/common/backend_log.h"
#include "services/backends/process/process_action.h"
#include "services/definition/service.h"

namespace parley::services {

// The action of `handler`, whose action must be an AnsibleAction. The backend registry calls it.
// INVALID_ARGUMENT for a variable named parley_* (those are the backend's).
absl::StatusOr<std::unique_ptr<engine::Action>> MakeAnsibleAction(const ServiceDefinition& def,
                                                                  const HandlerDef& handler,
                                                                  const ProcessOptions& options,
                                                                  BackendLog log);

}  // namespace parley::services
