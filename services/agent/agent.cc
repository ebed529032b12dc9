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
      metrics_(env.metrics->ForAgent(name_)),
      delivery_(std::make_unique<Delivery>(env, name_, engine_.get(), &metrics_, strand_,
                                           options_.send_batch,
                                           static_cast<DeliveryOwner*>(this))) {
  MakeHealthMonitor();
  MakeCampaigner();
}

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
  delivery_->OnDurable(ticket);
  if (!durable_work_.empty()) WaitForStore(durable_work_.back().first);
}

void Agent::Start() {
  // Entries left in the outbox by an earlier process were written before it stopped; once the
  // startup write is durable they may all go.
  {
    const uint64_t through = engine_->last_outbox_id();
    delivery_->Committed(through);
    WhenDurable(last_ticket_, [this, through] { delivery_->Sendable(through); });
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
  UpdateHealth();
  UpdateLeadership();
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
      Log(v1::LOG_LEVEL_WARNING,
          absl::StrCat("run ", r->run, ": '", last_event_,
                       "' cancelled (its data applied, nothing fired): ", r->trace->error()));
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
  delivery_->Committed(through);
  if (result.trace->messages_size() > 0) {
    WhenDurable(result.ticket, [this, through] { delivery_->Sendable(through); });
  }
  for (const auto& m : result.trace->messages()) {
    if (!delivery_->HasSession(m.destination())) env_.links->EnsureSession(this, m.destination());
  }
  if (!engine_->timers().empty() || !timer_ids_.empty()) ScheduleTimers();
  UpdateHealth();
  UpdateLeadership();
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

void Agent::PeerEventQueued(uint64_t ticket) {
  last_ticket_ = ticket;
  Kick();
}

void Agent::WakeWhenDurable(uint64_t ticket) { WhenDurable(ticket, nullptr); }

void Agent::HeardFrom(const std::string& remote) {
  // The relation it announced is here: from now on it is wanted for the relation's sake only, so
  // that a unit removed right after relating is not dialed for the rest of the minute.
  expecting_.erase(remote);
}

void Agent::SessionDown(const std::string& remote) {
  if (WantedPeers().contains(remote)) env_.links->EnsureSession(this, remote);
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
    delivery_->Close(remote, absl::UnavailableError("peer moved"));
  }
  if (expect_relation) expecting_[remote] = env_.clock->Now() + absl::Minutes(1);
  if (!delivery_->HasSession(remote)) env_.links->EnsureSession(this, remote);
  return absl::OkStatus();
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
  ASSIGN_OR_RETURN(engine::EnqueueResult queued, engine_->BeginRemoval(by, std::move(departures)));
  if (queued.event_id != 0) {
    last_ticket_ = std::max(last_ticket_, queued.ticket);
    Log(v1::LOG_LEVEL_INFO,
        absl::StrCat("removal begun (", by, "): dying once its stop applies; departing ", related,
                     " relation(s)"));
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
  if (health_) health_->Stop();
  if (resign_timer_ != 0) env_.scheduler->Cancel(resign_timer_);
  if (campaigner_) campaigner_->Stop();  // resigns and revokes its lease
  campaigning_ = false;
  if (retry_timer_) env_.scheduler->Cancel(retry_timer_);
  if (update_timer_) env_.scheduler->Cancel(update_timer_);
  for (auto& [name, t] : timer_ids_) env_.scheduler->Cancel(t.second);
  timer_ids_.clear();
  delivery_->Stop(absl::UnavailableError(absl::StrCat("agent ", name_, " stopping")));
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
