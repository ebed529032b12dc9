#include "services/definition/build_spec.h"

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "services/definition/names.h"

namespace parley::services {

namespace {

// The config part of a spec: what engine::CheckConfig checks a value against.
void ConfigSpecInto(const ServiceDefinition& def, engine::ServiceSpec& spec) {
  spec.declares_config = true;
  for (const ConfigOption& option : def.config) {
    spec.config_options.push_back(
        {option.name, [type = option.type, name = option.name](absl::string_view value) {
           absl::Status s = CheckValue(type, value);
           if (s.ok()) return s;
           return absl::InvalidArgumentError(
               absl::StrCat("config option '", name, "': ", s.message()));
         }});
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<engine::HealthProbe>> ActionFactory::MakeProbe(
    const ServiceDefinition& def, const ProbeDef& probe) {
  return absl::UnimplementedError(absl::StrCat(def.file, ":", probe.line, ": health.", probe.name,
                                               ": this agent runs no health probes"));
}

engine::ServiceSpec ConfigSpec(const ServiceDefinition& def, absl::string_view service) {
  engine::ServiceSpec spec;
  spec.service = std::string(service);
  ConfigSpecInto(def, spec);
  return spec;
}

absl::StatusOr<engine::ServiceSpec> BuildSpec(const ServiceDefinition& def, absl::string_view unit,
                                              ActionFactory& factory) {
  const size_t slash = unit.find('/');
  const absl::string_view service = unit.substr(0, slash);
  const absl::string_view number =
      slash == absl::string_view::npos ? absl::string_view() : unit.substr(slash + 1);
  if (!definition_internal::Matches(service, definition_internal::NameRule::kService) ||
      number.empty() || !std::all_of(number.begin(), number.end(), absl::ascii_isdigit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unit name '", unit, "' must be <service>/<number>, the service being ",
                     definition_internal::RuleText(definition_internal::NameRule::kService)));
  }
  engine::ServiceSpec spec;
  spec.service = std::string(service);
  spec.unit = std::string(unit);
  for (const EndpointDef& ep : def.endpoints) {
    const InterfaceSchema* schema = def.InterfaceOf(ep.name);
    if (schema == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(def.file, ":", ep.line, ": endpoint '",
                                                     ep.name, "': interface '", ep.interface,
                                                     "' was not loaded"));
    }
    spec.endpoints.push_back({ep.name, ep.role, ep.interface,
                              schema->PublishedBy(engine::RemoteRole(ep.role)).Required()});
  }
  for (const HandlerDef& h : def.handlers) {
    ASSIGN_OR_RETURN(std::unique_ptr<engine::Action> action, factory.Make(def, h));
    spec.handlers.push_back({h.name, h.when, h.when_not, h.on, std::move(action), h.while_dying});
  }
  for (const ProbeDef& p : def.health) {
    engine::HealthCheckSpec check;
    check.name = p.name;
    check.target = p.Target();
    check.initial_delay = p.initial_delay;
    check.interval = p.interval;
    check.timeout = p.timeout;
    check.failure_threshold = p.failure_threshold;
    check.success_threshold = p.success_threshold;
    ASSIGN_OR_RETURN(check.probe, factory.MakeProbe(def, p));
    spec.health.push_back(std::move(check));
  }
  ConfigSpecInto(def, spec);
  spec.leadership = def.leadership;
  spec.lease_ttl = def.lease_ttl;
  spec.leading_interval = def.leading_interval;
  spec.unhealthy_grace = def.unhealthy_grace;
  // The agent checks actions fired through its API with the function the CLI uses.
  spec.declares_actions = true;
  if (!def.actions.empty()) {
    auto shared = std::make_shared<const ServiceDefinition>(def);
    for (const UserAction& action : def.actions) {
      spec.actions.push_back(
          {absl::StrCat("action.", action.name),
           [shared, name = action.name](const std::map<std::string, std::string>& given) {
             return ResolveActionParams(*shared, name, given);
           }});
    }
  }
  return spec;
}

}  // namespace parley::services
