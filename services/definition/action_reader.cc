#include "services/definition/action_reader.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "services/definition/names.h"

namespace parley::services::definition_internal {
namespace {

namespace fs = std::filesystem;

bool IsPort(absl::string_view s) {
  int port = 0;
  return !s.empty() && std::all_of(s.begin(), s.end(), absl::ascii_isdigit) &&
         absl::SimpleAtoi(s, &port) && port >= 1 && port <= 65535;
}

bool IsPortMapping(absl::string_view s) {
  const size_t colon = s.find(':');
  if (colon == absl::string_view::npos) return IsPort(s);
  return IsPort(s.substr(0, colon)) && IsPort(s.substr(colon + 1));
}

class ActionReader {
 public:
  explicit ActionReader(const ServiceDefinition& def) : def_(def) {}

  absl::Status Read(const At& at, HandlerDef& h) {
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

 private:
  absl::StatusOr<Template> ReadTemplate(const At& at, const HandlerDef& h) {
    ASSIGN_OR_RETURN(std::string text, ReadString(at));
    auto parsed = ParseTemplate(text, absl::StrCat(def_.file, ":", at.line));
    if (!parsed.ok()) return at.Error(parsed.status().message());
    Template t = std::move(*parsed);
    for (const Template::Part& p : t.parts) {
      if (std::string why = RefProblem(p, h); !why.empty()) {
        return at.Error(absl::StrCat("'", ReferenceText(p), "' ", why));
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
        "relation-unset: {endpoint, key}, "
        "status: {state, message}, fire: <event>, output: <key>=<value> or retry-later: <duration>";
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
    if (op == "retry-later") {
      step.kind = BuiltinStep::Kind::kRetryLater;
      ASSIGN_OR_RETURN(step.delay, ReadDuration(value));
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
    if (op == "relation-set" || op == "relation-unset") {
      const bool unset = op == "relation-unset";
      step.kind = unset ? BuiltinStep::Kind::kRelationUnset : BuiltinStep::Kind::kRelationSet;
      const std::vector<absl::string_view> allowed =
          unset ? std::vector<absl::string_view>{"endpoint", "key"}
                : std::vector<absl::string_view>{"endpoint", "key", "value"};
      ASSIGN_OR_RETURN(Fields f, Fields::Read(value, allowed));
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
      if (unset) return step;
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

  std::string EndpointList() const { return NamesOf(def_.endpoints); }

  const ServiceDefinition& def_;
};

}  // namespace

absl::Status ReadHandlerAction(const ServiceDefinition& def, const At& at, HandlerDef& h) {
  return ActionReader(def).Read(at, h);
}

}  // namespace parley::services::definition_internal
