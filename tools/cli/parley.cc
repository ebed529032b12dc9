// parley: brings a model up on this machine and shows where it stands (docs/cli.md).
//
// The CLI reads model.yaml and the definitions it names, starts one parleyd for the model and
// asks it to host every unit, then relates the units and sets their config through the agent
// API. From then on the agents negotiate among themselves; the CLI only records in the model
// directory what it applied and where the agents are.
//
// Exit codes: 0 done; 1 failed; 2 bad command line or invalid model/definition/value; 3 `wait`
// (or `up`, `run`) timed out before the model settled.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "engine/trace_format.h"
#include "google/protobuf/util/json_util.h"
#include "kb/status_macros.h"
#include "services/definition.h"
#include "tools/cli/client.h"
#include "tools/cli/container_runtime.h"
#include "tools/cli/export_kubernetes.h"
#include "tools/cli/model_dir.h"
#include "tools/cli/pki.h"
#include "tools/cli/unit_host.h"

namespace parley::cli {
namespace {

namespace fs = std::filesystem;
using services::LoadModel;
using services::LoadServiceDefinition;
using services::Model;
using services::ModelService;

constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsage = 2;
constexpr int kTimedOut = 3;

// ---------------------------------------------------------------------------------------------
// Command line.

struct FlagSpec {
  std::string name;  // "--json", "-n"
  bool takes_value = false;
  std::string help;
};

struct Command {
  std::string name;
  std::string usage;  // arguments after the command name
  std::string summary;
  std::vector<FlagSpec> flags;
  int min_args = 0;
  int max_args = 0;  // -1: any number
};

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;

