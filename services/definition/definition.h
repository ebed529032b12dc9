#pragma once

// Service definitions and models, as users write them in YAML (docs/service-definitions.md).
//
// A service definition is a directory: `service.yaml` (endpoints, config options, handlers and the
// actions they run, actions users invoke) with the files its actions use, and
// `interfaces/<name>.yaml` for interface schemas of its own. Interfaces shared by several
// definitions live in a directory of their own. A model (`model.yaml`) says which services to run
// from which definitions, with how many units and which config, and which endpoints to relate.
//
// Loading checks everything that can be checked without running anything. The first problem found
// is returned as INVALID_ARGUMENT "<file>:<line>: <field>: <what is wrong, what was expected>",
// lines counted from 1. Loading only reads files: a caller that applies a model once LoadModel
// succeeded never half-applies one.
//
// BuildSpec turns a definition into the engine's ServiceSpec for one unit; an ActionFactory makes
// each handler's engine::Action. The backends (services/backends/, one folder per action kind,
// builtin included) implement it.
//
// Everything here is plain data or stateless; thread-compatible.

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "engine/spec.h"
#include "parley/v1/kb.pb.h"

namespace parley::services {

// Types of config options, action parameters and relation data keys. Values are strings in the
// engine; these say which strings are valid.
enum class ValueType { kString, kInt, kFloat, kBool };

absl::string_view ValueTypeName(ValueType type);
// Checks that `text` is a value of `type`: int is a decimal 64-bit integer, float a decimal or
// exponent number (an int is a float too), bool is `true` or `false`; any text is a string.
absl::Status CheckValue(ValueType type, absl::string_view text);

// Text with {{config.<option>}}, {{fact.<name>}} and {{event.<param>}} references, parsed and
// checked when the definition is loaded and expanded when the handler runs. Expansion only
// substitutes text: nothing is evaluated and no shell is involved.
struct Template {
  struct Part {
    enum class Kind { kLiteral, kConfig, kFact, kEvent };
    Kind kind = Kind::kLiteral;
    // The literal text, or the name referred to.
    std::string text;
  };
  std::string source;
  std::vector<Part> parts;
  // Where it was written, "<file>:<line>", for errors at run time.
  std::string origin;

