// The agent API's calls that inspect an agent and change its config and inbox (agent.proto):
// status, idleness, config, fired events and resolving a failed head. On the agent's strand,
// like the rest of the agent (agent.h).

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "services/agent/agent.h"

namespace parley::services {

v1::AgentStatus Agent::Status() const {
  v1::AgentStatus s;
  s.set_agent(name_);
  s.set_service(spec().service);
  *s.mutable_workload() = engine_->workload_status();
  s.set_stage(engine_->stage());
  FillHealth(s);
  FillLeadership(s);
  if (engine_->failure()) {
    s.set_agent_state(v1::AGENT_STATE_ERROR);
    *s.mutable_failure() = *engine_->failure();
  } else if (engine_->inbox_depth() > 0 || executing_) {
    s.set_agent_state(v1::AGENT_STATE_EXECUTING);
  } else {
    s.set_agent_state(v1::AGENT_STATE_IDLE);
  }
  s.set_inbox_depth(engine_->inbox_depth());
  s.set_outbox_unacked(engine_->outbox_size());
  s.set_last_run(last_run_);
  s.set_last_event(last_event_);
  if (last_run_time_ != absl::InfinitePast()) {
    s.set_last_run_unix_ms(absl::ToUnixMillis(last_run_time_));
  }
  const std::map<std::string, size_t> unacked = engine_->OutboxUnackedByDestination();
  std::set<std::string> peers = WantedPeers();
  peers.merge(delivery_->Connected());
  for (const std::string& remote : peers) {
    v1::PeerLinkStatus* p = s.add_peers();
    p->set_agent(remote);
    const PeerLinkView link = env_.links->Link(name_, remote);
    if (HasSession(remote)) {
      p->set_state(v1::PEER_LINK_STATE_CONNECTED);
    } else if (link.active) {
      p->set_state(v1::PEER_LINK_STATE_CONNECTING);
    } else {
      p->set_state(v1::PEER_LINK_STATE_BACKING_OFF);
      if (link.next_attempt != absl::InfinitePast()) {
        p->set_next_attempt_unix_ms(absl::ToUnixMillis(link.next_attempt));
      }
    }
    if (auto it = unacked.find(remote); it != unacked.end()) p->set_outbox_unacked(it->second);
    p->set_last_error(link.last_error);
    p->set_address(AddressOf(remote));
  }
  for (const auto& [id, rel] : engine_->relations()) {
    if (rel.gone()) continue;
    v1::RelationSummary* r = s.add_relations();
    r->set_relation_id(id);
    r->set_endpoint(rel.endpoint());
    r->set_remote_service(rel.remote_service());
    *r->mutable_remote_units() = rel.remote_units();
  }
  return s;
}

v1::CheckIdleResponse Agent::CheckIdle() const {
  v1::CheckIdleResponse r;
  r.set_idle(engine_->inbox_depth() == 0 && engine_->outbox_size() == 0 && !engine_->failure() &&
             !executing_);
  r.set_progress(engine_->runs() + delivery_->received() + delivery_->acks());
  return r;
}

absl::StatusOr<uint64_t> Agent::SetConfig(const v1::SetConfigRequest& request) {
  for (const auto& [k, v] : request.set()) RETURN_IF_ERROR(CheckConfig(k, v));
  for (const auto& k : request.unset()) RETURN_IF_ERROR(CheckConfig(k, ""));
  const std::map<std::string, std::string> set(request.set().begin(), request.set().end());
  const std::vector<std::string> unset(request.unset().begin(), request.unset().end());
  ASSIGN_OR_RETURN(engine::EnqueueResult r, engine_->ChangeConfig(set, unset));
  if (r.event_id == 0) return 0;
  last_ticket_ = std::max(last_ticket_, r.ticket);
  Kick();
  Notify();
  return r.event_id;
}

absl::Status Agent::CheckConfig(const std::string& key, const std::string& value) const {
  return engine::CheckConfig(spec(), key, value);
}

absl::StatusOr<uint64_t> Agent::FireEvent(const v1::FireEventRequest& request) {
  if (request.event() == "config.changed") {
    return absl::InvalidArgumentError("config.changed is fired by SetConfig");
  }
  v1::Event e;
  e.set_name(request.event());
  e.set_source("api");
  *e.mutable_params() = request.params();
  if (spec().declares_actions && absl::StartsWith(request.event(), "action.")) {
    // Refused here, not by every retry of its handler: a bad action would jam the inbox.
    const auto& actions = spec().actions;
    auto action = std::find_if(actions.begin(), actions.end(),
                               [&](const auto& a) { return a.event == request.event(); });
    if (action == actions.end()) {
      std::vector<std::string> names;
      for (const auto& a : actions) names.push_back(a.event.substr(std::strlen("action.")));
      return absl::InvalidArgumentError(
          absl::StrCat("agent ", name_, " (service ", spec().service, ") has no action '",
                       request.event().substr(std::strlen("action.")),
                       "' (actions: ", names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
    }
    if (action->resolve) {
      std::map<std::string, std::string> given(request.params().begin(), request.params().end());
      auto resolved = action->resolve(given);
      if (!resolved.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("agent ", name_, ": ", resolved.status().message()));
      }
      e.mutable_params()->clear();
      for (const auto& [k, v] : *resolved) (*e.mutable_params())[k] = v;
    }
  }
  ASSIGN_OR_RETURN(auto r, engine_->Enqueue(std::move(e)));
  // The API answers once this is durable (AfterDurable).
  last_ticket_ = std::max(last_ticket_, r.ticket);
  Kick();
  Notify();
  return r.event_id;
}

absl::StatusOr<v1::ResolveEventResponse> Agent::ResolveEvent(const v1::ResolveEventRequest& request,
                                                             const std::string& certificate) {
  if (request.mode() != v1::RESOLVE_MODE_RETRY && request.mode() != v1::RESOLVE_MODE_SKIP) {
    return absl::InvalidArgumentError(
        absl::StrCat("agent ", name_, ": ResolveEventRequest.mode must be RETRY or SKIP"));
  }
  // `by` goes into one log line and the trace: a short printable text.
  constexpr size_t kMaxBy = 200;
  if (request.by().size() > kMaxBy ||
      std::any_of(request.by().begin(), request.by().end(),
                  [](unsigned char c) { return c < 0x20 || c == 0x7f; })) {
    return absl::InvalidArgumentError(absl::StrCat(
        "agent ", name_, ": ResolveEventRequest.by must be at most ", kMaxBy,
        " characters without control characters (got ", request.by().size(), " characters)"));
  }
  std::string by = request.by().empty() ? "api" : request.by();
  if (!certificate.empty()) absl::StrAppend(&by, " (certificate ", certificate, ")");
  const bool skip = request.mode() == v1::RESOLVE_MODE_SKIP;
  ASSIGN_OR_RETURN(engine::ResolveResult r,
                   engine_->Resolve(skip ? engine::ResolveMode::kSkip : engine::ResolveMode::kRetry,
                                    request.event_id(), by));
  last_ticket_ = std::max(last_ticket_, r.ticket);
  const v1::RunFailure& f = r.failure;
  const std::string what = absl::StrCat(
      "event ", f.event_id(), " '", f.event_name(), "' (", f.attempt(),
      f.attempt() == 1 ? " failed attempt" : " failed attempts",
      ", last error: ", f.handler().empty() ? "" : absl::StrCat("handler ", f.handler(), ": "),
      f.message(), ")");
  if (skip) {
    metrics_.events_skipped->Increment();
    last_run_ = r.run;
    last_event_ = f.event_name();
    last_run_time_ = env_.clock->Now();
    Log(v1::LOG_LEVEL_WARNING, absl::StrCat(what, " skipped by ", by, " in run ", r.run,
                                            ": not applied; the events behind it run now"));
  } else {
    metrics_.events_retried->Increment();
    Log(v1::LOG_LEVEL_INFO, absl::StrCat(what, " retried now, asked by ", by));
  }
  metrics_.inbox_depth->Set(static_cast<double>(engine_->inbox_depth()));
  metrics_.in_error->Set(engine_->failure() ? 1 : 0);
  Kick();
  Notify();
  v1::ResolveEventResponse resp;
  *resp.mutable_failure() = f;
  resp.set_mode(request.mode());
  resp.set_run(r.run);
  resp.set_by(by);
  return resp;
}

}  // namespace parley::services
