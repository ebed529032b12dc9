#include "tools/cli/model/session.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "grpcpp/create_channel.h"
#include "tools/cli/deploy/pki.h"
#include "tools/cli/model/settle.h"

namespace parley::cli {

namespace fs = std::filesystem;

absl::Status Session::LoadState() {
  ASSIGN_OR_RETURN(state_, dir_.Load());
  UseRuntime();
  return dir_.UseTls(state_.tls());
}

absl::Status Session::Fire(const std::string& unit, const std::string& address,
                           const std::string& event) {
  v1::FireEventRequest req;
  req.set_agent(unit);
  req.set_event(event);
  v1::FireEventResponse resp;
  return Client(address).Call(&v1::Agent::Stub::FireEvent, req, &resp);
}

std::string Session::OnHost(const v1::HostRecord& host, const std::string& path) const {
  if (host.model_root().empty() || path.empty()) return path;
  const fs::path base = fs::path(state_.model_file()).parent_path();
  return (fs::path(host.model_root()) / fs::path(path).lexically_relative(base)).string();
}

absl::StatusOr<std::pair<v1::ServiceRecord*, const v1::UnitRecord*>> Session::RequireUnit(
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

absl::Status Session::AddUnit(v1::ServiceRecord& svc) {
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

namespace {

// At most `limit` bytes of `text`, the cut marked with "...".
std::string Shorten(const std::string& text, size_t limit) {
  if (text.size() <= limit) return text;
  return text.substr(0, limit - 3) + "...";
}

}  // namespace

absl::Status Session::RemoveAgent(const std::string& unit, const std::string& address,
                                  absl::string_view command) {
  v1::RemoveAgentRequest req;
  req.set_agent(unit);
  req.set_grace_seconds(kDyingGraceSeconds);
  v1::RemoveAgentResponse resp;
  // The server may take a while: the unit gets kDyingGraceSeconds to die, then a blocked agent
  // gets a grace period, then its processes do.
  RETURN_IF_ERROR(Client(address).Call(&v1::Agent::Stub::RemoveAgent, req, &resp,
                                       absl::Seconds(kDyingGraceSeconds + 60)));
  if (resp.stage() == v1::UNIT_STAGE_DYING) {
    std::fprintf(stderr,
                 "%s: %s did not finish dying within %d s (its stop handlers failing or a peer "
                 "not acknowledging its departure); removed it anyway (see `parley logs --unit "
                 "%s`)\n",
                 std::string(command).c_str(), unit.c_str(), kDyingGraceSeconds, unit.c_str());
  }
  if (resp.was_blocked()) {
    std::fprintf(stderr,
                 "%s: %s: was blocked in a handler (its run did not end); stopped its processes "
                 "under it\n",
                 std::string(command).c_str(), unit.c_str());
  }
  if (resp.stopped_processes_size() == 0) return absl::OkStatus();
  std::vector<std::string> listed;
  for (const v1::StoppedProcess& p : resp.stopped_processes()) {
    std::string how;
    if (p.fate() == v1::PROCESS_FATE_KILLED) how = " (SIGKILL)";
    if (p.fate() == v1::PROCESS_FATE_SURVIVED)
      how = absl::StrCat(" (NOT stopped: ", p.error(), ")");
    listed.push_back(absl::StrCat(p.pid(), " ", Shorten(p.command(), 80), how));
  }
  const int n = resp.stopped_processes_size();
  std::fprintf(stderr, "%s: %s: killed %d process%s left running: %s\n",
               std::string(command).c_str(), unit.c_str(), n, n == 1 ? "" : "es",
               absl::StrJoin(listed, "; ").c_str());
  return absl::OkStatus();
}

absl::Status Session::RemoveUnit(std::string unit, absl::string_view command) {
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
    // The unit dies first (its removal's stop, its relations departed, the departures
    // acknowledged), then its parleyd removes it: see RemoveAgent.
    RETURN_IF_ERROR(RemoveAgent(unit, found.second->address(), command));
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

absl::Status Session::RelateUnits(const v1::RelationRecordState& rel) {
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

absl::Status Session::UnrelateUnits(const v1::RelationRecordState& rel) {
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

absl::StatusOr<std::string> Session::AddRelation(const std::string& a_service,
                                                 const std::string& a_ep,
                                                 const std::string& b_service,
                                                 const std::string& b_ep,
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

absl::Status Session::DropRelation(const std::string& id) {
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

absl::Status Session::ApplyConfig(v1::ServiceRecord& svc,
                                  const std::map<std::string, std::string>& want) {
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

absl::Status Session::Wait(absl::Duration timeout, bool failed_settles) {
  const absl::Time deadline = absl::Now() + timeout;
  SettleJudge judge(deadline, failed_settles);
  // The failing head (event, attempt) whose traces were last fetched, by unit.
  std::map<std::string, std::pair<uint64_t, uint32_t>> traced;
  std::string shown;
  const bool tty = isatty(2);
  auto end_line = [&] {
    if (tty && !shown.empty()) std::fprintf(stderr, "\n");
  };
  while (true) {
    std::vector<UnitPoll> polls;
    for (const v1::UnitRecord* u : AllUnits()) {
      absl::StatusOr<v1::CheckIdleResponse> idle = Client(u->address()).CheckIdle(u->name());
      if (!idle.ok()) return idle.status();
      UnitPoll& p = polls.emplace_back();
      p.unit = u->name();
      p.idle = idle->idle();
      p.progress = idle->progress();
      if (!p.idle) {
        absl::StatusOr<v1::AgentStatus> st = Client(u->address()).Status(u->name());
        if (st.ok()) p.status = *std::move(st);
      }
      if (p.status && p.status->agent_state() == v1::AGENT_STATE_ERROR) {
        const std::pair<uint64_t, uint32_t> head = {p.status->failure().event_id(),
                                                    p.status->failure().attempt()};
        if (traced[p.unit] != head) {
          v1::GetTracesRequest req;
          req.set_agent(u->name());
          req.set_last(kSameFailures);
          v1::GetTracesResponse resp;
          if (Client(u->address()).Call(&v1::Agent::Stub::GetTraces, req, &resp).ok()) {
            p.traces.assign(resp.traces().begin(), resp.traces().end());
            traced[p.unit] = head;
          }
        }
      }
    }
    const SettleVerdict v = judge.Observe(polls);
    for (const std::string& line : v.new_failures) {
      std::fprintf(stderr, "%s%s\n", tty ? "\r\033[K" : "", line.c_str());
    }
    const std::string line = absl::StrCat("settled ", v.shown, "/", v.units, " units");
    if (line != shown || (tty && !v.new_failures.empty())) {
      std::fprintf(stderr, tty ? "\r\033[K%s" : "%s\n", line.c_str());
      shown = line;
    }
    switch (v.outcome) {
      case SettleVerdict::Outcome::kSettled:
        end_line();
        return absl::OkStatus();
      case SettleVerdict::Outcome::kFailedPermanently:
        end_line();
        return absl::AbortedError(absl::StrCat("stopped waiting: ", v.reason));
      case SettleVerdict::Outcome::kCannotSettleInTime:
        end_line();
        // Nothing can move it in time: a failure, exit 1, like a permanent one (not a timeout:
        // the wait did not run out, it ended early).
        return absl::AbortedError(absl::StrCat(
            "stopped waiting: ", v.reason, "; not settled within ",
            absl::FormatDuration(timeout), ", still busy: ", absl::StrJoin(v.pending, ", ")));
      case SettleVerdict::Outcome::kWaiting:
        break;
    }
    if (absl::Now() > deadline) {
      end_line();
      return absl::DeadlineExceededError(
          absl::StrCat("not settled within ", absl::FormatDuration(timeout),
                       "; still busy: ", absl::StrJoin(v.pending, ", ")));
    }
    absl::SleepFor(absl::Milliseconds(150));
  }
}

absl::Status Session::StartRuntime() {
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

absl::StatusOr<std::string> Session::StartContainer(const std::string& unit,
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
      const bool inside = std::any_of(c.mounts.begin(), c.mounts.end(), [&](const std::string& o) {
        return t == o || absl::StartsWith(t, o + "/");
      });
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

absl::Status Session::AwaitContainer(const std::string& address, const std::string& container) {
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
      // Without waiting for the connection, the call says why it fails (a TLS handshake, say)
      // rather than that its deadline passed.
      client.set_wait_for_ready(false);
      info = client.Host(absl::Seconds(2));
      if (info.ok()) return absl::OkStatus();
      return absl::UnavailableError(absl::StrCat(
          "the parleyd in container ", container, " does not answer at ", address,
          " within 60 s: ", info.status().message(), "\n", runtime_->LogTail(container)));
    }
    absl::SleepFor(absl::Milliseconds(250));
  }
}

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

}  // namespace parley::cli
