#include "services/definition/definition.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Names and the engine's naming rules (docs/engine.md).

bool IsInternalNamespace(absl::string_view prefix) {
  return prefix == "config" || prefix == "timer" || prefix == "file" || prefix == "action";
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

enum class NameRule {
  kService,     // service and unit prefixes
  kIdentifier,  // endpoints, options, actions, parameters, interface keys
  kEnv,         // environment variables
  kToken,       // handlers, facts, events
};

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

template <typename T>
std::string NamesOf(const std::vector<T>& items) {
  std::vector<std::string> names;
  for (const auto& i : items) names.push_back(i.name);
  return Names(names);
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

// ---------------------------------------------------------------------------------------------
// Reading YAML with positions. yaml-cpp is only called here and in ParseYamlFile; its exceptions
// are caught at the Load* boundary.

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

// A node, the line errors about it cite (its key's line for a field) and its field path.
struct At {
  const std::string* file = nullptr;
  YAML::Node node;
  int line = 1;
  std::string path;

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(*file, ":", line, ": ", path, path.empty() ? "" : ": ", what));
  }
  At Field(absl::string_view key, const YAML::Node& value, int key_line) const {
    return At{file, value, key_line,
              path.empty() ? std::string(key) : absl::StrCat(path, ".", key)};
  }
  At Item(size_t index, const YAML::Node& value) const {
    return At{file, value, LineOf(value, line), absl::StrCat(path, "[", index, "]")};
  }
};

using Entries = std::vector<std::pair<std::string, At>>;

// A map's entries in order; nothing (null) is an empty map. Keys are strings, each given once.
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

// The fields of a map, checked against the keys it may have.
class Fields {
 public:
  static absl::StatusOr<Fields> Read(const At& at, const std::vector<absl::string_view>& allowed) {
    ASSIGN_OR_RETURN(Fields fields, ReadUnchecked(at));
    RETURN_IF_ERROR(fields.Allow(allowed));
    return fields;
  }

  // For maps whose allowed keys depend on one of their fields: call Allow once it is known.
  static absl::StatusOr<Fields> ReadUnchecked(const At& at) {
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    return Fields(at, std::move(entries));
  }

  absl::Status Allow(const std::vector<absl::string_view>& allowed) const {
    for (const auto& [key, at] : entries_) {
      if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
      return At{at_.file, at.node, at.line, at_.path}.Error(
          absl::StrCat("unknown key '", key, "' (expected ", absl::StrJoin(allowed, ", "), ")"));
    }
    return absl::OkStatus();
  }

  const At* Get(absl::string_view key) const {
    for (const auto& [k, at] : entries_) {
      if (k == key) return &at;
    }
    return nullptr;
  }

  absl::StatusOr<const At*> Require(absl::string_view key) const {
    if (const At* at = Get(key)) return at;
    return at_.Error(absl::StrCat("missing required field '", key, "'"));
  }

  const At& at() const { return at_; }
  const Entries& entries() const { return entries_; }

 private:
  Fields(At at, Entries entries) : at_(std::move(at)), entries_(std::move(entries)) {}
  At at_;
  Entries entries_;
};

absl::StatusOr<std::string> ReadString(const At& at) {
  if (!at.node.IsScalar()) {
    return at.Error(absl::StrCat("expected a string, got ", Describe(at.node)));
  }
  return at.node.Scalar();
}

// Descriptions: nothing is empty text.
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

// A list's items; nothing is an empty list and, with `scalar_ok`, a single string is a list of one.
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

// A value of `type`, as normalized text. Ints, floats and bools are written without quotes.
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
  ASSIGN_OR_RETURN(std::string text, ReadTyped(at, ValueType::kBool));
  return text == "true";
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

bool IsFile(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// ---------------------------------------------------------------------------------------------
// Templates.

absl::string_view NamespaceOf(Template::Part::Kind kind) {
  switch (kind) {
    case Template::Part::Kind::kConfig:
      return "config";
    case Template::Part::Kind::kFact:
      return "fact";
    case Template::Part::Kind::kEvent:
      return "event";
    case Template::Part::Kind::kLiteral:
      break;
  }
  return "";
}

std::string RefText(const Template::Part& p) {
  return absl::StrCat("{{", NamespaceOf(p.kind), ".", p.text, "}}");
}

// Splits `text` into literal text and references; the error says what is wrong.
absl::StatusOr<std::vector<Template::Part>> SplitTemplate(absl::string_view text) {
  using Kind = Template::Part::Kind;
  std::vector<Template::Part> parts;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t open = text.find("{{", pos);
    if (open == absl::string_view::npos) {
      parts.push_back({Kind::kLiteral, std::string(text.substr(pos))});
      break;
    }
    if (open > pos) parts.push_back({Kind::kLiteral, std::string(text.substr(pos, open - pos))});
    const size_t close = text.find("}}", open + 2);
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unterminated '{{' in '", text,
          "' (a reference is {{config.<option>}}, {{fact.<name>}} or {{event.<param>}})"));
    }
    const absl::string_view inner =
        absl::StripAsciiWhitespace(text.substr(open + 2, close - open - 2));
    const size_t dot = inner.find('.');
    const absl::string_view ns = inner.substr(0, dot);
    const absl::string_view name =
        dot == absl::string_view::npos ? absl::string_view() : inner.substr(dot + 1);
    Kind kind = Kind::kLiteral;
    if (ns == "config") kind = Kind::kConfig;
    if (ns == "fact") kind = Kind::kFact;
    if (ns == "event") kind = Kind::kEvent;
    const NameRule rule = kind == Kind::kFact ? NameRule::kToken : NameRule::kIdentifier;
    if (kind == Kind::kLiteral || !Matches(name, rule)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'{{", inner,
                       "}}' is not a reference: expected {{config.<option>}}, {{fact.<name>}} "
                       "or {{event.<param>}}"));
    }
    parts.push_back({kind, std::string(name)});
    pos = close + 2;
  }
  return parts;
}

// ---------------------------------------------------------------------------------------------
// Interfaces.

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