  bool Has(const std::string& f) const { return flags.contains(f); }
  std::string Get(const std::string& f, const std::string& fallback = "") const {
    auto it = flags.find(f);
    return it == flags.end() ? fallback : it->second;
  }
};

// Thrown nowhere: every failure is a Status turned into an exit code by Exit().
struct UsageError {
  std::string message;
};

const FlagSpec kTimeoutFlag = {"--timeout", true, "How long to wait (e.g. 90s, 5m)"};

const std::vector<Command>& Commands() {
  static const auto* commands = new std::vector<Command>{
      {"up",
       "MODEL",
       "Start the model on this machine, or apply what changed in it; waits until settled",
       {{"--no-wait", false, "Return once applied, without waiting to settle"},
        {"--plaintext", false, "A new model without TLS (default: mutual TLS from the model's CA)"},
        {"--runtime", true,
         "A new model's units each in a container: podman or docker (docs/deploy.md)"},
        {"--image", true, "With --runtime: the image (default localhost/parley:latest)"},
        kTimeoutFlag},
       1,
       1},
      {"down",
       "",
       "Stop every unit (fires stop) and the model's parleyd (or its containers)",
       {{"--purge", false,
         "Also delete the model directory (and containers, volumes, network): knowledge bases, "
         "unit state"}},
       0,
       0},
      {"status",
       "",
       "Services, units, relations",
       {{"--json", false, "Print JSON (v1.ModelStatus)"},
        {"--watch", false, "Redraw every second until interrupted"}},
       0,
       0},
      {"wait", "", "Wait until every unit is idle with nothing in flight", {kTimeoutFlag}, 0, 0},
      {"relate", "SERVICE:ENDPOINT SERVICE:ENDPOINT", "Relate two services' endpoints", {}, 2, 2},
      {"unrelate", "SERVICE:ENDPOINT SERVICE:ENDPOINT", "Remove a relation", {}, 2, 2},
      {"config",
       "SERVICE [KEY=VALUE ...]",
       "Show a service's config, or change it (KEY= resets to the default)",
       {},
       1,
       -1},
      {"add-unit",
       "SERVICE",
       "Add units to a service",
       {{"-n", true, "How many (default 1)"}},
       1,
       1},
      {"remove-unit", "UNIT...", "Stop units, depart their relations and remove them", {}, 1, -1},
      {"run",
       "UNIT ACTION [KEY=VALUE ...]",
       "Run a user action and print its output",
       {{"--no-wait", false, "Queue it and return"}, kTimeoutFlag},
       2,
       -1},
      {"logs",
       "",
       "Agents' log records",
       {{"-f", false, "Follow new records"},
        {"--unit", true, "Only this unit"},
        {"--level", true, "Minimum level: debug, info, warning, error"},
        {"--contains", true, "Only records containing this text"},
        {"-n", true, "How many past records (default all kept)"}},
       0,
       0},
      {"facts", "UNIT", "Facts set on a unit", {{"--json", false, "Print JSON"}}, 1, 1},
      {"relation-data",
       "UNIT ENDPOINT",
       "Relation data of a unit's endpoint",
       {{"--json", false, "Print JSON"}},
       2,
       2},
      {"trace",
       "UNIT",
       "A unit's newest runs, step by step",
       {{"--last", true, "How many (default 5)"}},
       1,
       1},
      {"metrics-config",
       "[MODEL]",
       "A Prometheus scrape config for the running model",
       {{"--interval", true, "Scrape and evaluation interval (default 15s)"},
        {"--rules", true, "Alert rules file to load (e.g. deploy/prometheus/alerts.yml)"},
        {"--name", true, "The model label (default: the model file's directory name)"}},
       0,
       1},
      {"cert",
       "NAME",
       "Issue a certificate from the model's CA for a parleyd on another host, or an operator",
       {{"--ip", true, "IP addresses it is reached at, comma-separated"},
        {"--dns", true, "DNS names it is reached at, comma-separated"},
        {"--operator", false,
         "For a person or program using the agent API (another CLI): may change the model and "
         "read agents' data; no --ip or --dns needed"},
        {"--out", true, "Directory for cert.pem, key.pem, ca.pem (default <model dir>/pki/NAME)"}},
       1,
       1},
      {"version", "", "Versions of parley and of the model's parleyd", {}, 0, 0},
      {"export",
       "kubernetes|compose MODEL",
       "Write the model as Kubernetes manifests or a compose project (docs/deploy.md)",
       {{"--image", true, "The image the units run (default parley:latest)"},
        {"--namespace", true, "kubernetes: put every resource in this namespace"},
        {"--storage", true, "kubernetes: each unit's volume claim (default 1Gi)"},
        {"-o", true, "kubernetes: a file instead of stdout; compose: the project directory"}},
       2,
       2},
      {"host-unit",
       "",
       "Run parleyd hosting one unit of an exported model (a pod's entry point)",
       {{"--plan", true, "The exported plan (default /etc/parley/plan/model.json)"},
        {"--unit", true, "The unit (default: from $POD_NAME or the host name, app-1 is app/1)"}},
       0,
       0},
      {"probe",
       "",
       "Exit 0 when the parleyd answers (and with --ready, its units are idle and related)",
       {{"--ready", false, "Readiness: idle, with every relation's remote units joined"},
        {"--address", true, "The parleyd (default 127.0.0.1:7000)"},
        {"--plan", true, "Ready also means every relation of this exported plan is there"}},
       0,
       0},
  };
  return *commands;
}

void PrintHelp() {
  std::printf(
      "parley: run a Parley model on this machine.\n\n"
      "Usage: parley [--model-dir DIR] COMMAND [ARGS] [FLAGS]\n\n"
      "The model directory (default $PARLEY_MODEL_DIR, else ./.parley) records what was applied\n"
      "and holds the model's parleyd state.\n\nCommands:\n");
  for (const Command& c : Commands()) {
    std::printf("  %-14s %s\n", c.name.c_str(), c.summary.c_str());
  }
  std::printf(
      "\nparley COMMAND --help shows a command's arguments and flags.\n"
      "Exit codes: 0 done, 1 failed, 2 bad usage or invalid input, 3 timed out.\n");
}

void PrintCommandHelp(const Command& c) {
  std::printf("Usage: parley %s %s\n\n%s.\n", c.name.c_str(), c.usage.c_str(), c.summary.c_str());
  if (!c.flags.empty()) std::printf("\nFlags:\n");
  for (const FlagSpec& f : c.flags) {
    const std::string name = f.takes_value ? f.name + " VALUE" : f.name;
    std::printf("  %-18s %s\n", name.c_str(), f.help.c_str());
  }
  std::printf("  %-18s %s\n", "--model-dir DIR", "The model directory");
}

absl::StatusOr<absl::Duration> ParseDuration(const std::string& text) {
  absl::Duration d;
  if (absl::ParseDuration(text, &d) && d > absl::ZeroDuration()) return d;
  double seconds = 0;
  if (absl::SimpleAtod(text, &seconds) && seconds > 0) return absl::Seconds(seconds);
  return absl::InvalidArgumentError(
      absl::StrCat("--timeout: expected a duration such as 90s or 5m, got '", text, "'"));
}

// "KEY=VALUE" arguments.
absl::StatusOr<std::map<std::string, std::string>> ParseAssignments(
    const std::vector<std::string>& items) {
  std::map<std::string, std::string> out;
  for (const std::string& item : items) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("expected KEY=VALUE, got '", item, "'"));
    }
    out[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Output.

class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render() const {
    std::vector<size_t> width;
    for (const auto& row : rows_) {
      for (size_t i = 0; i < row.size(); ++i) {
        if (width.size() <= i) width.push_back(0);
        width[i] = std::max(width[i], row[i].size());
      }
    }
    std::string out;
    for (const auto& row : rows_) {
      std::string line;
      for (size_t i = 0; i < row.size(); ++i) {
        line += row[i];
        if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
      }
      out += line + "\n";
    }
    return out;
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string WorkloadName(v1::WorkloadState s) {
  switch (s) {
    case v1::WORKLOAD_STATE_MAINTENANCE:
      return "maintenance";
    case v1::WORKLOAD_STATE_BLOCKED:
      return "blocked";
    case v1::WORKLOAD_STATE_WAITING:
      return "waiting";
    case v1::WORKLOAD_STATE_ACTIVE:
      return "active";
    case v1::WORKLOAD_STATE_ERROR:
      return "error";
    default:
      return "unknown";
  }
}

std::string AgentStateName(v1::AgentState s) {
  switch (s) {
    case v1::AGENT_STATE_IDLE:
      return "idle";
    case v1::AGENT_STATE_EXECUTING:
      return "executing";
    case v1::AGENT_STATE_ERROR:
      return "error";
    default:
      return "unknown";
  }
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &json, opts);
  return json;
}

// ---------------------------------------------------------------------------------------------
// The model as applied.

class Session {
 public:
  explicit Session(std::string model_dir) : dir_(std::move(model_dir)) {}

  ModelDir& dir() { return dir_; }
  v1::ModelState& state() { return state_; }

  absl::Status LoadState() {
    ASSIGN_OR_RETURN(state_, dir_.Load());
    UseRuntime();
    return dir_.UseTls(state_.tls());
  }
  // The container runtime the state records, or none.
  void UseRuntime() {
    runtime_.reset();
    if (!state_.runtime().engine().empty()) {
      runtime_ = std::make_unique<ContainerRuntime>(state_.runtime());
    }
  }
  ContainerRuntime* runtime() { return runtime_.get(); }
  absl::Status Save() { return dir_.Save(state_); }

  AgentClient& Client(const std::string& address) {
    auto& c = clients_[address];
    if (!c) c = std::make_unique<AgentClient>(address, dir_.credentials());
    return *c;
  }

  // A host of the model: "local" or one under `hosts`.
  const v1::HostRecord* FindHost(const std::string& name) const {
    if (name.empty() || name == "local") return &state_.host();
    for (const auto& h : state_.hosts()) {
      if (h.name() == name) return &h;
    }
    return nullptr;
  }

  // `path` (a definition or interfaces directory here) as the host of `svc` sees it.
  std::string OnHost(const v1::HostRecord& host, const std::string& path) const {
    if (host.model_root().empty() || path.empty()) return path;
    const fs::path base = fs::path(state_.model_file()).parent_path();
    return (fs::path(host.model_root()) / fs::path(path).lexically_relative(base)).string();
  }
  AgentClient& Host() { return Client(state_.host().address()); }
  // The local parleyd's identity; NOT_FOUND, without dialing, when the model never started one
  // (every service placed on other hosts).
  absl::StatusOr<v1::HostInfo> LocalHostInfo() {
    if (state_.host().address().empty()) {
      return absl::NotFoundError("no parleyd on this machine: the model's units run on its hosts");
    }
    return Host().Host();
  }

  v1::ServiceRecord* FindService(const std::string& name) {
    for (auto& s : *state_.mutable_services()) {
      if (s.name() == name) return &s;
    }
    return nullptr;
  }
  // The unit and the service it belongs to.
  std::pair<v1::ServiceRecord*, const v1::UnitRecord*> FindUnit(const std::string& unit) {
    for (auto& s : *state_.mutable_services()) {
      for (const auto& u : s.units()) {
        if (u.name() == unit) return {&s, &u};
      }
    }
    return {nullptr, nullptr};
  }
  absl::StatusOr<std::pair<v1::ServiceRecord*, const v1::UnitRecord*>> RequireUnit(
      const std::string& unit) {
    auto found = FindUnit(unit);
    if (found.second == nullptr) {
      std::vector<std::string> names;
      for (const auto& s : state_.services()) {
        for (const auto& u : s.units()) names.push_back(u.name());
      }
      return absl::NotFoundError(absl::StrCat(
          "no unit '", unit, "' in the model (units: ", absl::StrJoin(names, ", "), ")"));
    }
    return found;
  }
  std::vector<const v1::UnitRecord*> AllUnits() const {
    std::vector<const v1::UnitRecord*> out;
    for (const auto& s : state_.services()) {
      for (const auto& u : s.units()) out.push_back(&u);
    }
    return out;
  }

  // --- Changing the model ---

  absl::Status AddUnit(v1::ServiceRecord& svc) {
    const std::string unit = absl::StrCat(svc.name(), "/", svc.next_unit());
    v1::AddAgentRequest req;
    v1::AgentRecipe* r = req.mutable_recipe();
    r->set_agent(unit);
    const v1::HostRecord* host = FindHost(svc.host());
    if (host == nullptr) {
      return absl::NotFoundError(absl::StrCat("service ", svc.name(), " is placed on host '",
                                              svc.host(), "', which the model does not declare"));
    }
    r->set_definition_dir(OnHost(*host, svc.definition_dir()));
    r->set_interfaces_dir(OnHost(*host, state_.interfaces_dir()));
    *r->mutable_config() = svc.config();
    v1::AddAgentResponse resp;
    // Numbers are never reused, even for a unit whose start failed.
    svc.set_next_unit(svc.next_unit() + 1);
    RETURN_IF_ERROR(Save());
    // With a container runtime, the unit's own container is its host.
    std::string address = host->address(), container;
    if (runtime_ != nullptr) {
      container = runtime_->ContainerName(unit);
      ASSIGN_OR_RETURN(address, StartContainer(unit, container));
    }
    absl::Status added =
        Client(address).Call(&v1::Agent::Stub::AddAgent, req, &resp, absl::Seconds(60));
    if (!added.ok()) {
      if (!container.empty()) (void)runtime_->Remove(container);
      return added;
    }
    v1::UnitRecord* u = svc.add_units();
    u->set_name(unit);
    u->set_address(address);
    u->set_container(container);
    RETURN_IF_ERROR(Save());
    std::fprintf(stderr, "added %s\n", unit.c_str());
    return absl::OkStatus();
  }

  // Stops the unit, departs its relations, waits for the departures to be delivered, removes it.
  // `unit` is a copy: the record it names is deleted on the way.
  absl::Status RemoveUnit(std::string unit) {
    ASSIGN_OR_RETURN(auto found, RequireUnit(unit));
    const std::string container = found.second->container();
    if (!container.empty() && runtime_ != nullptr) {
      // Its stop handlers run in its container.
      absl::Status up = runtime_->Start(container);
      if (up.ok()) up = AwaitContainer(found.second->address(), container);
      if (!up.ok()) std::fprintf(stderr, "parley: %s\n", std::string(up.message()).c_str());
    }
    AgentClient& client = Client(found.second->address());
    absl::StatusOr<v1::AgentStatus> status = client.Status(unit);
    if (status.ok()) {
      v1::FireEventRequest stop;
      stop.set_agent(unit);
      stop.set_event("stop");
      v1::FireEventResponse fired;
      RETURN_IF_ERROR(client.Call(&v1::Agent::Stub::FireEvent, stop, &fired));
      for (const auto& rel : status->relations()) {
        v1::UnrelateRequest un;
        un.set_agent(unit);
        un.set_relation_id(rel.relation_id());
        v1::UnrelateResponse unresp;
        absl::Status s = client.Call(&v1::Agent::Stub::Unrelate, un, &unresp);
        if (!s.ok() && !absl::IsNotFound(s)) return s;
      }
      // The stop handlers ran and the remote sides acknowledged the departures.
      const absl::Time deadline = absl::Now() + absl::Seconds(60);
      while (true) {
        absl::StatusOr<v1::CheckIdleResponse> idle = client.CheckIdle(unit);
        if (!idle.ok()) return idle.status();
        if (idle->idle()) break;
        if (absl::Now() > deadline) {
          std::fprintf(stderr,
                       "parley: %s did not finish stopping within 60 s; removing it anyway "
                       "(see `parley status`, `parley logs --unit %s`)\n",
                       unit.c_str(), unit.c_str());
          break;
        }
        absl::SleepFor(absl::Milliseconds(100));
      }
      v1::RemoveAgentRequest req;
      req.set_agent(unit);
      v1::RemoveAgentResponse resp;
      RETURN_IF_ERROR(client.Call(&v1::Agent::Stub::RemoveAgent, req, &resp, absl::Seconds(60)));
    } else if (!container.empty()) {
      // Its container is removed with everything the agent kept.
      std::fprintf(stderr, "parley: %s did not answer (%s); removing its container anyway\n",
                   unit.c_str(), std::string(status.status().message()).c_str());
    } else if (!absl::IsNotFound(status.status())) {
      return status.status();
    }
    if (!container.empty() && runtime_ != nullptr) RETURN_IF_ERROR(runtime_->Remove(container));
    v1::ServiceRecord* svc = found.first;
    auto* units = svc->mutable_units();
    for (int i = 0; i < units->size(); ++i) {
      if (units->Get(i).name() == unit) {
        units->DeleteSubrange(i, 1);
        break;
      }
    }
    // Its service's last unit gone, the far ends of its relations have broken them (tombstones
    // under the old ids): a unit added later relates under new ids.
    if (svc->units_size() == 0) {
      for (auto& rel : *state_.mutable_relations()) {
        if (rel.a_service() != svc->name() && rel.b_service() != svc->name()) continue;
        state_.set_next_relation(state_.next_relation() + 1);
        const std::string old = rel.id();
        rel.set_id(absl::StrCat(old.substr(0, old.rfind('#')), "#", state_.next_relation()));
      }
    }
    RETURN_IF_ERROR(Save());
    std::fprintf(stderr, "removed %s\n", unit.c_str());
    return absl::OkStatus();
  }

  // Relates every unit pair of `rel` that is not related yet (relating is idempotent).
  absl::Status RelateUnits(const v1::RelationRecordState& rel) {
    v1::ServiceRecord* a = FindService(rel.a_service());
    v1::ServiceRecord* b = FindService(rel.b_service());
    if (a == nullptr || b == nullptr) return absl::OkStatus();
    const bool peers = rel.a_service() == rel.b_service() && rel.a_endpoint() == rel.b_endpoint();
    for (int i = 0; i < a->units_size(); ++i) {
      for (int j = peers ? i + 1 : 0; j < b->units_size(); ++j) {
        const v1::UnitRecord& ua = a->units(i);
        const v1::UnitRecord& ub = b->units(j);
        v1::RelateRequest req;
        req.set_agent(ua.name());
        req.set_relation_id(rel.id());
        req.set_endpoint(rel.a_endpoint());
        req.set_remote_agent(ub.name());
        req.set_remote_address(ub.address());
        req.set_remote_endpoint(rel.b_endpoint());
        v1::RelateResponse resp;
        RETURN_IF_ERROR(Client(ua.address()).Call(&v1::Agent::Stub::Relate, req, &resp));
      }
    }
    return absl::OkStatus();
  }

  absl::Status UnrelateUnits(const v1::RelationRecordState& rel) {
    for (const std::string& service : {rel.a_service(), rel.b_service()}) {
      v1::ServiceRecord* svc = FindService(service);
      if (svc == nullptr) continue;
      for (const auto& u : svc->units()) {
        v1::UnrelateRequest req;
        req.set_agent(u.name());
        req.set_relation_id(rel.id());
        v1::UnrelateResponse resp;
        absl::Status s = Client(u.address()).Call(&v1::Agent::Stub::Unrelate, req, &resp);
        // A side that learned of the relation only from a departure has nothing to unrelate.
        if (!s.ok() && !absl::IsNotFound(s)) return s;
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> AddRelation(const std::string& a_service, const std::string& a_ep,
                                          const std::string& b_service, const std::string& b_ep,
                                          const std::string& interface) {
    v1::RelationRecordState* rel = state_.add_relations();
    const int n = state_.next_relation() + 1;
    state_.set_next_relation(n);
    const bool peers = a_service == b_service && a_ep == b_ep;
    rel->set_id(peers ? absl::StrCat(a_service, ":", a_ep, "#", n)
                      : absl::StrCat(a_service, ":", a_ep, "-", b_service, ":", b_ep, "#", n));
    rel->set_a_service(a_service);
    rel->set_a_endpoint(a_ep);
    rel->set_b_service(b_service);
    rel->set_b_endpoint(b_ep);
    rel->set_interface(interface);
    RETURN_IF_ERROR(Save());
    return rel->id();
  }

  absl::Status DropRelation(const std::string& id) {
    auto* rels = state_.mutable_relations();
    for (int i = 0; i < rels->size(); ++i) {
      if (rels->Get(i).id() != id) continue;
      const v1::RelationRecordState rel = rels->Get(i);
      RETURN_IF_ERROR(UnrelateUnits(rel));
      rels->DeleteSubrange(i, 1);
      RETURN_IF_ERROR(Save());
      std::fprintf(stderr, "unrelated %s\n", id.c_str());
      return absl::OkStatus();
    }
    return absl::NotFoundError(absl::StrCat("no relation '", id, "'"));
  }

  // Sets config on every unit of `svc` so that it matches `want`.
  absl::Status ApplyConfig(v1::ServiceRecord& svc, const std::map<std::string, std::string>& want) {
    v1::SetConfigRequest req;
    for (const auto& [k, v] : want) {
      auto it = svc.config().find(k);
      if (it == svc.config().end() || it->second != v) (*req.mutable_set())[k] = v;
    }
    for (const auto& [k, v] : svc.config()) {
      if (!want.contains(k)) req.add_unset(k);
    }
    if (req.set().empty() && req.unset().empty()) return absl::OkStatus();
    const bool report = svc.units_size() > 0;
    for (const auto& u : svc.units()) {
      req.set_agent(u.name());
      v1::SetConfigResponse resp;
      RETURN_IF_ERROR(Client(u.address()).Call(&v1::Agent::Stub::SetConfig, req, &resp));
    }
    svc.mutable_config()->clear();
    for (const auto& [k, v] : want) (*svc.mutable_config())[k] = v;
    RETURN_IF_ERROR(Save());
    if (report) std::fprintf(stderr, "configured %s\n", svc.name().c_str());
    return absl::OkStatus();
  }

  // Waits until every unit is idle and nothing changed between two polls. Shows progress on
  // stderr; prints each unit's failures once. With `failed_settles`, a unit whose inbox head is
  // failing counts as settled (it will not get further before its retry).
  absl::Status Wait(absl::Duration timeout, bool failed_settles = false) {
    const absl::Time deadline = absl::Now() + timeout;
    std::map<std::string, uint64_t> last;
    std::map<std::string, std::string> reported;
    std::string shown;
    const bool tty = isatty(2);
    while (true) {
      size_t settled = 0;
      std::vector<std::string> pending;
      std::map<std::string, uint64_t> now;
      const auto units = AllUnits();
      for (const v1::UnitRecord* u : units) {
        absl::StatusOr<v1::CheckIdleResponse> idle = Client(u->address()).CheckIdle(u->name());
        if (!idle.ok()) return idle.status();
        now[u->name()] = idle->progress();
        auto it = last.find(u->name());
        if (idle->idle() && it != last.end() && it->second == idle->progress()) {
          ++settled;
        } else {
          pending.push_back(u->name());
        }
        if (!idle->idle()) {
          absl::StatusOr<v1::AgentStatus> st = Client(u->address()).Status(u->name());
          if (st.ok() && st->agent_state() == v1::AGENT_STATE_ERROR) {
            const std::string msg =
                absl::StrCat(u->name(), ": ", st->failure().event_name(), " failed (attempt ",
                             st->failure().attempt(), "): ", st->failure().message());
            if (reported[u->name()] != st->failure().message()) {
              reported[u->name()] = st->failure().message();
              std::fprintf(stderr, "%s%s\n", tty ? "\r\033[K" : "", msg.c_str());
            }
            if (failed_settles && it != last.end() && it->second == idle->progress()) {
              ++settled;
              pending.pop_back();
            }
          }
        }
      }
      const std::string line = absl::StrCat("settled ", settled, "/", units.size(), " units");
      if (line != shown) {
        std::fprintf(stderr, tty ? "\r\033[K%s" : "%s\n", line.c_str());
        shown = line;
      }
      if (settled == units.size()) {
        if (tty) std::fprintf(stderr, "\n");
        return absl::OkStatus();
      }
      if (absl::Now() > deadline) {
        if (tty) std::fprintf(stderr, "\n");
        return absl::DeadlineExceededError(
            absl::StrCat("not settled within ", absl::FormatDuration(timeout),
                         "; still busy: ", absl::StrJoin(pending, ", ")));
      }
      last = std::move(now);
      absl::SleepFor(absl::Milliseconds(150));
    }
  }

  // --- Containers (a model with a runtime) ---

  // Prepares the runtime for `up`: the image is there, the network exists (recorded), and every
  // unit's container runs and answers (a container stopped by `down` resumes from its KB).
  absl::Status StartRuntime() {
    RETURN_IF_ERROR(runtime_->CheckImage());
    RETURN_IF_ERROR(runtime_->EnsureNetwork());
    *state_.mutable_runtime() = runtime_->record();
    RETURN_IF_ERROR(Save());
    for (const v1::UnitRecord* u : AllUnits()) RETURN_IF_ERROR(runtime_->Start(u->container()));
    for (const v1::UnitRecord* u : AllUnits()) {
      RETURN_IF_ERROR(AwaitContainer(u->address(), u->container()));
    }
    return absl::OkStatus();
  }

  // Runs a new unit's container; returns the address its parleyd answers at.
  absl::StatusOr<std::string> StartContainer(const std::string& unit,
                                             const std::string& container) {
    std::set<std::string> used;
    for (const v1::UnitRecord* u : AllUnits()) {
      used.insert(u->address().substr(0, u->address().rfind(':')));
    }
    UnitContainer c;
    c.unit = unit;
    c.container = container;
    ASSIGN_OR_RETURN(c.ip, runtime_->AllocateIp(used));
    // Definitions and interfaces, at the paths recipes name; nested directories once.
    std::set<std::string> dirs = {fs::path(state_.model_file()).parent_path().string()};
    if (!state_.interfaces_dir().empty()) dirs.insert(state_.interfaces_dir());
    for (const auto& svc : state_.services()) dirs.insert(svc.definition_dir());
    for (const std::string& d : dirs) {
      const bool nested = std::any_of(dirs.begin(), dirs.end(), [&](const std::string& o) {
        return o != d && absl::StartsWith(d, o + "/");
      });
      if (!nested) c.mounts.push_back(d);
    }
    // What their symbolic links point at outside them (the webstack's bin/parley_unit.py ->
    // examples/lib), at the path the link names, so that it resolves in the container too.
    std::set<std::string> targets;
    for (const std::string& m : std::vector<std::string>(c.mounts)) {
      std::error_code ec;
      for (fs::recursive_directory_iterator it(m, ec), end; !ec && it != end; it.increment(ec)) {
        if (!it->is_symlink(ec)) continue;
        fs::path target = fs::read_symlink(it->path(), ec);
        if (ec) break;
        if (target.is_relative()) target = it->path().parent_path() / target;
        const std::string t = target.lexically_normal().string();
        const bool inside = std::any_of(
            c.mounts.begin(), c.mounts.end(),
            [&](const std::string& o) { return t == o || absl::StartsWith(t, o + "/"); });
        if (!inside && fs::exists(t)) targets.insert(t);
      }
    }
    for (const std::string& t : targets) c.mounts.push_back(t);
    if (state_.tls()) {
      ASSIGN_OR_RETURN(CertFiles files,
                       IssueCert(dir_.pki_dir(), container, CertRole::kHost, {c.ip}, {container}));
      c.tls_dir = files.dir;
    }
    // A container or volume left by an earlier model in this directory is not this unit's.
    RETURN_IF_ERROR(runtime_->Remove(container));
    RETURN_IF_ERROR(runtime_->Run(c));
    const std::string address = absl::StrCat(c.ip, ":", kContainerAgentPort);
    absl::Status up = AwaitContainer(address, container);
    if (!up.ok()) {
      (void)runtime_->Remove(container);
      return up;
    }
    std::fprintf(stderr, "container %s at %s\n", container.c_str(), address.c_str());
    return address;
  }

  // Waits until the parleyd in `container` answers at `address`.
  absl::Status AwaitContainer(const std::string& address, const std::string& container) {
    // A channel of its own that retries connecting every quarter second: with gRPC's default
    // backoff (1 s, growing 1.6 times) a parleyd that took a few seconds to listen would be
    // found only many seconds later.
    grpc::ChannelArguments channel_args;
    channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 250);
    channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 250);
    channel_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    AgentClient client(
        address,
        grpc::CreateCustomChannel(
            address, dir_.credentials() ? dir_.credentials() : grpc::InsecureChannelCredentials(),
            channel_args));
    client.set_wait_for_ready(true);
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (true) {
      absl::StatusOr<v1::HostInfo> info = client.Host(absl::Seconds(2));
      if (info.ok()) return absl::OkStatus();
      if (absl::Now() > deadline) {
        return absl::UnavailableError(absl::StrCat(
            "the parleyd in container ", container, " does not answer at ", address,
            " within 60 s: ", info.status().message(), "\n", runtime_->LogTail(container)));
      }
      absl::SleepFor(absl::Milliseconds(250));
    }
  }

 private:
  ModelDir dir_;
  v1::ModelState state_;
  std::unique_ptr<ContainerRuntime> runtime_;
  std::map<std::string, std::unique_ptr<AgentClient>> clients_;
};

// "service:endpoint"
absl::StatusOr<std::pair<std::string, std::string>> ParseEnd(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
    return absl::InvalidArgumentError(absl::StrCat("expected SERVICE:ENDPOINT, got '", text, "'"));
  }
  return std::make_pair(parts[0], parts[1]);
}

std::string AbsolutePath(const std::string& p) {
  std::error_code ec;
  fs::path abs = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? fs::absolute(p).string() : abs.string();
}

bool SameRelation(const v1::RelationRecordState& r, const services::ModelRelation& m) {
  auto eq = [](const std::string& s1, const std::string& e1, const services::RelationEnd& end) {
    return s1 == end.service && e1 == end.endpoint;
  };
  return (eq(r.a_service(), r.a_endpoint(), m.a) && eq(r.b_service(), r.b_endpoint(), m.b)) ||
         (eq(r.a_service(), r.a_endpoint(), m.b) && eq(r.b_service(), r.b_endpoint(), m.a));
}

// ---------------------------------------------------------------------------------------------
// Commands.

absl::Status Up(Session& s, const Args& args) {
  ASSIGN_OR_RETURN(absl::Duration timeout, ParseDuration(args.Get("--timeout", "300s")));
  ASSIGN_OR_RETURN(Model model, LoadModel(args.positional[0]));
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  if (absl::Status st = s.LoadState(); !st.ok() && !absl::IsNotFound(st)) return st;
  v1::ModelState& state = s.state();
  state.set_model_file(AbsolutePath(model.file));
  state.set_interfaces_dir(model.interfaces_dir.empty() ? "" : AbsolutePath(model.interfaces_dir));

  // Mutual TLS from the model's CA unless the model was first brought up with --plaintext; a
  // model keeps its choice until `down --purge`.
  if (state.host().name().empty()) {
    state.set_tls(!args.Has("--plaintext"));
    // Likewise its runtime: processes on hosts, or a container per unit.
    if (args.Has("--runtime")) {
      ASSIGN_OR_RETURN(*state.mutable_runtime(),
                       ContainerRuntime::NewRecord(args.Get("--runtime"),
                                                   args.Get("--image", "localhost/parley:latest"),
                                                   AbsolutePath(s.dir().path())));
    }
    state.mutable_host()->set_name("local");
  } else if (args.Has("--plaintext") && state.tls()) {
    return absl::FailedPreconditionError(
        "this model runs with TLS; --plaintext applies to a new model (down --purge first)");
  } else if (args.Has("--runtime") && args.Get("--runtime") != state.runtime().engine()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this model runs ",
        state.runtime().engine().empty() ? "without containers" : "in " + state.runtime().engine(),
        "; --runtime applies to a new model (down --purge first)"));
  }
  if (args.Has("--image") && state.runtime().engine().empty()) {
    return absl::InvalidArgumentError("--image goes with --runtime");
  }
  // A new image serves the units added from now on.
  if (args.Has("--image")) state.mutable_runtime()->set_image(args.Get("--image"));
  RETURN_IF_ERROR(s.dir().UseTls(state.tls()));
  s.UseRuntime();
  if (s.runtime() != nullptr) {
    // Each unit's container is its host: the model places nothing.
    if (!model.hosts.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          model.file, ": `hosts` and --runtime do not mix (each unit has a container)"));
    }
    for (const ModelService& m : model.services) {
      if (m.host != "local") {
        return absl::InvalidArgumentError(
            absl::StrCat(model.file, ": service ", m.name, " is placed on host ", m.host,
                         "; with --runtime each unit has a container of its own"));
      }
    }
    RETURN_IF_ERROR(s.StartRuntime());
  }

  // Hosts run by others must answer before anything changes.
  state.clear_hosts();
  for (const services::ModelHost& h : model.hosts) {
    v1::HostRecord* rec = state.add_hosts();
    rec->set_name(h.name);
    rec->set_address(h.address);
    rec->set_model_root(h.model_root);
    absl::StatusOr<v1::HostInfo> info = s.Client(h.address).Host(absl::Seconds(5));
    if (!info.ok()) {
      return absl::UnavailableError(absl::StrCat("host ", h.name, " (", model.file, ":", h.line,
                                                 ") does not answer: ", info.status().message()));
    }
    if (!info->hosts_definitions()) {
      return absl::FailedPreconditionError(absl::StrCat("host ", h.name, " at ", h.address,
                                                        " does not host agents from definitions"));
    }
    rec->set_pid(info->pid());
    rec->set_data_dir(info->data_dir());
    rec->set_metrics_address(info->metrics_address());
  }
  // The local parleyd, when the model places anything on it.
  const bool local = s.runtime() == nullptr &&
                     (std::any_of(model.services.begin(), model.services.end(),
                                  [](const ModelService& m) { return m.host == "local"; }) ||
                      std::any_of(state.services().begin(), state.services().end(),
                                  [](const auto& svc) { return svc.host() == "local"; }));
  if (local) {
    RETURN_IF_ERROR(s.dir().EnsureHost(FindBinary("parleyd"), *state.mutable_host()));
    std::fprintf(stderr, "parleyd %s (pid %lld), model directory %s\n",
                 state.host().address().c_str(), static_cast<long long>(state.host().pid()),
                 s.dir().path().c_str());
  }
  RETURN_IF_ERROR(s.Save());

  // Relations to drop: not in the model, or with a service that leaves or changes definition.
  std::set<std::string> leaving;
  for (const auto& svc : state.services()) {
    const ModelService* m = model.FindService(svc.name());
    if (m == nullptr || AbsolutePath(m->definition_dir) != svc.definition_dir() ||
        m->host != svc.host()) {
      leaving.insert(svc.name());
    }
  }
  std::vector<std::string> drop;
  for (const auto& rel : state.relations()) {
    bool keep = !leaving.contains(rel.a_service()) && !leaving.contains(rel.b_service());
    if (keep && rel.a_service() != rel.b_service()) {
      keep = std::any_of(model.relations.begin(), model.relations.end(),
                         [&](const auto& mr) { return SameRelation(rel, mr); });
    }
    if (!keep) drop.push_back(rel.id());
  }
  for (const std::string& id : drop) RETURN_IF_ERROR(s.DropRelation(id));
  // Services that left, or whose definition changed (they come back below).
  for (const std::string& name : leaving) {
    v1::ServiceRecord* svc = s.FindService(name);
    while (svc->units_size() > 0) {
      RETURN_IF_ERROR(s.RemoveUnit(svc->units(svc->units_size() - 1).name()));
    }
    (*state.mutable_next_units())[name] = svc->next_unit();
    auto* services = state.mutable_services();
    for (int i = 0; i < services->size(); ++i) {
      if (services->Get(i).name() == name) {
        services->DeleteSubrange(i, 1);
        break;
      }
    }
    RETURN_IF_ERROR(s.Save());
  }
  // Services: config first (so that new units start with it), then the number of units.
  for (const ModelService& m : model.services) {
    v1::ServiceRecord* svc = s.FindService(m.name);
    if (svc == nullptr) {
      svc = state.add_services();
      svc->set_name(m.name);
      svc->set_definition_dir(AbsolutePath(m.definition_dir));
      svc->set_definition_name(m.definition.name);
      svc->set_host(m.host);
      if (auto it = state.next_units().find(m.name); it != state.next_units().end()) {
        svc->set_next_unit(it->second);
      }
      RETURN_IF_ERROR(s.Save());
    }
    RETURN_IF_ERROR(s.ApplyConfig(*svc, m.config));
    while (svc->units_size() < m.units) RETURN_IF_ERROR(s.AddUnit(*svc));
    while (svc->units_size() > m.units) {
      RETURN_IF_ERROR(s.RemoveUnit(svc->units(svc->units_size() - 1).name()));
    }
    // Peer endpoints relate a service's units among themselves, without a line in the model.
    for (const auto& ep : m.definition.endpoints) {
      if (ep.role != engine::Role::kPeers) continue;
      const bool known =
          std::any_of(state.relations().begin(), state.relations().end(), [&](const auto& r) {
            return r.a_service() == m.name && r.b_service() == m.name && r.a_endpoint() == ep.name;
          });
      if (!known)
        RETURN_IF_ERROR(s.AddRelation(m.name, ep.name, m.name, ep.name, ep.interface).status());
    }
  }
  for (const auto& mr : model.relations) {
    const bool known = std::any_of(state.relations().begin(), state.relations().end(),
                                   [&](const auto& r) { return SameRelation(r, mr); });
    if (known) continue;
    const ModelService* a = model.FindService(mr.a.service);
    const auto* ep = a->definition.FindEndpoint(mr.a.endpoint);
    RETURN_IF_ERROR(
        s.AddRelation(mr.a.service, mr.a.endpoint, mr.b.service, mr.b.endpoint, ep->interface)
            .status());
  }
  // Services in the model's order, as model.proto promises (a replaced one was re-added last).
  std::stable_sort(state.mutable_services()->begin(), state.mutable_services()->end(),
                   [&](const v1::ServiceRecord& a, const v1::ServiceRecord& b) {
                     auto index = [&](const std::string& name) {
                       for (size_t i = 0; i < model.services.size(); ++i) {
                         if (model.services[i].name == name) return i;
                       }
                       return model.services.size();
                     };
                     return index(a.name()) < index(b.name());
                   });
  RETURN_IF_ERROR(s.Save());
  // Every unit pair of every relation (new units included); relating again changes nothing.
  for (const auto& rel : state.relations()) RETURN_IF_ERROR(s.RelateUnits(rel));
  std::fprintf(stderr, "applied %s: %zu services, %zu units, %d relations\n", model.file.c_str(),
               model.services.size(), s.AllUnits().size(), state.relations_size());
  if (args.Has("--no-wait")) return absl::OkStatus();
  return s.Wait(timeout);
}

