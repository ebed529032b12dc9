// The commands that show the model or act through it: status, wait, run, logs, facts,
// relation-data, trace, metrics-config, version, export (docs/cli.md).

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "engine/trace_format.h"
#include "google/protobuf/util/json_util.h"
#include "services/definition/definition.h"
#include "tools/cli/commands.h"
#include "tools/cli/export_kubernetes.h"
#include "tools/cli/output.h"

namespace parley::cli {
namespace {

namespace fs = std::filesystem;
using services::LoadModel;
using services::LoadServiceDefinition;
using services::Model;

}  // namespace

namespace {

v1::ModelStatus CollectStatus(Session& s) {
  v1::ModelStatus out;
  const v1::ModelState& state = s.state();
  out.set_model_file(state.model_file());
  *out.mutable_host() = state.host();
  absl::StatusOr<v1::HostInfo> info = s.RunningLocalHost();
  out.set_host_up(info.ok());
  *out.mutable_host() = state.host();
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
          : absl::StrCat(
                "Model    ", st.model_file(), "\nparleyd  ", st.host().address(), " pid ",
                st.host().pid(),
                st.host_up() ? "" : "  (NOT RUNNING: `parley start` brings it back as it was)",
                "\n\n");
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
  Table units({"Unit", "Workload", "Agent", "Inbox", "Outbox", "Message"});
  // Links without a stream: a unit whose events cannot leave must not look idle.
  Table links({"Unit", "Peer", "Link", "Unacked", "Detail"});
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  for (const auto& u : st.units()) {
    std::string message = u.workload().message();
    // A failing head holds every later event back: the unit says so, and how to unstick it.
    if (u.agent_state() == v1::AGENT_STATE_ERROR) {
      message = DescribeFailure(u.agent(), u.failure(), 100);
    }
    const bool answered = !u.agent().empty() && u.agent_state() != v1::AGENT_STATE_UNSPECIFIED;
    units.Add({u.agent(), answered ? WorkloadName(u.workload().state()) : "unknown",
               answered ? AgentStateName(u.agent_state()) : "lost", absl::StrCat(u.inbox_depth()),
               absl::StrCat(u.outbox_unacked()), message});
    for (const auto& p : u.peers()) {
      if (p.state() == v1::PEER_LINK_STATE_CONNECTED) continue;
      std::string detail;
      if (p.state() == v1::PEER_LINK_STATE_BACKING_OFF && p.next_attempt_unix_ms() > 0) {
        detail = absl::StrCat(
            "retry in ",
            absl::FormatDuration(absl::Trunc(
                absl::Milliseconds(std::max<int64_t>(0, p.next_attempt_unix_ms() - now_ms)),
                absl::Milliseconds(100))));
      }
      if (!p.last_error().empty()) {
        std::string error = p.last_error();
        if (error.size() > 100) error = error.substr(0, 97) + "...";
        absl::StrAppend(&detail, detail.empty() ? "" : "; ", "last: ", error);
      }
      links.Add({u.agent(), p.agent(),
                 p.state() == v1::PEER_LINK_STATE_CONNECTING ? "connecting" : "down",
                 absl::StrCat(p.outbox_unacked()), detail});
    }
  }
  out += units.Render() + "\n";
  if (links.size() > 0) out += "Links without a stream\n" + links.Render() + "\n";
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

}  // namespace

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
      if (t.result() == v1::Trace::RESULT_SKIPPED) {
        return absl::AbortedError(absl::StrCat(req.event(), " on ", unit, " was skipped by ",
                                               t.resolved_by(), " after ", t.attempt(),
                                               " failed attempts: ", t.error()));
      }
      return absl::AbortedError(absl::StrCat(
          req.event(), " failed on ", unit, " (attempt ", t.attempt(), "): ", t.error(),
          "\nIt stays queued and is retried with backoff (every later event waits behind it); "
          "`parley resolve ",
          unit, "` retries it now, `parley resolve ", unit, " --skip` drops it."));
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

}  // namespace parley::cli
