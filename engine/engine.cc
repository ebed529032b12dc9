#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/key_layout.h"
#include "engine/run.h"

namespace parley::engine {

Engine::Engine(ServiceSpec spec, kb::Kb* kb, base::Clock* clock, EngineOptions options)
    : spec_(std::move(spec)),
      kb_(kb),
      clock_(clock),
      options_(options),
      random_(options.random_seed),
      txn_(kb->Begin()) {}

Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(ServiceSpec spec, kb::Kb* kb,
                                                       base::Clock* clock, EngineOptions options) {
  std::unique_ptr<Engine> engine(new Engine(std::move(spec), kb, clock, options));
  RETURN_IF_ERROR(engine->Build());
  RETURN_IF_ERROR(engine->Load());
  return engine;
}

absl::Status Engine::Load() {
  for (auto& [name, f] : facts_) {
    f.set = false;
    f.value.clear();
    f.version = 0;
    f.touched = false;
    f.changed_since_retest = false;
  }
  absl::Status parse_status;
  RETURN_IF_ERROR(kb_->Scan(Space::kFact, "", [&](absl::string_view key, absl::string_view value) {
    v1::FactRecord rec;
    parse_status = Parse(*kb_, "fact", key, value, rec);
    if (!parse_status.ok()) return false;
    FactState& f = Intern(key);
    f.set = rec.set();
    f.value = rec.value();
    f.version = rec.version();
    return true;
  }));
  RETURN_IF_ERROR(parse_status);

  ASSIGN_OR_RETURN(change_clock_, ReadCounter(*kb_, kMetaClock, 0));
  ASSIGN_OR_RETURN(run_counter_, ReadCounter(*kb_, kMetaRun, 0));
  ASSIGN_OR_RETURN(next_event_id_, ReadCounter(*kb_, kMetaNextEvent, 1));
  ASSIGN_OR_RETURN(next_outbox_id_, ReadCounter(*kb_, kMetaNextOutbox, 1));

  failure_.reset();
  ASSIGN_OR_RETURN(auto failure, kb_->Get(Space::kMeta, kMetaFailure));
  if (failure) {
    v1::RunFailure f;
    RETURN_IF_ERROR(Parse(*kb_, "run failure", kMetaFailure, *failure, f));
    failure_ = f;
  }
  status_.Clear();
  ASSIGN_OR_RETURN(auto status, kb_->Get(Space::kMeta, kMetaStatus));
  if (status) RETURN_IF_ERROR(Parse(*kb_, "status", kMetaStatus, *status, status_));

  relations_.clear();
  RETURN_IF_ERROR(
      kb_->Scan(Space::kRelation, "", [&](absl::string_view key, absl::string_view value) {
        v1::RelationRecord rec;
        parse_status = Parse(*kb_, "relation", key, value, rec);
        if (!parse_status.ok()) return false;
        relations_.emplace(std::string(key), std::move(rec));
        return true;
      }));
  RETURN_IF_ERROR(parse_status);

  config_.clear();
  RETURN_IF_ERROR(
      kb_->Scan(Space::kMeta, kConfigPrefix, [&](absl::string_view k, absl::string_view v) {
        config_.emplace(std::string(k), std::string(v));
        return true;
      }));
  timers_.clear();
  RETURN_IF_ERROR(
      kb_->Scan(Space::kMeta, kTimerPrefix, [&](absl::string_view k, absl::string_view v) {
        auto ms = kb::DecodeU64(v);
        parse_status = ms.status();
        if (!ms.ok()) return false;
        timers_.emplace(std::string(k), absl::FromUnixMillis(static_cast<int64_t>(*ms)));
        return true;
      }));
  RETURN_IF_ERROR(parse_status);
  outbox_size_ = 0;
  unacked_.clear();
  RETURN_IF_ERROR(
      kb_->Scan(Space::kOutbox, "", [&](absl::string_view key, absl::string_view value) {
        v1::OutboxEntry e;
        parse_status = Parse(*kb_, "outbox entry", key, value, e);
        if (!parse_status.ok()) return false;
        unacked_[{e.destination(), e.relation_id()}].emplace_back(e.sequence(), e.id());
        ++outbox_size_;
        return true;
      }));
  RETURN_IF_ERROR(parse_status);

  inbox_head_ = next_event_id_;
  RETURN_IF_ERROR(kb_->Scan(Space::kInbox, "", [&](absl::string_view key, absl::string_view) {
    auto id = kb::DecodeU64(key);
    if (id.ok()) inbox_head_ = *id;
    parse_status = id.status();
    return false;
  }));
  RETURN_IF_ERROR(parse_status);
  inbox_depth_ = next_event_id_ - inbox_head_;

  absl::flat_hash_map<std::string, uint64_t> last_ran;
  RETURN_IF_ERROR(
      kb_->Scan(Space::kHandler, "", [&](absl::string_view key, absl::string_view value) {
        auto v = kb::DecodeU64(value);
        if (!v.ok()) {
          parse_status = absl::DataLossError(
              absl::StrCat("knowledge base ", kb_->store()->path(), ", agent ", kb_->agent(),
                           ": handler '", key, "' bookkeeping: ", v.status().message()));
          return false;
        }
        last_ran.emplace(std::string(key), *v);
        return true;
      }));
  RETURN_IF_ERROR(parse_status);

  pending_.clear();
  for (auto& h : handlers_) {
    h->in_queue = false;
    h->executions = 0;
    h->ran_in_run = false;
    h->unsatisfied = 0;
    for (FactState* f : h->when) h->unsatisfied += f->set ? 0 : 1;
    for (FactState* f : h->when_not) h->unsatisfied += f->set ? 1 : 0;
    auto it = last_ran.find(h->name);
    h->ran = it != last_ran.end();
    h->last_ran = h->ran ? it->second : 0;
    h->dirty = !h->ran;
    h->dirty_cause = nullptr;
    if (h->ran) {
      for (auto* list : {&h->when, &h->when_not}) {
        for (FactState* f : *list) {
          if (f->version > h->last_ran &&
              (h->dirty_cause == nullptr || f->version > h->dirty_cause->version)) {
            h->dirty = true;
            h->dirty_cause = f;
          }
        }
      }
    }
    if (h->fact_only && h->dirty && h->unsatisfied == 0) pending_.push_back(h.get());
  }
  return absl::OkStatus();
}

bool Engine::IsSet(absl::string_view fact) const {
  auto it = facts_.find(fact);
  return it != facts_.end() && it->second.set;
}

std::optional<std::string> Engine::FactValue(absl::string_view fact) const {
  auto it = facts_.find(fact);
  if (it == facts_.end() || !it->second.set) return std::nullopt;
  return it->second.value;
}

std::map<std::string, std::string> Engine::Facts() const {
  std::map<std::string, std::string> out;
  for (const auto& [name, f] : facts_) {
    if (f.set) out.emplace(name, f.value);
  }
  return out;
}

absl::StatusOr<RunResult> Engine::RunOnce() {
  RunResult result;
  if (inbox_depth_ == 0) return result;
  const std::string key = kb::EncodeU64(inbox_head_);
  ASSIGN_OR_RETURN(auto bytes, kb_->Get(Space::kInbox, key));
  if (!bytes) {
    return absl::DataLossError(absl::StrCat("knowledge base ", kb_->store()->path(), ", agent ",
                                            kb_->agent(), ": inbox event ", inbox_head_,
                                            " is missing"));
  }
  uint32_t attempt = 1;
  if (failure_ && failure_->event_id() == inbox_head_) {
    attempt = failure_->attempt() + 1;
    absl::Time due = absl::FromUnixMillis(failure_->next_retry_unix_ms());
    if (clock_->Now() < due) {
      result.outcome = RunOutcome::kNotDue;
      result.next_attempt = due;
      return result;
    }
  }
  v1::Event event;
  RETURN_IF_ERROR(Parse(*kb_, "inbox event", absl::StrCat(inbox_head_), *bytes, event));
  return Execute(event, attempt);
}

absl::StatusOr<RunResult> Engine::RunUntilIdle() {
  RunResult last;
  uint64_t ticket = 0;
  for (;;) {
    ASSIGN_OR_RETURN(RunResult r, RunOnce());
    if (r.ticket) ticket = r.ticket;
    if (r.outcome == RunOutcome::kIdle || r.outcome == RunOutcome::kNotDue ||
        r.outcome == RunOutcome::kFailed) {
      if (r.outcome != RunOutcome::kIdle || last.outcome == RunOutcome::kIdle) last = r;
      break;
    }
    last = r;
  }
  if (ticket) RETURN_IF_ERROR(kb_->store()->WaitDurable(ticket));
  return last;
}

absl::StatusOr<RunResult> Engine::Execute(const v1::Event& event, uint32_t attempt) {
  const absl::Time start = clock_->Now();
  const uint64_t run_number = run_counter_ + 1;
  txn_->Clear();
  run_ = std::make_unique<Run>(this, event);
  v1::Trace trace;
  trace.set_run(run_number);
  *trace.mutable_trigger() = event;
  trace.set_attempt(attempt);
  trace.set_started_unix_ns(absl::ToUnixNanos(start));

  auto fail = [&](std::string handler, std::string message) {
    trace.set_duration_ns(absl::ToInt64Nanoseconds(clock_->Now() - start));
    return FailRun(event, attempt, std::move(handler), std::move(message), trace);
  };

  absl::Status applied = ApplyConfigChange(event);
  if (applied.ok()) applied = ApplyRelationChange(event);
  if (absl::Status s = applied; !s.ok()) {
    if (absl::IsInvalidArgument(s) || absl::IsNotFound(s))
      return fail("", std::string(s.message()));
    run_.reset();
    RETURN_IF_ERROR(Load());
    return s;
  }
  FireEvent(event.name(), nullptr);
  Retest();
  while (!run_->queue.empty()) {
    auto [h, gen] = run_->queue.front();
    run_->queue.pop_front();
    if (!h->in_queue || h->queue_gen != gen) continue;
    h->in_queue = false;
    if (run_->executions >= options_.max_handler_executions) {
      // About to exceed the bound: the run does not converge.
      std::vector<const Handler*> cycled;
      for (const auto& hp : handlers_) {
        if (hp->executions > 1) cycled.push_back(hp.get());
      }
      std::stable_sort(cycled.begin(), cycled.end(), [](const Handler* a, const Handler* b) {
        return a->executions > b->executions;
      });
      if (cycled.size() > 10) cycled.resize(10);
      std::string names = absl::StrJoin(cycled, ", ", [](std::string* out, const Handler* c) {
        absl::StrAppend(out, c->name, " (", c->executions, " runs)");
      });
      return fail("", absl::StrCat("run exceeded ", options_.max_handler_executions,
                                   " handler executions without converging; handlers that cycled: ",
                                   names.empty() ? "none repeated" : names));
    }
    if (absl::Status s = RunHandler(h); !s.ok()) return fail(h->name, std::string(s.message()));
    Retest();
  }
  RunResult result;
  result.handler_time = clock_->Now() - start;
  result.handlers_run = run_->executions;
  // The stored trace says how long the run took up to its commit (the commit itself is written
  // with it, so it cannot count itself).
  trace.set_duration_ns(absl::ToInt64Nanoseconds(result.handler_time));
  auto ticket = CommitRun(event, trace);
  if (!ticket.ok()) {
    run_.reset();
    txn_->Clear();
    RETURN_IF_ERROR(Load());
    return ticket.status();
  }
  trace.set_duration_ns(absl::ToInt64Nanoseconds(clock_->Now() - start));
  result.outcome = RunOutcome::kCommitted;
  result.run = run_number;
  result.ticket = *ticket;
  result.trace = std::make_shared<const v1::Trace>(std::move(trace));
  return result;
}

absl::Status Engine::ApplyConfigChange(const v1::Event& event) {
  for (const auto& c : event.config_changes()) {
    if (c.deleted()) {
      config_.erase(c.key());
      txn_->Delete(Space::kMeta, MetaKey("cfg", c.key()));
    } else {
      config_[c.key()] = c.value();
      txn_->Put(Space::kMeta, MetaKey("cfg", c.key()), c.value());
    }
  }
  return absl::OkStatus();
}

void Engine::ChangeFact(FactState& f, bool set, absl::string_view value) {
  if (f.set == set && (!set || f.value == value)) return;
  if (!f.touched) {
    f.touched = true;
    f.old_set = f.set;
    f.old_value = f.value;
    run_->touched.push_back(&f);
  }
  const bool was = f.set;
  f.set = set;
  if (set) {
    f.value.assign(value.data(), value.size());
  } else {
    f.value.clear();
  }
  f.version = ++change_clock_;
  if (was != set) {
    const int d = set ? -1 : 1;
    for (Handler* h : f.when_of) h->unsatisfied += d;
    for (Handler* h : f.when_not_of) h->unsatisfied -= d;
  }
  for (Handler* h : f.fact_only_of) {
    h->dirty = true;
    if (h->ran) h->dirty_cause = &f;  // a handler that never ran stays "never ran"
    pending_.push_back(h);
  }
  if (!f.changed_since_retest) {
    f.changed_since_retest = true;
    run_->changed.push_back(&f);
  }
  if (run_->current_changes != nullptr) {
    v1::FactChange& c = run_->current_changes->emplace_back();
    c.set_name(f.name);
    c.set_set(set);
    if (set) c.set_value(f.value);
  }
}

absl::Status Engine::SetFact(absl::string_view name, absl::string_view value, bool derived) {
  if (!run_) return absl::FailedPreconditionError("facts change only inside a run");
  FactState& f = Intern(name);
  if (f.derived && !derived) {
    return absl::InvalidArgumentError(
        absl::StrCat("fact '", name, "' is a relationship fact, derived from relation data"));
  }
  if (name.empty()) return absl::InvalidArgumentError("fact name is empty");
  ChangeFact(f, true, value);
  return absl::OkStatus();
}

absl::Status Engine::ClearFact(absl::string_view name, bool derived) {
  if (!run_) return absl::FailedPreconditionError("facts change only inside a run");
  auto it = facts_.find(name);
  if (it == facts_.end()) {
    if (!derived && EndpointOf(name) != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("fact '", name, "' is a relationship fact, derived from relation data"));
    }
    return absl::OkStatus();
  }
  if (it->second.derived && !derived) {
    return absl::InvalidArgumentError(
        absl::StrCat("fact '", name, "' is a relationship fact, derived from relation data"));
  }
  ChangeFact(it->second, false, "");
  return absl::OkStatus();
}

