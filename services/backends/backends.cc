#include "services/backends/backends.h"

#include <utility>

#include "services/backends/ansible/ansible_backend.h"
#include "services/backends/builtin/builtin_action.h"
#include "services/backends/exec/exec_backend.h"
#include "services/backends/probes/probes.h"

namespace parley::services {

std::unique_ptr<BackendRegistry> MakeBackends(BackendOptions options) {
  auto registry = std::make_unique<BackendRegistry>();
  registry->Add(ActionKind::kExec, [o = options.process, log = options.log](
                                       const ServiceDefinition& def, const HandlerDef& handler) {
    return MakeExecAction(def, handler, o, log);
  });
  registry->Add(ActionKind::kAnsible, [o = options.process, log = options.log](
                                          const ServiceDefinition& def, const HandlerDef& handler) {
    return MakeAnsibleAction(def, handler, o, log);
  });
  registry->Add(ActionKind::kHttp, [o = options.http, log = options.log](
                                       const ServiceDefinition& def, const HandlerDef& handler) {
    return MakeHttpAction(def, handler, o, log);
  });
  registry->Add(ActionKind::kContainer, [o = options.container, log = options.log](
                                            const ServiceDefinition& def,
                                            const HandlerDef& handler) {
    return MakeContainerAction(def, handler, o, log);
  });
  registry->Add(ActionKind::kBuiltin, MakeBuiltinAction);
  // Probes run programs as handlers do (the same user, PATH and unit address).
  registry->SetProbes([o = options.process](const ServiceDefinition& def, const ProbeDef& probe) {
    return MakeHealthProbe(def, probe, o);
  });
  return registry;
}

}  // namespace parley::services
