#include "services/definition/names.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"

namespace parley::services::definition_internal {

bool IsInternalNamespace(absl::string_view prefix) {
  return prefix == "config" || prefix == "timer" || prefix == "file" || prefix == "action" ||
         prefix == "workload";
}

bool IsLifecycleEvent(absl::string_view name) {
  return name == "install" || name == "start" || name == "stop" || name == "update";
}

bool IsRelationEventKind(absl::string_view rest) {
  return rest == "joined" || rest == "changed" || rest == "departed" || rest == "broken";
}

bool IsRelationFactShape(absl::string_view rest) {
  return rest == "joined" || rest == "ready" || absl::StartsWith(rest, "remote.");
}

absl::string_view RuleText(NameRule rule) {
  switch (rule) {
    case NameRule::kService:
      return "lowercase letters, digits and '-', starting with a letter";
    case NameRule::kIdentifier:
      return "letters, digits, '_' and '-', starting with a letter";
    case NameRule::kEnv:
      return "letters, digits and '_', not starting with a digit";
    case NameRule::kToken:
      return "printable characters other than whitespace, '{', '}' and '='";
  }
  return "";
}

bool Matches(absl::string_view s, NameRule rule) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    bool ok = false;
    switch (rule) {
      case NameRule::kService:
        ok = absl::ascii_islower(c) || (i > 0 && (absl::ascii_isdigit(c) || c == '-'));
        break;
      case NameRule::kIdentifier:
        ok = absl::ascii_isalpha(c) || (i > 0 && (absl::ascii_isdigit(c) || c == '_' || c == '-'));
        break;
      case NameRule::kEnv:
        ok = absl::ascii_isalpha(c) || c == '_' || (i > 0 && absl::ascii_isdigit(c));
        break;
      case NameRule::kToken:
        ok = c > ' ' && c != 0x7f && c != '{' && c != '}' && c != '=';
        break;
    }
    if (!ok) return false;
  }
  return true;
}

std::string Names(const std::vector<std::string>& names) {
  return names.empty() ? std::string("none") : absl::StrJoin(names, ", ");
}

std::string KeyNames(const KeySet& set) {
  std::vector<std::string> names;
  for (const auto& k : set.keys) names.push_back(k.name);
  std::sort(names.begin(), names.end());
  return Names(names);
}

absl::string_view SideName(engine::Role role) {
  switch (role) {
    case engine::Role::kProvides:
      return "providing";
    case engine::Role::kRequires:
      return "requiring";
    case engine::Role::kPeers:
      return "peer";
  }
  return "";
}

absl::string_view Article(ValueType type) {
  switch (type) {
    case ValueType::kString:
      return "a string";
    case ValueType::kInt:
      return "an int";
    case ValueType::kFloat:
      return "a float";
    case ValueType::kBool:
      return "a bool (true or false)";
  }
  return "";
}

}  // namespace parley::services::definition_internal