// `down` of a model in containers: the units' stop handlers run, then their containers stop
// (volumes kept: `up` starts them again, from their KBs); --purge removes containers, volumes, the
// network and the model directory.
absl::Status DownContainers(Session& s, bool purge) {
  ContainerRuntime& rt = *s.runtime();
  std::vector<std::string> containers;
  bool all_up = true;
  for (const v1::UnitRecord* u : s.AllUnits()) {
    containers.push_back(u->container());
    absl::StatusOr<v1::HostInfo> info = s.Client(u->address()).Host(absl::Seconds(2));
    if (!info.ok()) {
      all_up = false;
      continue;
    }
    v1::FireEventRequest req;
    req.set_agent(u->name());
    req.set_event("stop");
    v1::FireEventResponse resp;
    absl::Status st = s.Client(u->address()).Call(&v1::Agent::Stub::FireEvent, req, &resp);
    if (!st.ok())
      std::fprintf(stderr, "parley: %s: %s\n", u->name().c_str(), st.ToString().c_str());
  }
  if (all_up) {
    if (absl::Status st = s.Wait(absl::Seconds(60), /*failed_settles=*/true); !st.ok()) {
      std::fprintf(stderr, "parley: stopping anyway: %s\n", std::string(st.message()).c_str());
    }
  }
  if (!purge) {
    RETURN_IF_ERROR(rt.Stop(containers, 20));
    std::fprintf(stderr, "stopped %zu containers (their volumes are kept)\n", containers.size());
    return absl::OkStatus();
  }
  for (const std::string& c : containers) RETURN_IF_ERROR(rt.Remove(c));
  RETURN_IF_ERROR(rt.RemoveNetwork());
  std::fprintf(stderr, "removed %zu containers, their volumes and the network %s\n",
               containers.size(), rt.record().network().c_str());
  std::error_code ec;
  fs::remove_all(s.dir().path(), ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot delete ", s.dir().path(), ": ", ec.message()));
  }
  std::fprintf(stderr, "deleted %s\n", s.dir().path().c_str());
  return absl::OkStatus();
}

