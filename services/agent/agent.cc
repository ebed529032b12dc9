#include "services/agent/agent.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace parley::services {
namespace {

using kb::Space;

const std::string kAddressPrefix = std::string("addr\0", 5);

bool Compatible(absl::string_view a, absl::string_view b) {
  return (a == "provides" && b == "requires") || (a == "requires" && b == "provides") ||
         (a == "peers" && b == "peers");
}

v1::PeerFrame ToFrame(const v1::OutboxEntry& e) {
  v1::PeerFrame frame;
  v1::RelationEvent* ev = frame.mutable_event();
  ev->set_relation_id(e.relation_id());
  ev->set_sender_endpoint(e.endpoint());
  ev->set_receiver_endpoint(e.receiver_endpoint());
  ev->set_sender_unit(e.sender_unit());
  ev->set_sender_service(e.sender_service());
  ev->set_sequence(e.sequence());
  ev->set_kind(e.kind());
  *ev->mutable_unit_changes() = e.unit_changes();
  *ev->mutable_service_changes() = e.service_changes();
  ev->set_sender_commit(e.commit_run());
  ev->set_interface(e.interface());
  return frame;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Agent>> Agent::Create(const AgentEnv& env, engine::ServiceSpec spec,
                                                     AgentOptions options) {
  ASSIGN_OR_RETURN(std::unique_ptr<kb::Kb> kb, kb::Kb::Open(env.store, spec.unit));
  ASSIGN_OR_RETURN(std::unique_ptr<engine::Engine> engine,
                   engine::Engine::Create(std::move(spec), kb.get(), env.clock, options.engine));
  std::unique_ptr<Agent> agent(new Agent(env, std::move(kb), std::move(engine), options));
  absl::Status parse;
  RETURN_IF_ERROR(
      agent->kb_->Scan(Space::kMeta, kAddressPrefix, [&](absl::string_view k, absl::string_view v) {
        agent->addresses_.emplace(std::string(k), std::string(v));
        return true;
      }));
  engine::Engine& e = *agent->engine_;
  // A new agent's first events (install, its initial config, start) are queued in one write: a
  // crash cannot leave it installed without its config. An agent that ran before only starts.
  std::vector<v1::Event> first;
  if (e.runs() == 0 && e.inbox_depth() == 0 && !e.failure()) {
    first.emplace_back().set_name("install");
    first.back().set_source("agent");
    v1::Event config;
    config.set_name("config.changed");
    config.set_source("agent");
    for (const auto& [k, v] : agent->options_.initial_config) {
      RETURN_IF_ERROR(agent->CheckConfig(k, v));
      v1::BagChange* c = config.add_config_changes();
      c->set_key(k);
      c->set_value(v);
    }
    if (config.config_changes_size() > 0) first.push_back(std::move(config));
  }
  first.emplace_back().set_name("start");
  first.back().set_source("agent");
  ASSIGN_OR_RETURN(auto started, e.EnqueueAll(std::move(first)));
  agent->last_ticket_ = started.ticket;
  return agent;
}

Agent::Agent(const AgentEnv& env, std::unique_ptr<kb::Kb> kb,
             std::unique_ptr<engine::Engine> engine, AgentOptions options)
    : env_(env),
      name_(kb->agent()),
      kb_(std::move(kb)),
      engine_(std::move(engine)),
      options_(options),
      strand_(std::make_shared<base::Strand>(env.pool)),
      alive_(std::make_shared<bool>(true)),
      metrics_(env.metrics->ForAgent(name_)) {}

Agent::~Agent() = default;

void Agent::Log(v1::LogLevel level, std::string message) const {
  v1::LogRecord r;
  r.set_agent(name_);
  r.set_level(level);
  r.set_message(std::move(message));
  env_.logs->Add(std::move(r));
}

void Agent::WhenDurable(uint64_t ticket, std::function<void()> fn) {
  durable_work_.emplace_back(ticket, std::move(fn));
  if (waiting_for_ == 0) WaitForStore(ticket);
}

// One registration with the store at a time, for the newest ticket queued: every sync then wakes
// the agent once, however many runs and events it covered.
void Agent::WaitForStore(uint64_t ticket) {
  waiting_for_ = ticket;
  std::weak_ptr<bool> alive = alive_;
  std::shared_ptr<base::Strand> strand = strand_;
  env_.store->WhenDurable(ticket, [this, alive, strand, ticket](absl::Status s) {
    strand->Post([this, alive, ticket, s] {
      if (alive.lock()) OnDurable(ticket, s);
    });
  });
}

void Agent::AfterDurable(std::function<void(absl::Status)> answer) {
  if (stopped_) {
    answer(absl::UnavailableError(absl::StrCat("agent ", name_, " is stopping")));
    return;
  }
  const uint64_t id = next_answer_++;
  answers_.emplace(id, std::move(answer));
  WhenDurable(last_ticket_, [this, id] {
    auto it = answers_.find(id);
    if (it == answers_.end()) return;
    auto answer = std::move(it->second);
    answers_.erase(it);
    answer(absl::OkStatus());
  });
}

void Agent::AbandonAnswers(const absl::Status& status) {
  auto answers = std::move(answers_);
  answers_.clear();
  for (auto& [id, answer] : answers) answer(status);
}

void Agent::OnDurable(uint64_t ticket, const absl::Status& status) {
  waiting_for_ = 0;
  if (!status.ok()) {
    // Nothing may be reported or sent any more: the KB's log is in an unknown state.
    Log(v1::LOG_LEVEL_ERROR, absl::StrCat("KB sync failed: ", status.message()));
    AbandonAnswers(absl::DataLossError(
        absl::StrCat("agent ", name_, ": the knowledge base could not be synced (",
                     status.message(), "); the change may be lost")));
    return;
  }
  while (!durable_work_.empty() && durable_work_.front().first <= ticket) {
    auto fn = std::move(durable_work_.front().second);
    durable_work_.pop_front();
    if (fn) fn();
  }
  FlushAcks(ticket);
  if (pump_due_) {
    pump_due_ = false;
    PumpAll();
  }
  if (!durable_work_.empty()) WaitForStore(durable_work_.back().first);
}

void Agent::FlushAcks(uint64_t durable) {
  for (auto it = pending_acks_.begin(); it != pending_acks_.end();) {
    const auto& [key, pending] = *it;
    if (pending.ticket > durable) {
      ++it;
      continue;
    }
    SendAck(key.first, key.second, pending.sequence, pending.session);
    it = pending_acks_.erase(it);
  }
}

void Agent::SendAck(const std::string& remote, const std::string& relation, uint64_t sequence,
                    const std::shared_ptr<PeerSession>& session) {
  v1::PeerFrame ack;
  ack.mutable_ack()->set_relation_id(relation);
  ack.mutable_ack()->set_sender_unit(remote);
  ack.mutable_ack()->set_sequence(sequence);
  const auto& current = channels_[remote].session;
  (current ? current : session)->Send(std::move(ack));
}

void Agent::Start() {
  // Entries left in the outbox by an earlier process were written before it stopped; once the
  // startup write is durable they may all go.
  written_through_ = engine_->last_outbox_id();
  {
    const uint64_t through = written_through_;
    WhenDurable(last_ticket_, [this, through] {
      sendable_through_ = std::max(sendable_through_, through);
      PumpAll();
    });
  }
  ScheduleTimers();
  if (options_.update_interval > absl::ZeroDuration()) {
    std::weak_ptr<bool> alive = alive_;
    auto schedule = std::make_shared<std::function<void()>>();
    // The function must not own itself (a cycle that is never freed): only the pending timer's
    // closure owns it, so a cancelled or dropped timer frees it.
    std::weak_ptr<std::function<void()>> weak_schedule = schedule;
    *schedule = [this, alive, weak_schedule] {
      auto schedule = weak_schedule.lock();
      if (!schedule) return;
      update_timer_ =
          env_.scheduler->After(options_.update_interval, strand_, [this, alive, schedule] {
            if (!alive.lock() || stopped_) return;
            v1::Event e;
            e.set_name("update");
            e.set_source("timer");
            if (auto r = engine_->Enqueue(std::move(e)); !r.ok()) {
              Log(v1::LOG_LEVEL_ERROR, absl::StrCat("update timer: ", r.status().message()));
            }
            Kick();
            (*schedule)();
          });
    };
    (*schedule)();
  }
  for (const auto& peer : WantedPeers()) env_.links->EnsureSession(this, peer);
  Kick();
}

void Agent::Kick() {
  if (kick_scheduled_ || stopped_) return;
  kick_scheduled_ = true;
  std::weak_ptr<bool> alive = alive_;
  strand_->Post([this, alive] {
    if (!alive.lock()) return;
    kick_scheduled_ = false;
    Process();
  });
}

void Agent::Process() {
  if (stopped_) return;
  // A bounded batch, so that other agents on the pool get their turn.
  for (int i = 0; i < 64; ++i) {
    executing_ = true;
    absl::StatusOr<engine::RunResult> r = engine_->RunOnce();
    executing_ = false;
    if (!r.ok()) {
      Log(v1::LOG_LEVEL_ERROR, absl::StrCat("run: ", r.status().message()));
      ScheduleRetry(env_.clock->Now() + absl::Seconds(1));
      break;
    }
    if (r->outcome == engine::RunOutcome::kIdle) break;
    if (r->outcome == engine::RunOutcome::kNotDue) {
      ScheduleRetry(r->next_attempt);
      break;
    }
    last_run_ = r->run;
    last_event_ = r->trace->trigger().name();
    last_run_time_ = env_.clock->Now();
    metrics_.run_duration->Observe(r->trace->duration_ns() / 1e9);
    metrics_.handler_executions->Increment(r->handlers_run);
    if (r->outcome == engine::RunOutcome::kFailed) {
      metrics_.runs_failed->Increment();
      metrics_.handler_failures->Increment();
      const auto& f = *engine_->failure();
      Log(v1::LOG_LEVEL_ERROR,
          absl::StrCat("run ", r->run, " of '", f.event_name(), "' failed (attempt ", f.attempt(),
                       "): ", r->trace->error(), "; retry at ",
                       absl::FormatTime("%H:%M:%E3S", r->next_attempt, absl::UTCTimeZone())));
      ScheduleRetry(r->next_attempt);
      break;
    }
    metrics_.runs_committed->Increment();
    // The retry rules (docs/engine.md, "Relation data is a state too") are visible in the log.
    if (r->trace->result() == v1::Trace::RESULT_CANCELLED) {
      Log(v1::LOG_LEVEL_WARNING, absl::StrCat("run ", r->run, ": '", last_event_,
                                              "' cancelled (its data applied, nothing fired): ",
                                              r->trace->error()));
    } else if (r->trace->folded_size() > 0) {
      Log(v1::LOG_LEVEL_INFO,
          absl::StrCat("run ", r->run, " of '", last_event_, "' (attempt ", r->trace->attempt(),
                       ") ran with the newer data of event(s) ",
                       absl::StrJoin(r->trace->folded(), ", ")));
    }
    AfterCommit(*r);
    if (i == 63) Kick();
  }
  metrics_.inbox_depth->Set(static_cast<double>(engine_->inbox_depth()));
  metrics_.outbox_unacked->Set(static_cast<double>(engine_->outbox_size()));
  // A failure is set and cleared by runs and by ResolveEvent (which sets this too), so this
  // follows AgentStatus.agent_state.
  metrics_.in_error->Set(engine_->failure() ? 1 : 0);
  Notify();
}

void Agent::AfterCommit(const engine::RunResult& result) {
  last_ticket_ = result.ticket;
  if (options_.on_commit) options_.on_commit(result);
  if (options_.on_durable) {
    WhenDurable(result.ticket, [this, result] { options_.on_durable(result); });
  }
  const uint64_t through = engine_->last_outbox_id();
  if (through > written_through_) {
    written_through_ = through;
    for (auto& [remote, ch] : channels_) {
      if (ch.session && ch.session->SharesStore()) Pump(remote);
    }
  }
  if (through > sendable_through_) {
    WhenDurable(result.ticket, [this, through] {
      if (through <= sendable_through_) return;
      sendable_through_ = through;
      pump_due_ = true;  // one pump once the work of this sync is done
    });
  }
  for (const auto& m : result.trace->messages()) {
    if (!channels_[m.destination()].session) env_.links->EnsureSession(this, m.destination());
  }
  if (!engine_->timers().empty() || !timer_ids_.empty()) ScheduleTimers();
}

void Agent::ScheduleRetry(absl::Time when) {
  if (retry_timer_ != 0) {
    if (retry_at_ == when) return;
    env_.scheduler->Cancel(retry_timer_);
  }
  retry_at_ = when;
  std::weak_ptr<bool> alive = alive_;
  retry_timer_ = env_.scheduler->At(when, strand_, [this, alive] {
    if (!alive.lock()) return;
    retry_timer_ = 0;
    retry_at_ = absl::InfiniteFuture();
    Process();
  });
}

void Agent::ScheduleTimers() {
  const auto& timers = engine_->timers();
  for (auto it = timer_ids_.begin(); it != timer_ids_.end();) {
    auto t = timers.find(it->first);
    if (t == timers.end() || t->second != it->second.first) {
      env_.scheduler->Cancel(it->second.second);
      it = timer_ids_.erase(it);
    } else {
      ++it;
    }
  }
  std::weak_ptr<bool> alive = alive_;
  for (const auto& [name, due] : timers) {
    if (timer_ids_.contains(name)) continue;
    // Timer records and the scheduler are in the same (the host's) clock's time.
    const uint64_t id = env_.scheduler->At(due, strand_, [this, alive, name = name] {
      if (!alive.lock() || stopped_) return;
      timer_ids_.erase(name);
      if (!engine_->timers().contains(name)) return;
      if (auto r = engine_->EnqueueTimer(name); !r.ok()) {
        Log(v1::LOG_LEVEL_ERROR, absl::StrCat("timer ", name, ": ", r.status().message()));
        return;
      }
      Kick();
    });
    timer_ids_.emplace(name, std::make_pair(due, id));
  }
}

void Agent::Attach(const std::string& remote, std::shared_ptr<PeerSession> session) {
  if (stopped_) {
    session->Close(absl::UnavailableError(absl::StrCat("agent ", name_, " is stopping")));
    return;
  }
  Channel& ch = channels_[remote];
  if (ch.session && ch.session != session) {
    ch.session->Close(absl::AbortedError("replaced by a newer stream"));
  }
  ch.session = std::move(session);
  ch.sent_through = 0;  // resend everything unacknowledged; the receiver deduplicates
  env_.metrics->PeerUp(name_, remote).Set(1);
  env_.metrics->Reconnects(name_, remote);  // the series exists, at 0, before the first end
  Log(v1::LOG_LEVEL_INFO, absl::StrCat("stream with ", remote, " up"));
  Pump(remote);
}

void Agent::Detach(const std::string& remote, const PeerSession* session) {
  auto it = channels_.find(remote);
  if (it == channels_.end() || it->second.session.get() != session) return;
  it->second.session.reset();
  env_.metrics->PeerUp(name_, remote).Set(0);
  if (stopped_) return;
  env_.metrics->Reconnects(name_, remote).Increment();
  Log(v1::LOG_LEVEL_INFO, absl::StrCat("stream with ", remote, " down"));
  if (WantedPeers().contains(remote)) env_.links->EnsureSession(this, remote);
}

void Agent::PumpAll() {
  for (auto& [remote, ch] : channels_) {
    if (ch.session) Pump(remote);
  }
}

void Agent::Pump(const std::string& remote) {
  Channel& ch = channels_[remote];
  if (!ch.session) return;
  const uint64_t limit = ch.session->SharesStore() ? written_through_ : sendable_through_;
  if (ch.sent_through >= limit) return;
  auto entries = engine_->OutboxAfter(remote, ch.sent_through, options_.send_batch, limit);
  if (!entries.ok()) {
    Log(v1::LOG_LEVEL_ERROR, absl::StrCat("outbox: ", entries.status().message()));
    return;
  }
  size_t sent = 0;
  for (const auto& e : *entries) {
    if (e.id() > limit) break;
    ch.session->Send(ToFrame(e));
    ch.sent_through = e.id();
    ++sent;
  }
  metrics_.events_sent->Increment(static_cast<double>(sent));
  if (sent == options_.send_batch) {
    std::weak_ptr<bool> alive = alive_;
    strand_->Post([this, alive, remote] {
      if (alive.lock()) Pump(remote);
    });
  }
}

void Agent::Reject(const std::string& remote, const std::shared_ptr<PeerSession>& session,
                   const absl::Status& why, absl::string_view reason) {
  env_.metrics->Rejected(name_, std::string(reason)).Increment();
  Log(v1::LOG_LEVEL_WARNING, absl::StrCat("refused frame from ", remote, ": ", why.message()));
  session->Close(why);
}

void Agent::OnFrame(const std::string& remote, const std::shared_ptr<PeerSession>& session,
                    const v1::PeerFrame& frame) {
  if (stopped_) return;
  if (frame.has_ack()) {
    const v1::Ack& ack = frame.ack();
    auto t = engine_->Acknowledge(remote, ack.relation_id(), ack.sequence());
    if (!t.ok()) {
      Log(v1::LOG_LEVEL_ERROR, absl::StrCat("ack from ", remote, ": ", t.status().message()));
      return;
    }
    ++acks_;
    metrics_.acks_received->Increment();
    metrics_.outbox_unacked->Set(static_cast<double>(engine_->outbox_size()));
    Notify();
    return;
  }
  if (!frame.has_event()) {
    Reject(remote, session,
           absl::InvalidArgumentError(absl::StrCat("agent ", name_, ": unexpected frame from ",
                                                   remote, " (expected an event or an ack)")),
           "unexpected_frame");
    return;
  }
  const v1::RelationEvent& ev = frame.event();
  if (ev.sender_unit() != remote) {
    Reject(remote, session,
           absl::PermissionDeniedError(absl::StrCat("agent ", name_, ": event claims sender '",
                                                    ev.sender_unit(), "' on the stream from '",
                                                    remote, "'")),
           "wrong_sender");
    return;
  }
  if (ev.sequence() == 0 || engine::RelationKindName(ev.kind()).empty()) {
    Reject(remote, session,
           absl::InvalidArgumentError(absl::StrCat("agent ", name_, ": event from ", remote,
                                                   " on relation '", ev.relation_id(),
                                                   "' has no sequence or kind")),
           "invalid");
    return;
  }
  if (absl::Status s = engine_->CheckPeerEvent(ev.relation_id(), remote, ev.kind()); !s.ok()) {
    Reject(remote, session, s, absl::IsNotFound(s) ? "unknown_relation" : "not_party_to_relation");
    return;
  }
  // The relation it announced is here: from now on it is wanted for the relation's sake only, so
  // that a unit removed right after relating is not dialed for the rest of the minute.
  expecting_.erase(remote);
  v1::Event event;
  event.set_name(absl::StrCat(ev.receiver_endpoint(), ".", engine::RelationKindName(ev.kind())));
  event.set_source(absl::StrCat("peer:", remote));
  v1::RelationChange* rc = event.mutable_relation();
  rc->set_relation_id(ev.relation_id());
  rc->set_endpoint(ev.receiver_endpoint());
  rc->set_remote_service(ev.sender_service());
  rc->set_remote_unit(ev.sender_unit());
  rc->set_kind(ev.kind());
  *rc->mutable_unit_changes() = ev.unit_changes();
  *rc->mutable_service_changes() = ev.service_changes();
  rc->set_remote_endpoint(ev.sender_endpoint());
  rc->set_interface(ev.interface());
  const uint64_t sequence = ev.sequence();
  auto r = engine_->EnqueueFromPeer(std::move(event), sequence);
  if (!r.ok()) {
    if (absl::IsOutOfRange(r.status())) {
      Reject(remote, session, r.status(), "sequence_gap");
    } else if (absl::IsInvalidArgument(r.status())) {
      Reject(remote, session, r.status(), "invalid");
    } else {
      Log(v1::LOG_LEVEL_ERROR, absl::StrCat("inbox: ", r.status().message()));
      session->Close(
          absl::UnavailableError(absl::StrCat("agent ", name_, ": ", r.status().message())));
    }
    return;
  }
  if (r->duplicate) {
    metrics_.events_deduplicated->Increment();
  } else {
    ++received_;
    metrics_.events_received->Increment();
    last_ticket_ = r->ticket;
    Kick();
  }
  // Acknowledge once the event (or, for a resend, everything up to now) is durable. Acks are
  // cumulative: one per relation and sync is enough.
  const std::string relation = ev.relation_id();
  if (session->SharesStore()) {
    SendAck(remote, relation, sequence, session);
    return;
  }
  PendingAck& pending = pending_acks_[{remote, relation}];
  pending.sequence = std::max(pending.sequence, sequence);
  pending.ticket = last_ticket_;
  pending.session = session;
  WhenDurable(last_ticket_, nullptr);
}

std::set<std::string> Agent::WantedPeers() const {
  std::set<std::string> peers;
  for (const auto& [id, rel] : engine_->relations()) {
    if (rel.gone()) continue;
    peers.insert(rel.targets().begin(), rel.targets().end());
    peers.insert(rel.remote_units().begin(), rel.remote_units().end());
  }
  for (const auto& d : engine_->OutboxDestinations()) peers.insert(d);
  const absl::Time now = env_.clock->Now();
  for (const auto& [peer, until] : expecting_) {
    if (until > now) peers.insert(peer);
  }
  return peers;
}

std::string Agent::AddressOf(const std::string& remote) const {
  auto it = addresses_.find(remote);
  return it == addresses_.end() ? "" : it->second;
}

absl::Status Agent::RememberAddress(const std::string& remote, const std::string& address,
                                    bool expect_relation) {
  if (!address.empty() && AddressOf(remote) != address) {
    kb::Txn txn(kb_.get());
    txn.Put(Space::kMeta, absl::StrCat(kAddressPrefix, remote), address);
    RETURN_IF_ERROR(kb_->Commit(txn).status());
    addresses_[remote] = address;
    // A peer that moved: the stream to its old address is useless.
    auto it = channels_.find(remote);
    if (it != channels_.end() && it->second.session) {
      it->second.session->Close(absl::UnavailableError("peer moved"));
    }
  }
  if (expect_relation) expecting_[remote] = env_.clock->Now() + absl::Minutes(1);
  if (!channels_[remote].session) env_.links->EnsureSession(this, remote);
  return absl::OkStatus();
}

v1::AgentStatus Agent::Status() const {
  v1::AgentStatus s;
  s.set_agent(name_);
  s.set_service(spec().service);
  *s.mutable_workload() = engine_->workload_status();
  s.set_stage(engine_->stage());
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
  for (const auto& [remote, ch] : channels_) {
    if (ch.session) peers.insert(remote);
  }
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
  r.set_progress(engine_->runs() + received_ + acks_);
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

absl::StatusOr<v1::CheckRelationResponse> Agent::CheckRelation(const v1::CheckRelationRequest& r) {
  const engine::EndpointSpec* ep = nullptr;
  for (const auto& e : spec().endpoints) {
    if (e.name == r.endpoint()) ep = &e;
  }
  if (ep == nullptr) {
    return absl::NotFoundError(absl::StrCat("agent ", name_, " (service ", spec().service,
                                            ") has no endpoint '", r.endpoint(), "'"));
  }
  if (ep->interface != r.interface()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot relate ", r.remote_agent(), ":", r.remote_endpoint(), " (interface ",
                     r.interface(), ") to ", name_, ":", r.endpoint(), " (interface ",
                     ep->interface, "): the interfaces differ"));
  }
  if (!Compatible(r.role(), engine::RoleName(ep->role))) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot relate ", r.remote_agent(), ":", r.remote_endpoint(), " (", r.role(),
                     ") to ", name_, ":", r.endpoint(), " (", engine::RoleName(ep->role),
                     "): roles must be provides/requires or peers/peers"));
  }
  RETURN_IF_ERROR(
      CheckRelationId(r.relation_id(), r.endpoint(), r.remote_service(), r.remote_endpoint()));
  RETURN_IF_ERROR(RememberAddress(r.remote_agent(), r.remote_address(), true));
  v1::CheckRelationResponse resp;
  resp.set_service(spec().service);
  resp.set_role(std::string(engine::RoleName(ep->role)));
  resp.set_interface(ep->interface);
  return resp;
}

