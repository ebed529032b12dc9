#include "services/definition/service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "services/definition/names.h"

namespace parley::services {

using definition_internal::FindByName;
using definition_internal::NamesOf;

const ActionParam* UserAction::FindParam(absl::string_view name) const {
  for (const auto& p : params) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

const EndpointDef* ServiceDefinition::FindEndpoint(absl::string_view name) const {
  return FindByName(endpoints, name);
}
const ConfigOption* ServiceDefinition::FindConfig(absl::string_view name) const {
  return FindByName(config, name);
}
const UserAction* ServiceDefinition::FindAction(absl::string_view name) const {
  return FindByName(actions, name);
}
const EventDef* ServiceDefinition::FindEvent(absl::string_view name) const {
  return FindByName(events, name);
}
const InterfaceSchema* ServiceDefinition::InterfaceOf(absl::string_view endpoint) const {
  const EndpointDef* ep = FindEndpoint(endpoint);
  if (ep == nullptr) return nullptr;
  auto it = interfaces.find(ep->interface);
  return it == interfaces.end() ? nullptr : &it->second;
}

std::string ProbeDef::Target() const {
  switch (kind) {
    case Kind::kExec: {
      std::string out = "exec";
      for (const Template& t : command) absl::StrAppend(&out, " ", t.source);
      return out;
    }
    case Kind::kTcp:
      return absl::StrCat("tcp ", host ? host->source : "$PARLEY_UNIT_HOST", ":", port.source);
    case Kind::kHttp:
      return absl::StrCat("http ", url.source);
  }
  return "";
}

std::map<std::string, std::string> ConfigDefaults(const ServiceDefinition& def) {
  std::map<std::string, std::string> out;
  for (const auto& opt : def.config) {
    if (opt.default_value) out.emplace(opt.name, *opt.default_value);
  }
  return out;
}

absl::StatusOr<std::map<std::string, std::string>> ResolveActionParams(
    const ServiceDefinition& def, absl::string_view action,
    const std::map<std::string, std::string>& given) {
  const UserAction* a = def.FindAction(action);
  if (a == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("service definition '", def.name,
                                                   "' has no action '", action,
                                                   "' (actions: ", NamesOf(def.actions), ")"));
  }
  std::map<std::string, std::string> out;
  for (const auto& [name, value] : given) {
    const ActionParam* p = a->FindParam(name);
    if (p == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("action '", action, "': unknown parameter '",
                                                     name, "' (parameters: ", NamesOf(a->params),
                                                     ")"));
    }
    absl::Status s = CheckValue(p->type, value);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("action '", action, "': parameter '", name, "': ", s.message()));
    }
    out.emplace(name, value);
  }
  for (const ActionParam& p : a->params) {
    if (out.contains(p.name)) continue;
    if (p.required) {
      return absl::InvalidArgumentError(
          absl::StrCat("action '", action, "': parameter '", p.name, "' is required"));
    }
    if (p.default_value) out.emplace(p.name, *p.default_value);
  }
  return out;
}

std::map<std::string, EndpointContract> EndpointContracts(const ServiceDefinition& def) {
  std::map<std::string, EndpointContract> contracts;
  for (const EndpointDef& ep : def.endpoints) {
    if (const InterfaceSchema* schema = def.InterfaceOf(ep.name)) {
      contracts.emplace(ep.name, EndpointContract{ep.role, *schema});
    }
  }
  return contracts;
}

}  // namespace parley::services
