#include "services/definition/yaml_fields.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace parley::services::definition_internal {

int LineOf(const YAML::Node& node, int fallback) {
  if (!node.IsDefined()) return fallback;
  const YAML::Mark mark = node.Mark();
  return mark.line < 0 ? fallback : mark.line + 1;
}

std::string Describe(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "nothing";
  if (node.IsMap()) return "a map";
  if (node.IsSequence()) return "a list";
  return absl::StrCat("'", node.Scalar(), "'");
}

absl::Status At::Error(absl::string_view what) const {
  return absl::InvalidArgumentError(
      absl::StrCat(*file, ":", line, ": ", path, path.empty() ? "" : ": ", what));
}

At At::Field(absl::string_view key, const YAML::Node& value, int key_line) const {
  return At{file, value, key_line, path.empty() ? std::string(key) : absl::StrCat(path, ".", key)};
}

At At::Item(size_t index, const YAML::Node& value) const {
  return At{file, value, LineOf(value, line), absl::StrCat(path, "[", index, "]")};
}

absl::StatusOr<Entries> MapEntries(const At& at) {
  Entries out;
  if (at.node.IsNull()) return out;
  if (!at.node.IsMap()) return at.Error(absl::StrCat("expected a map, got ", Describe(at.node)));
  std::map<std::string, int> seen;
  for (auto it = at.node.begin(); it != at.node.end(); ++it) {
    const int line = LineOf(it->first, at.line);
    if (!it->first.IsScalar()) {
      return At{at.file, it->first, line, at.path}.Error("keys must be plain strings");
    }
    const std::string& key = it->first.Scalar();
    auto [first, inserted] = seen.emplace(key, line);
    if (!inserted) {
      return at.Field(key, it->second, line)
          .Error(absl::StrCat("given twice (first at line ", first->second, ")"));
    }
    out.emplace_back(key, at.Field(key, it->second, line));
  }
  return out;
}

absl::StatusOr<Fields> Fields::Read(const At& at, const std::vector<absl::string_view>& allowed) {
  ASSIGN_OR_RETURN(Fields fields, ReadUnchecked(at));
  RETURN_IF_ERROR(fields.Allow(allowed));
  return fields;
}

absl::StatusOr<Fields> Fields::ReadUnchecked(const At& at) {
  ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
  return Fields(at, std::move(entries));
}

absl::Status Fields::Allow(const std::vector<absl::string_view>& allowed) const {
  for (const auto& [key, at] : entries_) {
    if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
    return At{at_.file, at.node, at.line, at_.path}.Error(
        absl::StrCat("unknown key '", key, "' (expected ", absl::StrJoin(allowed, ", "), ")"));
  }
  return absl::OkStatus();
}

const At* Fields::Get(absl::string_view key) const {
  for (const auto& [k, at] : entries_) {
    if (k == key) return &at;
  }
  return nullptr;
}

absl::StatusOr<const At*> Fields::Require(absl::string_view key) const {
  if (const At* at = Get(key)) return at;
  return at_.Error(absl::StrCat("missing required field '", key, "'"));
}

absl::StatusOr<std::string> ReadString(const At& at) {
  if (!at.node.IsScalar()) {
    return at.Error(absl::StrCat("expected a string, got ", Describe(at.node)));
  }
  return at.node.Scalar();
}

absl::StatusOr<std::string> ReadText(const At* at) {
  if (at == nullptr || at->node.IsNull()) return std::string();
  return ReadString(*at);
}

absl::StatusOr<std::string> ReadName(const At& at, NameRule rule, absl::string_view what) {
  ASSIGN_OR_RETURN(std::string name, ReadString(at));
  if (!Matches(name, rule)) {
    return at.Error(absl::StrCat(what, " '", name, "' must be ", RuleText(rule)));
  }
  return name;
}

absl::Status CheckName(const At& at, absl::string_view name, NameRule rule,
                       absl::string_view what) {
  if (Matches(name, rule)) return absl::OkStatus();
  return at.Error(absl::StrCat(what, " '", name, "' must be ", RuleText(rule)));
}

