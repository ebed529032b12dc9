#include "services/definition/interface.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "services/definition/names.h"
#include "services/definition/yaml_fields.h"

namespace parley::services {
namespace definition_internal {
namespace {

absl::Status ReadKeys(const At& at, bool required, KeySet& out) {
  ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
  for (const auto& [name, key_at] : entries) {
    RETURN_IF_ERROR(CheckName(key_at, name, NameRule::kIdentifier, "key"));
    if (const InterfaceKey* earlier = out.Find(name)) {
      return key_at.Error(absl::StrCat("key '", name, "' is already declared at line ",
                                       earlier->line, "; a key is required or optional"));
    }
    InterfaceKey key{name, ValueType::kString, required, "", key_at.line};
    if (key_at.node.IsMap()) {
      ASSIGN_OR_RETURN(Fields f, Fields::Read(key_at, {"type", "description"}));
      ASSIGN_OR_RETURN(const At* type, f.Require("type"));
      ASSIGN_OR_RETURN(key.type, ReadType(*type));
      ASSIGN_OR_RETURN(key.description, ReadText(f.Get("description")));
    } else {
      ASSIGN_OR_RETURN(key.type, ReadType(key_at));
    }
    out.keys.push_back(std::move(key));
  }
  return absl::OkStatus();
}

absl::Status ReadKeySet(const Fields& f, KeySet& out) {
  if (const At* at = f.Get("required")) RETURN_IF_ERROR(ReadKeys(*at, true, out));
  if (const At* at = f.Get("optional")) RETURN_IF_ERROR(ReadKeys(*at, false, out));
  return absl::OkStatus();
}

absl::StatusOr<InterfaceSchema> ReadInterface(const std::string& file, absl::string_view name) {
  ASSIGN_OR_RETURN(YAML::Node root, ParseYamlFile(file));
  InterfaceSchema schema;
  schema.name = std::string(name);
  schema.file = file;
  const At top{&schema.file, root, 1, ""};
  if (!root.IsMap()) return top.Error(absl::StrCat("expected a map, got ", Describe(root)));
  ASSIGN_OR_RETURN(Fields f,
                   Fields::Read(top, {"name", "description", "required", "optional", "requirer"}));
  if (const At* at = f.Get("name")) {
    ASSIGN_OR_RETURN(std::string written, ReadString(*at));
    if (written != name) {
      return at->Error(absl::StrCat("interface '", written, "' must be in ", written,
                                    ".yaml; this file defines interface '", name, "'"));
    }
  }
  ASSIGN_OR_RETURN(schema.description, ReadText(f.Get("description")));
  RETURN_IF_ERROR(ReadKeySet(f, schema.provider));
  if (const At* at = f.Get("requirer")) {
    ASSIGN_OR_RETURN(Fields r, Fields::Read(*at, {"required", "optional"}));
    RETURN_IF_ERROR(ReadKeySet(r, schema.requirer));
  }
  return schema;
}

}  // namespace
}  // namespace definition_internal

const InterfaceKey* KeySet::Find(absl::string_view name) const {
  for (const auto& k : keys) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

std::vector<std::string> KeySet::Required() const {
  std::vector<std::string> out;
  for (const auto& k : keys) {
    if (k.required) out.push_back(k.name);
  }
  return out;
}

bool KeySet::operator==(const KeySet& other) const {
  if (keys.size() != other.keys.size()) return false;
  for (const auto& k : keys) {
    const InterfaceKey* o = other.Find(k.name);
    if (o == nullptr || o->type != k.type || o->required != k.required) return false;
  }
  return true;
}

const KeySet& InterfaceSchema::PublishedBy(engine::Role role) const {
  return role == engine::Role::kRequires ? requirer : provider;
}

bool InterfaceSchema::SameContract(const InterfaceSchema& other) const {
  return name == other.name && provider == other.provider && requirer == other.requirer;
}

absl::Status ValidateRelationKey(const InterfaceSchema& schema, absl::string_view key,
                                 engine::Role publisher) {
  const KeySet& keys = schema.PublishedBy(publisher);
  if (keys.Find(key) != nullptr) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "interface '", schema.name, "': the ", definition_internal::SideName(publisher),
      " side publishes no key '", key, "' (keys: ", definition_internal::KeyNames(keys), ")"));
}

absl::Status ValidateRelationData(const InterfaceSchema& schema, absl::string_view key,
                                  absl::string_view value, engine::Role publisher) {
  RETURN_IF_ERROR(ValidateRelationKey(schema, key, publisher));
  const InterfaceKey* k = schema.PublishedBy(publisher).Find(key);
  absl::Status s = CheckValue(k->type, value);
  if (s.ok()) return s;
  return absl::InvalidArgumentError(
      absl::StrCat("interface '", schema.name, "': key '", key, "': ", s.message()));
}

absl::StatusOr<InterfaceSchema> LoadInterface(const std::string& file, absl::string_view name) {
  try {
    return definition_internal::ReadInterface(file, name);
  } catch (const YAML::Exception& e) {
    // Every node is checked before it is used; this is a bug, reported with the file.
    return absl::InternalError(absl::StrCat(file, ": unexpected YAML error: ", e.what()));
  }
}

}  // namespace parley::services
