// Which handlers run next and running them: a fact change updates the handlers naming it, an
// event queues the handlers on it, the retest after each handler drops the queued handlers whose
// facts no longer hold and queues the dirty fact-only handlers that now hold.

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/handler_graph.h"
#include "engine/run.h"
#include "engine/trace.h"

namespace parley::engine {

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

namespace {

absl::Status EngineOwned(absl::string_view name) {
  if (name == kWorkloadHealthyFact) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fact '", name, "' is the engine's: the workload's health probes set and clear it"));
  }
  if (name != kDyingFact) {
    return absl::InvalidArgumentError(
        absl::StrCat("fact '", name,
                     "' is the engine's: it follows the service's leadership "
                     "(docs/coordination.md)"));
  }
  return absl::InvalidArgumentError(absl::StrCat("fact '", name,
                                                 "' is the engine's: it is set when the unit "
                                                 "starts dying (it is being removed)"));
}

}  // namespace

absl::Status Engine::SetFact(absl::string_view name, absl::string_view value, bool derived) {
  if (!run_) return absl::FailedPreconditionError("facts change only inside a run");
  if (!derived && IsEngineOwnedFact(name)) return EngineOwned(name);
  FactState& f = graph_->Intern(name);
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
  if (!derived && IsEngineOwnedFact(name)) return EngineOwned(name);
  FactState* f = graph_->Find(name);
  if (f == nullptr) {
    if (!derived && graph_->EndpointOf(name) != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("fact '", name, "' is a relationship fact, derived from relation data"));
    }
    return absl::OkStatus();
  }
  if (f->derived && !derived) {
    return absl::InvalidArgumentError(
        absl::StrCat("fact '", name, "' is a relationship fact, derived from relation data"));
  }
  ChangeFact(*f, false, "");
  return absl::OkStatus();
}

absl::Status Engine::SetDerivedFacts(const EndpointSpec& endpoint,
                                     const std::map<std::string, std::string>& want) {
  const std::string prefix = absl::StrCat(endpoint.name, ".");
  std::vector<std::string> stale;
  for (const auto& [name, f] : graph_->facts()) {
    if (f.set && absl::StartsWith(name, prefix) && !want.contains(name)) stale.push_back(name);
  }
  std::sort(stale.begin(), stale.end());
  for (const auto& name : stale) RETURN_IF_ERROR(ClearFact(name, /*derived=*/true));
  for (const auto& [name, value] : want) RETURN_IF_ERROR(SetFact(name, value, /*derived=*/true));
  return absl::OkStatus();
}

void Engine::Queue(Handler* h, Reason reason, absl::string_view reason_event) {
  h->in_queue = true;
  ++h->queue_gen;
  run_->queue.emplace_back(h, h->queue_gen);
  StepRecord& s = run_->steps.emplace_back();
  s.kind = v1::TraceStep::KIND_QUEUED;
  s.handler = h;
  s.reason = reason;
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
  const std::vector<Handler*>* on = graph_->HandlersOn(event);
  if (on == nullptr) return;
  for (Handler* h : *on) {
    if (h->in_queue) continue;
    if (h->unsatisfied == 0) {
      Queue(h, Reason::kOnEvent, event);
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
    if (h->dirty && h->unsatisfied == 0 && !h->in_queue && !HeldForRetry(*h)) {
      Queue(h, h->dirty_cause ? Reason::kFactChanged : Reason::kNeverRan, "");
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
  run_->retry_later.reset();
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
  if (run_->retry_later) {
    // Not done: a fact-only handler stays dirty (held until its retry is due).
    s.retry_later = *run_->retry_later;
    StageRetryLater(*h, *run_->retry_later);
    run_->retry_later.reset();
    return absl::OkStatus();
  }
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

}  // namespace parley::engine
