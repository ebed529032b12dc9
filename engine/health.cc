// The workload's health as the engine keeps it (docs/service-definitions.md, "Health"): the
// agent's health monitor reports transitions with EnqueueHealth, which queues `workload.healthy`
// or `workload.unhealthy` behind every other event, durably and in order; applying one (step 1 of
// its run) sets or clears the fact workload.healthy, which handlers read but cannot change.

#include <map>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/inbox.h"
#include "engine/key_layout.h"
#include "engine/run.h"

namespace parley::engine {

using kb::Space;

absl::StatusOr<v1::WorkloadHealth> Engine::QueuedHealth() const {
  ASSIGN_OR_RETURN(auto stored, kb_->Get(Space::kMeta, keys::kHealth));
  if (!stored) return v1::WORKLOAD_HEALTH_UNSPECIFIED;
  ASSIGN_OR_RETURN(uint64_t v, kb::DecodeU64(*stored));
  if (v != v1::WORKLOAD_HEALTH_HEALTHY && v != v1::WORKLOAD_HEALTH_UNHEALTHY) {
    return DataLoss(*kb_,
                    absl::StrCat("stored workload health ", v, " is not one this build knows"));
  }
  return static_cast<v1::WorkloadHealth>(v);
}

absl::StatusOr<EnqueueResult> Engine::EnqueueHealth(v1::WorkloadHealth health,
                                                    std::map<std::string, std::string> params) {
  if (run_) return absl::FailedPreconditionError("events cannot be enqueued during a run");
  if (health != v1::WORKLOAD_HEALTH_HEALTHY && health != v1::WORKLOAD_HEALTH_UNHEALTHY) {
    return absl::InvalidArgumentError("workload health must be HEALTHY or UNHEALTHY");
  }
  // Transitions only: what the inbox already leads to queues nothing, across restarts too.
  ASSIGN_OR_RETURN(v1::WorkloadHealth queued, QueuedHealth());
  if (queued == health) return EnqueueResult{};
  v1::Event event;
  event.set_name(std::string(health == v1::WORKLOAD_HEALTH_HEALTHY ? kWorkloadHealthyEvent
                                                                   : kWorkloadUnhealthyEvent));
  event.set_source("health");
  event.set_health(health);
  for (auto& [k, v] : params) (*event.mutable_params())[k] = std::move(v);
  kb::Txn txn(kb_);
  inbox_->Stage(txn, event);
  txn.Put(Space::kMeta, keys::kHealth, kb::EncodeU64(health));
  ASSIGN_OR_RETURN(uint64_t ticket, inbox_->Commit(*kb_, txn));
  return EnqueueResult{event.id(), ticket};
}

absl::Status Engine::ValidateHealthEvent(const v1::Event& event) const {
  const bool named =
      event.name() == kWorkloadHealthyEvent || event.name() == kWorkloadUnhealthyEvent;
  if (event.health() == v1::WORKLOAD_HEALTH_UNSPECIFIED) {
    // A handler's retry-later of a health event carries its name, not its change.
    if (!named || !event.retry_handler().empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("event '", event.name(), "' for agent ", kb_->agent(),
                     ": only the agent's health probes queue workload health events"));
  }
  const absl::string_view want = event.health() == v1::WORKLOAD_HEALTH_HEALTHY
                                     ? kWorkloadHealthyEvent
                                     : kWorkloadUnhealthyEvent;
  if (event.name() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("event '", event.name(), "' for agent ", kb_->agent(), ": a health event of ",
                     v1::WorkloadHealth_Name(event.health()), " must be named '", want, "'"));
  }
  return absl::OkStatus();
}

absl::Status Engine::ApplyHealth(const v1::Event& event) {
  switch (event.health()) {
    case v1::WORKLOAD_HEALTH_HEALTHY:
      return SetFact(kWorkloadHealthyFact, "", /*derived=*/true);
    case v1::WORKLOAD_HEALTH_UNHEALTHY:
      return ClearFact(kWorkloadHealthyFact, /*derived=*/true);
    default:
      return absl::OkStatus();
  }
}

}  // namespace parley::engine
