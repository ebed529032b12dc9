#pragma once

// A service definition as read from its directory: `service.yaml` (endpoints, config options,
// handlers and the actions they run, actions users invoke, events) with the files its actions
// use, and `interfaces/<name>.yaml` for interface schemas of its own
// (docs/service-definitions.md).
//
// Loading checks everything that can be checked without running anything. The first problem found
// is returned as INVALID_ARGUMENT "<file>:<line>: <field>: <what is wrong, what was expected>",
// lines counted from 1. Plain data; thread-compatible.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/spec.h"
#include "services/definition/action_spec.h"
#include "services/definition/interface.h"
#include "services/definition/template.h"
#include "services/definition/values.h"

namespace parley::services {

struct EndpointDef {
  std::string name;
  engine::Role role = engine::Role::kProvides;
  std::string interface;
  std::string description;
  int line = 0;
};

struct ConfigOption {
  std::string name;
  ValueType type = ValueType::kString;
  // Normalized text of the default; none: the option has no value until the model gives one.
  std::optional<std::string> default_value;
  std::string description;
  int line = 0;
};

struct HandlerDef {
  std::string name;
  std::string description;
  std::vector<std::string> when;
  std::vector<std::string> when_not;
  std::vector<std::string> on;
  // `dying:`: whether it runs while the unit is dying (being removed). Unset: it does when `on`
  // names `stop` or `when` names `dying` (docs/service-definitions.md, "Handlers").
  std::optional<bool> while_dying;
  // How long the action may take (backends that run something enforce it).
  absl::Duration timeout = absl::Seconds(60);
  ActionSpec action;
  int line = 0;
};

struct ActionParam {
  std::string name;
  ValueType type = ValueType::kString;
  bool required = false;
  std::optional<std::string> default_value;
  std::string description;
  int line = 0;
};

// An action users invoke (`action.<name>` events carry its parameters).
struct UserAction {
  std::string name;
  std::string description;
  std::vector<ActionParam> params;
  int line = 0;

  const ActionParam* FindParam(absl::string_view name) const;
};

// An event handlers fire for other handlers.
struct EventDef {
  std::string name;
  std::string description;
  int line = 0;
};

// A health probe of the workload (`health:`; docs/service-definitions.md, "Health"), run by the
// agent outside runs: one of a command (exec), a TCP connect or an HTTP GET.
struct ProbeDef {
  enum class Kind { kExec, kTcp, kHttp };
  std::string name;
  Kind kind = Kind::kTcp;
  // exec: the program and its arguments, run as the definition's user from its directory; it
  // passes when it exits 0.
  std::vector<Template> command;
  // tcp: where to connect (host empty: the unit's address, PARLEY_UNIT_HOST); it passes when the
  // connection is accepted.
  std::optional<Template> host;
  Template port;
  // http: the URL to GET; it passes on a status from 200 to 399.
  Template url;
  // Defaults as Kubernetes' probes have them.
  absl::Duration initial_delay = absl::ZeroDuration();
  absl::Duration interval = absl::Seconds(10);
  absl::Duration timeout = absl::Seconds(1);
  uint32_t failure_threshold = 3;
  uint32_t success_threshold = 1;
  int line = 0;

  // "exec ./bin/check", "tcp {{fact.unit.host}}:6379", "http http://...": for status and logs.
  std::string Target() const;
};

struct ServiceDefinition {
  // The definition directory and its service.yaml, as named to the loader.
  std::string dir;
  std::string file;
  std::string name;
  std::string description;
  // `user:`: who its programs run as (exec, ansible); empty: the agent's default
  // (docs/service-definitions.md, "The user programs run as"). Whether it exists is checked where
  // the programs run (services/backends/process/process_action.h, ResolveProgramUser).
  std::string user;
  int user_line = 0;
  std::vector<EndpointDef> endpoints;
  // Every interface an endpoint names, by name.
  std::map<std::string, InterfaceSchema> interfaces;
  std::vector<ConfigOption> config;
  std::vector<HandlerDef> handlers;
  std::vector<UserAction> actions;
  std::vector<EventDef> events;
  // `leadership:` (docs/coordination.md): the service has a leader, elected through the model's
  // coordinator with these lease settings (checked against each other when read).
  bool leadership = false;
  absl::Duration lease_ttl = absl::Seconds(5);
  absl::Duration leading_interval = absl::Seconds(2);
  // A leader whose workload (its `health:` probes) stays unhealthy this long resigns.
  absl::Duration unhealthy_grace = absl::Seconds(10);
  int leadership_line = 0;
  // Health probes, in declaration order; none: nothing watches the workload.
  std::vector<ProbeDef> health;

  const EndpointDef* FindEndpoint(absl::string_view name) const;
  const ConfigOption* FindConfig(absl::string_view name) const;
  const UserAction* FindAction(absl::string_view name) const;
  const EventDef* FindEvent(absl::string_view name) const;
  // The schema of `endpoint`'s interface (nullptr for an unknown endpoint).
  const InterfaceSchema* InterfaceOf(absl::string_view endpoint) const;
};

// Reads `dir`/service.yaml. Interfaces are read from `dir`/interfaces/<name>.yaml and, when
// `shared_interfaces_dir` is not empty, from `shared_interfaces_dir`/<name>.yaml; an interface in
// both must be the same contract in both.
absl::StatusOr<ServiceDefinition> LoadServiceDefinition(
    const std::string& dir, const std::string& shared_interfaces_dir = "");

// The defaults of the options that have one.
std::map<std::string, std::string> ConfigDefaults(const ServiceDefinition& def);

// Checks the parameters `given` to user action `action` and returns them with defaults filled in.
absl::StatusOr<std::map<std::string, std::string>> ResolveActionParams(
    const ServiceDefinition& def, absl::string_view action,
    const std::map<std::string, std::string>& given);

// The contract of every endpoint of `def` whose interface is known, by endpoint name.
std::map<std::string, EndpointContract> EndpointContracts(const ServiceDefinition& def);

}  // namespace parley::services
