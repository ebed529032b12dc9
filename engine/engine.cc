#include "engine/engine.h"

#include <algorithm>
#include <set>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/backoff.h"
#include "base/status_macros.h"
#include "engine/handler_graph.h"
#include "engine/inbox.h"
#include "engine/key_layout.h"
#include "engine/outbox.h"
#include "engine/relations.h"
#include "engine/run.h"
#include "engine/trace.h"

namespace parley::engine {

using kb::Space;

absl::string_view RelationKindName(v1::RelationEventKind kind) {
  switch (kind) {
    case v1::RELATION_EVENT_KIND_JOINED:
      return "joined";
    case v1::RELATION_EVENT_KIND_CHANGED:
      return "changed";
    case v1::RELATION_EVENT_KIND_DEPARTED:
      return "departed";
    case v1::RELATION_EVENT_KIND_BROKEN:
      return "broken";
    case v1::RELATION_EVENT_KIND_CREATED:
      return "created";
    default:
      return "";
  }
}

Engine::Engine(ServiceSpec spec, kb::Kb* kb, base::Clock* clock, EngineOptions options)
    : spec_(std::move(spec)),
      kb_(kb),
      clock_(clock),
      options_(options),
      retry_(std::make_unique<base::Backoff>(base::BackoffOptions{
          options.retry_initial, options.retry_max, options.retry_jitter, options.random_seed})),
      graph_(std::make_unique<HandlerGraph>()),
      inbox_(std::make_unique<Inbox>()),
      relations_(std::make_unique<Relations>()),
      outbox_(std::make_unique<engine::Outbox>()),
      txn_(kb->Begin()) {}

Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(ServiceSpec spec, kb::Kb* kb,
                                                       base::Clock* clock, EngineOptions options) {
  std::unique_ptr<Engine> engine(new Engine(std::move(spec), kb, clock, options));
  RETURN_IF_ERROR(engine->graph_->Build(engine->spec_));
  RETURN_IF_ERROR(engine->Load());
  return engine;
}

absl::Status Engine::Load() {
  RETURN_IF_ERROR(LoadFacts());
  ASSIGN_OR_RETURN(change_clock_, ReadCounter(*kb_, keys::kClock, 0));
  ASSIGN_OR_RETURN(run_counter_, ReadCounter(*kb_, keys::kRun, 0));
  RETURN_IF_ERROR(inbox_->Load(*kb_));
  RETURN_IF_ERROR(outbox_->Load(*kb_));
  RETURN_IF_ERROR(relations_->Load(*kb_));
  RETURN_IF_ERROR(LoadStage());

  failure_.reset();
  ASSIGN_OR_RETURN(auto failure, kb_->Get(Space::kMeta, keys::kFailure));
  if (failure) {
    v1::RunFailure f;
    RETURN_IF_ERROR(ParseRecord(*kb_, "run failure", keys::kFailure, *failure, f));
    failure_ = f;
  }
  status_.Clear();
  ASSIGN_OR_RETURN(auto status, kb_->Get(Space::kMeta, keys::kStatus));
  if (status) RETURN_IF_ERROR(ParseRecord(*kb_, "status", keys::kStatus, *status, status_));

  config_.clear();
  RETURN_IF_ERROR(
      kb_->Scan(Space::kMeta, keys::ConfigPrefix(), [&](absl::string_view k, absl::string_view v) {
        config_.emplace(std::string(k), std::string(v));
        return true;
      }));
  timers_.clear();
  absl::Status parse_status;
  RETURN_IF_ERROR(
      kb_->Scan(Space::kMeta, keys::TimerPrefix(), [&](absl::string_view k, absl::string_view v) {
        auto ms = kb::DecodeU64(v);
        parse_status = ms.status();
        if (!ms.ok()) return false;
        timers_.emplace(std::string(k), absl::FromUnixMillis(static_cast<int64_t>(*ms)));
        return true;
      }));
  RETURN_IF_ERROR(parse_status);
  return LoadHandlers();
}

absl::Status Engine::LoadFacts() {
  for (auto& [name, f] : graph_->facts()) {
    f.set = false;
    f.value.clear();
    f.version = 0;
    f.touched = false;
    f.changed_since_retest = false;
  }
  absl::Status parse_status;
  RETURN_IF_ERROR(kb_->Scan(Space::kFact, "", [&](absl::string_view key, absl::string_view value) {
    v1::FactRecord rec;
    parse_status = ParseRecord(*kb_, "fact", key, value, rec);
    if (!parse_status.ok()) return false;
    FactState& f = graph_->Intern(key);
    f.set = rec.set();
    f.value = rec.value();
    f.version = rec.version();
    return true;
  }));
  return parse_status;
}

// A handler is dirty when a fact it names changed after its last successful run.
absl::Status Engine::LoadHandlers() {
  absl::Status parse_status;
  absl::flat_hash_map<std::string, uint64_t> last_ran;
  RETURN_IF_ERROR(
      kb_->Scan(Space::kHandler, "", [&](absl::string_view key, absl::string_view value) {
        auto v = kb::DecodeU64(value);
        if (!v.ok()) {
          parse_status = DataLoss(
              *kb_, absl::StrCat("handler '", key, "' bookkeeping: ", v.status().message()));
          return false;
        }
        last_ran.emplace(std::string(key), *v);
        return true;
      }));
  RETURN_IF_ERROR(parse_status);

  pending_.clear();
  for (const auto& h : graph_->handlers()) {
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
  const FactState* f = graph_->Find(fact);
  return f != nullptr && f->set;
}

std::optional<std::string> Engine::FactValue(absl::string_view fact) const {
  const FactState* f = graph_->Find(fact);
  if (f == nullptr || !f->set) return std::nullopt;
  return f->value;
}

std::map<std::string, std::string> Engine::Facts() const {
  std::map<std::string, std::string> out;
  for (const auto& [name, f] : graph_->facts()) {
    if (f.set) out.emplace(name, f.value);
  }
  return out;
}

size_t Engine::inbox_depth() const { return inbox_->depth(); }
size_t Engine::outbox_size() const { return outbox_->size(); }
uint64_t Engine::last_outbox_id() const { return outbox_->next_id() - 1; }
std::set<std::string> Engine::OutboxDestinations() const { return outbox_->Destinations(); }

std::map<std::string, size_t> Engine::OutboxUnackedByDestination() const {
  return outbox_->UnackedByDestination();
}

absl::StatusOr<std::vector<v1::OutboxEntry>> Engine::Outbox(absl::string_view destination) const {
  return engine::Outbox::Entries(*kb_, destination);
}

absl::StatusOr<std::vector<v1::OutboxEntry>> Engine::OutboxAfter(absl::string_view destination,
                                                                 uint64_t after, size_t limit,
                                                                 uint64_t through) const {
  return engine::Outbox::EntriesAfter(*kb_, destination, after, limit, through);
}

const std::map<std::string, v1::RelationRecord>& Engine::relations() const {
  return relations_->records();
}

absl::StatusOr<std::map<std::string, std::string>> Engine::Bag(absl::string_view relation_id,
                                                               absl::string_view bag) const {
  return ReadBag(*kb_, relation_id, bag);
}

absl::Status Engine::CheckPeerEvent(absl::string_view relation_id, absl::string_view sender,
                                    v1::RelationEventKind kind) const {
  return relations_->CheckPeerEvent(*kb_, relation_id, sender, kind);
}

absl::StatusOr<std::vector<v1::Trace>> Engine::Traces(size_t n) const {
  return ReadTraces(*kb_, n);
}

absl::StatusOr<RunResult> Engine::RunOnce() {
  RunResult result;
  if (inbox_->depth() == 0) return result;
  const uint64_t head = inbox_->head();
  ASSIGN_OR_RETURN(auto bytes, kb_->Get(Space::kInbox, keys::Inbox(head)));
  if (!bytes) return DataLoss(*kb_, absl::StrCat("inbox event ", head, " is missing"));
  uint32_t attempt = 1;
  if (failure_ && failure_->event_id() == head) {
    attempt = failure_->attempt() + 1;
    absl::Time due = absl::FromUnixMillis(failure_->next_retry_unix_ms());
    if (clock_->Now() < due) {
      result.outcome = RunOutcome::kNotDue;
      result.next_attempt = due;
      return result;
    }
  }
  v1::Event event;
  RETURN_IF_ERROR(ParseRecord(*kb_, "inbox event", absl::StrCat(head), *bytes, event));
  return Execute(std::move(event), attempt);
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

absl::StatusOr<RunResult> Engine::Execute(v1::Event event, uint32_t attempt) {
  const absl::Time start = clock_->Now();
  const uint64_t run_number = run_counter_ + 1;
  txn_->Clear();
  RetryPrep prep;
  if (attempt > 1) {
    // A retry runs against the newest relation data, or, cancelled, applies its data and fires
    // nothing (relation_state.cc).
    absl::StatusOr<RetryPrep> p = PrepareRetry(event);
    if (!p.ok()) {
      txn_->Clear();
      return p.status();
    }
    prep = std::move(*p);
  }
  const std::optional<v1::Event>& cancelled_by = prep.cancelled_by;
  run_ = std::make_unique<Run>(RunContext(this), event);
  relations_->BeginRun();
  v1::Trace trace;
  trace.set_run(run_number);
  *trace.mutable_trigger() = event;
  trace.set_attempt(attempt);
  trace.set_started_unix_ns(absl::ToUnixNanos(start));
  if (failure_ && failure_->event_id() == event.id()) {
    trace.set_resolved_by(failure_->retry_requested_by());
  }
  for (uint64_t id : prep.folded) trace.add_folded(id);

  auto fail = [&](std::string handler, std::string message) -> absl::StatusOr<RunResult> {
    if (cancelled_by) {
      // Even its data cannot be applied: it is dropped.
      run_.reset();
      txn_->Clear();
      RETURN_IF_ERROR(Load());
      return CancelHead(
          event, *cancelled_by, attempt,
          handler.empty() ? message : absl::StrCat("handler ", handler, ": ", message));
    }
    trace.set_duration_ns(absl::ToInt64Nanoseconds(clock_->Now() - start));
    return FailRun(event, attempt, std::move(handler), std::move(message), trace);
  };

  // A retry a handler asked for applies nothing: its event's data was applied when it first ran.
  const bool retry = !event.retry_handler().empty();
  absl::Status applied = retry ? absl::OkStatus() : ApplyConfigChange(event);
  if (applied.ok() && !retry) applied = ApplyRelationChange(event);
  if (applied.ok() && !retry) applied = ApplyLifecycle(event);
  if (applied.ok() && !retry) applied = ApplyLeadership(event);
  if (applied.ok() && !retry) applied = ApplyHealth(event);
  if (absl::Status s = applied; !s.ok()) {
    if (absl::IsInvalidArgument(s) || absl::IsNotFound(s))
      return fail("", std::string(s.message()));
    run_.reset();
    RETURN_IF_ERROR(Load());
    return s;
  }
  // An event folded into an earlier one's retry has nothing left to apply or announce.
  if (retry) {
    QueueRetry(event);
  } else if (event.folded_into() == 0 && !cancelled_by) {
    FireEvent(event.name(), nullptr);
    if (run_->elected) FireEvent(kLeaderElectedEvent, nullptr);
  } else if (cancelled_by) {
    trace.set_result(v1::Trace::RESULT_CANCELLED);
    trace.set_error(CancelReason(*cancelled_by, "its data was applied and no handler ran for it"));
  }
  Retest();
  while (!run_->queue.empty()) {
    auto [h, gen] = run_->queue.front();
    run_->queue.pop_front();
    if (!h->in_queue || h->queue_gen != gen) continue;
    h->in_queue = false;
    if (run_->executions >= options_.max_handler_executions) {
      // About to exceed the bound: the run does not converge.
      std::vector<const Handler*> cycled;
      for (const auto& hp : graph_->handlers()) {
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
  if (absl::Status s = CheckTermAtCommit(); !s.ok()) return fail("", std::string(s.message()));
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

absl::Status Engine::ApplyRelationChange(const v1::Event& event) {
  if (!event.has_relation()) return absl::OkStatus();
  const auto& rc = event.relation();
  const EndpointSpec* endpoint = graph_->Endpoint(rc.endpoint());
  if (endpoint == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("event ", event.id(), " '", event.name(), "': endpoint '", rc.endpoint(),
                     "' is not declared by service '", spec_.service, "'"));
  }
  ASSIGN_OR_RETURN(bool changed, relations_->Apply(event, *txn_));
  if (!changed) return absl::OkStatus();
  ASSIGN_OR_RETURN(auto want, relations_->DerivedFacts(*endpoint, *txn_));
  return SetDerivedFacts(*endpoint, want);
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

  RETURN_IF_ERROR(relations_->StageMessages(
      *txn_, *outbox_, Sender{spec_.unit, spec_.service, LeadingTerm()}, run_number, trace));
  RETURN_IF_ERROR(relations_->StageRecords(*txn_));
  for (v1::Event& e : relations_->FollowUps()) inbox_->Stage(*txn_, e);
  txn_->PutUnindexed(Space::kMeta, keys::kClock, kb::EncodeU64(change_clock_));
  txn_->PutUnindexed(Space::kMeta, keys::kRun, kb::EncodeU64(run_number));
  outbox_->StageNextId(*txn_);
  Inbox::StageRemove(*txn_, event.id());
  if (failure_) txn_->Delete(Space::kMeta, keys::kFailure);

  BuildTrace(run_->steps, run_->touched, run_->executions, run_->outputs, trace);
  if (trace.result() != v1::Trace::RESULT_CANCELLED) trace.set_result(v1::Trace::RESULT_COMMITTED);
  StageTrace(*txn_, run_number, trace, options_.traces_kept);
  absl::StatusOr<uint64_t> committed = kb_->Commit(*txn_);
  if (!committed.ok()) {
    inbox_->Discard();
    outbox_->Discard();
    return committed.status();
  }
  const uint64_t ticket = *committed;

  // Committed: the staged state becomes the agent's state.
  outbox_->Committed();
  run_counter_ = run_number;
  inbox_->Pop();
  inbox_->Committed();
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
  BuildTrace(run_->steps, run_->touched, run_->executions, run_->outputs, trace);
  trace.set_result(v1::Trace::RESULT_ROLLED_BACK);
  trace.set_error(handler.empty() ? message : absl::StrCat("handler ", handler, ": ", message));
  run_.reset();
  txn_->Clear();
  // Everything the run staged in memory is discarded by reloading the committed state.
  RETURN_IF_ERROR(Load());

  // An operator's retry (Resolve) restarts the backoff: it counts the attempts made since.
  const uint32_t reset =
      failure_ && failure_->event_id() == event.id() ? failure_->backoff_reset_attempt() : 0;
  const absl::Time next = clock_->Now() + retry_->Delay(attempt - reset);

  v1::RunFailure failure;
  failure.set_event_id(event.id());
  failure.set_event_name(event.name());
  failure.set_handler(handler);
  failure.set_message(message);
  failure.set_attempt(attempt);
  failure.set_next_retry_unix_ms(absl::ToUnixMillis(next));
  failure.set_backoff_reset_attempt(reset);

  kb::Txn txn(kb_);
  txn.Put(Space::kMeta, keys::kFailure, failure.SerializeAsString());
  txn.Put(Space::kMeta, keys::kRun, kb::EncodeU64(run_number));
  StageTrace(txn, run_number, trace, options_.traces_kept);
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
