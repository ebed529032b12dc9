// Reading service.yaml: the service's fields, endpoints (and the interfaces they name), config
// options, user actions, events and handlers; each handler's action is read by action_reader.cc.

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/spec.h"
#include "services/coord/leadership.h"
#include "services/definition/action_reader.h"
#include "services/definition/health_reader.h"
#include "services/definition/names.h"
#include "services/definition/service.h"
#include "services/definition/yaml_fields.h"

namespace parley::services {
namespace definition_internal {
namespace {

namespace fs = std::filesystem;

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
    ASSIGN_OR_RETURN(Fields f, Fields::Read(top, {"name", "description", "user", "provides",
                                                  "requires", "peers", "config", "handlers",
                                                  "actions", "events", "leadership", "health"}));
    ASSIGN_OR_RETURN(const At* name, f.Require("name"));
    ASSIGN_OR_RETURN(def_.name, ReadName(*name, NameRule::kService, "service name"));
    ASSIGN_OR_RETURN(def_.description, ReadText(f.Get("description")));
    if (const At* at = f.Get("user")) RETURN_IF_ERROR(ReadUser(*at));
    if (const At* at = f.Get("leadership")) RETURN_IF_ERROR(ReadLeadership(*at));
    // Sections are read in dependency order whatever their order in the file: handlers refer to
    // endpoints, interfaces, options, actions and events.
    for (auto [key, role] : {std::pair{"provides", engine::Role::kProvides},
                             std::pair{"requires", engine::Role::kRequires},
                             std::pair{"peers", engine::Role::kPeers}}) {
      if (const At* at = f.Get(key)) RETURN_IF_ERROR(ReadEndpoints(*at, role));
    }
    if (const At* at = f.Get("config")) RETURN_IF_ERROR(ReadConfig(*at));
    if (const At* at = f.Get("health")) RETURN_IF_ERROR(ReadHealth(*at, def_));
    if (const At* at = f.Get("actions")) RETURN_IF_ERROR(ReadActions(*at));
    if (const At* at = f.Get("events")) RETURN_IF_ERROR(ReadEventSection(*at));
    if (const At* at = f.Get("handlers")) RETURN_IF_ERROR(ReadHandlers(*at));
    RETURN_IF_ERROR(CheckLeadershipDeclared());
    return CheckActionsHandled();
  }

