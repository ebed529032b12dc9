// The commands that act through a unit's agent: resolve (a failed event), run (a user action)
// (docs/cli.md).

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "services/definition/definition.h"
#include "tools/cli/commands/commands.h"

namespace parley::cli {

namespace {

using services::LoadServiceDefinition;

// Who runs this command, for the traces and logs of what it changes: "$USER@host".
std::string Operator() {
  std::string user;
  if (const char* env = getenv("USER"); env != nullptr && *env != '\0') {
    user = env;
  } else if (const passwd* pw = getpwuid(getuid()); pw != nullptr) {
    user = pw->pw_name;
  } else {
    user = absl::StrCat("uid ", getuid());
  }
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return user;
  return absl::StrCat(user, "@", host);
}

}  // namespace

absl::Status Resolve(Session& s, const Args& args, int& exit_code) {
  if (args.Has("--retry") && args.Has("--skip")) {
    return absl::InvalidArgumentError("--retry and --skip exclude each other");
  }
  const bool skip = args.Has("--skip");
  if (skip && args.Has("--no-wait")) {
    return absl::InvalidArgumentError("--no-wait goes with --retry");
  }
  ASSIGN_OR_RETURN(absl::Duration timeout, ParseDuration(args.Get("--timeout", "60s")));
  const std::string unit = args.positional[0];
  RETURN_IF_ERROR(s.LoadState());
  ASSIGN_OR_RETURN(auto found, s.RequireUnit(unit));
  AgentClient& client = s.Client(found.second->address());
  // Name the event seen failing, so that what the agent resolves is what was meant; the agent
  // refuses, saying why, when nothing is failing.
  ASSIGN_OR_RETURN(v1::AgentStatus status, client.Status(unit));
  v1::ResolveEventRequest req;
  req.set_agent(unit);
  req.set_mode(skip ? v1::RESOLVE_MODE_SKIP : v1::RESOLVE_MODE_RETRY);
  if (status.agent_state() == v1::AGENT_STATE_ERROR) req.set_event_id(status.failure().event_id());
  req.set_by(Operator());
  auto traces = [&]() -> absl::StatusOr<v1::GetTracesResponse> {
    v1::GetTracesRequest treq;
    treq.set_agent(unit);
    treq.set_last(100);
    v1::GetTracesResponse got;
    RETURN_IF_ERROR(client.Call(&v1::Agent::Stub::GetTraces, treq, &got));
    return got;
  };
  v1::ResolveEventResponse resp;
  absl::Status called = client.Call(&v1::Agent::Stub::ResolveEvent, req, &resp);
  if (absl::IsFailedPrecondition(called) && req.event_id() != 0) {
    // Refused, unless this is a call repeated after a late answer (AgentClient::Call) that finds
    // its first attempt's work done: the event's trace then names this operator.
    ASSIGN_OR_RETURN(v1::GetTracesResponse got, traces());
    for (const v1::Trace& t : got.traces()) {
      if (t.trigger().id() != req.event_id() || !absl::StartsWith(t.resolved_by(), req.by()) ||
          (skip ? t.result() != v1::Trace::RESULT_SKIPPED
                : t.attempt() <= status.failure().attempt())) {
        continue;
      }
      called = absl::OkStatus();
      *resp.mutable_failure() = status.failure();
      resp.set_mode(req.mode());
      resp.set_run(skip ? t.run() : 0);
      resp.set_by(t.resolved_by());
    }
  }
  RETURN_IF_ERROR(called);
  const v1::RunFailure& f = resp.failure();
  const std::string event = absl::StrCat("event ", f.event_id(), " (", f.event_name(), ")");
  const std::string attempts =
      absl::StrCat(f.attempt(), f.attempt() == 1 ? " failed attempt" : " failed attempts");
  if (skip) {
    std::printf(
        "skipped %s on %s after %s: it is not applied, and the events behind it run now\n"
        "last error: %s\nrecorded as run %llu by %s (parley trace %s)\n",
        event.c_str(), unit.c_str(), attempts.c_str(), f.message().c_str(),
        static_cast<unsigned long long>(resp.run()), resp.by().c_str(), unit.c_str());
    return absl::OkStatus();
  }
  std::printf("retrying %s on %s now (%s so far)\n", event.c_str(), unit.c_str(), attempts.c_str());
  if (args.Has("--no-wait")) return absl::OkStatus();
  std::fflush(stdout);
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    ASSIGN_OR_RETURN(v1::GetTracesResponse got, traces());
    for (const v1::Trace& t : got.traces()) {
      if (t.trigger().id() != f.event_id() || t.attempt() <= f.attempt()) continue;
      if (t.result() == v1::Trace::RESULT_COMMITTED) {
        std::printf("%s applied on attempt %u\n", event.c_str(), t.attempt());
        return absl::OkStatus();
      }
      return absl::AbortedError(absl::StrCat(event, " failed again on ", unit, " (attempt ",
                                             t.attempt(), "): ", t.error(), "\n`parley resolve ",
                                             unit, " --skip` drops it"));
    }
    if (absl::Now() > deadline) {
      exit_code = kTimedOut;
      return absl::DeadlineExceededError(absl::StrCat(event, " was not retried on ", unit,
                                                      " within ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
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

}  // namespace parley::cli