absl::StatusOr<std::vector<At>> ReadItems(const At& at, bool scalar_ok) {
  std::vector<At> out;
  if (at.node.IsNull()) return out;
  if (scalar_ok && at.node.IsScalar()) {
    out.push_back(at);
    return out;
  }
  if (!at.node.IsSequence()) {
    return at.Error(absl::StrCat("expected a list, got ", Describe(at.node)));
  }
  for (size_t i = 0; i < at.node.size(); ++i) out.push_back(at.Item(i, at.node[i]));
  return out;
}

bool IsQuoted(const YAML::Node& node) {
  return node.Tag() == "!" || node.Tag() == "tag:yaml.org,2002:str";
}

absl::StatusOr<std::string> ReadTyped(const At& at, ValueType type) {
  if (!at.node.IsScalar()) {
    return at.Error(absl::StrCat("expected ", Article(type), ", got ", Describe(at.node)));
  }
  const std::string& text = at.node.Scalar();
  if (type == ValueType::kString) return text;
  if (IsQuoted(at.node)) {
    return at.Error(absl::StrCat("expected ", Article(type), ", got the string \"", text,
                                 "\" (write it without quotes)"));
  }
  if (absl::Status s = CheckValue(type, text); !s.ok()) return at.Error(s.message());
  if (type == ValueType::kInt) {
    int64_t v = 0;
    (void)absl::SimpleAtoi(text, &v);  // checked by CheckValue
    return absl::StrCat(v);
  }
  return text;
}

absl::StatusOr<int64_t> ReadInt(const At& at, int64_t min, int64_t max) {
  ASSIGN_OR_RETURN(std::string text, ReadTyped(at, ValueType::kInt));
  int64_t v = 0;
  (void)absl::SimpleAtoi(text, &v);  // ReadTyped checked it
  if (v < min || v > max) {
    return at.Error(absl::StrCat("expected an int from ", min, " to ", max, ", got ", v));
  }
  return v;
}

absl::StatusOr<bool> ReadBool(const At& at) {
  // Not ASSIGN_OR_RETURN into a string: GCC 12 then warns (maybe-uninitialized, wrongly).
  absl::StatusOr<std::string> text = ReadTyped(at, ValueType::kBool);
  if (!text.ok()) return text.status();
  return *text == "true";
}

absl::StatusOr<ValueType> ReadType(const At& at) {
  ASSIGN_OR_RETURN(std::string name, ReadString(at));
  for (ValueType t : {ValueType::kString, ValueType::kInt, ValueType::kFloat, ValueType::kBool}) {
    if (name == ValueTypeName(t)) return t;
  }
  return at.Error(absl::StrCat("unknown type '", name, "' (expected string, int, float or bool)"));
}

absl::StatusOr<absl::Duration> ReadDuration(const At& at) {
  ASSIGN_OR_RETURN(std::string text, ReadString(at));
  absl::Duration d;
  int64_t seconds = 0;
  if (!IsQuoted(at.node) && absl::SimpleAtoi(text, &seconds)) {
    d = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(text, &d)) {
    d = absl::ZeroDuration();
  }
  if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
    return at.Error(absl::StrCat(
        "expected a positive duration such as 30 (seconds), 30s, 5m or 1h30m, got '", text, "'"));
  }
  return d;
}

absl::StatusOr<YAML::Node> ParseYamlFile(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(file, ": cannot read the file"));
  std::stringstream text;
  text << in.rdbuf();
  try {
    return YAML::Load(text.str());
  } catch (const YAML::ParserException& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ":", e.mark.line + 1, ": not valid YAML: ", e.msg));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": not valid YAML: ", e.what()));
  }
}

bool IsFile(const std::filesystem::path& p) {
  std::error_code ec;
  return std::filesystem::is_regular_file(p, ec);
}

}  // namespace parley::services::definition_internal
