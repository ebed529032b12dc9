#include "services/backends/builtin/builtin_action.h"

#include <map>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/run_context.h"

namespace parley::services {
namespace {

class BuiltinRunner : public engine::Action {
 public:
  BuiltinRunner(BuiltinAction action, std::string file, std::map<std::string, std::string> defaults,
                std::map<std::string, EndpointContract> endpoints)
      : action_(std::move(action)),
        file_(std::move(file)),
        defaults_(std::move(defaults)),
        endpoints_(std::move(endpoints)) {}

  absl::Status Run(engine::RunContext& ctx) override {
    for (const BuiltinStep& step : action_.steps) RETURN_IF_ERROR(RunStep(ctx, step));
    return absl::OkStatus();
  }

 private:
  absl::Status RunStep(engine::RunContext& ctx, const BuiltinStep& step) {
    auto fail = [&](absl::string_view what, const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat("handler '", ctx.handler(), "': ", file_, ":",
                                                 step.line, ": ", what, ": ", s.message()));
    };
    switch (step.kind) {
      case BuiltinStep::Kind::kSet: {
        ASSIGN_OR_RETURN(std::string value, ExpandTemplate(step.value, ctx, defaults_));
        absl::Status s = ctx.Set(step.name, value);
        return s.ok() ? s : fail(absl::StrCat("set ", step.name), s);
      }
      case BuiltinStep::Kind::kOutput: {
        ASSIGN_OR_RETURN(std::string value, ExpandTemplate(step.value, ctx, defaults_));
        absl::Status s = ctx.Output(step.name, value);
        return s.ok() ? s : fail(absl::StrCat("output ", step.name), s);
      }
      case BuiltinStep::Kind::kRetryLater: {
        absl::Status s = ctx.RetryLater(step.delay);
        return s.ok() ? s : fail("retry-later", s);
      }
      case BuiltinStep::Kind::kClear: {
        absl::Status s = ctx.Clear(step.name);
        return s.ok() ? s : fail(absl::StrCat("clear ", step.name), s);
      }
      case BuiltinStep::Kind::kRelationSet: {
        ASSIGN_OR_RETURN(std::string value, ExpandTemplate(step.value, ctx, defaults_));
        const EndpointContract& c = endpoints_.at(step.name);
        const std::string what = absl::StrCat("relation-set ", step.name, ".", step.key);
        absl::Status s = ValidateRelationData(c.schema, step.key, value, c.role);
        if (!s.ok()) return fail(what, s);
        for (const v1::RelationRecord* rel : ctx.Relations(step.name)) {
          s = ctx.SetData(rel->relation_id(), step.key, value);
          if (!s.ok()) return fail(what, s);
        }
        return absl::OkStatus();
      }
      case BuiltinStep::Kind::kRelationUnset: {
        const std::string what = absl::StrCat("relation-unset ", step.name, ".", step.key);
        for (const v1::RelationRecord* rel : ctx.Relations(step.name)) {
          absl::Status s = ctx.DeleteData(rel->relation_id(), step.key);
          if (!s.ok()) return fail(what, s);
        }
        return absl::OkStatus();
      }
      case BuiltinStep::Kind::kStatus: {
        ASSIGN_OR_RETURN(std::string message, ExpandTemplate(step.value, ctx, defaults_));
        absl::Status s = ctx.SetStatus(step.state, message);
        return s.ok() ? s : fail("status", s);
      }
      case BuiltinStep::Kind::kFire: {
        absl::Status s = ctx.Fire(step.name);
        return s.ok() ? s : fail(absl::StrCat("fire ", step.name), s);
      }
    }
    return absl::OkStatus();
  }

  const BuiltinAction action_;
  const std::string file_;
  const std::map<std::string, std::string> defaults_;
  // The endpoints the steps write to, with their contracts.
  const std::map<std::string, EndpointContract> endpoints_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<engine::Action>> MakeBuiltinAction(const ServiceDefinition& def,
                                                                  const HandlerDef& handler) {
  const auto* builtin = std::get_if<BuiltinAction>(&handler.action.detail);
  if (builtin == nullptr) {
    return absl::UnimplementedError(absl::StrCat(
        def.file, ":", handler.action.line, ": handler '", handler.name, "': action kind '",
        ActionKindName(handler.action.kind()), "' is not builtin"));
  }
  std::map<std::string, EndpointContract> endpoints;
  for (const BuiltinStep& step : builtin->steps) {
    if (step.kind != BuiltinStep::Kind::kRelationSet) continue;
    const EndpointDef* ep = def.FindEndpoint(step.name);
    const InterfaceSchema* schema = def.InterfaceOf(step.name);
    if (ep == nullptr || schema == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(def.file, ":", step.line, ": handler '",
                                                     handler.name, "': endpoint '", step.name,
                                                     "' is not declared"));
    }
    endpoints.emplace(step.name, EndpointContract{ep->role, *schema});
  }
  return std::make_unique<BuiltinRunner>(*builtin, def.file, ConfigDefaults(def),
                                         std::move(endpoints));
}

}  // namespace parley::services
