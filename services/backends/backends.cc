#include "services/backends/backends.h"

#include <utility>

#include "services/backends/ansible/ansible_backend.h"
#include "services/backends/builtin/builtin_action.h"
#include "services/backends/exec/exec_backend.h"

namespace parley::services {

std::unique_ptr<BackendRegistry> MakeBackends(BackendOptions options) {
  auto registry = std::make_unique<BackendRegistry>();
  const ProcessOptions process = options.process;
  const HttpOptions http = options.http;
  const ContainerOptions container = options.container;
  const BackendLog log = options.log;
  registry->Add(ActionKind::kExec, [process, log](const ServiceDefinition& def,
                                                  const HandlerDef& handler) {
    return MakeExecAction(def, handler, process, log);
  });
  registry->Add(ActionKind::kAnsible, [process, log](const ServiceDefinition& def,
                                                     const HandlerDef& handler) {
    return MakeAnsibleAction(def, handler, process, log);
  });
  registry->Add(ActionKind::kHttp, [http, log](const ServiceDefinition& def,
                                               const HandlerDef& handler) {
    return MakeHttpAction(def, handler, http, log);
  });
  registry->Add(ActionKind::kContainer, [container, log](const ServiceDefinition& def,
                                                         const HandlerDef& handler) {
    return MakeContainerAction(def, handler, container, log);
  });
  registry->Add(ActionKind::kBuiltin, MakeBuiltinAction);
  return registry;
}

}  // namespace parley::services
