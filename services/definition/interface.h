#pragma once

// Interface schemas: the contract both sides of a relation are checked against, read from
// `<name>.yaml` files (docs/service-definitions.md), and an endpoint's contract (its role and
// its interface's schema), which every backend checks relation data against.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/spec.h"
#include "services/definition/values.h"

namespace parley::services {

struct InterfaceKey {
  std::string name;
  ValueType type = ValueType::kString;
  bool required = false;
  std::string description;
  int line = 0;
};

// The keys one side of a relation publishes.
struct KeySet {
  std::vector<InterfaceKey> keys;

  const InterfaceKey* Find(absl::string_view name) const;
  std::vector<std::string> Required() const;
  bool operator==(const KeySet& other) const;
};

// `provider` is what the providing side publishes (and every unit of a peer relation);
// `requirer` what the requiring side publishes (nothing, unless the schema says so).
struct InterfaceSchema {
  std::string name;
  std::string description;
  // The file it was read from.
  std::string file;
  KeySet provider;
  KeySet requirer;

  // The keys published by the side that has `role`.
  const KeySet& PublishedBy(engine::Role role) const;
  // Same keys, types and requiredness on both sides (descriptions and files may differ).
  bool SameContract(const InterfaceSchema& other) const;
};

// Reads the schema of interface `name` from `file`; errors are INVALID_ARGUMENT
// "<file>:<line>: <field>: <what>" (NOT_FOUND when the file cannot be read).
absl::StatusOr<InterfaceSchema> LoadInterface(const std::string& file, absl::string_view name);

// Checks one key/value of relation data published by the side with `publisher` role: the key must
// be declared by the interface for that side and the value must have the declared type.
absl::Status ValidateRelationData(const InterfaceSchema& schema, absl::string_view key,
                                  absl::string_view value,
                                  engine::Role publisher = engine::Role::kProvides);
// Checks only that the side with `publisher` role may publish `key` (a relation unset).
absl::Status ValidateRelationKey(const InterfaceSchema& schema, absl::string_view key,
                                 engine::Role publisher);

// What an endpoint's relation data must satisfy: the endpoint's role and its interface's schema.
// Backends check every relation-set against it (ValidateRelationData).
struct EndpointContract {
  engine::Role role;
  InterfaceSchema schema;
};

}  // namespace parley::services