absl::Status Down(Session& s, const Args& args) {
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  absl::Status loaded = s.LoadState();
  if (absl::IsNotFound(loaded) && args.Has("--purge") && fs::exists(s.dir().path())) {
    fs::remove_all(s.dir().path());
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(loaded);
  if (s.runtime() != nullptr) return DownContainers(s, args.Has("--purge"));
  absl::StatusOr<v1::HostInfo> info = s.LocalHostInfo();
  const bool local_up = info.ok() && info->pid() == s.state().host().pid();
  {
    for (const v1::UnitRecord* u : s.AllUnits()) {
      if (u->address() == s.state().host().address() && !local_up) continue;
      v1::FireEventRequest req;
      req.set_agent(u->name());
      req.set_event("stop");
      v1::FireEventResponse resp;
      absl::Status st = s.Client(u->address()).Call(&v1::Agent::Stub::FireEvent, req, &resp);
      if (!st.ok())
        std::fprintf(stderr, "parley: %s: %s\n", u->name().c_str(), st.ToString().c_str());
    }
    if (absl::Status st = s.Wait(absl::Seconds(60), /*failed_settles=*/true); !st.ok()) {
      std::fprintf(stderr, "parley: stopping anyway: %s\n", std::string(st.message()).c_str());
    }
    // Units on hosts run by others stay hosted there (stopped) unless the model is purged.
    if (args.Has("--purge")) {
      for (const v1::UnitRecord* u : s.AllUnits()) {
        if (u->address() == s.state().host().address()) continue;
        v1::RemoveAgentRequest req;
        req.set_agent(u->name());
        v1::RemoveAgentResponse resp;
        absl::Status st = s.Client(u->address())
                              .Call(&v1::Agent::Stub::RemoveAgent, req, &resp, absl::Seconds(60));
        if (!st.ok()) {
          std::fprintf(stderr, "parley: removing %s at %s: %s\n", u->name().c_str(),
                       u->address().c_str(), std::string(st.message()).c_str());
        }
      }
    }
    if (local_up) {
      RETURN_IF_ERROR(s.dir().StopHost(s.state().host(), absl::Seconds(20)));
      std::fprintf(stderr, "stopped parleyd (pid %lld)\n",
                   static_cast<long long>(s.state().host().pid()));
    }
  }
  if (args.Has("--purge")) {
    std::error_code ec;
    fs::remove_all(s.dir().path(), ec);
    if (ec)
      return absl::InternalError(
          absl::StrCat("cannot delete ", s.dir().path(), ": ", ec.message()));
    std::fprintf(stderr, "deleted %s\n", s.dir().path().c_str());
  }
  return absl::OkStatus();
}

v1::ModelStatus CollectStatus(Session& s) {
  v1::ModelStatus out;
  const v1::ModelState& state = s.state();
  out.set_model_file(state.model_file());
  *out.mutable_host() = state.host();
  absl::StatusOr<v1::HostInfo> info = s.LocalHostInfo();
  out.set_host_up(info.ok() && info->pid() == state.host().pid());
  *out.mutable_services() = state.services();
  *out.mutable_relations() = state.relations();
  *out.mutable_runtime() = state.runtime();
  for (const v1::UnitRecord* u : s.AllUnits()) {
    v1::AgentStatus st;
    // Units on hosts run by others answer whether or not the local parleyd runs (a model placed
    // only on other hosts has none).
    if (out.host_up() || u->address() != state.host().address()) {
      absl::StatusOr<v1::AgentStatus> got = s.Client(u->address()).Status(u->name());
      if (got.ok()) st = *got;
    }
    st.set_agent(u->name());
    if (st.service().empty()) st.set_service(u->name().substr(0, u->name().find('/')));
    *out.add_units() = st;
  }
  return out;
}

std::string RenderStatus(const v1::ModelStatus& st) {
  std::string out =
      !st.runtime().engine().empty()
          ? absl::StrCat("Model    ", st.model_file(), "\nRuntime  ", st.runtime().engine(), " (",
                         st.runtime().image(), "), network ", st.runtime().network(), " ",
                         st.runtime().subnet(), "\n\n")
      : st.host().address().empty()
          ? absl::StrCat("Model    ", st.model_file(), "\nparleyd  none on this machine\n\n")
          : absl::StrCat("Model    ", st.model_file(), "\nparleyd  ", st.host().address(), " pid ",
                         st.host().pid(), st.host_up() ? "" : "  (NOT RUNNING)", "\n\n");
  std::map<std::string, std::vector<const v1::AgentStatus*>> by_service;
  for (const auto& u : st.units()) by_service[u.service()].push_back(&u);
  Table services({"Service", "Definition", "Units", "Workload"});
  for (const auto& svc : st.services()) {
    // The service shows its least healthy unit's workload.
    std::string workload = svc.units_size() == 0 ? "-" : "active";
    int worst = v1::WORKLOAD_STATE_ACTIVE;
    for (const auto* u : by_service[svc.name()]) {
      static const std::map<int, int> rank = {
          {v1::WORKLOAD_STATE_ERROR, 0},   {v1::WORKLOAD_STATE_UNSPECIFIED, 1},
          {v1::WORKLOAD_STATE_BLOCKED, 2}, {v1::WORKLOAD_STATE_MAINTENANCE, 3},
          {v1::WORKLOAD_STATE_WAITING, 4}, {v1::WORKLOAD_STATE_ACTIVE, 5}};
      if (rank.at(u->workload().state()) < rank.at(worst)) worst = u->workload().state();
    }
    if (svc.units_size() > 0) workload = WorkloadName(static_cast<v1::WorkloadState>(worst));
    services.Add({svc.name(), svc.definition_name(), absl::StrCat(svc.units_size()), workload});
  }
  out += services.Render() + "\n";
  Table units({"Unit", "Workload", "Agent", "Inbox", "Message"});
  for (const auto& u : st.units()) {
    std::string message = u.workload().message();
    if (u.agent_state() == v1::AGENT_STATE_ERROR) {
      message = absl::StrCat(u.failure().event_name(), " failed: ", u.failure().message());
      if (message.size() > 120) message = message.substr(0, 117) + "...";
    }
    const bool answered = !u.agent().empty() && u.agent_state() != v1::AGENT_STATE_UNSPECIFIED;
    units.Add({u.agent(), answered ? WorkloadName(u.workload().state()) : "unknown",
               answered ? AgentStateName(u.agent_state()) : "lost", absl::StrCat(u.inbox_depth()),
               message});
  }
  out += units.Render() + "\n";
  Table rels({"Relation", "Interface", "Endpoints"});
  for (const auto& r : st.relations()) {
    const bool peers = r.a_service() == r.b_service() && r.a_endpoint() == r.b_endpoint();
    rels.Add({r.id(), r.interface(),
              peers ? absl::StrCat(r.a_service(), ":", r.a_endpoint(), " (peers)")
                    : absl::StrCat(r.a_service(), ":", r.a_endpoint(), " - ", r.b_service(), ":",
                                   r.b_endpoint())});
  }
  if (st.relations_size() > 0) out += rels.Render();
  return out;
}

absl::Status Status(Session& s, const Args& args) {
  RETURN_IF_ERROR(s.LoadState());
  if (args.Has("--json")) {
    std::printf("%s", ToJson(CollectStatus(s)).c_str());
    return absl::OkStatus();
  }
  if (!args.Has("--watch")) {
    std::printf("%s", RenderStatus(CollectStatus(s)).c_str());
    return absl::OkStatus();
  }
  while (true) {
    // The state may change under us (another command adds units): read it each time.
    RETURN_IF_ERROR(s.LoadState());
    const std::string text = RenderStatus(CollectStatus(s));
    std::printf("\033[H\033[2J%s\n(every 1s; Ctrl-C to stop)\n", text.c_str());
    std::fflush(stdout);
    absl::SleepFor(absl::Seconds(1));
  }
}

absl::Status Wait(Session& s, const Args& args) {
  ASSIGN_OR_RETURN(absl::Duration timeout, ParseDuration(args.Get("--timeout", "120s")));
  RETURN_IF_ERROR(s.LoadState());
  return s.Wait(timeout);
}

// Checks both ends against the definitions and returns the interface.
absl::StatusOr<std::string> CheckEnds(Session& s, const std::pair<std::string, std::string>& a,
                                      const std::pair<std::string, std::string>& b) {
  std::string interface;
  std::vector<engine::Role> roles;
  for (const auto& end : {a, b}) {
    v1::ServiceRecord* svc = s.FindService(end.first);
    if (svc == nullptr) {
      return absl::NotFoundError(absl::StrCat("no service '", end.first, "' in the model"));
    }
    ASSIGN_OR_RETURN(services::ServiceDefinition def,
                     LoadServiceDefinition(svc->definition_dir(), s.state().interfaces_dir()));
    const auto* ep = def.FindEndpoint(end.second);
    if (ep == nullptr) {
      std::vector<std::string> names;
      for (const auto& e : def.endpoints) names.push_back(e.name);
      return absl::InvalidArgumentError(
          absl::StrCat("service ", end.first, " has no endpoint '", end.second,
                       "' (it has: ", absl::StrJoin(names, ", "), ")"));
    }
    if (!interface.empty() && interface != ep->interface) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot relate ", a.first, ":", a.second, " (interface ", interface, ") to ",
                       b.first, ":", b.second, " (interface ", ep->interface, ")"));
    }
    interface = ep->interface;
    roles.push_back(ep->role);
  }
  const bool ok = (roles[0] == engine::Role::kPeers) == (roles[1] == engine::Role::kPeers) &&
                  (roles[0] == engine::Role::kPeers || roles[0] != roles[1]);
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot relate ", a.first, ":", a.second, " (", engine::RoleName(roles[0]),
                     ") to ", b.first, ":", b.second, " (", engine::RoleName(roles[1]),
                     "): roles must be provides/requires or peers/peers"));
  }
  return interface;
}

