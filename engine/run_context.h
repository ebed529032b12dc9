#pragma once

// What a handler's action sees and may do during a run. Everything it changes is staged in the
// run's transaction and lands only if the whole run commits.
//
// A RunContext is valid only inside Action::Run, on the engine's executor.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "parley/v1/kb.pb.h"

namespace parley::engine {

class Engine;

class RunContext {
 public:
  // The event the run was started for.
  const v1::Event& event() const;
  // The handler running.
  const std::string& handler() const;
  // This agent's unit.
  const std::string& unit() const;

  // Facts as this run has them.
  bool IsSet(absl::string_view fact) const;
  std::optional<std::string> Value(absl::string_view fact) const;
  std::map<std::string, std::string> Facts() const;
  absl::Status Set(absl::string_view fact, absl::string_view value = "");
  absl::Status Clear(absl::string_view fact);
  // Fires an internal event; handlers on it are queued after this handler returns.
  absl::Status Fire(absl::string_view event);

  // Relations attached to `endpoint` (all of them when empty).
  std::vector<const v1::RelationRecord*> Relations(absl::string_view endpoint = "") const;
  // Data of a bag as staged by this run; see Engine::Bag for bag names.
  absl::StatusOr<std::map<std::string, std::string>> Bag(absl::string_view relation_id,
                                                         absl::string_view bag) const;
  // Writes this unit's (or, with `service`, this service's) bag of a relation. Peers receive
  // the change as a relation event once the run commits.
  absl::Status SetData(absl::string_view relation_id, absl::string_view key,
                       absl::string_view value, bool service = false);
  absl::Status DeleteData(absl::string_view relation_id, absl::string_view key,
                          bool service = false);

  absl::Status SetStatus(v1::WorkloadState state, absl::string_view message);
  // Reports `key` = `value` as a result of this run (a user action's answer): recorded in the
  // run's trace if it commits, not in the facts.
  absl::Status Output(absl::string_view key, absl::string_view value);

  // Config as of this run (config.changed events apply their change before handlers run).
  std::optional<std::string> Config(absl::string_view key) const;
  const std::map<std::string, std::string>& config() const;
  // Asks for `timer.<name>` to be fired after `delay` (replacing an earlier request).
  absl::Status SetTimer(absl::string_view name, absl::Duration delay);

  // Asks for this handler to run again after `delay`, against the data as it is then, instead of
  // failing (docs/engine.md, "Retrying later"): for a handler that waits for a peer. The handler
  // returns as usual and its run goes on and commits, its changes so far included; the event
  // leaves the inbox, so later events are not held up. After `delay` an event that runs only this
  // handler (for the same event, relation and remote unit; a fact-only handler is held until then)
  // is queued. A later request for the same handler and event replaces the earlier one.
  // INVALID_ARGUMENT for a delay that is not positive; FAILED_PRECONDITION while the unit is
  // dying (nothing outlives it) and for a user action's event (its answer is this run's).
  absl::Status RetryLater(absl::Duration delay);

 private:
  friend class Engine;
  explicit RunContext(Engine* engine) : engine_(engine) {}
  Engine* engine_;
};

}  // namespace parley::engine
