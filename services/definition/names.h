#pragma once

// Internal to services/definition/: the engine's naming rules (docs/engine.md) as the readers
// check them, and the wording errors use for names, sides and types.

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "engine/spec.h"
#include "services/definition/interface.h"
#include "services/definition/values.h"

namespace parley::services::definition_internal {

// The event prefixes the engine owns (config, timer, file, action, leader, workload): the
// engine's list.
using engine::IsInternalNamespace;
// install, start, stop, update.
bool IsLifecycleEvent(absl::string_view name);
// What follows "<endpoint>." in a relation event: joined, changed, departed, broken.
bool IsRelationEventKind(absl::string_view rest);
// What follows "<endpoint>." in a relationship fact: joined, ready, remote.<key>.
bool IsRelationFactShape(absl::string_view rest);

enum class NameRule {
  kService,     // service and unit prefixes
  kIdentifier,  // endpoints, options, actions, parameters, interface keys
  kEnv,         // environment variables
  kToken,       // handlers, facts, events
};

// What a name following `rule` is made of, for errors.
absl::string_view RuleText(NameRule rule);
bool Matches(absl::string_view s, NameRule rule);

// "a, b, c", or "none".
std::string Names(const std::vector<std::string>& names);

template <typename T>
std::string NamesOf(const std::vector<T>& items) {
  std::vector<std::string> names;
  for (const auto& i : items) names.push_back(i.name);
  return Names(names);
}

// The names of a key set's keys, sorted.
std::string KeyNames(const KeySet& set);

// "providing", "requiring" or "peer".
absl::string_view SideName(engine::Role role);

// "a string", "an int", ...
absl::string_view Article(ValueType type);

template <typename T>
const T* FindByName(const std::vector<T>& items, absl::string_view name) {
  for (const auto& i : items) {
    if (i.name == name) return &i;
  }
  return nullptr;
}

}  // namespace parley::services::definition_internal
