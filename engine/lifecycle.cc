// A unit's life (docs/engine.md, "A unit's life"): installing until a `start` commits, active
// until its removal's `stop` commits, then dying (the fact `dying` is set, handlers that do not
// run while dying are held back by their implicit `when_not: [dying]`, timers are gone), and dead
// once a dying unit has applied everything queued.

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/inbox.h"
#include "engine/key_layout.h"
#include "engine/run.h"

namespace parley::engine {

using kb::Space;

absl::Status Engine::LoadStage() {
  stage_ = v1::UNIT_STAGE_INSTALLING;
  ASSIGN_OR_RETURN(auto stored, kb_->Get(Space::kMeta, keys::kStage));
  if (stored) {
    ASSIGN_OR_RETURN(uint64_t v, kb::DecodeU64(*stored));
    if (v != v1::UNIT_STAGE_INSTALLING && v != v1::UNIT_STAGE_ACTIVE && v != v1::UNIT_STAGE_DYING) {
      return DataLoss(*kb_, absl::StrCat("stored unit stage ", v, " is not one this build knows"));
    }
    stage_ = static_cast<v1::UnitStage>(v);
  }
  ASSIGN_OR_RETURN(auto removal, kb_->Get(Space::kMeta, keys::kRemoval));
  removal_queued_ = removal.has_value();
  return absl::OkStatus();
}

v1::UnitStage Engine::stage() const {
  if (stage_ == v1::UNIT_STAGE_DYING && inbox_->depth() == 0 && !failure_) {
    return v1::UNIT_STAGE_DEAD;
  }
  return stage_;
}

absl::StatusOr<EnqueueResult> Engine::BeginRemoval(absl::string_view by,
                                                   std::vector<v1::Event> then) {
  if (run_) return absl::FailedPreconditionError("a removal cannot begin during a run");
  if (removal_queued_) return EnqueueResult{};
  for (const v1::Event& e : then) RETURN_IF_ERROR(ValidateEvent(e));
  v1::Event stop;
  stop.set_name("stop");
  stop.set_source(std::string(by));
  stop.set_dying(true);
  // One write: the stop, what follows it, and the mark, so that a restart knows without reading
  // the inbox and a removal is never half queued.
  kb::Txn txn(kb_);
  inbox_->Stage(txn, stop);
  for (v1::Event& e : then) inbox_->Stage(txn, e);
  // A failed head is retried now, and cancelled by the stop (relation_state.cc).
  std::vector<v1::Event> arrived = then;
  arrived.push_back(stop);
  if (absl::Status s = RetrySoonerFor(txn, arrived); !s.ok()) {
    inbox_->Discard();
    return s;
  }
  txn.Put(Space::kMeta, keys::kRemoval, "");
  absl::StatusOr<uint64_t> ticket = inbox_->Commit(*kb_, txn);
  RetrySoonerCommitted(ticket.ok());
  if (!ticket.ok()) return ticket.status();
  removal_queued_ = true;
  return EnqueueResult{stop.id(), *ticket};
}

absl::Status Engine::ApplyLifecycle(const v1::Event& event) {
  if (event.dying()) {
    if (stage_ == v1::UNIT_STAGE_DYING) return absl::OkStatus();
    stage_ = v1::UNIT_STAGE_DYING;
    txn_->Put(Space::kMeta, keys::kStage, kb::EncodeU64(stage_));
    // Its timers would outlive the unit, and so would the retries handlers asked for.
    DropRetries(*txn_);
    for (const auto& [name, due] : timers_) txn_->Delete(Space::kMeta, keys::Timer(name));
    timers_.clear();
    return SetFact(kDyingFact, "", /*derived=*/true);
  }
  if (event.name() == "start" && stage_ == v1::UNIT_STAGE_INSTALLING) {
    // Takes effect with the run's commit; a rollback reloads the stored stage.
    stage_ = v1::UNIT_STAGE_ACTIVE;
    txn_->Put(Space::kMeta, keys::kStage, kb::EncodeU64(stage_));
  }
  return absl::OkStatus();
}

}  // namespace parley::engine