absl::StatusOr<InterfaceSchema> LoadInterface(const std::string& file, absl::string_view name) {
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

// ---------------------------------------------------------------------------------------------
// service.yaml.

class DefinitionReader {
 public:
  DefinitionReader(ServiceDefinition& def, std::string shared_interfaces)
      : def_(def), shared_(std::move(shared_interfaces)) {}

  absl::Status Read() {
    ASSIGN_OR_RETURN(YAML::Node root, ParseYamlFile(def_.file));
    const At top{&def_.file, root, 1, ""};
    if (!root.IsMap()) {
      return top.Error(absl::StrCat("expected a map of service fields, got ", Describe(root)));
    }
    ASSIGN_OR_RETURN(Fields f,
                     Fields::Read(top, {"name", "description", "provides", "requires", "peers",
                                        "config", "handlers", "actions", "events"}));
    ASSIGN_OR_RETURN(const At* name, f.Require("name"));
    ASSIGN_OR_RETURN(def_.name, ReadName(*name, NameRule::kService, "service name"));
    ASSIGN_OR_RETURN(def_.description, ReadText(f.Get("description")));
    // Sections are read in dependency order whatever their order in the file: handlers refer to
    // endpoints, interfaces, options, actions and events.
    for (auto [key, role] : {std::pair{"provides", engine::Role::kProvides},
                             std::pair{"requires", engine::Role::kRequires},
                             std::pair{"peers", engine::Role::kPeers}}) {
      if (const At* at = f.Get(key)) RETURN_IF_ERROR(ReadEndpoints(*at, role));
    }
    if (const At* at = f.Get("config")) RETURN_IF_ERROR(ReadConfig(*at));
    if (const At* at = f.Get("actions")) RETURN_IF_ERROR(ReadActions(*at));
    if (const At* at = f.Get("events")) RETURN_IF_ERROR(ReadEventSection(*at));
    if (const At* at = f.Get("handlers")) RETURN_IF_ERROR(ReadHandlers(*at));
    return CheckActionsHandled();
  }

 private:
  absl::Status ReadEndpoints(const At& at, engine::Role role) {
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    for (const auto& [name, ep_at] : entries) {
      RETURN_IF_ERROR(CheckName(ep_at, name, NameRule::kIdentifier, "endpoint name"));
      if (IsInternalNamespace(name)) {
        return ep_at.Error(
            absl::StrCat("endpoint name '", name,
                         "' is reserved for internal events (config, timer, file and action are)"));
      }
      if (const EndpointDef* earlier = def_.FindEndpoint(name)) {
        return ep_at.Error(absl::StrCat("endpoint '", name, "' is already declared at line ",
                                        earlier->line, " (", engine::RoleName(earlier->role), ")"));
      }
      EndpointDef ep{name, role, "", "", ep_at.line};
      // Either `db: redis` or `db: {interface: redis, description: ...}`.
      At iface_at = ep_at;
      if (!ep_at.node.IsScalar()) {
        ASSIGN_OR_RETURN(Fields f, Fields::Read(ep_at, {"interface", "description"}));
        ASSIGN_OR_RETURN(const At* at, f.Require("interface"));
        iface_at = *at;
        ASSIGN_OR_RETURN(ep.description, ReadText(f.Get("description")));
      }
      ASSIGN_OR_RETURN(ep.interface, ReadName(iface_at, NameRule::kIdentifier, "interface"));
      RETURN_IF_ERROR(LoadInterfaceFor(iface_at, ep.interface));
      def_.endpoints.push_back(std::move(ep));
    }
    return absl::OkStatus();
  }

  absl::Status LoadInterfaceFor(const At& at, const std::string& name) {
    if (def_.interfaces.contains(name)) return absl::OkStatus();
    const std::string file = absl::StrCat(name, ".yaml");
    std::vector<std::string> candidates = {(fs::path(def_.dir) / "interfaces" / file).string()};
    if (!shared_.empty()) candidates.push_back((fs::path(shared_) / file).string());
    std::optional<InterfaceSchema> found;
    for (const std::string& path : candidates) {
      if (!IsFile(path)) continue;
      ASSIGN_OR_RETURN(InterfaceSchema schema, LoadInterface(path, name));
      if (found && !found->SameContract(schema)) {
        return at.Error(absl::StrCat("interface '", name, "' is defined differently in ",
                                     found->file, " and ", path,
                                     "; both sides of a relation must share one contract"));
      }
      if (!found) found = std::move(schema);
    }
    if (!found) {
      return at.Error(absl::StrCat("interface '", name, "' is not defined (looked for ",
                                   absl::StrJoin(candidates, " and "), ")"));
    }
    def_.interfaces.emplace(name, std::move(*found));
    return absl::OkStatus();
  }

  absl::Status ReadConfig(const At& at) {
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    for (const auto& [name, opt_at] : entries) {
      RETURN_IF_ERROR(CheckName(opt_at, name, NameRule::kIdentifier, "config option"));
      ASSIGN_OR_RETURN(Fields f, Fields::Read(opt_at, {"type", "default", "description"}));
      ConfigOption opt{name, ValueType::kString, std::nullopt, "", opt_at.line};
      ASSIGN_OR_RETURN(const At* type, f.Require("type"));
      ASSIGN_OR_RETURN(opt.type, ReadType(*type));
      if (const At* d = f.Get("default")) {
        ASSIGN_OR_RETURN(opt.default_value, ReadTyped(*d, opt.type));
      }
      ASSIGN_OR_RETURN(opt.description, ReadText(f.Get("description")));
      def_.config.push_back(std::move(opt));
    }
    return absl::OkStatus();
  }

  absl::Status ReadActions(const At& at) {
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    for (const auto& [name, action_at] : entries) {
      RETURN_IF_ERROR(CheckName(action_at, name, NameRule::kIdentifier, "action name"));
      UserAction action{name, "", {}, action_at.line};
      ASSIGN_OR_RETURN(Fields f, Fields::Read(action_at, {"description", "params"}));
      ASSIGN_OR_RETURN(action.description, ReadText(f.Get("description")));
      if (const At* params = f.Get("params")) {
        ASSIGN_OR_RETURN(Entries ps, MapEntries(*params));
        for (const auto& [pname, p_at] : ps) {
          RETURN_IF_ERROR(CheckName(p_at, pname, NameRule::kIdentifier, "parameter"));
          ActionParam p{pname, ValueType::kString, false, std::nullopt, "", p_at.line};
          ASSIGN_OR_RETURN(Fields pf,
                           Fields::Read(p_at, {"type", "required", "default", "description"}));
          if (const At* t = pf.Get("type")) {
            ASSIGN_OR_RETURN(p.type, ReadType(*t));
          }
          if (const At* r = pf.Get("required")) {
            ASSIGN_OR_RETURN(p.required, ReadBool(*r));
          }
          if (const At* d = pf.Get("default")) {
            if (p.required) return d->Error("a required parameter takes no default");
            ASSIGN_OR_RETURN(p.default_value, ReadTyped(*d, p.type));
          }
          ASSIGN_OR_RETURN(p.description, ReadText(pf.Get("description")));
          action.params.push_back(std::move(p));
        }
      }
      def_.actions.push_back(std::move(action));
    }
    return absl::OkStatus();
  }

  absl::Status ReadEventSection(const At& at) {
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    for (const auto& [name, ev_at] : entries) {
      RETURN_IF_ERROR(CheckName(ev_at, name, NameRule::kToken, "event name"));
      const size_t dot = name.find('.');
      const std::string prefix = name.substr(0, dot);
      const std::string rest = dot == std::string::npos ? "" : name.substr(dot + 1);
      if (IsLifecycleEvent(name) || (dot != std::string::npos && IsInternalNamespace(prefix))) {
        return ev_at.Error(absl::StrCat("'", name, "' is a built-in event; declare only events ",
                                        "handlers fire themselves"));
      }
      if (dot != std::string::npos &&
          (def_.FindEndpoint(prefix) != nullptr || IsRelationEventKind(rest))) {
        return ev_at.Error(absl::StrCat("'", name,
                                        "' has the form of a relationship event, which only "
                                        "relations fire"));
      }
      ASSIGN_OR_RETURN(std::string description, ReadText(&ev_at));
      def_.events.push_back({name, std::move(description), ev_at.line});
    }
    return absl::OkStatus();
  }

  absl::Status ReadHandlers(const At& at) {
    ASSIGN_OR_RETURN(std::vector<At> items, ReadItems(at, false));
    for (const At& item : items) {
      HandlerDef h;
      RETURN_IF_ERROR(ReadHandler(item, h));
      def_.handlers.push_back(std::move(h));
    }
    return absl::OkStatus();
  }

  absl::Status ReadHandler(const At& at, HandlerDef& h) {
    if (!at.node.IsMap()) {
      return at.Error(absl::StrCat("expected a handler (a map), got ", Describe(at.node)));
    }
    ASSIGN_OR_RETURN(Fields f, Fields::Read(at, {"name", "description", "when", "when_not", "on",
                                                 "timeout", "action"}));
    h.line = at.line;
    ASSIGN_OR_RETURN(const At* name, f.Require("name"));
    ASSIGN_OR_RETURN(h.name, ReadName(*name, NameRule::kToken, "handler name"));
    for (const HandlerDef& other : def_.handlers) {
      if (other.name == h.name) {
        return name->Error(
            absl::StrCat("handler '", h.name, "' is already declared at line ", other.line));
      }
    }
    ASSIGN_OR_RETURN(h.description, ReadText(f.Get("description")));
    if (const At* when = f.Get("when")) RETURN_IF_ERROR(ReadFacts(*when, {}, h.when));
    if (const At* when_not = f.Get("when_not")) {
      RETURN_IF_ERROR(ReadFacts(*when_not, h.when, h.when_not));
    }
    if (const At* on = f.Get("on")) RETURN_IF_ERROR(ReadOn(*on, h.on));
    if (const At* timeout = f.Get("timeout")) {
      ASSIGN_OR_RETURN(h.timeout, ReadDuration(*timeout));
    }
    ASSIGN_OR_RETURN(const At* action, f.Require("action"));
    return ReadAction(*action, h);
  }

  // Reads when / when_not; `when` is what when_not may not repeat.
  absl::Status ReadFacts(const At& at, const std::vector<std::string>& when,
                         std::vector<std::string>& out) {
    ASSIGN_OR_RETURN(std::vector<At> items, ReadItems(at, true));
    for (const At& item : items) {
      ASSIGN_OR_RETURN(std::string fact, ReadString(item));
      if (std::string why = FactProblem(fact); !why.empty()) {
        return item.Error(absl::StrCat("'", fact, "' ", why));
      }
      if (std::find(when.begin(), when.end(), fact) != when.end()) {
        return item.Error(absl::StrCat("'", fact, "' is in both when and when_not"));
      }
      out.push_back(std::move(fact));
    }
    return absl::OkStatus();
  }

  absl::Status ReadOn(const At& at, std::vector<std::string>& out) {
    ASSIGN_OR_RETURN(std::vector<At> items, ReadItems(at, true));
    for (const At& item : items) {
      ASSIGN_OR_RETURN(std::string event, ReadString(item));
      if (std::string why = EventProblem(event); !why.empty()) {
        return item.Error(absl::StrCat("'", event, "' ", why));
      }
      out.push_back(std::move(event));
    }
    return absl::OkStatus();
  }

  std::string EndpointList() const { return NamesOf(def_.endpoints); }

  // Why `fact` may not be named in when / when_not ("" if it may).
  std::string FactProblem(absl::string_view fact) const {
    if (!Matches(fact, NameRule::kToken)) {
      return absl::StrCat("is not a fact name: a fact name is ", RuleText(NameRule::kToken));
    }
    const size_t dot = fact.find('.');
    if (dot == absl::string_view::npos) return "";
    const absl::string_view prefix = fact.substr(0, dot), rest = fact.substr(dot + 1);
    if (const EndpointDef* ep = def_.FindEndpoint(prefix)) {
      if (rest == "joined" || rest == "ready") return "";
      if (absl::StartsWith(rest, "remote.")) {
        const absl::string_view key = rest.substr(7);
        const KeySet& keys = def_.InterfaceOf(prefix)->PublishedBy(engine::RemoteRole(ep->role));
        if (keys.Find(key) != nullptr) return "";
        return absl::StrCat("names key '", key, "', which interface '", ep->interface,
                            "' does not let the ", SideName(engine::RemoteRole(ep->role)),
                            " side publish (keys: ", KeyNames(keys), ")");
      }
      return absl::StrCat("names endpoint '", prefix, "', whose facts are ", prefix, ".joined, ",
                          prefix, ".ready and ", prefix, ".remote.<key>");
    }
    if (IsRelationFactShape(rest)) {
      return absl::StrCat("names endpoint '", prefix,
                          "', which this service does not declare (endpoints: ", EndpointList(),
                          ")");
    }
    return "";
  }

  // Why a handler may not set or clear `fact` ("" if it may).
  std::string SettableProblem(absl::string_view fact) const {
    if (!Matches(fact, NameRule::kToken)) {
      return absl::StrCat("is not a fact name: a fact name is ", RuleText(NameRule::kToken));
    }
    const absl::string_view prefix = fact.substr(0, fact.find('.'));
    if (fact.find('.') != absl::string_view::npos && def_.FindEndpoint(prefix) != nullptr) {
      return absl::StrCat("is a relationship fact of endpoint '", prefix,
                          "': handlers read it but cannot set or clear it");
    }
    return "";
  }

  // Why a handler cannot be `on` `event` ("" if it can).
  std::string EventProblem(absl::string_view event) const {
    if (!Matches(event, NameRule::kToken)) {
      return absl::StrCat("is not an event name: an event name is ", RuleText(NameRule::kToken));
    }
    if (IsLifecycleEvent(event) || def_.FindEvent(event) != nullptr) return "";
    const size_t dot = event.find('.');
    const absl::string_view prefix = event.substr(0, dot);
    const absl::string_view rest =
        dot == absl::string_view::npos ? absl::string_view() : event.substr(dot + 1);
    if (dot != absl::string_view::npos) {
      if (prefix == "config") {
        if (rest == "changed") return "";
        return "is not an event: the config event is config.changed";
      }
      if (prefix == "timer") {
        return rest.empty() ? "is not an event: timer events are timer.<name>" : "";
      }
      if (prefix == "file") {
        if (absl::StartsWith(rest, "changed.") && rest.size() > 8) return "";
        return "is not an event: file events are file.changed.<path>";
      }
      if (prefix == "action") {
        if (def_.FindAction(rest) != nullptr) return "";
        return absl::StrCat("names action '", rest,
                            "', which this service does not declare under actions (actions: ",
                            NamesOf(def_.actions), ")");
      }
      if (def_.FindEndpoint(prefix) != nullptr) {
        if (IsRelationEventKind(rest)) return "";
        return absl::StrCat("names endpoint '", prefix, "', whose events are ", prefix,
                            ".joined, .changed, .departed and .broken");
      }
      if (IsRelationEventKind(rest)) {
        return absl::StrCat("names endpoint '", prefix,
                            "', which this service does not declare (endpoints: ", EndpointList(),
                            ")");
      }
    }
    return absl::StrCat(
        "is not an event this service knows: expected install, start, stop, update, "
        "config.changed, timer.<name>, file.changed.<path>, action.<action>, "
        "<endpoint>.joined|changed|departed|broken or an event declared under events (events: ",
        NamesOf(def_.events), ")");
  }

  // --- Actions.

  absl::Status ReadAction(const At& at, HandlerDef& h) {
    if (!at.node.IsMap()) {
      return at.Error(
          absl::StrCat("expected an action (a map with a kind), got ", Describe(at.node)));
    }
    ASSIGN_OR_RETURN(Fields f, Fields::ReadUnchecked(at));
    h.action.line = at.line;
    ASSIGN_OR_RETURN(const At* kind_at, f.Require("kind"));
    ASSIGN_OR_RETURN(std::string kind, ReadString(*kind_at));
    if (kind == "exec") {
      RETURN_IF_ERROR(f.Allow({"kind", "command", "env"}));
      return ReadExec(f, h);
    }
    if (kind == "ansible") {
      RETURN_IF_ERROR(f.Allow({"kind", "playbook", "vars"}));
      return ReadAnsible(f, h);
    }
    if (kind == "container") {
      RETURN_IF_ERROR(f.Allow({"kind", "image", "command", "env", "ports", "state"}));
      return ReadContainer(f, h);
    }
    if (kind == "http") {
      RETURN_IF_ERROR(f.Allow({"kind", "method", "url", "body", "headers", "expect", "facts"}));
      return ReadHttp(f, h);
    }
    if (kind == "builtin") {
      RETURN_IF_ERROR(f.Allow({"kind", "steps"}));
      return ReadBuiltin(f, h);
    }
    return kind_at->Error(absl::StrCat("unknown action kind '", kind,
                                       "' (expected exec, ansible, container, http or builtin)"));
  }

  absl::StatusOr<Template> ReadTemplate(const At& at, const HandlerDef& h) {
    ASSIGN_OR_RETURN(std::string text, ReadString(at));
    auto parts = SplitTemplate(text);
    if (!parts.ok()) return at.Error(parts.status().message());
    Template t{text, std::move(*parts), absl::StrCat(def_.file, ":", at.line)};
    for (const Template::Part& p : t.parts) {
      if (std::string why = RefProblem(p, h); !why.empty()) {
        return at.Error(absl::StrCat("'", RefText(p), "' ", why));
      }
    }
    return t;
  }

  // Why reference `p` cannot be resolved for handler `h` ("" if it can, or may at run time).
  std::string RefProblem(const Template::Part& p, const HandlerDef& h) const {
    switch (p.kind) {
      case Template::Part::Kind::kLiteral:
      case Template::Part::Kind::kFact:
        return "";
      case Template::Part::Kind::kConfig:
        if (def_.FindConfig(p.text) != nullptr) return "";
        return absl::StrCat(
            "names config option '", p.text,
            "', which this service does not declare (options: ", NamesOf(def_.config), ")");
      case Template::Part::Kind::kEvent: {
        if (h.on.empty()) {
          return "refers to an event parameter, but the handler has no `on` events";
        }
        // Only action events declare their parameters; other events are checked at run time.
        for (const std::string& e : h.on) {
          if (!absl::StartsWith(e, "action.")) return "";
        }
        for (const std::string& e : h.on) {
          const UserAction* action = def_.FindAction(absl::string_view(e).substr(7));
          if (action->FindParam(p.text) == nullptr) {
            return absl::StrCat("names parameter '", p.text, "', which action '", action->name,
                                "' does not declare (parameters: ", NamesOf(action->params), ")");
          }
        }
        return "";
      }
    }
    return "";
  }

  absl::StatusOr<std::vector<Template>> ReadTemplateList(const At& at, const HandlerDef& h) {
    std::vector<Template> out;
    ASSIGN_OR_RETURN(std::vector<At> items, ReadItems(at, false));
    for (const At& item : items) {
      ASSIGN_OR_RETURN(Template t, ReadTemplate(item, h));
      out.push_back(std::move(t));
    }
    return out;
  }

  absl::StatusOr<std::map<std::string, Template>> ReadTemplateMap(const At& at, const HandlerDef& h,
                                                                  NameRule rule,
                                                                  absl::string_view what) {
    std::map<std::string, Template> out;
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    for (const auto& [name, value] : entries) {
      RETURN_IF_ERROR(CheckName(value, name, rule, what));
      ASSIGN_OR_RETURN(Template t, ReadTemplate(value, h));
      out.emplace(name, std::move(t));
    }
    return out;
  }

  // A path inside the definition directory that must name a file.
  absl::Status CheckFileInDir(const At& at, const std::string& path) {
    if (fs::path(path).is_absolute()) {
      return at.Error(absl::StrCat("'", path, "' must be relative to the definition directory"));
    }
    if (!IsFile(fs::path(def_.dir) / path)) {
      return at.Error(absl::StrCat("'", path, "' is not a file in ", def_.dir));
    }
    return absl::OkStatus();
  }

  absl::Status ReadExec(const Fields& f, HandlerDef& h) {
    ExecAction exec;
    ASSIGN_OR_RETURN(const At* command, f.Require("command"));
    ASSIGN_OR_RETURN(exec.command, ReadTemplateList(*command, h));
    if (exec.command.empty()) return command->Error("the command is empty");
    const At program = command->Item(0, command->node[0]);
    if (!exec.command[0].IsLiteral()) {
      return program.Error("the program must be written out (templates are for arguments)");
    }
    const std::string& path = exec.command[0].source;
    if (path.find('/') != std::string::npos) RETURN_IF_ERROR(CheckFileInDir(program, path));
    if (const At* env = f.Get("env")) {
      ASSIGN_OR_RETURN(exec.env, ReadTemplateMap(*env, h, NameRule::kEnv, "variable"));
    }
    h.action.detail = std::move(exec);
    return absl::OkStatus();
  }

  absl::Status ReadAnsible(const Fields& f, HandlerDef& h) {
    AnsibleAction ansible;
    ASSIGN_OR_RETURN(const At* playbook, f.Require("playbook"));
    ASSIGN_OR_RETURN(ansible.playbook, ReadString(*playbook));
    RETURN_IF_ERROR(CheckFileInDir(*playbook, ansible.playbook));
    if (const At* vars = f.Get("vars")) {
      ASSIGN_OR_RETURN(ansible.vars, ReadTemplateMap(*vars, h, NameRule::kEnv, "variable"));
    }
    h.action.detail = std::move(ansible);
    return absl::OkStatus();
  }

  absl::Status ReadContainer(const Fields& f, HandlerDef& h) {
    ContainerAction c;
    ASSIGN_OR_RETURN(const At* image, f.Require("image"));
    ASSIGN_OR_RETURN(c.image, ReadTemplate(*image, h));
    if (c.image.source.empty()) return image->Error("the image is empty");
    if (const At* command = f.Get("command")) {
      ASSIGN_OR_RETURN(c.command, ReadTemplateList(*command, h));
    }
    if (const At* env = f.Get("env")) {
      ASSIGN_OR_RETURN(c.env, ReadTemplateMap(*env, h, NameRule::kEnv, "variable"));
    }
    if (const At* state = f.Get("state")) {
      ASSIGN_OR_RETURN(std::string name, ReadString(*state));
      static const std::map<std::string, ContainerAction::State> kStates = {
          {"running", ContainerAction::State::kRunning},
          {"stopped", ContainerAction::State::kStopped},
          {"absent", ContainerAction::State::kAbsent}};
      auto it = kStates.find(name);
      if (it == kStates.end()) {
        return state->Error(
            absl::StrCat("unknown state '", name, "' (expected running, stopped or absent)"));
      }
      c.state = it->second;
    }
    if (const At* ports = f.Get("ports")) {
      ASSIGN_OR_RETURN(std::vector<At> items, ReadItems(*ports, false));
      for (const At& item : items) {
        ASSIGN_OR_RETURN(Template t, ReadTemplate(item, h));
        if (t.IsLiteral() && !IsPortMapping(t.source)) {
          return item.Error(absl::StrCat("expected '<host port>:<container port>' or '<port>' ",
                                         "with ports from 1 to 65535, got '", t.source, "'"));
        }
        c.ports.push_back(std::move(t));
      }
    }
    h.action.detail = std::move(c);
    return absl::OkStatus();
  }

  static bool IsPort(absl::string_view s) {
    int port = 0;
    return !s.empty() && std::all_of(s.begin(), s.end(), absl::ascii_isdigit) &&
           absl::SimpleAtoi(s, &port) && port >= 1 && port <= 65535;
  }

  static bool IsPortMapping(absl::string_view s) {
    const size_t colon = s.find(':');
    if (colon == absl::string_view::npos) return IsPort(s);
    return IsPort(s.substr(0, colon)) && IsPort(s.substr(colon + 1));
  }

  absl::Status ReadHttp(const Fields& f, HandlerDef& h) {
    HttpAction http;
    if (const At* method = f.Get("method")) {
      ASSIGN_OR_RETURN(http.method, ReadString(*method));
      static const std::set<std::string> kMethods = {"GET", "HEAD",  "POST",
                                                     "PUT", "PATCH", "DELETE"};
      if (!kMethods.contains(http.method)) {
        return method->Error(absl::StrCat("unknown method '", http.method,
                                          "' (expected GET, HEAD, POST, PUT, PATCH or DELETE)"));
      }
    }
    ASSIGN_OR_RETURN(const At* url, f.Require("url"));
    ASSIGN_OR_RETURN(http.url, ReadTemplate(*url, h));
    const Template::Part* first = http.url.parts.empty() ? nullptr : &http.url.parts[0];
    if (first == nullptr ||
        (first->kind == Template::Part::Kind::kLiteral &&
         !absl::StartsWith(first->text, "http://") && !absl::StartsWith(first->text, "https://"))) {
      return url->Error(
          absl::StrCat("expected an http:// or https:// URL, got '", http.url.source, "'"));
    }
    if (const At* body = f.Get("body")) {
      ASSIGN_OR_RETURN(http.body, ReadTemplate(*body, h));
    }
    if (const At* headers = f.Get("headers")) {
      ASSIGN_OR_RETURN(http.headers, ReadTemplateMap(*headers, h, NameRule::kIdentifier, "header"));
    }
    if (const At* expect = f.Get("expect")) {
      ASSIGN_OR_RETURN(std::vector<At> items, ReadItems(*expect, false));
      for (const At& item : items) {
        ASSIGN_OR_RETURN(int64_t status, ReadInt(item, 100, 599));
        http.expect.push_back(static_cast<int>(status));
      }
    }
    if (const At* facts = f.Get("facts")) {
      ASSIGN_OR_RETURN(Entries entries, MapEntries(*facts));
      for (const auto& [fact, source_at] : entries) {
        if (std::string why = SettableProblem(fact); !why.empty()) {
          return source_at.Error(absl::StrCat("'", fact, "' ", why));
        }
        ASSIGN_OR_RETURN(std::string source, ReadString(source_at));
        ResponseFact rf{fact, ResponseFact::Source::kBody, "", source_at.line};
        if (source == "status") {
          rf.source = ResponseFact::Source::kStatus;
        } else if (source == "body") {
          rf.source = ResponseFact::Source::kBody;
        } else if (absl::StartsWith(source, "header:") && source.size() > 7) {
          rf.source = ResponseFact::Source::kHeader;
          rf.arg = source.substr(7);
        } else if (absl::StartsWith(source, "json:") && (source.size() == 5 || source[5] == '/')) {
          rf.source = ResponseFact::Source::kJson;
          rf.arg = source.substr(5);
        } else {
          return source_at.Error(absl::StrCat("unknown response source '", source,
                                              "' (expected status, body, header:<name> or ",
                                              "json:<pointer> such as json:/token)"));
        }
        http.facts.push_back(std::move(rf));
      }
    }
    h.action.detail = std::move(http);
    return absl::OkStatus();
  }

  absl::Status ReadBuiltin(const Fields& f, HandlerDef& h) {
    BuiltinAction builtin;
    ASSIGN_OR_RETURN(const At* steps, f.Require("steps"));
    ASSIGN_OR_RETURN(std::vector<At> items, ReadItems(*steps, false));
    if (items.empty()) return steps->Error("a builtin action has at least one step");
    for (const At& item : items) {
      ASSIGN_OR_RETURN(BuiltinStep step, ReadStep(item, h));
      builtin.steps.push_back(std::move(step));
    }
    h.action.detail = std::move(builtin);
    return absl::OkStatus();
  }

  absl::StatusOr<BuiltinStep> ReadStep(const At& at, const HandlerDef& h) {
    static constexpr absl::string_view kSteps =
        "set: <fact>[=<value>], clear: <fact>, relation-set: {endpoint, key, value}, "
        "status: {state, message}, fire: <event> or output: <key>=<value>";
    if (!at.node.IsMap() || at.node.size() != 1) {
      return at.Error(absl::StrCat("a step is a map with one key: ", kSteps));
    }
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    const auto& [op, value] = entries[0];
    BuiltinStep step;
    step.line = value.line;
    step.value.origin = absl::StrCat(def_.file, ":", value.line);
    if (op == "set" || op == "clear") {
      step.kind = op == "set" ? BuiltinStep::Kind::kSet : BuiltinStep::Kind::kClear;
      ASSIGN_OR_RETURN(std::string text, ReadString(value));
      const size_t eq = op == "set" ? text.find('=') : std::string::npos;
      step.name = text.substr(0, eq);
      if (std::string why = SettableProblem(step.name); !why.empty()) {
        return value.Error(absl::StrCat("'", step.name, "' ", why));
      }
      if (eq != std::string::npos) {
        // The value is everything after the first '=': re-read it as a template.
        At value_at = value;
        value_at.node = YAML::Node(text.substr(eq + 1));
        ASSIGN_OR_RETURN(step.value, ReadTemplate(value_at, h));
      }
      return step;
    }
    if (op == "output") {
      step.kind = BuiltinStep::Kind::kOutput;
      ASSIGN_OR_RETURN(std::string text, ReadString(value));
      const size_t eq = text.find('=');
      if (eq == std::string::npos || eq == 0) {
        return value.Error(absl::StrCat("expected <key>=<value>, got '", text, "'"));
      }
      step.name = text.substr(0, eq);
      At value_at = value;
      value_at.node = YAML::Node(text.substr(eq + 1));
      ASSIGN_OR_RETURN(step.value, ReadTemplate(value_at, h));
      return step;
    }
    if (op == "fire") {
      step.kind = BuiltinStep::Kind::kFire;
      ASSIGN_OR_RETURN(step.name, ReadString(value));
      if (def_.FindEvent(step.name) == nullptr) {
        return value.Error(absl::StrCat(
            "'", step.name, "' is not declared under events (events: ", NamesOf(def_.events), ")"));
      }
      return step;
    }
    if (op == "relation-set") {
      step.kind = BuiltinStep::Kind::kRelationSet;
      ASSIGN_OR_RETURN(Fields f, Fields::Read(value, {"endpoint", "key", "value"}));
      ASSIGN_OR_RETURN(const At* endpoint, f.Require("endpoint"));
      ASSIGN_OR_RETURN(step.name, ReadString(*endpoint));
      const EndpointDef* ep = def_.FindEndpoint(step.name);
      if (ep == nullptr) {
        return endpoint->Error(
            absl::StrCat("'", step.name,
                         "' is not an endpoint of this service (endpoints: ", EndpointList(), ")"));
      }
      ASSIGN_OR_RETURN(const At* key, f.Require("key"));
      ASSIGN_OR_RETURN(step.key, ReadString(*key));
      const InterfaceSchema& schema = *def_.InterfaceOf(ep->name);
      const KeySet& keys = schema.PublishedBy(ep->role);
      if (keys.Find(step.key) == nullptr) {
        return key->Error(absl::StrCat("interface '", schema.name, "' does not let the ",
                                       SideName(ep->role), " side publish '", step.key,
                                       "' (keys: ", KeyNames(keys), ")"));
      }
      ASSIGN_OR_RETURN(const At* data, f.Require("value"));
      ASSIGN_OR_RETURN(step.value, ReadTemplate(*data, h));
      if (step.value.IsLiteral()) {
        absl::Status s = ValidateRelationData(schema, step.key, step.value.source, ep->role);
        if (!s.ok()) return data->Error(s.message());
      }
      return step;
    }
    if (op == "status") {
      step.kind = BuiltinStep::Kind::kStatus;
      ASSIGN_OR_RETURN(Fields f, Fields::Read(value, {"state", "message"}));
      ASSIGN_OR_RETURN(const At* state, f.Require("state"));
      ASSIGN_OR_RETURN(std::string name, ReadString(*state));
      static const std::map<std::string, v1::WorkloadState> kStates = {
          {"maintenance", v1::WORKLOAD_STATE_MAINTENANCE},
          {"blocked", v1::WORKLOAD_STATE_BLOCKED},
          {"waiting", v1::WORKLOAD_STATE_WAITING},
          {"active", v1::WORKLOAD_STATE_ACTIVE},
          {"error", v1::WORKLOAD_STATE_ERROR}};
      auto it = kStates.find(name);
      if (it == kStates.end()) {
        return state->Error(
            absl::StrCat("unknown state '", name,
                         "' (expected maintenance, blocked, waiting, active or error)"));
      }
      step.state = it->second;
      if (const At* message = f.Get("message")) {
        ASSIGN_OR_RETURN(step.value, ReadTemplate(*message, h));
      }
      return step;
    }
    return At{at.file, value.node, value.line, at.path}.Error(
        absl::StrCat("unknown step '", op, "' (expected ", kSteps, ")"));
  }

  // An action users can invoke but no handler answers is a mistake the user would only find
  // by invoking it.
  absl::Status CheckActionsHandled() {
    for (const UserAction& action : def_.actions) {
      const std::string event = absl::StrCat("action.", action.name);
      bool handled = false;
      for (const HandlerDef& h : def_.handlers) {
        handled = handled || std::find(h.on.begin(), h.on.end(), event) != h.on.end();
      }
      if (!handled) {
        return At{&def_.file, YAML::Node(), action.line, absl::StrCat("actions.", action.name)}
            .Error(absl::StrCat("no handler is on '", event, "'"));
      }
    }
    return absl::OkStatus();
  }

  ServiceDefinition& def_;
  const std::string shared_;
};

// ---------------------------------------------------------------------------------------------
// model.yaml.

class ModelReader {
 public:
  explicit ModelReader(Model& model) : model_(model) {}

  absl::Status Read() {
    ASSIGN_OR_RETURN(YAML::Node root, ParseYamlFile(model_.file));
    const At top{&model_.file, root, 1, ""};
    if (!root.IsMap()) {
      return top.Error(absl::StrCat("expected a map of model fields, got ", Describe(root)));
    }
    ASSIGN_OR_RETURN(Fields f, Fields::Read(top, {"description", "interfaces", "hosts", "services",
                                                  "relations"}));
    ASSIGN_OR_RETURN(model_.description, ReadText(f.Get("description")));
    const fs::path base = fs::path(model_.file).parent_path();
    if (const At* at = f.Get("interfaces")) {
      ASSIGN_OR_RETURN(std::string dir, ReadString(*at));
      model_.interfaces_dir = (base / dir).lexically_normal().string();
      std::error_code ec;
      if (!fs::is_directory(model_.interfaces_dir, ec)) {
        return at->Error(absl::StrCat("'", model_.interfaces_dir, "' is not a directory"));
      }
    }
    if (const At* at = f.Get("hosts")) RETURN_IF_ERROR(ReadHosts(*at));
    ASSIGN_OR_RETURN(const At* services, f.Require("services"));
    RETURN_IF_ERROR(ReadServices(*services, base));
    if (const At* at = f.Get("relations")) RETURN_IF_ERROR(ReadRelations(*at));
    return absl::OkStatus();
  }

 private:
  absl::Status ReadHosts(const At& at) {
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    for (const auto& [name, host_at] : entries) {
      RETURN_IF_ERROR(CheckName(host_at, name, NameRule::kService, "host name"));
      if (name == "local") {
        return host_at.Error("'local' is the parleyd `parley up` starts; it is not declared");
      }
      ModelHost host;
      host.name = name;
      host.line = host_at.line;
      ASSIGN_OR_RETURN(Fields f, Fields::Read(host_at, {"address", "model_root"}));
      ASSIGN_OR_RETURN(const At* address, f.Require("address"));
      ASSIGN_OR_RETURN(host.address, ReadString(*address));
      const size_t colon = host.address.rfind(':');
      int port = 0;
      if (colon == std::string::npos || colon == 0 ||
          !absl::SimpleAtoi(host.address.substr(colon + 1), &port) || port < 1 || port > 65535) {
        return address->Error(
            absl::StrCat("expected <host>:<port> of a parleyd, got '", host.address, "'"));
      }
      if (const At* root = f.Get("model_root")) {
        ASSIGN_OR_RETURN(host.model_root, ReadString(*root));
        if (!fs::path(host.model_root).is_absolute()) {
          return root->Error(
              absl::StrCat("expected an absolute path, got '", host.model_root, "'"));
        }
      }
      model_.hosts.push_back(std::move(host));
    }
    return absl::OkStatus();
  }

  absl::Status ReadServices(const At& at, const fs::path& base) {
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    if (entries.empty()) return at.Error("a model has at least one service");
    for (const auto& [name, svc_at] : entries) {
      RETURN_IF_ERROR(CheckName(svc_at, name, NameRule::kService, "service name"));
      ModelService svc;
      svc.name = name;
      svc.line = svc_at.line;
      ASSIGN_OR_RETURN(Fields f, Fields::Read(svc_at, {"definition", "units", "config", "host"}));
      if (const At* host = f.Get("host")) {
        ASSIGN_OR_RETURN(svc.host, ReadString(*host));
        if (svc.host != "local" && model_.FindHost(svc.host) == nullptr) {
          std::vector<std::string> names = {"local"};
          for (const auto& h : model_.hosts) names.push_back(h.name);
          return host->Error(absl::StrCat("host '", svc.host, "' is not declared under hosts (",
                                          absl::StrJoin(names, ", "), ")"));
        }
      }
      ASSIGN_OR_RETURN(const At* definition, f.Require("definition"));
      ASSIGN_OR_RETURN(svc.definition_path, ReadString(*definition));
      svc.definition_dir = (base / svc.definition_path).lexically_normal().string();
      auto def = LoadServiceDefinition(svc.definition_dir, model_.interfaces_dir);
      if (!def.ok()) {
        return absl::Status(
            def.status().code(),
            absl::StrCat(def.status().message(), " (the definition of ", definition->path, " at ",
                         model_.file, ":", definition->line, ")"));
      }
      svc.definition = std::move(*def);
      if (const At* units = f.Get("units")) {
        ASSIGN_OR_RETURN(int64_t n, ReadInt(*units, 1, 100000));
        svc.units = static_cast<int>(n);
      }
      if (const At* config = f.Get("config")) {
        ASSIGN_OR_RETURN(Entries values, MapEntries(*config));
        for (const auto& [key, value] : values) {
          const ConfigOption* opt = svc.definition.FindConfig(key);
          if (opt == nullptr) {
            return value.Error(absl::StrCat("'", key, "' is not a config option of definition '",
                                            svc.definition.name,
                                            "' (options: ", NamesOf(svc.definition.config), ")"));
          }
          ASSIGN_OR_RETURN(std::string text, ReadTyped(value, opt->type));
          svc.config.emplace(key, std::move(text));
        }
      }
      model_.services.push_back(std::move(svc));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::pair<RelationEnd, const EndpointDef*>> ReadEnd(const At& at) {
    ASSIGN_OR_RETURN(std::string text, ReadString(at));
    const size_t colon = text.find(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
      return at.Error(absl::StrCat("expected '<service>:<endpoint>', got '", text, "'"));
    }
    RelationEnd end{text.substr(0, colon), text.substr(colon + 1)};
    const ModelService* svc = model_.FindService(end.service);
    if (svc == nullptr) {
      return at.Error(absl::StrCat("service '", end.service, "' is not in this model (services: ",
                                   NamesOf(model_.services), ")"));
    }
    const EndpointDef* ep = svc->definition.FindEndpoint(end.endpoint);
    if (ep == nullptr) {
      return at.Error(absl::StrCat("service '", end.service, "' (definition '",
                                   svc->definition.name, "') has no endpoint '", end.endpoint,
                                   "' (endpoints: ", NamesOf(svc->definition.endpoints), ")"));
    }
    return std::make_pair(std::move(end), ep);
  }

  absl::Status ReadRelations(const At& at) {
    ASSIGN_OR_RETURN(std::vector<At> items, ReadItems(at, false));
    std::map<std::pair<std::string, std::string>, std::string> seen;
    for (const At& item : items) {
      if (!item.node.IsSequence() || item.node.size() != 2) {
        return item.Error(absl::StrCat("expected a pair [<service>:<endpoint>, ",
                                       "<service>:<endpoint>], got ", Describe(item.node)));
      }
      ASSIGN_OR_RETURN(std::vector<At> ends, ReadItems(item, false));
      ASSIGN_OR_RETURN(auto a, ReadEnd(ends[0]));
      ASSIGN_OR_RETURN(auto b, ReadEnd(ends[1]));
      const std::string a_name = absl::StrCat(a.first.service, ":", a.first.endpoint);
      const std::string b_name = absl::StrCat(b.first.service, ":", b.first.endpoint);
      const EndpointDef& ea = *a.second;
      const EndpointDef& eb = *b.second;
      if (ea.interface != eb.interface) {
        return item.Error(absl::StrCat(a_name, " has interface '", ea.interface, "' but ", b_name,
                                       " has interface '", eb.interface, "'"));
      }
      if (engine::RemoteRole(ea.role) != eb.role) {
        return item.Error(
            absl::StrCat(a_name, " (", engine::RoleName(ea.role), ") cannot relate to ", b_name,
                         " (", engine::RoleName(eb.role),
                         "): a relation joins provides to requires, or peers to peers"));
      }
      const InterfaceSchema& sa =
          model_.FindService(a.first.service)->definition.interfaces.at(ea.interface);
      const InterfaceSchema& sb =
          model_.FindService(b.first.service)->definition.interfaces.at(eb.interface);
      if (!sa.SameContract(sb)) {
        return item.Error(absl::StrCat(a_name, " and ", b_name, " both use interface '",
                                       ea.interface, "' but its schemas differ (", sa.file, " and ",
                                       sb.file, ")"));
      }
      const auto key = std::minmax(a_name, b_name);
      auto [first, inserted] = seen.emplace(key, item.path);
      if (!inserted) return item.Error(absl::StrCat("the same relation as ", first->second));
      model_.relations.push_back({std::move(a.first), std::move(b.first), item.line});
    }
    return absl::OkStatus();
  }

  Model& model_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public API.

absl::string_view ValueTypeName(ValueType type) {
  switch (type) {
    case ValueType::kString:
      return "string";
    case ValueType::kInt:
      return "int";
    case ValueType::kFloat:
      return "float";
    case ValueType::kBool:
      return "bool";
  }
  return "";
}

absl::Status CheckValue(ValueType type, absl::string_view text) {
  bool ok = true;
  const bool padded =
      !text.empty() && (absl::ascii_isspace(static_cast<unsigned char>(text[0])) ||
                        absl::ascii_isspace(static_cast<unsigned char>(text.back())));
  switch (type) {
    case ValueType::kString:
      return absl::OkStatus();
    case ValueType::kInt: {
      int64_t v = 0;
      ok = !padded && absl::SimpleAtoi(text, &v);
      break;
    }
    case ValueType::kFloat: {
      double v = 0;
      ok = !padded && absl::SimpleAtod(text, &v) && std::isfinite(v);
      break;
    }
    case ValueType::kBool:
      ok = text == "true" || text == "false";
      break;
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("expected ", Article(type), ", got '", text, "'"));
}

bool Template::IsLiteral() const {
  return std::all_of(parts.begin(), parts.end(),
                     [](const Part& p) { return p.kind == Part::Kind::kLiteral; });
}

absl::StatusOr<std::string> ExpandTemplate(
    const Template& t, const engine::RunContext& ctx,
    const std::map<std::string, std::string>& config_defaults) {
  std::string out;
  for (const Template::Part& p : t.parts) {
    auto fail = [&](absl::string_view why) {
      return absl::FailedPreconditionError(
          absl::StrCat("handler '", ctx.handler(), "': ", t.origin, ": '", RefText(p), "': ", why));
    };
    switch (p.kind) {
      case Template::Part::Kind::kLiteral:
        out += p.text;
        break;
      case Template::Part::Kind::kConfig: {
        std::optional<std::string> v = ctx.Config(p.text);
        if (!v) {
          auto it = config_defaults.find(p.text);
          if (it == config_defaults.end()) {
            return fail(absl::StrCat("config option '", p.text, "' has no value and no default"));
          }
          v = it->second;
        }
        out += *v;
        break;
      }
      case Template::Part::Kind::kFact: {
        std::optional<std::string> v = ctx.Value(p.text);
        if (!v) return fail(absl::StrCat("fact '", p.text, "' is not set"));
        out += *v;
        break;
      }
      case Template::Part::Kind::kEvent: {
        const auto& params = ctx.event().params();
        auto it = params.find(p.text);
        if (it == params.end()) {
          return fail(
              absl::StrCat("event '", ctx.event().name(), "' has no parameter '", p.text, "'"));
        }
        out += it->second;
        break;
      }
    }
  }
  return out;
}

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

absl::Status ValidateRelationData(const InterfaceSchema& schema, absl::string_view key,
                                  absl::string_view value, engine::Role publisher) {
  const KeySet& keys = schema.PublishedBy(publisher);
  const InterfaceKey* k = keys.Find(key);
  if (k == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("interface '", schema.name, "': the ",
                                                   SideName(publisher), " side publishes no key '",
                                                   key, "' (keys: ", KeyNames(keys), ")"));
  }
  absl::Status s = CheckValue(k->type, value);
  if (s.ok()) return s;
  return absl::InvalidArgumentError(
      absl::StrCat("interface '", schema.name, "': key '", key, "': ", s.message()));
}

absl::string_view ActionKindName(ActionKind kind) {
  switch (kind) {
    case ActionKind::kExec:
      return "exec";
    case ActionKind::kAnsible:
      return "ansible";
    case ActionKind::kContainer:
      return "container";
    case ActionKind::kHttp:
      return "http";
    case ActionKind::kBuiltin:
      return "builtin";
  }
  return "";
}

const ActionParam* UserAction::FindParam(absl::string_view name) const {
  for (const auto& p : params) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

namespace {
template <typename T>
const T* FindByName(const std::vector<T>& items, absl::string_view name) {
  for (const auto& i : items) {
    if (i.name == name) return &i;
  }
  return nullptr;
}
}  // namespace

const EndpointDef* ServiceDefinition::FindEndpoint(absl::string_view name) const {
  return FindByName(endpoints, name);
}
const ConfigOption* ServiceDefinition::FindConfig(absl::string_view name) const {
  return FindByName(config, name);
}
const UserAction* ServiceDefinition::FindAction(absl::string_view name) const {
  return FindByName(actions, name);
}
const EventDef* ServiceDefinition::FindEvent(absl::string_view name) const {
  return FindByName(events, name);
}
const InterfaceSchema* ServiceDefinition::InterfaceOf(absl::string_view endpoint) const {
  const EndpointDef* ep = FindEndpoint(endpoint);
  if (ep == nullptr) return nullptr;
  auto it = interfaces.find(ep->interface);
  return it == interfaces.end() ? nullptr : &it->second;
}

const ModelService* Model::FindService(absl::string_view name) const {
  return FindByName(services, name);
}

const ModelHost* Model::FindHost(absl::string_view name) const { return FindByName(hosts, name); }

absl::StatusOr<ServiceDefinition> LoadServiceDefinition(const std::string& dir,
                                                        const std::string& shared_interfaces_dir) {
  ServiceDefinition def;
  def.dir = dir;
  def.file = (fs::path(dir) / "service.yaml").string();
  try {
    RETURN_IF_ERROR(DefinitionReader(def, shared_interfaces_dir).Read());
  } catch (const YAML::Exception& e) {
    // Every node is checked before it is used; this is a bug, reported with the file.
    return absl::InternalError(absl::StrCat(def.file, ": unexpected YAML error: ", e.what()));
  }
  return def;
}

std::map<std::string, std::string> ConfigDefaults(const ServiceDefinition& def) {
  std::map<std::string, std::string> out;
  for (const auto& opt : def.config) {
    if (opt.default_value) out.emplace(opt.name, *opt.default_value);
  }
  return out;
}

absl::StatusOr<std::map<std::string, std::string>> ResolveActionParams(
    const ServiceDefinition& def, absl::string_view action,
    const std::map<std::string, std::string>& given) {
  const UserAction* a = def.FindAction(action);
  if (a == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("service definition '", def.name,
                                                   "' has no action '", action,
                                                   "' (actions: ", NamesOf(def.actions), ")"));
  }
  std::map<std::string, std::string> out;
  for (const auto& [name, value] : given) {
    const ActionParam* p = a->FindParam(name);
    if (p == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("action '", action, "': unknown parameter '",
                                                     name, "' (parameters: ", NamesOf(a->params),
                                                     ")"));
    }
    absl::Status s = CheckValue(p->type, value);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("action '", action, "': parameter '", name, "': ", s.message()));
    }
    out.emplace(name, value);
  }
  for (const ActionParam& p : a->params) {
    if (out.contains(p.name)) continue;
    if (p.required) {
      return absl::InvalidArgumentError(
          absl::StrCat("action '", action, "': parameter '", p.name, "' is required"));
    }
    if (p.default_value) out.emplace(p.name, *p.default_value);
  }
  return out;
}

