// The commands that show the model: status, wait, logs, facts, relation-data, trace, version
// (docs/cli.md).

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
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
#include "tools/cli/commands/commands.h"
#include "tools/cli/commands/output.h"

namespace parley::cli {

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
  Table units({"Unit", "Workload", "Health", "Agent", "Stage", "Inbox", "Outbox", "Message"});
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
    // An unhealthy workload says which probe failed and why, unless a failure says more.
    if (u.health() == v1::WORKLOAD_HEALTH_UNHEALTHY && u.agent_state() != v1::AGENT_STATE_ERROR) {
      for (const auto& p : u.probes()) {
        if (p.health() != v1::WORKLOAD_HEALTH_UNHEALTHY) continue;
        std::string error = p.last_error();
        if (error.size() > 100) error = error.substr(0, 97) + "...";
        message = absl::StrCat("probe ", p.name(), ": ", error.empty() ? "failing" : error,
                               message.empty() ? "" : "; ", message);
        break;
      }
    }
    units.Add({u.agent(), answered ? WorkloadName(u.workload().state()) : "unknown",
               answered ? HealthName(u) : "-",
               answered ? AgentStateName(u.agent_state()) : "lost",
               answered ? StageName(u.stage()) : "-", absl::StrCat(u.inbox_depth()),
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
  if (args.Has("--json")) {
    std::printf("%s", ToJson(resp).c_str());
    return absl::OkStatus();
  }
  for (const auto& t : resp.traces()) std::printf("%s\n", engine::FormatTrace(t).c_str());
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

}  // namespace parley::cli