void Engine::Queue(Handler* h, int reason_kind, absl::string_view reason_event) {
  h->in_queue = true;
  ++h->queue_gen;
  run_->queue.emplace_back(h, h->queue_gen);
  StepRecord& s = run_->steps.emplace_back();
  s.kind = v1::TraceStep::KIND_QUEUED;
  s.handler = h;
  s.reason = static_cast<Reason>(reason_kind);
  s.fact = h->dirty_cause;
  if (!reason_event.empty()) s.text = std::string(reason_event);
}

std::string Engine::FailedPrecondition(const Handler& h) const {
  for (const FactState* f : h.when) {
    if (!f->set) return absl::StrCat("when ", f->name, ": not set");
  }
  for (const FactState* f : h.when_not) {
    if (f->set) return absl::StrCat("when_not ", f->name, ": set");
  }
  return "preconditions hold";
}

void Engine::FireEvent(absl::string_view event, const Handler* by) {
  StepRecord& fired = run_->steps.emplace_back();
  fired.kind = v1::TraceStep::KIND_FIRED;
  fired.handler = by;
  fired.text = std::string(event);
  auto it = by_event_.find(event);
  if (it == by_event_.end()) return;
  for (Handler* h : it->second) {
    if (h->in_queue) continue;
    if (h->unsatisfied == 0) {
      Queue(h, static_cast<int>(Reason::kOnEvent), event);
    } else {
      StepRecord& s = run_->steps.emplace_back();
      s.kind = v1::TraceStep::KIND_SKIPPED;
      s.handler = h;
      s.reason = Reason::kText;
      s.text = absl::StrCat("on ", event, ", but ", FailedPrecondition(*h));
    }
  }
}

