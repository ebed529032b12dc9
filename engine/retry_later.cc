// Retrying later (docs/engine.md, "Retrying later"): a handler that waits for a peer asks to run
// again after a delay (RunContext::RetryLater) instead of failing. Its run commits, so the event
// leaves the inbox and newer events are not held up; no failure is recorded and no backoff grows.
// The retry is a timer ("retry-later <handler> <event>[ <relation> <unit>]") with the event it
// enqueues when due: a copy of the handler's event without its data changes, naming the handler.
// That event's run applies nothing and queues only that handler, if its facts hold, so it runs
// against the data as it is then. A fact-only handler that asked stays dirty and is held (not
// queued) until its timer is due. Dying drops every retry with the timers.

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/handler_graph.h"
#include "engine/inbox.h"
#include "engine/key_layout.h"
#include "engine/relations.h"
#include "engine/run.h"
#include "engine/trace.h"

namespace parley::engine {
namespace {

using kb::Space;

// One retry per handler and event (per relation and remote unit for a relation event): a newer
// request replaces the older, whose data it would only repeat. A fact-only handler has one.
std::string RetryTimer(const Handler& h, const v1::Event& event) {
  std::string name = absl::StrCat(keys::kRetryLaterTimer, h.name);
  if (h.fact_only) return name;
  absl::StrAppend(&name, " ", event.name());
  if (event.has_relation()) {
    const auto& rc = event.relation();
    absl::StrAppend(&name, " ", rc.relation_id(), " ",
                    rc.remote_unit().empty() ? "-" : rc.remote_unit());
  }
  return name;
}

}  // namespace

void Engine::StageRetryLater(const Handler& h, absl::Duration delay) {
  const v1::Event& event = run_->event;
  v1::Event retry;
  retry.set_name(event.name());
  *retry.mutable_params() = event.params();
  if (event.has_relation()) {
    // Who and where, not what: the data is applied already, and the retry reads it as it is.
    v1::RelationChange* rc = retry.mutable_relation();
    *rc = event.relation();
    rc->clear_unit_changes();
    rc->clear_service_changes();
  }
  retry.set_source("retry-later");
  retry.set_retry_handler(h.name);
  retry.set_retry_of(event.retry_of() != 0 ? event.retry_of() : event.id());
  const std::string timer = RetryTimer(h, event);
  const absl::Time due = clock_->Now() + delay;
  timers_[timer] = due;
  txn_->Put(Space::kMeta, keys::Timer(timer),
            kb::EncodeU64(static_cast<uint64_t>(absl::ToUnixMillis(due))));
  txn_->Put(Space::kMeta, keys::RetryLater(timer), retry.SerializeAsString());
}

bool Engine::HeldForRetry(const Handler& h) const {
  return h.fact_only && timers_.contains(absl::StrCat(keys::kRetryLaterTimer, h.name));
}

void Engine::QueueRetry(const v1::Event& event) {
  const std::string& name = event.retry_handler();
  Handler* h = nullptr;
  for (const auto& hp : graph_->handlers()) {
    if (hp->name == name) h = hp.get();
  }
  auto skip = [&](const Handler* handler, std::string why) {
    StepRecord& s = run_->steps.emplace_back();
    s.kind = v1::TraceStep::KIND_SKIPPED;
    s.handler = handler;
    s.reason = Reason::kText;
    s.text = absl::StrCat("retry later of ", name, " for event ", event.retry_of(), ", but ",
                          std::move(why));
  };
  if (h == nullptr) {
    skip(nullptr, "the service has no such handler any more");
    return;
  }
  if (event.has_relation()) {
    // Unit events about a unit that has left, or a relation that broke, cannot apply any more.
    const auto& rc = event.relation();
    bool live = false, member = rc.remote_unit().empty();
    for (const v1::RelationRecord* r : relations_->Live(rc.endpoint())) {
      if (r->relation_id() != rc.relation_id()) continue;
      live = true;
      for (const std::string& u : r->remote_units()) member = member || u == rc.remote_unit();
    }
    const bool gone_is_news = rc.kind() == v1::RELATION_EVENT_KIND_DEPARTED ||
                              rc.kind() == v1::RELATION_EVENT_KIND_BROKEN;
    if (!gone_is_news && (!live || !member)) {
      skip(h, live ? absl::StrCat(rc.remote_unit(), " left relation ", rc.relation_id())
                   : absl::StrCat("relation ", rc.relation_id(), " is gone"));
      return;
    }
  }
  if (h->in_queue) return;
  if (h->unsatisfied != 0) {
    skip(h, FailedPrecondition(*h));
    return;
  }
  if (h->fact_only && !h->dirty) {
    skip(h, "it ran since, on newer data");
    return;
  }
  Queue(h, Reason::kText, absl::StrCat("retry later, asked for event ", event.retry_of()));
}

absl::StatusOr<EnqueueResult> Engine::EnqueueRetryLater(absl::string_view timer) {
  ASSIGN_OR_RETURN(auto bytes, kb_->Get(Space::kMeta, keys::RetryLater(timer)));
  if (!bytes) {
    return DataLoss(*kb_, absl::StrCat("the retry of timer '", timer, "' is missing"));
  }
  v1::Event event;
  RETURN_IF_ERROR(ParseRecord(*kb_, "retry", timer, *bytes, event));
  kb::Txn txn(kb_);
  inbox_->Stage(txn, event);
  txn.Delete(Space::kMeta, keys::Timer(timer));
  txn.Delete(Space::kMeta, keys::RetryLater(timer));
  ASSIGN_OR_RETURN(uint64_t ticket, inbox_->Commit(*kb_, txn));
  timers_.erase(std::string(timer));
  return EnqueueResult{event.id(), ticket};
}

void Engine::DropRetries(kb::Txn& txn) {
  for (const auto& [name, due] : timers_) {
    if (absl::StartsWith(name, keys::kRetryLaterTimer)) {
      txn.Delete(Space::kMeta, keys::RetryLater(name));
    }
  }
}

}  // namespace parley::engine
