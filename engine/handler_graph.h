#pragma once

// The facts and handlers of a service, linked both ways: a handler points at the facts its
// preconditions name, a fact at the handlers that name it, an event name at the handlers on it.
// Built once from a ServiceSpec, which it validates. The nodes also hold the state the engine keeps
// for them (a fact's value and version, a handler's unsatisfied count and dirty flag), so that a
// fact change reaches the handlers it concerns without a lookup. Internal to engine/.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/spec.h"

namespace parley::engine {

struct Handler;

struct FactState {
  std::string name;
  bool set = false;
  std::string value;
  uint64_t version = 0;
  // Relationship facts are derived from relation data; handlers cannot set them.
  bool derived = false;
  std::vector<Handler*> when_of;
  std::vector<Handler*> when_not_of;
  // Fact-only handlers naming it in when or when_not (marked dirty when it changes).
  std::vector<Handler*> fact_only_of;
  // Run bookkeeping.
  bool touched = false;
  bool changed_since_retest = false;
  bool old_set = false;
  std::string old_value;
};

struct Handler {
  std::string name;
  int index = 0;
  std::vector<FactState*> when;
  std::vector<FactState*> when_not;
  std::vector<std::string> on;
  std::unique_ptr<Action> action;
  bool fact_only = true;
  // Runs while the unit is dying (HandlerSpec::while_dying, resolved).
  bool while_dying = false;
  // Number of preconditions on facts that do not hold.
  int unsatisfied = 0;
  bool ran = false;
  uint64_t last_ran = 0;
  bool dirty = true;
  // The fact whose change made the handler dirty (nullptr: never ran).
  const FactState* dirty_cause = nullptr;
  bool in_queue = false;
  uint32_t queue_gen = 0;
  uint32_t executions = 0;
  bool ran_in_run = false;
};

class HandlerGraph {
 public:
  // Validates `spec` and links its handlers, taking their actions. `spec` must outlive the graph
  // (endpoints are referred to, not copied).
  absl::Status Build(ServiceSpec& spec);

  // The fact `name`, created (clear) when no handler names it.
  FactState& Intern(absl::string_view name);
  // nullptr when no handler names `name` and it was never set.
  FactState* Find(absl::string_view name);
  const FactState* Find(absl::string_view name) const;

  // The endpoint a relationship fact or event ("<endpoint>.<rest>") belongs to; nullptr for any
  // other name.
  const EndpointSpec* EndpointOf(absl::string_view name) const;
  // The endpoint declared as `endpoint`; nullptr when none is.
  const EndpointSpec* Endpoint(absl::string_view endpoint) const;

  // Why `name` may not be used as `what` ("when", "on", "fired event" ...) by `handler`, if it may
  // not: a relationship-shaped name must belong to an endpoint, and an endpoint's names are only
  // joined/changed/departed/broken (events) or joined/ready/remote.<key> (facts).
  absl::Status ValidateName(absl::string_view handler, absl::string_view what,
                            absl::string_view name, bool is_event) const;

  // Handlers on `event`, in declaration order; nullptr when none.
  const std::vector<Handler*>* HandlersOn(absl::string_view event) const {
    auto it = by_event_.find(event);
    return it == by_event_.end() ? nullptr : &it->second;
  }

  // In declaration order.
  const std::vector<std::unique_ptr<Handler>>& handlers() const { return handlers_; }
  absl::node_hash_map<std::string, FactState>& facts() { return facts_; }
  const absl::node_hash_map<std::string, FactState>& facts() const { return facts_; }

 private:
  std::string service_;
  std::vector<std::unique_ptr<Handler>> handlers_;
  absl::flat_hash_map<std::string, std::vector<Handler*>> by_event_;
  absl::node_hash_map<std::string, FactState> facts_;
  absl::flat_hash_map<std::string, const EndpointSpec*> endpoints_;
};

}  // namespace parley::engine
