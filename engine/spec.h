#pragma once

// What an engine is built from: a service's endpoints and its handlers. The engine does not know
// how an action is carried out (C++ function, script, playbook, container, HTTP call): it only
// calls Action::Run with a RunContext that stages every change in the run's transaction.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace parley::engine {

class RunContext;

enum class Role { kProvides, kRequires, kPeers };

// "provides", "requires" or "peers": how roles are written in definitions and on the wire.
inline absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kProvides:
      return "provides";
    case Role::kRequires:
      return "requires";
    case Role::kPeers:
      return "peers";
  }
  return "";
}

// The role of the other side of a relation: provides <-> requires, peers <-> peers.
inline Role RemoteRole(Role role) {
  switch (role) {
    case Role::kProvides:
      return Role::kRequires;
    case Role::kRequires:
      return Role::kProvides;
    case Role::kPeers:
      return Role::kPeers;
  }
  return Role::kPeers;
}

struct EndpointSpec {
  std::string name;
  Role role = Role::kProvides;
  std::string interface;
  // Keys a remote unit's data must hold for `<name>.ready` to be set.
  std::vector<std::string> required_keys;
};

class Action {
 public:
  virtual ~Action() = default;
  // Runs the action. Every change goes through `ctx` and lands only if the whole run commits.
  // A non-OK status fails the handler and rolls the run back.
  virtual absl::Status Run(RunContext& ctx) = 0;
};

// An action backed by a C++ function (builtin actions, tests and benchmarks).
std::unique_ptr<Action> MakeAction(std::function<absl::Status(RunContext&)> fn);

struct HandlerSpec {
  // Unique within the service; bookkeeping is kept by name, so renaming a handler makes it new.
  std::string name;
  // Facts that must all be set.
  std::vector<std::string> when;
  // Facts that must all be clear.
  std::vector<std::string> when_not;
  // Events, one of which must be the event being fired. Empty: a fact-only handler, which runs
  // when its facts hold and it is dirty (never ran, or a named fact changed since it last ran).
  std::vector<std::string> on;
  std::unique_ptr<Action> action;
  // Whether the handler runs while the unit is dying (being removed: docs/engine.md, "A unit's
  // life"). Unset: it does when `on` names `stop` or `when` names the fact `dying`, and not
  // otherwise. A handler that does not is held back by an implicit `when_not: [dying]`.
  std::optional<bool> while_dying = std::nullopt;
};

// The fact the engine sets when the unit starts dying; handlers cannot set or clear it.
inline constexpr absl::string_view kDyingFact = "dying";

// Leadership (docs/coordination.md). The facts the engine keeps from `leader.changed` events:
// `leader` is set on the leader only (its value is the term), `leader.unit` and `leader.term` on
// every unit of a service that declares leadership. Handlers cannot set or clear them.
inline constexpr absl::string_view kLeaderFact = "leader";
inline constexpr absl::string_view kLeaderUnitFact = "leader.unit";
inline constexpr absl::string_view kLeaderTermFact = "leader.term";
// The event the agent queues when its service's leader changes, and the one the engine fires
// after it on the unit that became leader.
inline constexpr absl::string_view kLeaderChangedEvent = "leader.changed";
inline constexpr absl::string_view kLeaderElectedEvent = "leader.elected";
// True for the facts only the engine changes (dying, workload.healthy and the leadership facts).
bool IsEngineOwnedFact(absl::string_view fact);
// Prefixes of internal events (config.changed, timer.<name>, file.changed.<path>, action.<name>,
// leader.*, workload.*): the engine owns them, and no endpoint may take these names. The definition
// readers check names with this same list.
bool IsInternalNamespace(absl::string_view prefix);
// The fact the engine sets while the workload's health probes pass (docs/service-definitions.md,
// "Health"): set by applying a `workload.healthy` event, cleared by a `workload.unhealthy` one
// (Engine::EnqueueHealth queues them). Handlers read it but cannot set or clear it.
inline constexpr absl::string_view kWorkloadHealthyFact = "workload.healthy";
inline constexpr absl::string_view kWorkloadHealthyEvent = "workload.healthy";
inline constexpr absl::string_view kWorkloadUnhealthyEvent = "workload.unhealthy";