absl::Status Relate(Session& s, const Args& args, bool relate) {
  ASSIGN_OR_RETURN(auto a, ParseEnd(args.positional[0]));
  ASSIGN_OR_RETURN(auto b, ParseEnd(args.positional[1]));
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  services::ModelRelation want{{a.first, a.second}, {b.first, b.second}, 0};
  for (const auto& rel : s.state().relations()) {
    if (!SameRelation(rel, want)) continue;
    if (relate) {
      return absl::AlreadyExistsError(absl::StrCat("already related as ", rel.id()));
    }
    const std::string id = rel.id();  // DropRelation removes the record `rel` refers to
    return s.DropRelation(id);
  }
  if (!relate) {
    return absl::NotFoundError(
        absl::StrCat(args.positional[0], " and ", args.positional[1], " are not related"));
  }
  ASSIGN_OR_RETURN(std::string interface, CheckEnds(s, a, b));
  ASSIGN_OR_RETURN(std::string id, s.AddRelation(a.first, a.second, b.first, b.second, interface));
  for (const auto& rel : s.state().relations()) {
    if (rel.id() == id) RETURN_IF_ERROR(s.RelateUnits(rel));
  }
  std::fprintf(stderr, "related %s (interface %s)\n", id.c_str(), interface.c_str());
  return absl::OkStatus();
}

