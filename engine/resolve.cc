// An operator unsticks the failed inbox head (docs/engine.md, "Resolving a failed event"): retry
// it now, or drop it unapplied so that the events behind it run.

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/inbox.h"
#include "engine/key_layout.h"
#include "engine/trace.h"

namespace parley::engine {

using kb::Space;

absl::StatusOr<ResolveResult> Engine::Resolve(ResolveMode mode, uint64_t event_id,
                                              absl::string_view by) {
  if (run_) return absl::FailedPreconditionError("an event cannot be resolved during a run");
  // A failure record always names the head (only the head runs, and the run that applies it
  // removes both); the check guards against a KB that says otherwise.
  if (!failure_ || inbox_->depth() == 0 || failure_->event_id() != inbox_->head()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "agent ", kb_->agent(), " has no failing event to resolve: ",
        inbox_->depth() == 0
            ? std::string("its inbox is empty")
            : absl::StrCat("its inbox head (event ", inbox_->head(), ") has not failed")));
  }
  const v1::RunFailure failure = *failure_;
  if (event_id != 0 && event_id != failure.event_id()) {
    return absl::FailedPreconditionError(
        absl::StrCat("agent ", kb_->agent(), ": event ", event_id,
                     " is not the failing event; event ", failure.event_id(), " '",
                     failure.event_name(), "' is (", failure.attempt(), " failed attempts)"));
  }
  ResolveResult result;
  result.failure = failure;
  const absl::Time now = clock_->Now();
  kb::Txn txn(kb_);

  if (mode == ResolveMode::kRetry) {
    v1::RunFailure retry = failure;
    retry.set_next_retry_unix_ms(absl::ToUnixMillis(now));
    retry.set_backoff_reset_attempt(failure.attempt());
    retry.set_retry_requested_by(std::string(by));
    txn.Put(Space::kMeta, keys::kFailure, retry.SerializeAsString());
    ASSIGN_OR_RETURN(result.ticket, kb_->Commit(txn));
    failure_ = retry;
    return result;
  }

  ASSIGN_OR_RETURN(auto bytes, kb_->Get(Space::kInbox, keys::Inbox(failure.event_id())));
  if (!bytes)
    return DataLoss(*kb_, absl::StrCat("inbox event ", failure.event_id(), " is missing"));
  const uint64_t run_number = run_counter_ + 1;
  auto trace = std::make_shared<v1::Trace>();
  RETURN_IF_ERROR(ParseRecord(*kb_, "inbox event", absl::StrCat(failure.event_id()), *bytes,
                              *trace->mutable_trigger()));
  trace->set_run(run_number);
  trace->set_result(v1::Trace::RESULT_SKIPPED);
  trace->set_attempt(failure.attempt());
  trace->set_error(FailureText(failure));
  trace->set_started_unix_ns(absl::ToUnixNanos(now));
  trace->set_resolved_by(std::string(by));
  ASSIGN_OR_RETURN(result.ticket, DropHead(txn, *trace));
  result.run = run_number;
  result.trace = std::move(trace);
  return result;
}

std::string FailureText(const v1::RunFailure& f) {
  return f.handler().empty() ? f.message()
                             : absl::StrCat("handler ", f.handler(), ": ", f.message());
}

absl::StatusOr<uint64_t> Engine::DropHead(kb::Txn& txn, const v1::Trace& trace) {
  // One write: the event leaves the inbox unapplied, its failure record goes, the drop is traced
  // under the next run number. The sequence it was received with (kCursor) stays, so its
  // sender's redelivery is a duplicate.
  Inbox::StageRemove(txn, trace.trigger().id());
  txn.Delete(Space::kMeta, keys::kFailure);
  txn.Put(Space::kMeta, keys::kRun, kb::EncodeU64(trace.run()));
  StageTrace(txn, trace.run(), trace, options_.traces_kept);
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  inbox_->Pop();
  failure_.reset();
  run_counter_ = trace.run();
  return ticket;
}

}  // namespace parley::engine