absl::StatusOr<Model> LoadModel(const std::string& path) {
  Model model;
  model.file = path;
  try {
    RETURN_IF_ERROR(ModelReader(model).Read());
  } catch (const YAML::Exception& e) {
    return absl::InternalError(absl::StrCat(path, ": unexpected YAML error: ", e.what()));
  }
  return model;
}

std::map<std::string, EndpointContract> EndpointContracts(const ServiceDefinition& def) {
  std::map<std::string, EndpointContract> contracts;
  for (const EndpointDef& ep : def.endpoints) {
    if (const InterfaceSchema* schema = def.InterfaceOf(ep.name)) {
      contracts.emplace(ep.name, EndpointContract{ep.role, *schema});
    }
  }
  return contracts;
}

absl::StatusOr<engine::ServiceSpec> BuildSpec(const ServiceDefinition& def, absl::string_view unit,
                                              ActionFactory& factory) {
  const size_t slash = unit.find('/');
  const absl::string_view service = unit.substr(0, slash);
  const absl::string_view number =
      slash == absl::string_view::npos ? absl::string_view() : unit.substr(slash + 1);
  if (!Matches(service, NameRule::kService) || number.empty() ||
      !std::all_of(number.begin(), number.end(), absl::ascii_isdigit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unit name '", unit, "' must be <service>/<number>, the service being ",
                     RuleText(NameRule::kService)));
  }
  engine::ServiceSpec spec;
  spec.service = std::string(service);
  spec.unit = std::string(unit);
  for (const EndpointDef& ep : def.endpoints) {
    const InterfaceSchema* schema = def.InterfaceOf(ep.name);
    if (schema == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(def.file, ":", ep.line, ": endpoint '",
                                                     ep.name, "': interface '", ep.interface,
                                                     "' was not loaded"));
    }
    spec.endpoints.push_back({ep.name, ep.role, ep.interface,
                              schema->PublishedBy(engine::RemoteRole(ep.role)).Required()});
  }
  for (const HandlerDef& h : def.handlers) {
    ASSIGN_OR_RETURN(std::unique_ptr<engine::Action> action, factory.Make(def, h));
    spec.handlers.push_back({h.name, h.when, h.when_not, h.on, std::move(action)});
  }
  spec.declares_config = true;
  for (const ConfigOption& option : def.config) {
    spec.config_options.push_back(
        {option.name, [type = option.type, name = option.name](absl::string_view value) {
           absl::Status s = CheckValue(type, value);
           if (s.ok()) return s;
           return absl::InvalidArgumentError(
               absl::StrCat("config option '", name, "': ", s.message()));
         }});
  }
  // The agent checks actions fired through its API with the function the CLI uses.
  spec.declares_actions = true;
  if (!def.actions.empty()) {
    auto shared = std::make_shared<const ServiceDefinition>(def);
    for (const UserAction& action : def.actions) {
      spec.actions.push_back(
          {absl::StrCat("action.", action.name),
           [shared, name = action.name](const std::map<std::string, std::string>& given) {
             return ResolveActionParams(*shared, name, given);
           }});
    }
  }
  return spec;
}

}  // namespace parley::services