void Engine::Retest() {
  for (FactState* f : run_->changed) {
    f->changed_since_retest = false;
    for (auto* list : {&f->when_of, &f->when_not_of}) {
      for (Handler* h : *list) {
        if (!h->in_queue || h->unsatisfied == 0) continue;
        h->in_queue = false;
        ++h->queue_gen;
        StepRecord& s = run_->steps.emplace_back();
        s.kind = v1::TraceStep::KIND_DROPPED;
        s.handler = h;
        s.reason = Reason::kText;
        s.text = FailedPrecondition(*h);
      }
    }
  }
  run_->changed.clear();
  if (!run_->fired.empty()) {
    std::vector<std::string> fired;
    fired.swap(run_->fired);
    for (const auto& e : fired) FireEvent(e, run_->current);
  }
  if (pending_.empty()) return;
  if (pending_.size() > 1) {
    std::sort(pending_.begin(), pending_.end(),
              [](const Handler* a, const Handler* b) { return a->index < b->index; });
    pending_.erase(std::unique(pending_.begin(), pending_.end()), pending_.end());
  }
  for (Handler* h : pending_) {
    if (h->dirty && h->unsatisfied == 0 && !h->in_queue) {
      Queue(h, static_cast<int>(h->dirty_cause ? Reason::kFactChanged : Reason::kNeverRan), "");
    }
  }
  pending_.clear();
}

