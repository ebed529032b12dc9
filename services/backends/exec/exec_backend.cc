#include "services/backends/exec/exec_backend.h"

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/run_context.h"

namespace parley::services {
namespace {

// Runs the handler's command, its arguments and `env` templates expanded.
class ExecRunner : public ProcessAction {
 public:
  ExecRunner(ExecAction action, ProcessActionSetup setup)
      : ProcessAction(std::move(setup)), action_(std::move(action)) {}

 private:
  absl::StatusOr<Invocation> Prepare(engine::RunContext& ctx, const ProcessRun& /*run*/) override {
    Invocation inv;
    for (const Template& t : action_.command) {
      ASSIGN_OR_RETURN(std::string arg, ExpandTemplate(t, ctx, setup().config_defaults));
      inv.argv.push_back(std::move(arg));
    }
    ASSIGN_OR_RETURN(inv.program, ResolveProgram(inv.argv[0]));
    for (const auto& [name, t] : action_.env) {
      ASSIGN_OR_RETURN(inv.env[name], ExpandTemplate(t, ctx, setup().config_defaults));
    }
    return inv;
  }

  const ExecAction action_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<engine::Action>> MakeExecAction(const ServiceDefinition& def,
                                                               const HandlerDef& handler,
                                                               const ProcessOptions& options,
                                                               BackendLog log) {
  const auto* exec = std::get_if<ExecAction>(&handler.action.detail);
  if (exec == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(def.file, ":", handler.action.line,
                                                   ": handler '", handler.name,
                                                   "': the action is not exec"));
  }
  if (exec->command.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(def.file, ":", handler.action.line,
                                                   ": handler '", handler.name,
                                                   "': the command is empty"));
  }
  ASSIGN_OR_RETURN(ProcessActionSetup setup,
                   MakeProcessActionSetup(def, handler, options, std::move(log)));
  return std::make_unique<ExecRunner>(*exec, std::move(setup));
}

}  // namespace parley::services
