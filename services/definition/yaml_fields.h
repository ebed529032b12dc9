#pragma once

// Internal to services/definition/: reading YAML with positions. The readers of service.yaml,
// model.yaml and interface files see YAML through these only; every error they make is
// INVALID_ARGUMENT "<file>:<line>: <field path>: <what>". yaml-cpp is called here and in the
// readers that walk nodes; its exceptions are caught at the Load* boundary.

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "services/definition/names.h"
#include "services/definition/values.h"

namespace parley::services::definition_internal {

// The 1-based line of `node`, or `fallback` when it has none.
int LineOf(const YAML::Node& node, int fallback);
// "nothing", "a map", "a list" or the quoted scalar, for errors.
std::string Describe(const YAML::Node& node);

// A node, the line errors about it cite (its key's line for a field) and its field path.
struct At {
  const std::string* file = nullptr;
  YAML::Node node;
  int line = 1;
  std::string path;

  absl::Status Error(absl::string_view what) const;
  At Field(absl::string_view key, const YAML::Node& value, int key_line) const;
  At Item(size_t index, const YAML::Node& value) const;
};

using Entries = std::vector<std::pair<std::string, At>>;

// A map's entries in order; nothing (null) is an empty map. Keys are strings, each given once.
absl::StatusOr<Entries> MapEntries(const At& at);

// The fields of a map, checked against the keys it may have.
class Fields {
 public:
  static absl::StatusOr<Fields> Read(const At& at, const std::vector<absl::string_view>& allowed);
  // For maps whose allowed keys depend on one of their fields: call Allow once it is known.
  static absl::StatusOr<Fields> ReadUnchecked(const At& at);

  absl::Status Allow(const std::vector<absl::string_view>& allowed) const;
  // The field `key`, or nullptr when the map has none.
  const At* Get(absl::string_view key) const;
  absl::StatusOr<const At*> Require(absl::string_view key) const;

  const At& at() const { return at_; }
  const Entries& entries() const { return entries_; }

 private:
  Fields(At at, Entries entries) : at_(std::move(at)), entries_(std::move(entries)) {}
  At at_;
  Entries entries_;
};

absl::StatusOr<std::string> ReadString(const At& at);
// Descriptions: nothing is empty text.
absl::StatusOr<std::string> ReadText(const At* at);
absl::StatusOr<std::string> ReadName(const At& at, NameRule rule, absl::string_view what);
absl::Status CheckName(const At& at, absl::string_view name, NameRule rule, absl::string_view what);
// A list's items; nothing is an empty list and, with `scalar_ok`, a single string is a list of one.
absl::StatusOr<std::vector<At>> ReadItems(const At& at, bool scalar_ok);
// Written in quotes (or tagged !!str): a string even if it reads as a number.
bool IsQuoted(const YAML::Node& node);
// A value of `type`, as normalized text. Ints, floats and bools are written without quotes.
absl::StatusOr<std::string> ReadTyped(const At& at, ValueType type);
absl::StatusOr<int64_t> ReadInt(const At& at, int64_t min, int64_t max);
absl::StatusOr<bool> ReadBool(const At& at);
absl::StatusOr<ValueType> ReadType(const At& at);
// 30 (seconds), 30s, 5m, 1h30m: positive and finite.
absl::StatusOr<absl::Duration> ReadDuration(const At& at);

// The whole file as one YAML document; NOT_FOUND when it cannot be read, INVALID_ARGUMENT with
// the line when it is not YAML.
absl::StatusOr<YAML::Node> ParseYamlFile(const std::string& file);
bool IsFile(const std::filesystem::path& p);

}  // namespace parley::services::definition_internal
