#pragma once

// Internal to services/backends/process/: what each hook request (`parley-hook fact set ...`,
// tools/hook/parley_hook.cc) does to the run in progress. Every change goes through the run's
// RunContext, so it lands in the run's transaction and only if the run commits. A request that
// is wrong (usage, an unknown fact or endpoint, data the interface refuses) is refused with the
// reason; it never fails the run by itself. Called on the run's thread.

#include <map>
#include <string>
#include <vector>

#include "engine/spec.h"
#include "services/backends/common/backend_log.h"
#include "services/definition/interface.h"

namespace parley::services::process {

// What a hook request needs besides its arguments. Nothing is owned.
struct HookEnv {
  engine::RunContext* ctx;
  // The definition's config defaults.
  const std::map<std::string, std::string>* defaults;
  // The contract of each endpoint, by name.
  const std::map<std::string, EndpointContract>* endpoints;
  const BackendLog* log;
};

// The answer to one request: done (with the text to print) or refused (with the reason).
struct HookReply {
  bool ok = true;
  std::string text;
};

// Carries out the request whose arguments (decoded, services/backends/process/hook_protocol.h)
// are `args`.
HookReply HandleHookRequest(const HookEnv& env, const std::vector<std::string>& args);

}  // namespace parley::services::process