// What a health probe sees: the unit's committed config (defaults filled in) and facts when the
// check starts, and how long it may take.
struct ProbeContext {
  std::string unit;
  std::map<std::string, std::string> config;
  std::map<std::string, std::string> facts;
  absl::Duration timeout;
};

// One kind of check of the workload (a command, a TCP connect, an HTTP GET). The engine does not
// run probes: the agent's health monitor (services/health/monitor.h) does, on a thread of its
// own, never inside a run. Check is called from one thread at a time.
class HealthProbe {
 public:
  virtual ~HealthProbe() = default;
  // OK when the workload passes; otherwise why not (the message is logged and shown, truncated).
  // Returns within about ctx.timeout.
  virtual absl::Status Check(const ProbeContext& ctx) = 0;
};

// A probe as declared (`health:` in service.yaml), with its schedule and thresholds.
struct HealthCheckSpec {
  // Unique within the service.
  std::string name;
  // What it checks, for status and logs: "tcp {{fact.unit.host}}:{{fact.redis.running}}".
  std::string target;
  // The first check `initial_delay` after the unit became active, then one every `interval`
  // (from the start of the previous one), each given `timeout`.
  absl::Duration initial_delay = absl::ZeroDuration();
  absl::Duration interval = absl::Seconds(10);
  absl::Duration timeout = absl::Seconds(1);
  // Consecutive failures that make the probe unhealthy, successes that make it healthy again.
  uint32_t failure_threshold = 3;
  uint32_t success_threshold = 1;
  std::shared_ptr<HealthProbe> probe;
};

// A config option a service declares. `check` validates a value (not set: any text).
struct ConfigOptionSpec {
  std::string name;
  std::function<absl::Status(absl::string_view value)> check;
};

struct ServiceSpec;

// Checks a config change against the service's declared options, the one check of a config
// value (the agent, the host for a recipe's config, and the CLI call it): OK when the service
// declares no options, the option has no check or `value` is empty (an unset); otherwise
// INVALID_ARGUMENT naming the service and the key (listing the declared options when there is
// no such one) or carrying the option's check's message.
absl::Status CheckConfig(const ServiceSpec& spec, absl::string_view key, absl::string_view value);

// A user action a service declares: fired as the event `event` ("action.<name>") through the
// agent API. `resolve` checks the parameters given and returns them with defaults filled in (not
// set: any parameters).
struct ActionEventSpec {
  std::string event;
  std::function<absl::StatusOr<std::map<std::string, std::string>>(
      const std::map<std::string, std::string>& given)>
      resolve;
};

struct ServiceSpec {
  std::string service;
  // This agent's unit, for example "redis/0"; the sender of its relation data.
  std::string unit;
  std::vector<EndpointSpec> endpoints;
  // Declaration order is the order handlers are queued in.
  std::vector<HandlerSpec> handlers;
  // When set, the service accepts only the config options in `config_options` (the agent refuses
  // a change naming another key, or a value its check refuses); otherwise any key.
  bool declares_config = false;
  std::vector<ConfigOptionSpec> config_options;
  // When set, the agent API accepts only the actions in `actions` as "action.*" events, with
  // their parameters checked and defaulted by each one's `resolve` (as the CLI does).
  bool declares_actions = false;
  std::vector<ActionEventSpec> actions;
  // The service has a leader (docs/coordination.md): its agents campaign for it, the engine keeps
  // the leadership facts, and only the leader may write the service bag. Without it nobody may.
  bool leadership = false;
  // Its lease settings (service.yaml's `leadership:`, checked when it loads): the agent's
  // campaign holds a lease of `lease_ttl`, and a unit told that it leads keeps leading at least
  // `leading_interval` unless it resigns.
  absl::Duration lease_ttl = absl::Seconds(5);
  absl::Duration leading_interval = absl::Seconds(2);
  // A leader whose workload stays unhealthy (its `health:` probes) this long resigns, so that a
  // healthy unit leads.
  absl::Duration unhealthy_grace = absl::Seconds(10);
  // Health probes (none: the agent watches nothing and never queues workload.* events).
  std::vector<HealthCheckSpec> health;
};

}  // namespace parley::engine