absl::Status Config(Session& s, const Args& args) {
  const std::string service = args.positional[0];
  const std::vector<std::string> items(args.positional.begin() + 1, args.positional.end());
  ASSIGN_OR_RETURN(auto assignments, ParseAssignments(items));
  if (!items.empty()) RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  v1::ServiceRecord* svc = s.FindService(service);
  if (svc == nullptr) {
    return absl::NotFoundError(absl::StrCat("no service '", service, "' in the model"));
  }
  ASSIGN_OR_RETURN(services::ServiceDefinition def,
                   LoadServiceDefinition(svc->definition_dir(), s.state().interfaces_dir()));
  if (items.empty()) {
    std::map<std::string, std::string> current;
    if (svc->units_size() > 0) {
      v1::GetConfigRequest req;
      req.set_agent(svc->units(0).name());
      v1::GetConfigResponse resp;
      RETURN_IF_ERROR(
          s.Client(svc->units(0).address()).Call(&v1::Agent::Stub::GetConfig, req, &resp));
      current.insert(resp.config().begin(), resp.config().end());
    }
    Table t({"Option", "Type", "Value", "Default", "Description"});
    for (const auto& o : def.config) {
      auto it = current.find(o.name);
      t.Add({o.name, std::string(services::ValueTypeName(o.type)),
             it == current.end() ? "" : it->second, o.default_value.value_or(""), o.description});
    }
    std::printf("%s", t.Render().c_str());
    return absl::OkStatus();
  }
  std::map<std::string, std::string> want(svc->config().begin(), svc->config().end());
  for (const auto& [k, v] : assignments) {
    const auto* option = def.FindConfig(k);
    if (option == nullptr) {
      std::vector<std::string> names;
      for (const auto& o : def.config) names.push_back(o.name);
      return absl::InvalidArgumentError(absl::StrCat("service ", service, " has no config option '",
                                                     k, "' (it has: ", absl::StrJoin(names, ", "),
                                                     ")"));
    }
    if (v.empty()) {
      want.erase(k);
      continue;
    }
    if (absl::Status st = services::CheckValue(option->type, v); !st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config option ", service, ".", k, ": ", st.message()));
    }
    want[k] = v;
  }
  return s.ApplyConfig(*svc, want);
}

absl::Status AddUnit(Session& s, const Args& args) {
  int n = 1;
  if (args.Has("-n") && (!absl::SimpleAtoi(args.Get("-n"), &n) || n < 1 || n > 1000)) {
    return absl::InvalidArgumentError(
        absl::StrCat("-n: expected a number from 1 to 1000, got '", args.Get("-n"), "'"));
  }
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  v1::ServiceRecord* svc = s.FindService(args.positional[0]);
  if (svc == nullptr) {
    return absl::NotFoundError(absl::StrCat("no service '", args.positional[0], "' in the model"));
  }
  for (int i = 0; i < n; ++i) RETURN_IF_ERROR(s.AddUnit(*svc));
  for (const auto& rel : s.state().relations()) RETURN_IF_ERROR(s.RelateUnits(rel));
  return absl::OkStatus();
}

absl::Status RemoveUnit(Session& s, const Args& args) {
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  for (const auto& unit : args.positional) RETURN_IF_ERROR(s.RequireUnit(unit).status());
  for (const auto& unit : args.positional) RETURN_IF_ERROR(s.RemoveUnit(unit));
  return absl::OkStatus();
}