absl::Status Agent::CheckRelationId(const std::string& relation_id, const std::string& endpoint,
                                    const std::string& remote_service,
                                    const std::string& remote_endpoint) const {
  auto it = engine_->relations().find(relation_id);
  if (it == engine_->relations().end()) return absl::OkStatus();
  const v1::RelationRecord& rel = it->second;
  if (!rel.gone() && rel.endpoint() == endpoint && rel.remote_service() == remote_service &&
      rel.remote_endpoint() == remote_endpoint) {
    return absl::OkStatus();
  }
  return absl::AlreadyExistsError(
      absl::StrCat("agent ", name_, ": relation id '", relation_id, "' is already in use",
                   rel.gone() ? " by a removed relation"
                              : absl::StrCat(" by ", rel.endpoint(), " with ", rel.remote_service(),
                                             ":", rel.remote_endpoint())));
}

absl::Status Agent::Relate(const v1::RelateRequest& request, const std::string& remote_service,
                           const std::string& interface) {
  RETURN_IF_ERROR(CheckRelationId(request.relation_id(), request.endpoint(), remote_service,
                                  request.remote_endpoint()));
  // Before the check below: relating again is how an operator tells an agent where a remote unit
  // moved (peers may not, docs/protocol.md "Peer identity").
  RETURN_IF_ERROR(RememberAddress(request.remote_agent(), request.remote_address(), false));
  if (auto it = engine_->relations().find(request.relation_id());
      it != engine_->relations().end()) {
    const auto& t = it->second.targets();
    const auto& r = it->second.remote_units();
    if (std::find(t.begin(), t.end(), request.remote_agent()) != t.end() ||
        std::find(r.begin(), r.end(), request.remote_agent()) != r.end()) {
      return absl::OkStatus();
    }
  }
  v1::Event e;
  e.set_name(absl::StrCat(request.endpoint(), ".created"));
  e.set_source("api");
  v1::RelationChange* rc = e.mutable_relation();
  rc->set_relation_id(request.relation_id());
  rc->set_endpoint(request.endpoint());
  rc->set_remote_service(remote_service);
  rc->set_remote_unit(request.remote_agent());
  rc->set_kind(v1::RELATION_EVENT_KIND_CREATED);
  rc->set_remote_endpoint(request.remote_endpoint());
  rc->set_interface(interface);
  ASSIGN_OR_RETURN(engine::EnqueueResult queued, engine_->Enqueue(std::move(e)));
  last_ticket_ = std::max(last_ticket_, queued.ticket);
  Log(v1::LOG_LEVEL_INFO,
      absl::StrCat("related ", request.endpoint(), " to ", request.remote_agent(), ":",
                   request.remote_endpoint(), " as ", request.relation_id()));
  Kick();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::Event>> Agent::DeparturesOf(const std::string& relation_id) const {
  auto it = engine_->relations().find(relation_id);
  if (it == engine_->relations().end() || it->second.gone()) {
    return absl::NotFoundError(
        absl::StrCat("agent ", name_, " has no relation '", relation_id, "'"));
  }
  const v1::RelationRecord& rel = it->second;
  std::set<std::string> units(rel.targets().begin(), rel.targets().end());
  units.insert(rel.remote_units().begin(), rel.remote_units().end());
  auto make = [&](v1::RelationEventKind kind, const std::string& unit) {
    v1::Event e;
    e.set_name(absl::StrCat(rel.endpoint(), ".", engine::RelationKindName(kind)));
    e.set_source("api");
    v1::RelationChange* rc = e.mutable_relation();
    rc->set_relation_id(relation_id);
    rc->set_endpoint(rel.endpoint());
    rc->set_remote_service(rel.remote_service());
    rc->set_remote_unit(unit);
    rc->set_kind(kind);
    rc->set_local(true);
    return e;
  };
  // The last departure queues the broken event (see the engine).
  std::vector<v1::Event> events;
  for (const auto& unit : units) events.push_back(make(v1::RELATION_EVENT_KIND_DEPARTED, unit));
  if (units.empty()) events.push_back(make(v1::RELATION_EVENT_KIND_BROKEN, ""));
  return events;
}

absl::Status Agent::Unrelate(const std::string& relation_id) {
  ASSIGN_OR_RETURN(std::vector<v1::Event> events, DeparturesOf(relation_id));
  ASSIGN_OR_RETURN(engine::EnqueueResult queued, engine_->EnqueueAll(std::move(events)));
  last_ticket_ = std::max(last_ticket_, queued.ticket);
  Log(v1::LOG_LEVEL_INFO, absl::StrCat("unrelating ", relation_id));
  Kick();
  return absl::OkStatus();
}

absl::Status Agent::BeginRemoval(absl::string_view by) {
  if (executing_) {
    return absl::UnavailableError(
        absl::StrCat("agent ", name_, " is in a run: its removal begins after it"));
  }
  // The stop first, then the departure of every relation, in one write (see the engine).
  std::vector<v1::Event> departures;
  int related = 0;
  for (const auto& [id, rel] : engine_->relations()) {
    if (rel.gone()) continue;
    ++related;
    ASSIGN_OR_RETURN(std::vector<v1::Event> events, DeparturesOf(id));
    for (v1::Event& e : events) departures.push_back(std::move(e));
  }
  ASSIGN_OR_RETURN(engine::EnqueueResult queued,
                   engine_->BeginRemoval(by, std::move(departures)));
  if (queued.event_id != 0) {
    last_ticket_ = std::max(last_ticket_, queued.ticket);
    Log(v1::LOG_LEVEL_INFO,
        absl::StrCat("removal begun (", by, "): dying once its stop applies; departing ",
                     related, " relation(s)"));
  }
  Kick();
  Notify();
  return absl::OkStatus();
}

bool Agent::Dead() const {
  return engine_->stage() == v1::UNIT_STAGE_DEAD && !executing_ && engine_->outbox_size() == 0;
}

v1::GetRelationDataResponse Agent::RelationData(const std::string& endpoint) const {
  v1::GetRelationDataResponse resp;
  for (const auto& [id, rel] : engine_->relations()) {
    if (rel.gone() || (!endpoint.empty() && rel.endpoint() != endpoint)) continue;
    v1::RelationData* d = resp.add_relations();
    d->set_relation_id(id);
    d->set_remote_service(rel.remote_service());
    auto add = [&](const std::string& name, const std::string& bag) {
      auto data = engine_->Bag(id, bag);
      if (!data.ok()) return;
      v1::Bag* b = d->add_bags();
      b->set_name(name);
      for (const auto& [k, v] : *data) (*b->mutable_data())[k] = v;
    };
    add("local-unit", "lu");
    add("local-service", "ls");
    for (const auto& unit : rel.remote_units())
      add(absl::StrCat("unit:", unit), absl::StrCat("ru:", unit));
    add("remote-service", "rs");
  }
  return resp;
}

uint64_t Agent::Watch(Watcher fn) {
  const uint64_t id = next_watcher_++;
  watchers_.emplace(id, std::move(fn));
  watchers_.at(id)(Status());
  return id;
}

void Agent::Unwatch(uint64_t id) { watchers_.erase(id); }

void Agent::Notify() {
  if (watchers_.empty()) return;
  const v1::AgentStatus s = Status();
  for (auto& [id, fn] : watchers_) fn(s);
}

void Agent::Stop() {
  stopped_ = true;
  if (retry_timer_) env_.scheduler->Cancel(retry_timer_);
  if (update_timer_) env_.scheduler->Cancel(update_timer_);
  for (auto& [name, t] : timer_ids_) env_.scheduler->Cancel(t.second);
  timer_ids_.clear();
  for (auto& [remote, ch] : channels_) {
    if (ch.session)
      ch.session->Close(absl::UnavailableError(absl::StrCat("agent ", name_, " stopping")));
    ch.session.reset();
  }
  watchers_.clear();
  // The change each of these answers is about was committed, but its sync was not seen: the
  // caller must not take it as durable, nor wait for an answer that the stopped agent will not
  // give.
  AbandonAnswers(absl::UnavailableError(
      absl::StrCat("agent ", name_,
                   " stopped before the change was confirmed durable (it was committed and "
                   "normally survives; check once the agent is back)")));
  alive_.reset();  // pending callbacks see the agent gone
}

}  // namespace parley::services