  bool IsLiteral() const;
};

// Expands `t` for the handler run `ctx`: config options take the run's config value, else the
// default in `config_defaults`; facts must be set; event parameters must be present. A reference
// that cannot be resolved is an error naming the handler and where the template was written.
absl::StatusOr<std::string> ExpandTemplate(
    const Template& t, const engine::RunContext& ctx,
    const std::map<std::string, std::string>& config_defaults);

// ---------------------------------------------------------------------------------------------
// Interfaces.

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

// The contract both sides of a relation are checked against. `provider` is what the providing
// side publishes (and every unit of a peer relation); `requirer` what the requiring side
// publishes (nothing, unless the schema says so).
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

// Checks one key/value of relation data published by the side with `publisher` role: the key must
// be declared by the interface for that side and the value must have the declared type.
absl::Status ValidateRelationData(const InterfaceSchema& schema, absl::string_view key,
                                  absl::string_view value,
                                  engine::Role publisher = engine::Role::kProvides);

// ---------------------------------------------------------------------------------------------
// Actions handlers run.

enum class ActionKind { kExec, kAnsible, kContainer, kHttp, kBuiltin };
absl::string_view ActionKindName(ActionKind kind);

// Runs a program. `command[0]` is literal: a path relative to the definition directory when it
// contains '/', otherwise a program looked up in PATH. Arguments are passed as they are, never
// through a shell.
struct ExecAction {
  std::vector<Template> command;
  std::map<std::string, Template> env;
};

// Runs an Ansible playbook against the unit's host.
struct AnsibleAction {
  // Relative to the definition directory; checked to exist when loaded.
  std::string playbook;
  // Extra variables passed to the playbook.
  std::map<std::string, Template> vars;
};

// Runs a container. Relation data reaches it through templates such as
// {{fact.db.remote.host}} in `env`.
struct ContainerAction {
  // What the handler converges the unit's container to (services/container_action.h).
  enum class State { kRunning, kStopped, kAbsent };
  State state = State::kRunning;
  Template image;
  // Overrides the image's command when not empty.
  std::vector<Template> command;
  std::map<std::string, Template> env;
  // "<host>:<container>" or "<port>" (same on both sides).
  std::vector<Template> ports;
};

// Where an HTTP action's response fact takes its value from.
struct ResponseFact {
  enum class Source { kStatus, kBody, kHeader, kJson };
  std::string fact;
  Source source = Source::kBody;
  // kHeader: the header's name; kJson: a JSON pointer (RFC 6901), "" for the whole document.
  std::string arg;
  int line = 0;
};

// Makes one HTTP request.
struct HttpAction {
  std::string method = "GET";
  Template url;
  std::optional<Template> body;
  std::map<std::string, Template> headers;
  // Statuses that count as success; empty: any 2xx.
  std::vector<int> expect;
  // Facts set from the response, in declaration order.
  std::vector<ResponseFact> facts;
};

// One step of a builtin action.
struct BuiltinStep {
  enum class Kind { kSet, kClear, kRelationSet, kStatus, kFire, kOutput };
  Kind kind = Kind::kSet;
  // kSet / kClear: the fact; kRelationSet: the endpoint; kFire: the event; kOutput: the key.
  std::string name;
  // kRelationSet: the relation data key.
  std::string key;
  // kSet: the fact's value; kRelationSet: the data value; kStatus: the message; kOutput: the
  // reported value.
  Template value;
  // kStatus.
  v1::WorkloadState state = v1::WORKLOAD_STATE_UNSPECIFIED;
  int line = 0;
};

// Changes facts, relation data and status without any process.
struct BuiltinAction {
  std::vector<BuiltinStep> steps;
};

struct ActionSpec {
  // The alternatives are in ActionKind order.
  std::variant<ExecAction, AnsibleAction, ContainerAction, HttpAction, BuiltinAction> detail;
  int line = 0;

  ActionKind kind() const { return static_cast<ActionKind>(detail.index()); }
};

// ---------------------------------------------------------------------------------------------
// Service definitions.

struct EndpointDef {
  std::string name;
  engine::Role role = engine::Role::kProvides;
  std::string interface;
  std::string description;
  int line = 0;
};

struct ConfigOption {
  std::string name;
  ValueType type = ValueType::kString;
  // Normalized text of the default; none: the option has no value until the model gives one.
  std::optional<std::string> default_value;
  std::string description;
  int line = 0;
};

struct HandlerDef {
  std::string name;
  std::string description;
  std::vector<std::string> when;
  std::vector<std::string> when_not;
  std::vector<std::string> on;
  // How long the action may take (backends that run something enforce it).
  absl::Duration timeout = absl::Seconds(60);
  ActionSpec action;
  int line = 0;
};

struct ActionParam {
  std::string name;
  ValueType type = ValueType::kString;
  bool required = false;
  std::optional<std::string> default_value;
  std::string description;
  int line = 0;
};

// An action users invoke (`action.<name>` events carry its parameters).
struct UserAction {
  std::string name;
  std::string description;
  std::vector<ActionParam> params;
  int line = 0;

  const ActionParam* FindParam(absl::string_view name) const;
};

// An event handlers fire for other handlers.
struct EventDef {
  std::string name;
  std::string description;
  int line = 0;
};

struct ServiceDefinition {
  // The definition directory and its service.yaml, as named to the loader.
  std::string dir;
  std::string file;
  std::string name;
  std::string description;
  std::vector<EndpointDef> endpoints;
  // Every interface an endpoint names, by name.
  std::map<std::string, InterfaceSchema> interfaces;
  std::vector<ConfigOption> config;
  std::vector<HandlerDef> handlers;
  std::vector<UserAction> actions;
  std::vector<EventDef> events;