absl::Status Run(Session& s, const Args& args, int& exit_code) {
  ASSIGN_OR_RETURN(absl::Duration timeout, ParseDuration(args.Get("--timeout", "120s")));
  const std::string unit = args.positional[0];
  const std::string action = args.positional[1];
  ASSIGN_OR_RETURN(auto given, ParseAssignments(std::vector<std::string>(
                                   args.positional.begin() + 2, args.positional.end())));
  RETURN_IF_ERROR(s.LoadState());
  ASSIGN_OR_RETURN(auto found, s.RequireUnit(unit));
  ASSIGN_OR_RETURN(
      services::ServiceDefinition def,
      LoadServiceDefinition(found.first->definition_dir(), s.state().interfaces_dir()));
  ASSIGN_OR_RETURN(auto params, services::ResolveActionParams(def, action, given));
  AgentClient& client = s.Client(found.second->address());
  v1::FireEventRequest req;
  req.set_agent(unit);
  req.set_event(absl::StrCat("action.", action));
  for (const auto& [k, v] : params) (*req.mutable_params())[k] = v;
  v1::FireEventResponse fired;
  RETURN_IF_ERROR(client.Call(&v1::Agent::Stub::FireEvent, req, &fired));
  std::fprintf(stderr, "queued %s on %s (event %llu)\n", req.event().c_str(), unit.c_str(),
               static_cast<unsigned long long>(fired.event_id()));
  if (args.Has("--no-wait")) return absl::OkStatus();
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    v1::GetTracesRequest treq;
    treq.set_agent(unit);
    treq.set_last(100);
    v1::GetTracesResponse traces;
    RETURN_IF_ERROR(client.Call(&v1::Agent::Stub::GetTraces, treq, &traces));
    for (int i = traces.traces_size() - 1; i >= 0; --i) {
      const v1::Trace& t = traces.traces(i);
      if (t.trigger().id() != fired.event_id()) continue;
      if (t.result() == v1::Trace::RESULT_COMMITTED) {
        std::map<std::string, std::string> outputs(t.outputs().begin(), t.outputs().end());
        for (const auto& [k, v] : outputs) std::printf("%s: %s\n", k.c_str(), v.c_str());
        return absl::OkStatus();
      }
      return absl::AbortedError(absl::StrCat(
          req.event(), " failed on ", unit, " (attempt ", t.attempt(), "): ", t.error(),
          "\nIt stays queued and is retried with backoff; see `parley status`."));
    }
    if (absl::Now() > deadline) {
      exit_code = kTimedOut;
      return absl::DeadlineExceededError(absl::StrCat(req.event(), " has not run on ", unit,
                                                      " within ", absl::FormatDuration(timeout),
                                                      " (events before it are still queued)"));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

absl::Status Logs(Session& s, const Args& args) {
  RETURN_IF_ERROR(s.LoadState());
  v1::StreamLogsRequest req;
  req.set_agent(args.Get("--unit"));
  req.set_follow(args.Has("-f"));
  req.set_contains(args.Get("--contains"));
  if (args.Has("-n")) {
    uint32_t n = 0;
    if (!absl::SimpleAtoi(args.Get("-n"), &n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("-n: expected a number, got '", args.Get("-n"), "'"));
    }
    req.set_last(n);
  }
  if (args.Has("--level")) {
    static const std::map<std::string, v1::LogLevel> levels = {{"debug", v1::LOG_LEVEL_DEBUG},
                                                               {"info", v1::LOG_LEVEL_INFO},
                                                               {"warning", v1::LOG_LEVEL_WARNING},
                                                               {"error", v1::LOG_LEVEL_ERROR}};
    auto it = levels.find(absl::AsciiStrToLower(args.Get("--level")));
    if (it == levels.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--level: expected debug, info, warning or error, got '", args.Get("--level"), "'"));
    }
    req.set_min_level(it->second);
  }
  // Every parleyd of the model: the local one (when the model uses it) and the other hosts.
  std::vector<std::string> addresses;
  for (const v1::UnitRecord* u : s.AllUnits()) {
    if (std::find(addresses.begin(), addresses.end(), u->address()) == addresses.end()) {
      addresses.push_back(u->address());
    }
  }
  if (addresses.empty() && !s.state().host().address().empty()) {
    addresses.push_back(s.state().host().address());
  }
  static const char* kLevel[] = {"?", "DEBUG", "INFO", "WARN", "ERROR"};
  auto format = [](const v1::LogRecord& r) {
    const int level = r.level() >= 0 && r.level() <= 4 ? r.level() : 0;
    return absl::StrCat(
        absl::FormatTime("%H:%M:%E3S", absl::FromUnixMillis(r.unix_ms()), absl::LocalTimeZone()),
        " ", absl::StrFormat("%-5s", kLevel[level]), " ", r.agent(), ": ", r.message(), "\n");
  };
  // Past records of every host, merged by time; then, with -f, new ones as each host sends them.
  absl::Mutex mu;
  std::vector<std::pair<int64_t, std::string>> past;
  std::vector<std::string> errors;
  std::vector<std::thread> readers;
  bool live = false;
  // Clients are made here: Session's map is not for several threads.
  std::vector<v1::Agent::Stub*> stubs;
  for (const std::string& address : addresses) stubs.push_back(s.Client(address).stub());
  for (size_t n = 0; n < addresses.size(); ++n) {
    readers.emplace_back([&, n] {
      const std::string& address = addresses[n];
      grpc::ClientContext ctx;
      auto reader = stubs[n]->StreamLogs(&ctx, req);
      v1::LogRecord r;
      while (reader->Read(&r)) {
        absl::MutexLock lock(&mu);
        if (live) {
          std::fputs(format(r).c_str(), stdout);
          std::fflush(stdout);
        } else {
          past.emplace_back(r.unix_ms(), format(r));
        }
      }
      grpc::Status st = reader->Finish();
      absl::MutexLock lock(&mu);
      if (!st.ok())
        errors.push_back(absl::StrCat("parleyd at ", address, ": ", st.error_message()));
    });
  }
  if (req.follow()) {
    // The past records arrive first on each stream; give them a moment, then go live.
    absl::SleepFor(absl::Milliseconds(300));
    absl::MutexLock lock(&mu);
    std::stable_sort(past.begin(), past.end());
    for (const auto& [t, line] : past) std::fputs(line.c_str(), stdout);
    std::fflush(stdout);
    past.clear();
    live = true;
  }
  for (auto& t : readers) t.join();
  std::stable_sort(past.begin(), past.end());
  for (const auto& [t, line] : past) std::fputs(line.c_str(), stdout);
  if (!errors.empty()) return absl::UnavailableError(absl::StrJoin(errors, "; "));
  return absl::OkStatus();
}

absl::Status Facts(Session& s, const Args& args) {
  RETURN_IF_ERROR(s.LoadState());
  ASSIGN_OR_RETURN(auto found, s.RequireUnit(args.positional[0]));
  v1::GetFactsRequest req;
  req.set_agent(args.positional[0]);
  v1::GetFactsResponse resp;
  RETURN_IF_ERROR(s.Client(found.second->address()).Call(&v1::Agent::Stub::GetFacts, req, &resp));
  if (args.Has("--json")) {
    std::printf("%s", ToJson(resp).c_str());
    return absl::OkStatus();
  }
  Table t({"Fact", "Value"});
  for (const auto& f : resp.facts()) t.Add({f.name(), f.value()});
  std::printf("%s", t.Render().c_str());
  return absl::OkStatus();
}

absl::Status RelationData(Session& s, const Args& args) {
  RETURN_IF_ERROR(s.LoadState());
  ASSIGN_OR_RETURN(auto found, s.RequireUnit(args.positional[0]));
  v1::GetRelationDataRequest req;
  req.set_agent(args.positional[0]);
  req.set_endpoint(args.positional[1]);
  v1::GetRelationDataResponse resp;
  RETURN_IF_ERROR(
      s.Client(found.second->address()).Call(&v1::Agent::Stub::GetRelationData, req, &resp));
  if (args.Has("--json")) {
    std::printf("%s", ToJson(resp).c_str());
    return absl::OkStatus();
  }
  if (resp.relations_size() == 0) std::printf("(no relations on %s)\n", req.endpoint().c_str());
  for (const auto& rel : resp.relations()) {
    std::printf("%s (with %s)\n", rel.relation_id().c_str(), rel.remote_service().c_str());
    Table t({"  Bag", "Key", "Value"});
    for (const auto& bag : rel.bags()) {
      std::map<std::string, std::string> sorted(bag.data().begin(), bag.data().end());
      for (const auto& [k, v] : sorted) t.Add({"  " + bag.name(), k, v});
    }
    std::printf("%s", t.Render().c_str());
  }
  return absl::OkStatus();
}

absl::Status Trace(Session& s, const Args& args) {
  uint32_t last = 5;
  if (args.Has("--last") && (!absl::SimpleAtoi(args.Get("--last"), &last) || last == 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--last: expected a positive number, got '", args.Get("--last"), "'"));
  }
  RETURN_IF_ERROR(s.LoadState());
  ASSIGN_OR_RETURN(auto found, s.RequireUnit(args.positional[0]));
  v1::GetTracesRequest req;
  req.set_agent(args.positional[0]);
  req.set_last(last);
  v1::GetTracesResponse resp;
  RETURN_IF_ERROR(s.Client(found.second->address()).Call(&v1::Agent::Stub::GetTraces, req, &resp));
  for (const auto& t : resp.traces()) std::printf("%s\n", engine::FormatTrace(t).c_str());
  return absl::OkStatus();
}

// The format of deploy/prometheus/README.md: one `parley` job, one target per parleyd of the
// model, every series labelled with the model's name.
absl::Status MetricsConfig(Session& s, const Args& args) {
  RETURN_IF_ERROR(s.LoadState());
  if (!args.positional.empty() && AbsolutePath(args.positional[0]) != s.state().model_file()) {
    return absl::FailedPreconditionError(absl::StrCat("the model directory ", s.dir().path(),
                                                      " runs ", s.state().model_file(), ", not ",
                                                      args.positional[0], " (pass --model-dir)"));
  }
  std::vector<std::string> targets;
  std::vector<const v1::HostRecord*> hosts;
  if (!s.state().runtime().engine().empty()) {
    // A container per unit: each parleyd serves /metrics on kMetricsPort of its address.
    for (const v1::UnitRecord* u : s.AllUnits()) {
      targets.push_back(
          absl::StrCat(u->address().substr(0, u->address().rfind(':')), ":", kMetricsPort));
    }
  } else if (std::any_of(
                 s.state().services().begin(), s.state().services().end(),
                 [](const auto& svc) { return svc.host().empty() || svc.host() == "local"; })) {
    hosts.push_back(&s.state().host());
  }
  for (const auto& h : s.state().hosts()) hosts.push_back(&h);
  for (const v1::HostRecord* h : hosts) {
    if (h->metrics_address().empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "parleyd ", h->name(), " at ", h->address(),
          " serves no metrics (start it with --metrics_listen, then run parley up again)"));
    }
    std::string target = h->metrics_address();
    // A wildcard listen address is reached at the host the peers reach.
    for (absl::string_view any : {"0.0.0.0:", "[::]:"}) {
      if (absl::StartsWith(target, any)) {
        target = absl::StrCat(h->address().substr(0, h->address().rfind(':')), ":",
                              target.substr(any.size()));
      }
    }
    if (std::find(targets.begin(), targets.end(), target) == targets.end()) {
      targets.push_back(target);
    }
  }
  ASSIGN_OR_RETURN(absl::Duration interval, ParseDuration(args.Get("--interval", "15s")));
  const std::string every = absl::StrCat(absl::ToInt64Seconds(interval), "s");
  const std::string name =
      args.Get("--name", fs::path(s.state().model_file()).parent_path().filename().string());
  std::string out = absl::StrCat(
      "# Parley: scrape every parleyd of a model (deploy/prometheus/README.md).\n"
      "global:\n  scrape_interval: ",
      every, "\n  evaluation_interval: ", every, "\n");
  if (args.Has("--rules")) {
    absl::StrAppend(&out, "rule_files:\n  - ", AbsolutePath(args.Get("--rules")), "\n");
  }
  absl::StrAppend(&out, "scrape_configs:\n  - job_name: parley\n    scrape_interval: ", every,
                  "\n    metrics_path: /metrics\n    static_configs:\n      - targets:\n");
  for (const auto& t : targets) absl::StrAppend(&out, "          - ", t, "\n");
  absl::StrAppend(&out, "        labels:\n          model: ", name, "\n");
  std::printf("%s", out.c_str());
  return absl::OkStatus();
}

absl::Status Cert(Session& s, const Args& args) {
  auto list = [](const std::string& text) {
    std::vector<std::string> out = absl::StrSplit(text, ',', absl::SkipEmpty());
    return out;
  };
  const std::string name = args.positional[0];
  if (name == "cli" || name == "local" || name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("'", name, "' is reserved or not a host name"));
  }
  // The lock keeps two commands from making the model's CA at once.
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  const bool op = args.Has("--operator");
  ASSIGN_OR_RETURN(CertFiles files,
                   IssueCert(s.dir().pki_dir(), name, op ? CertRole::kOperator : CertRole::kHost,
                             list(args.Get("--ip")), list(args.Get("--dns")), args.Get("--out")));
  if (files.reissued) {
    std::fprintf(stderr, "replaced %s: it was made before certificates had roles\n",
                 files.cert.c_str());
  }
  std::printf("%s\n%s\n%s\n\n", files.cert.c_str(), files.key.c_str(), files.ca.c_str());
  if (op) {
    std::printf(
        "An operator certificate: a client of the agent API presents cert.pem with key.pem and "
        "trusts ca.pem (docs/api.md).\n");
  } else {
    std::printf(
        "On that host:\n  parleyd --data DIR --listen ADDRESS:PORT --tls_cert %s --tls_key %s "
        "--tls_ca %s\n",
        files.cert.c_str(), files.key.c_str(), files.ca.c_str());
  }
  return absl::OkStatus();
}