 private:
  // A user name as useradd takes it: letters, digits, '_', '-' and '.', not starting with '-' or
  // a digit (a uid is not a name), at most 32 characters.
  absl::Status ReadUser(const At& at) {
    ASSIGN_OR_RETURN(std::string user, ReadString(at));
    bool ok = !user.empty() && user.size() <= 32 && user[0] != '-' &&
              !absl::ascii_isdigit(static_cast<unsigned char>(user[0]));
    for (char c : user) {
      ok = ok &&
           (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.');
    }
    if (!ok) {
      return at.Error(absl::StrCat("'", user,
                                   "' is not a user name (letters, digits, '_', '-' and '.', "
                                   "starting with a letter or '_', at most 32)"));
    }
    def_.user = std::move(user);
    def_.user_line = at.line;
    return absl::OkStatus();
  }

  absl::Status ReadEndpoints(const At& at, engine::Role role) {
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    for (const auto& [name, ep_at] : entries) {
      RETURN_IF_ERROR(CheckName(ep_at, name, NameRule::kIdentifier, "endpoint name"));
      if (IsInternalNamespace(name)) {
        return ep_at.Error(
            absl::StrCat("endpoint name '", name,
                         "' is reserved for internal events (config, timer, file, action and "
                         "workload are)"));
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
                                                 "dying", "timeout", "action"}));
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
    if (const At* dying = f.Get("dying")) {
      ASSIGN_OR_RETURN(bool runs, ReadBool(*dying));
      if (!runs && std::find(h.when.begin(), h.when.end(), engine::kDyingFact) != h.when.end()) {
        return dying->Error(
            "'dying: false' contradicts 'when: [dying]': the fact is set only while the unit is "
            "dying");
      }
      h.while_dying = runs;
    }
    if (const At* timeout = f.Get("timeout")) {
      ASSIGN_OR_RETURN(h.timeout, ReadDuration(*timeout));
    }
    ASSIGN_OR_RETURN(const At* action, f.Require("action"));
    return ReadHandlerAction(def_, *action, h);
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
    if (fact == engine::kWorkloadHealthyFact && def_.health.empty()) {
      return "is set by the health probes, and this service declares none (health:)";
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
      if (prefix == "leader") {
        if (rest != "elected" && rest != "changed") {
          return "is not an event: the leadership events are leader.elected and leader.changed";
        }
        if (def_.leadership) return "";
        return "is a leadership event, but the service declares no leadership (add "
               "`leadership: true`)";
      }
      if (prefix == "workload") {
        if (event != engine::kWorkloadHealthyEvent && event != engine::kWorkloadUnhealthyEvent) {
          return "is not an event: the workload's events are workload.healthy and "
                 "workload.unhealthy";
        }
        if (def_.health.empty()) {
          return "is fired by the health probes, and this service declares none (health:)";
        }
        return "";
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
        "workload.healthy|unhealthy, "
        "<endpoint>.joined|changed|departed|broken or an event declared under events (events: ",
        NamesOf(def_.events), ")");
  }

  // `leadership: true`, or a map of the lease settings (which implies it).
  absl::Status ReadLeadership(const At& at) {
    def_.leadership_line = at.line;
    if (!at.node.IsMap()) {
      ASSIGN_OR_RETURN(def_.leadership, ReadBool(at));
      return absl::OkStatus();
    }
    def_.leadership = true;
    ASSIGN_OR_RETURN(Fields f,
                     Fields::Read(at, {"lease_ttl", "leading_interval", "unhealthy_grace"}));
    if (const At* ttl = f.Get("lease_ttl")) {
      ASSIGN_OR_RETURN(def_.lease_ttl, ReadDuration(*ttl));
    }
    if (const At* leading = f.Get("leading_interval")) {
      ASSIGN_OR_RETURN(def_.leading_interval, ReadDuration(*leading));
    }
    if (const At* grace = f.Get("unhealthy_grace")) {
      ASSIGN_OR_RETURN(def_.unhealthy_grace, ReadDuration(*grace));
    }
    absl::Status timing = coord::ValidateLeaseTiming(def_.lease_ttl, def_.leading_interval);
    if (!timing.ok()) return at.Error(timing.message());
    return absl::OkStatus();
  }

  // A handler that waits for the leadership events or facts needs the service to have a leader.
  absl::Status CheckLeadershipDeclared() {
    if (def_.leadership) return absl::OkStatus();
    for (const HandlerDef& h : def_.handlers) {
      for (const auto* names : {&h.on, &h.when, &h.when_not}) {
        for (const std::string& n : *names) {
          if (n == engine::kLeaderFact || absl::StartsWith(n, "leader.")) {
            return At{&def_.file, YAML::Node(), h.line, absl::StrCat("handlers.", h.name)}.Error(
                absl::StrCat("names '", n,
                             "', but the service declares no leadership (add `leadership: true`)"));
          }
        }
      }
    }
    return absl::OkStatus();
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

}  // namespace
}  // namespace definition_internal

absl::StatusOr<ServiceDefinition> LoadServiceDefinition(const std::string& dir,
                                                        const std::string& shared_interfaces_dir) {
  ServiceDefinition def;
  def.dir = dir;
  def.file = (std::filesystem::path(dir) / "service.yaml").string();
  try {
    RETURN_IF_ERROR(definition_internal::DefinitionReader(def, shared_interfaces_dir).Read());
  } catch (const YAML::Exception& e) {
    // Every node is checked before it is used; this is a bug, reported with the file.
    return absl::InternalError(absl::StrCat(def.file, ": unexpected YAML error: ", e.what()));
  }
  return def;
}

}  // namespace parley::services
