// Relation data is a state, like config (docs/engine.md, "Retrying with the newest relation
// data"). When the failed inbox head is about a relation and a remote unit, its retry runs against
// the newest data that unit has sent since: later `changed` events of the same (relation, unit)
// are folded into it and run afterwards with nothing left to apply. A `departed` of that unit or a
// `broken` of that relation queued behind it cancels it: its data is applied in its place and no
// handler runs for it (dropped whole when even that fails). The unit's removal (its `stop`
// marked dying) queued behind any failed head cancels it the same way. News about the head's
// relation and unit, or the removal, makes its retry due at once.

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/inbox.h"
#include "engine/key_layout.h"
#include "engine/run.h"
#include "engine/trace.h"

namespace parley::engine {

using kb::Space;

namespace {

bool AboutPair(const v1::Event& head, const v1::Event& later) {
  if (!head.has_relation() || !later.has_relation()) return false;
  const auto& h = head.relation();
  const auto& l = later.relation();
  if (h.relation_id() != l.relation_id()) return false;
  return l.kind() == v1::RELATION_EVENT_KIND_BROKEN ||
         (!h.remote_unit().empty() && h.remote_unit() == l.remote_unit());
}

// Folds `later` changes into `into`, key by key; a later change of a key replaces an earlier one.
void Merge(google::protobuf::RepeatedPtrField<v1::BagChange>* into,
           const google::protobuf::RepeatedPtrField<v1::BagChange>& later) {
  std::map<std::string, v1::BagChange> by_key;
  std::vector<std::string> order;
  using Changes = google::protobuf::RepeatedPtrField<v1::BagChange>;
  for (const Changes* list : {static_cast<const Changes*>(into), &later}) {
    for (const v1::BagChange& c : *list) {
      if (!by_key.contains(c.key())) order.push_back(c.key());
      by_key[c.key()] = c;
    }
  }
  into->Clear();
  for (const std::string& k : order) *into->Add() = by_key[k];
}

}  // namespace

absl::StatusOr<RetryPrep> Engine::PrepareRetry(v1::Event& head) {
  RetryPrep prep;
  // The unit's removal queued behind a failed head: whatever the head is, it can no longer
  // matter (only dying handlers will run), and it must not keep the removal's stop from running.
  if (removal_queued_ && !head.dying() && head.folded_into() == 0) {
    absl::Status parse;
    RETURN_IF_ERROR(
        kb_->Scan(Space::kInbox, "", [&](absl::string_view key, absl::string_view bytes) {
          v1::Event later;
          parse = ParseRecord(*kb_, "inbox event", key, bytes, later);
          if (!parse.ok()) return false;
          if (later.id() > head.id() && later.dying()) {
            prep.cancelled_by = std::move(later);
            return false;
          }
          return true;
        }));
    RETURN_IF_ERROR(parse);
    if (prep.cancelled_by) return prep;
  }
  if (!head.has_relation() || head.folded_into() != 0) return prep;
  const v1::RelationEventKind kind = head.relation().kind();
  if (kind != v1::RELATION_EVENT_KIND_JOINED && kind != v1::RELATION_EVENT_KIND_CHANGED) {
    return prep;
  }
  absl::Status parse;
  std::vector<v1::Event> folded;
  RETURN_IF_ERROR(kb_->Scan(Space::kInbox, "", [&](absl::string_view key, absl::string_view bytes) {
    v1::Event later;
    parse = ParseRecord(*kb_, "inbox event", key, bytes, later);
    if (!parse.ok()) return false;
    if (later.id() <= head.id() || later.folded_into() != 0 || !AboutPair(head, later)) {
      return true;
    }
    const v1::RelationEventKind k = later.relation().kind();
    if (k == v1::RELATION_EVENT_KIND_BROKEN || k == v1::RELATION_EVENT_KIND_DEPARTED) {
      prep.cancelled_by = std::move(later);
      return false;
    }
    if (k != v1::RELATION_EVENT_KIND_CHANGED) return true;
    folded.push_back(std::move(later));
    return true;
  }));
  RETURN_IF_ERROR(parse);
  if (prep.cancelled_by) return prep;  // a cancelled event applies its own data only
  auto* rc = head.mutable_relation();
  for (v1::Event& e : folded) {
    // The unit's own bag only: the remote service's bag is written by its other units too, so
    // a later change of it stays in its place behind theirs (the folded event applies it).
    Merge(rc->mutable_unit_changes(), e.relation().unit_changes());
    e.mutable_relation()->clear_unit_changes();
    e.set_folded_into(head.id());
    prep.folded.push_back(e.id());
    Inbox::StageRewrite(*txn_, e);
  }
  // The head carries what it was folded from, so that its trace says so; the stored copy is
  // rewritten only if the run commits (it is removed then).
  return prep;
}

std::string Engine::CancelReason(const v1::Event& by, absl::string_view what) const {
  const auto& rc = by.relation();
  const std::string last = failure_ ? FailureText(*failure_) : "-";
  return absl::StrCat(
      "cancelled by event ", by.id(), " '", by.name(), "' queued behind it (",
      by.dying() ? absl::StrCat("the unit is being removed, by ", by.source())
      : rc.kind() == v1::RELATION_EVENT_KIND_BROKEN
          ? absl::StrCat("relation ", rc.relation_id(), " is broken")
          : absl::StrCat(rc.remote_unit(), " left relation ", rc.relation_id()),
      "): ", what, "; the last attempt failed: ", last);
}

absl::StatusOr<RunResult> Engine::CancelHead(const v1::Event& head, const v1::Event& by,
                                             uint32_t attempt, absl::string_view apply_error) {
  const absl::Time now = clock_->Now();
  const uint64_t run_number = run_counter_ + 1;
  auto trace = std::make_shared<v1::Trace>();
  *trace->mutable_trigger() = head;
  trace->set_run(run_number);
  trace->set_result(v1::Trace::RESULT_CANCELLED);
  trace->set_attempt(attempt);
  trace->set_started_unix_ns(absl::ToUnixNanos(now));
  trace->set_error(CancelReason(
      by, absl::StrCat("nothing of it was applied (applying its data failed: ", apply_error, ")")));
  kb::Txn txn(kb_);
  ASSIGN_OR_RETURN(uint64_t ticket, DropHead(txn, *trace));  // like a skip
  RunResult result;
  result.outcome = RunOutcome::kCommitted;
  result.run = run_number;
  result.ticket = ticket;
  result.trace = std::move(trace);
  return result;
}

absl::Status Engine::RetrySoonerFor(kb::Txn& txn, const std::vector<v1::Event>& arrived) {
  if (!failure_ || inbox_->depth() == 0 || failure_->event_id() != inbox_->head()) {
    return absl::OkStatus();
  }
  const int64_t now_ms = absl::ToUnixMillis(clock_->Now());
  if (failure_->next_retry_unix_ms() <= now_ms) return absl::OkStatus();
  bool news = false;
  bool removal = false;
  for (const v1::Event& e : arrived) {
    news = news || e.has_relation();
    removal = removal || e.dying();
  }
  if (!news && !removal) return absl::OkStatus();
  ASSIGN_OR_RETURN(auto bytes, kb_->Get(Space::kInbox, keys::Inbox(inbox_->head())));
  if (!bytes) return DataLoss(*kb_, absl::StrCat("inbox event ", inbox_->head(), " is missing"));
  v1::Event head;
  RETURN_IF_ERROR(ParseRecord(*kb_, "inbox event", absl::StrCat(inbox_->head()), *bytes, head));
  // The removal's stop cancels any failed head but its own (PrepareRetry).
  news = removal && !head.dying();
  for (const v1::Event& e : arrived) news = news || AboutPair(head, e);
  if (!news) return absl::OkStatus();
  retry_sooner_ = *failure_;
  retry_sooner_->set_next_retry_unix_ms(now_ms);
  txn.Put(Space::kMeta, keys::kFailure, retry_sooner_->SerializeAsString());
  return absl::OkStatus();
}

void Engine::RetrySoonerCommitted(bool committed) {
  if (committed && retry_sooner_) failure_ = *retry_sooner_;
  retry_sooner_.reset();
}

}  // namespace parley::engine
