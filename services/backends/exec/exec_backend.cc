#include "services/backends/exec/exec_backend.h"

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "services/backends/ansible/ansible_backend.h"
#include "services/backends/container/container_action.h"
#include "services/backends/http/http_action.h"
#include "services/backends/process/process_action.h"

namespace parley::services {
namespace {

// A hook request with more arguments than this is refused.
constexpr size_t kMaxArgs = 64;

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

std::string EncodeHookRequest(const std::vector<std::string>& args) {
  std::string out;
  for (const std::string& a : args) absl::StrAppend(&out, a.size(), ":", a, ",");
  return out;
}

absl::StatusOr<std::vector<std::string>> DecodeHookRequest(absl::string_view data) {
  std::vector<std::string> args;
  const absl::string_view all = data;
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed hook request at byte ", data.data() - all.data(), ": ", why));
  };
  while (!data.empty()) {
    if (args.size() == kMaxArgs) return bad(absl::StrCat("more than ", kMaxArgs, " arguments"));
    size_t colon = data.find(':');
    if (colon == absl::string_view::npos || colon == 0 || colon > 7) {
      return bad("expected <length>:<bytes>,");
    }
    size_t len = 0;
    for (char c : data.substr(0, colon)) {
      if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
        return bad("expected <length>:<bytes>,");
      }
      len = len * 10 + (c - '0');
    }
    data.remove_prefix(colon + 1);
    if (data.size() < len + 1 || data[len] != ',') return bad("argument shorter than its length");
    args.emplace_back(data.substr(0, len));
    data.remove_prefix(len + 1);
  }
  if (args.empty()) return bad("empty request");
  return args;
}

ExecActionFactory::ExecActionFactory(ExecOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<engine::Action>> ExecActionFactory::Make(
    const ServiceDefinition& def, const HandlerDef& handler) {
  if (handler.action.kind() == ActionKind::kBuiltin) return builtin_.Make(def, handler);
  if (handler.action.kind() == ActionKind::kAnsible)
    return MakeAnsibleAction(def, handler, options_);
  if (handler.action.kind() == ActionKind::kHttp) return MakeHttpAction(def, handler, options_);
  if (handler.action.kind() == ActionKind::kContainer) {
    return MakeContainerAction(def, handler, options_);
  }
  const auto* exec = std::get_if<ExecAction>(&handler.action.detail);
  if (exec == nullptr) {
    return absl::UnimplementedError(absl::StrCat(
        def.file, ":", handler.action.line, ": handler '", handler.name, "': action kind '",
        ActionKindName(handler.action.kind()),
        "' has no backend here (this factory runs exec, ansible and builtin actions)"));
  }
  if (exec->command.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(def.file, ":", handler.action.line,
                                                   ": handler '", handler.name,
                                                   "': the command is empty"));
  }
  return std::make_unique<ExecRunner>(*exec, MakeProcessActionSetup(def, handler, options_));
}

}  // namespace parley::services
