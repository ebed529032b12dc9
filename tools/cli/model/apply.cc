#include "tools/cli/model/apply.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace parley::cli {
namespace {

using Kind = PlanStep::Kind;

absl::StatusOr<v1::ServiceRecord*> Service(Session& s, const std::string& name) {
  v1::ServiceRecord* svc = s.FindService(name);
  if (svc == nullptr) {
    return absl::InternalError(
        absl::StrCat("the plan names service ", name, ", which the record does not have"));
  }
  return svc;
}

absl::Status ApplyStep(const PlanStep& step, Session& s) {
  v1::ModelState& state = s.state();
  switch (step.kind) {
    case Kind::kUnrelate:
      return s.DropRelation(step.relation_id);
    case Kind::kRemoveUnits:
      for (const std::string& unit : step.units) RETURN_IF_ERROR(s.RemoveUnit(unit, "apply"));
      return absl::OkStatus();
    case Kind::kRemoveService: {
      ASSIGN_OR_RETURN(v1::ServiceRecord * svc, Service(s, step.service));
      (*state.mutable_next_units())[step.service] = svc->next_unit();
      auto* services = state.mutable_services();
      for (int i = 0; i < services->size(); ++i) {
        if (services->Get(i).name() == step.service) {
          services->DeleteSubrange(i, 1);
          break;
        }
      }
      return s.Save();
    }
    case Kind::kAddService: {
      v1::ServiceRecord* svc = state.add_services();
      svc->set_name(step.service);
      svc->set_definition_dir(step.definition_dir);
      svc->set_definition_name(step.definition_name);
      svc->set_host(step.host);
      if (auto it = state.next_units().find(step.service); it != state.next_units().end()) {
        svc->set_next_unit(it->second);
      }
      return s.Save();
    }
    case Kind::kConfigure: {
      ASSIGN_OR_RETURN(v1::ServiceRecord * svc, Service(s, step.service));
      return s.ApplyConfig(*svc, step.config);
    }
    case Kind::kAddUnits: {
      ASSIGN_OR_RETURN(v1::ServiceRecord * svc, Service(s, step.service));
      for (size_t i = 0; i < step.units.size(); ++i) RETURN_IF_ERROR(s.AddUnit(*svc));
      return absl::OkStatus();
    }
    case Kind::kAddRelation:
      return s
          .AddRelation(step.a.service, step.a.endpoint, step.b.service, step.b.endpoint,
                       step.interface)
          .status();
    case Kind::kRelateUnits:
      for (const auto& rel : state.relations()) {
        if (SameEnds(rel, step.a, step.b)) return s.RelateUnits(rel);
      }
      return absl::InternalError(absl::StrCat("the plan relates ", step.a.service, ":",
                                              step.a.endpoint, " and ", step.b.service, ":",
                                              step.b.endpoint, ", which the record does not have"));
  }
  return absl::InternalError("unknown plan step");
}

// Services in the model's order, as model.proto promises (a replaced one was re-added last).
absl::Status OrderServices(const ModelPlan& plan, Session& s) {
  auto index = [&](const std::string& name) {
    auto it = std::find(plan.service_order.begin(), plan.service_order.end(), name);
    return it - plan.service_order.begin();
  };
  std::stable_sort(s.state().mutable_services()->begin(), s.state().mutable_services()->end(),
                   [&](const v1::ServiceRecord& a, const v1::ServiceRecord& b) {
                     return index(a.name()) < index(b.name());
                   });
  return s.Save();
}

}  // namespace

absl::Status Apply(const ModelPlan& plan, Session& s) {
  // The record takes the model's order once every service is there, before units are related.
  bool ordered = false;
  for (const PlanStep& step : plan.steps) {
    if (step.kind == Kind::kRelateUnits && !ordered) {
      RETURN_IF_ERROR(OrderServices(plan, s));
      ordered = true;
    }
    RETURN_IF_ERROR(ApplyStep(step, s));
  }
  return ordered ? absl::OkStatus() : OrderServices(plan, s);
}

}  // namespace parley::cli