absl::Status Version(Session& s, const Args&) {
  std::printf("parley %s\n", PARLEY_VERSION);
  if (!s.dir().Exists()) return absl::OkStatus();
  RETURN_IF_ERROR(s.LoadState());
  absl::StatusOr<v1::HostInfo> info = s.LocalHostInfo();
  if (info.ok()) {
    std::printf("parleyd %s (pid %lld at %s)\n", info->version().c_str(),
                static_cast<long long>(info->pid()), info->address().c_str());
  } else {
    std::printf("parleyd not running (%s)\n", std::string(info.status().message()).c_str());
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Containers and Kubernetes (docs/deploy.md).

absl::Status Export(const Args& args) {
  if (args.positional[0] != "kubernetes" && args.positional[0] != "compose") {
    return absl::InvalidArgumentError(absl::StrCat("export: unknown format '", args.positional[0],
                                                   "' (known: kubernetes, compose)"));
  }
  ASSIGN_OR_RETURN(Model model, LoadModel(args.positional[1]));
  if (args.positional[0] == "compose") {
    if (!args.Has("-o")) {
      return absl::InvalidArgumentError("export compose: -o DIR is required (a project directory)");
    }
    ComposeOptions options;
    options.image = args.Get("--image", options.image);
    RETURN_IF_ERROR(ExportCompose(model, args.Get("-o"), options));
    std::fprintf(stderr,
                 "wrote %s/compose.yaml; start it with: podman-compose -f %s/compose.yaml up -d\n",
                 args.Get("-o").c_str(), args.Get("-o").c_str());
    return absl::OkStatus();
  }
  KubernetesOptions options;
  options.image = args.Get("--image", options.image);
  options.name_space = args.Get("--namespace");
  options.storage = args.Get("--storage", options.storage);
  ASSIGN_OR_RETURN(std::string manifests, ExportKubernetes(model, options));
  if (!args.Has("-o")) {
    std::fwrite(manifests.data(), 1, manifests.size(), stdout);
    return absl::OkStatus();
  }
  std::ofstream out(args.Get("-o"), std::ios::trunc);
  out << manifests;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", args.Get("-o")));
  return absl::OkStatus();
}

int HostUnitCommand(const Args& args) {
  HostUnitOptions o;
  o.plan_file = args.Get("--plan", kPlanFile);
  o.unit = args.Get("--unit");
  o.bundles_dir = kBundlesDir;
  o.data_dir = kUnitDataDir;
  o.parleyd = FindBinary("parleyd");
  o.port = kAgentPort;
  o.metrics_port = kMetricsPort;
  return HostUnit(o);
}

int Main(int argc, char** argv) {
  std::vector<std::string> tokens(argv + 1, argv + argc);
  std::string model_dir;
  if (const char* env = getenv("PARLEY_MODEL_DIR"); env != nullptr && *env != '\0') {
    model_dir = env;
  }
  // Global flags may come anywhere.
  std::vector<std::string> rest;
  bool help = false;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& t = tokens[i];
    if (t == "--model-dir" || t == "-m") {
      if (i + 1 == tokens.size()) {
        std::fprintf(stderr, "parley: %s needs a directory\n", t.c_str());
        return kUsage;
      }
      model_dir = tokens[++i];
    } else if (absl::StartsWith(t, "--model-dir=")) {
      model_dir = t.substr(12);
    } else if (t == "--help" || t == "-h") {
      help = true;
    } else if (t == "--version" && rest.empty()) {
      rest.push_back("version");
    } else {
      rest.push_back(t);
    }
  }
  if (model_dir.empty()) model_dir = ".parley";
  if (rest.empty()) {
    PrintHelp();
    return help ? kOk : kUsage;
  }
  const std::string name = rest[0];
  if (name == "help") {
    PrintHelp();
    return kOk;
  }
  const Command* cmd = nullptr;
  for (const Command& c : Commands()) {
    if (c.name == name) cmd = &c;
  }
  if (cmd == nullptr) {
    std::fprintf(stderr, "parley: unknown command '%s' (see parley --help)\n", name.c_str());
    return kUsage;
  }
  if (help) {
    PrintCommandHelp(*cmd);
    return kOk;
  }
  Args args;
  for (size_t i = 1; i < rest.size(); ++i) {
    const std::string& t = rest[i];
    if (t.size() > 1 && t[0] == '-' &&
        !(cmd->name == "config" && t.find('=') != std::string::npos && t[1] != '-')) {
      std::string flag = t, value;
      const size_t eq = t.find('=');
      if (eq != std::string::npos) {
        flag = t.substr(0, eq);
        value = t.substr(eq + 1);
      }
      auto spec = std::find_if(cmd->flags.begin(), cmd->flags.end(),
                               [&](const FlagSpec& f) { return f.name == flag; });
      if (spec == cmd->flags.end()) {
        std::fprintf(stderr, "parley %s: unknown flag '%s' (see parley %s --help)\n",
                     cmd->name.c_str(), flag.c_str(), cmd->name.c_str());
        return kUsage;
      }
      if (spec->takes_value && eq == std::string::npos) {
        if (i + 1 == rest.size()) {
          std::fprintf(stderr, "parley %s: %s needs a value\n", cmd->name.c_str(), flag.c_str());
          return kUsage;
        }
        value = rest[++i];
      } else if (!spec->takes_value && eq != std::string::npos) {
        std::fprintf(stderr, "parley %s: %s takes no value\n", cmd->name.c_str(), flag.c_str());
        return kUsage;
      }
      args.flags[flag] = value;
    } else {
      args.positional.push_back(t);
    }
  }
  const int n = static_cast<int>(args.positional.size());
  if (n < cmd->min_args || (cmd->max_args >= 0 && n > cmd->max_args)) {
    std::fprintf(stderr, "usage: parley %s %s\n", cmd->name.c_str(), cmd->usage.c_str());
    return kUsage;
  }

  if (name == "host-unit") return HostUnitCommand(args);
  Session s(model_dir);
  int exit_code = kFailed;
  absl::Status st;
  using Handler = std::function<absl::Status(Session&, const Args&)>;
  const std::map<std::string, Handler> handlers = {
      {"up", Up},
      {"down", Down},
      {"status", Status},
      {"wait", Wait},
      {"relate", [](Session& s, const Args& a) { return Relate(s, a, true); }},
      {"unrelate", [](Session& s, const Args& a) { return Relate(s, a, false); }},
      {"config", Config},
      {"add-unit", AddUnit},
      {"remove-unit", RemoveUnit},
      {"run", [&exit_code](Session& s, const Args& a) { return Run(s, a, exit_code); }},
      {"logs", Logs},
      {"facts", Facts},
      {"relation-data", RelationData},
      {"trace", Trace},
      {"metrics-config", MetricsConfig},
      {"cert", Cert},
      {"version", Version},
      {"export", [](Session&, const Args& a) { return Export(a); }},
      {"probe",
       [](Session&, const Args& a) {
         return Probe(a.Get("--address", absl::StrCat("127.0.0.1:", kAgentPort)), a.Has("--ready"),
                      a.Get("--plan"));
       }},
  };
  st = handlers.at(name)(s, args);
  if (st.ok()) return kOk;
  std::fprintf(stderr, "parley %s: %s\n", name.c_str(), std::string(st.message()).c_str());
  if (absl::IsInvalidArgument(st)) return kUsage;
  if (absl::IsDeadlineExceeded(st) && (name == "wait" || name == "up" || name == "run")) {
    return kTimedOut;
  }
  return exit_code;
}

}  // namespace
}  // namespace parley::cli

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  return parley::cli::Main(argc, argv);
}
