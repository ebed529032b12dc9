#pragma once

// The actions handlers run, one struct per kind, as read from a handler's `action` field
// (docs/service-definitions.md). Each kind's backend (services/backends/<kind>/) carries them out.

#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "parley/v1/kb.pb.h"
#include "services/definition/template.h"

namespace parley::services {

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
  // What the handler converges the unit's container to
  // (services/backends/container/container_action.h).
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
  enum class Kind {
    kSet,
    kClear,
    kRelationSet,
    kRelationUnset,
    kStatus,
    kFire,
    kOutput,
    kRetryLater
  };
  Kind kind = Kind::kSet;
  // kSet / kClear: the fact; kRelationSet / kRelationUnset: the endpoint; kFire: the event;
  // kOutput: the key.
  std::string name;
  // kRelationSet / kRelationUnset: the relation data key.
  std::string key;
  // kSet: the fact's value; kRelationSet: the data value; kStatus: the message; kOutput: the
  // reported value.
  Template value;
  // kStatus.
  v1::WorkloadState state = v1::WORKLOAD_STATE_UNSPECIFIED;
  // kRetryLater: after how long the handler runs again (RunContext::RetryLater).
  absl::Duration delay = absl::ZeroDuration();
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

}  // namespace parley::services