  const EndpointDef* FindEndpoint(absl::string_view name) const;
  const ConfigOption* FindConfig(absl::string_view name) const;
  const UserAction* FindAction(absl::string_view name) const;
  const EventDef* FindEvent(absl::string_view name) const;
  // The schema of `endpoint`'s interface (nullptr for an unknown endpoint).
  const InterfaceSchema* InterfaceOf(absl::string_view endpoint) const;
};

// Reads `dir`/service.yaml. Interfaces are read from `dir`/interfaces/<name>.yaml and, when
// `shared_interfaces_dir` is not empty, from `shared_interfaces_dir`/<name>.yaml; an interface in
// both must be the same contract in both.
absl::StatusOr<ServiceDefinition> LoadServiceDefinition(
    const std::string& dir, const std::string& shared_interfaces_dir = "");

// The defaults of the options that have one.
std::map<std::string, std::string> ConfigDefaults(const ServiceDefinition& def);

// Checks the parameters `given` to user action `action` and returns them with defaults filled in.
absl::StatusOr<std::map<std::string, std::string>> ResolveActionParams(
    const ServiceDefinition& def, absl::string_view action,
    const std::map<std::string, std::string>& given);

// ---------------------------------------------------------------------------------------------
// Models.

struct ModelService {
  std::string name;
  // As written in the model, relative to the model file, and resolved.
  std::string definition_path;
  std::string definition_dir;
  int units = 1;
  // Config values set by the model (normalized text), checked against the definition's options.
  std::map<std::string, std::string> config;
  ServiceDefinition definition;
  // Where its units run: "local" (the parleyd `parley up` starts) or a name under `hosts`.
  std::string host = "local";
  int line = 0;
};

struct RelationEnd {
  std::string service;
  std::string endpoint;
};

struct ModelRelation {
  RelationEnd a;
  RelationEnd b;
  int line = 0;
};

// A machine (a parleyd) the model places services on, besides the local one `parley up` starts.
struct ModelHost {
  std::string name;
  // host:port of its parleyd.
  std::string address;
  // Where the model's directory is on that machine; empty: the same path as here.
  std::string model_root;
  int line = 0;
};

struct Model {
  std::string file;
  std::string description;
  // The shared interfaces directory (resolved), empty when the model names none.
  std::string interfaces_dir;
  // In declaration order.
  std::vector<ModelService> services;
  std::vector<ModelRelation> relations;
  // Hosts other than "local", in declaration order.
  std::vector<ModelHost> hosts;

  const ModelService* FindService(absl::string_view name) const;
  const ModelHost* FindHost(absl::string_view name) const;
};

// Reads a model and every definition it names; checks config values, relation ends, interfaces
// and roles.
absl::StatusOr<Model> LoadModel(const std::string& path);

// ---------------------------------------------------------------------------------------------
// From definitions to engine specs.

// Makes the engine::Action of a handler. Implementations for the kinds they do not support return
// UNIMPLEMENTED.
class ActionFactory {
 public:
  virtual ~ActionFactory() = default;
  // `def` and `handler` may be destroyed once BuildSpec returns: the action keeps copies of what
  // it needs.
  virtual absl::StatusOr<std::unique_ptr<engine::Action>> Make(const ServiceDefinition& def,
                                                               const HandlerDef& handler) = 0;
};

// What an endpoint's relation data must satisfy: the endpoint's role and its interface's schema.
// Backends check every relation-set against it (ValidateRelationData).
struct EndpointContract {
  engine::Role role;
  InterfaceSchema schema;
};

// The contract of every endpoint of `def` whose interface is known, by endpoint name.
std::map<std::string, EndpointContract> EndpointContracts(const ServiceDefinition& def);

// The spec of unit `unit` ("<service>/<number>") of a service built from `def`. Endpoint
// required_keys are the required keys of the data the remote side publishes.
absl::StatusOr<engine::ServiceSpec> BuildSpec(const ServiceDefinition& def, absl::string_view unit,
                                              ActionFactory& factory);

}  // namespace parley::services