absl::Status Engine::RunHandler(Handler* h) {
  run_->current = h;
  if (h->executions++ == 0) run_->executed.push_back(h);
  ++run_->executions;
  std::vector<v1::FactChange> changes;
  run_->current_changes = &changes;
  txn_->SetSavePoint();
  const absl::Time t0 = clock_->Now();
  absl::Status status = h->action->Run(run_->ctx);
  const int64_t ns = absl::ToInt64Nanoseconds(clock_->Now() - t0);
  run_->current_changes = nullptr;
  StepRecord& s = run_->steps.emplace_back();
  s.handler = h;
  s.duration_ns = ns;
  s.changes = std::move(changes);
  s.fired = run_->fired;
  if (!status.ok()) {
    s.kind = v1::TraceStep::KIND_FAILED;
    s.error = std::string(status.message());
    RETURN_IF_ERROR(txn_->RollbackToSavePoint());
    return status;
  }
  s.kind = v1::TraceStep::KIND_RAN;
  RETURN_IF_ERROR(txn_->PopSavePoint());
  if (h->fact_only) {
    h->dirty = false;
    h->dirty_cause = nullptr;
    h->ran = true;
    h->last_ran = change_clock_;
    if (!h->ran_in_run) {
      h->ran_in_run = true;
      run_->ran.push_back(h);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Engine::CommitRun(const v1::Event& event, v1::Trace& trace) {
  const uint64_t run_number = run_counter_ + 1;
  for (const FactState* f : run_->touched) {
    v1::FactRecord rec;
    rec.set_set(f->set);
    rec.set_value(f->value);
    rec.set_version(f->version);
    txn_->PutUnindexed(Space::kFact, f->name, rec.SerializeAsString());
  }
  for (Handler* h : run_->ran)
    txn_->PutUnindexed(Space::kHandler, h->name, kb::EncodeU64(h->last_ran));

  uint64_t next_outbox = next_outbox_id_;
  const size_t outbox_before = outbox_size_;
  RETURN_IF_ERROR(StageOutbox(run_number, trace, next_outbox));
  for (const auto& id : run_->relations_changed) {
    v1::RelationRecord& rel = relations_.at(id);
    if (run_->broken.contains(id)) {
      rel.set_gone(true);
      RETURN_IF_ERROR(
          txn_->DeletePrefix(Space::kBag, absl::StrCat(id, absl::string_view("\0", 1))));
    }
    txn_->Put(Space::kRelation, id, rel.SerializeAsString());
  }
  // A relation left without remote units is broken in a run of its own, queued atomically.
  std::vector<v1::Event> follow_ups;
  for (const auto& id : run_->follow_up_broken) {
    const v1::RelationRecord& rel = relations_.at(id);
    if (run_->broken.contains(id)) continue;
    v1::Event& e = follow_ups.emplace_back();
    e.set_name(absl::StrCat(rel.endpoint(), ".broken"));
    e.set_source("engine");
    e.mutable_relation()->set_relation_id(id);
    e.mutable_relation()->set_endpoint(rel.endpoint());
    e.mutable_relation()->set_remote_service(rel.remote_service());
    e.mutable_relation()->set_kind(v1::RELATION_EVENT_KIND_BROKEN);
  }
  const uint64_t first_follow_up = next_event_id_;
  for (auto& e : follow_ups) {
    StageInbox(*txn_, e);
    ++next_event_id_;
  }
  txn_->PutUnindexed(Space::kMeta, kMetaClock, kb::EncodeU64(change_clock_));
  txn_->PutUnindexed(Space::kMeta, kMetaRun, kb::EncodeU64(run_number));
  if (next_outbox != next_outbox_id_) {
    txn_->PutUnindexed(Space::kMeta, kMetaNextOutbox, kb::EncodeU64(next_outbox));
  }
  txn_->DeleteUnindexed(Space::kInbox, kb::EncodeU64(event.id()));
  if (failure_) txn_->Delete(Space::kMeta, kMetaFailure);

  BuildTrace(trace);
  trace.set_result(v1::Trace::RESULT_COMMITTED);
  txn_->PutUnindexed(Space::kTrace, kb::EncodeU64(run_number), trace.SerializeAsString());
  if (run_number > options_.traces_kept) {
    txn_->DeleteUnindexed(Space::kTrace, kb::EncodeU64(run_number - options_.traces_kept));
  }
  absl::StatusOr<uint64_t> committed = kb_->Commit(*txn_);
  if (!committed.ok()) {
    next_event_id_ = first_follow_up;
    outbox_size_ = outbox_before;
    return committed.status();
  }
  const uint64_t ticket = *committed;

  // Committed: the staged state becomes the agent's state.
  for (const auto& e : run_->staged) {
    unacked_[{e.destination, e.relation}].emplace_back(e.sequence, e.id);
  }
  run_counter_ = run_number;
  next_outbox_id_ = next_outbox;
  ++inbox_head_;
  --inbox_depth_;
  inbox_depth_ += follow_ups.size();
  failure_.reset();
  for (FactState* f : run_->touched) f->touched = false;
  for (Handler* h : run_->ran) h->ran_in_run = false;
  for (Handler* h : run_->executed) h->executions = 0;
  run_.reset();
  return ticket;
}

absl::StatusOr<RunResult> Engine::FailRun(const v1::Event& event, uint32_t attempt,
                                          std::string handler, std::string message,
                                          v1::Trace& trace) {
  const uint64_t run_number = run_counter_ + 1;
  BuildTrace(trace);
  trace.set_result(v1::Trace::RESULT_ROLLED_BACK);
  trace.set_error(handler.empty() ? message : absl::StrCat("handler ", handler, ": ", message));
  run_.reset();
  txn_->Clear();
  // Everything the run staged in memory is discarded by reloading the committed state.
  RETURN_IF_ERROR(Load());

  absl::Duration delay = options_.retry_initial;
  for (uint32_t i = 1; i < attempt && delay < options_.retry_max; ++i) delay *= 2;
  delay = std::min(delay, options_.retry_max);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  delay -= delay * (options_.retry_jitter * unit(random_));
  const absl::Time next = clock_->Now() + delay;

  v1::RunFailure failure;
  failure.set_event_id(event.id());
  failure.set_event_name(event.name());
  failure.set_handler(handler);
  failure.set_message(message);
  failure.set_attempt(attempt);
  failure.set_next_retry_unix_ms(absl::ToUnixMillis(next));

  kb::Txn txn(kb_);
  txn.Put(Space::kMeta, kMetaFailure, failure.SerializeAsString());
  txn.Put(Space::kMeta, kMetaRun, kb::EncodeU64(run_number));
  txn.Put(Space::kTrace, kb::EncodeU64(run_number), trace.SerializeAsString());
  if (run_number > options_.traces_kept) {
    txn.Delete(Space::kTrace, kb::EncodeU64(run_number - options_.traces_kept));
  }
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  run_counter_ = run_number;
  failure_ = failure;

  RunResult result;
  result.outcome = RunOutcome::kFailed;
  result.run = run_number;
  result.ticket = ticket;
  result.next_attempt = next;
  result.trace = std::make_shared<const v1::Trace>(std::move(trace));
  return result;
}

}  // namespace parley::engine
