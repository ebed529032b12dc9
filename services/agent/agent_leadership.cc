// The agent's side of its service's leadership (docs/coordination.md): the campaigner
// (services/coord/leadership.h) holds the unit's lease, campaigns and watches the election on
// threads of its own and reports each change of (leader, term, whether this unit leads); the
// agent queues each as a leader.changed event, through the inbox like every internal event
// (durable, in order with the rest), and the engine sets the leadership facts from it. A run that
// wrote the service bag commits only once the campaigner confirmed, against etcd, that its term
// is still current.

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "services/agent/agent.h"

namespace parley::services {

void Agent::MakeCampaigner() {
  if (!spec().leadership) return;
  leadership_metrics_ = env_.metrics->ForLeadership(name_);
  leadership_metrics_.leader->Set(0);
  leadership_metrics_.term->Set(0);
  if (!env_.coordinator) {
    leadership_error_ = absl::StrCat(
        "service '", spec().service,
        "' declares leadership, but this parleyd has no coordinator (start it with --etcd "
        "HOST:PORT): the unit never leads");
    return;
  }
  absl::StatusOr<std::unique_ptr<coord::Coordinator>> coordinator = env_.coordinator();
  if (!coordinator.ok()) {
    leadership_error_ =
        absl::StrCat("cannot make the coordinator: ", coordinator.status().message());
    return;
  }
  coord::LeadershipOptions options;
  options.election = env_.election_prefix + spec().service;
  options.candidate = name_;
  options.lease_ttl = spec().lease_ttl;
  options.leading_interval = spec().leading_interval;
  if (absl::Status valid = coord::ValidateLeadershipOptions(options); !valid.ok()) {
    leadership_error_ = std::string(valid.message());
    return;
  }
  std::weak_ptr<bool> alive = alive_;
  std::shared_ptr<base::Strand> strand = strand_;
  campaigner_ =
      std::make_unique<coord::Campaigner>(std::move(*coordinator), std::move(options),
                                          [this, alive, strand](const coord::LeadershipView& view) {
                                            strand->Post([this, alive, view] {
                                              if (alive.lock()) OnLeadershipChange(view);
                                            });
                                          });
  // A linearizable read on the strand, bounded by the coordinator's call timeout: it runs only
  // for runs that wrote the service bag.
  coord::Campaigner* campaigner = campaigner_.get();
  engine_->SetTermCheck([campaigner](int64_t term) { return campaigner->StillLeads(term); });
}

void Agent::UpdateLeadership() {
  if (!campaigner_ || stopped_) return;
  const v1::UnitStage stage = engine_->stage();
  if (stage == v1::UNIT_STAGE_DYING || stage == v1::UNIT_STAGE_DEAD) {
    // A unit being removed resigns: its successor need not wait for the lease to expire.
    if (campaigning_) Log(v1::LOG_LEVEL_INFO, "leaving the leadership election (dying)");
    campaigner_->Stop();
    campaigning_ = false;
    return;
  }
  // Campaigning starts once `start` committed: before, the workload is not meant to run.
  if (stage == v1::UNIT_STAGE_ACTIVE && !campaigning_) {
    campaigning_ = true;
    campaigner_->Start();
  }
}

void Agent::OnLeadershipChange(const coord::LeadershipView& view) {
  if (stopped_ || !campaigning_) return;
  const bool was_leading = leadership_.leads;
  if (view.leads && (!was_leading || view.term != leadership_.term)) {
    leading_since_ = env_.clock->Now();
  }
  leadership_ = view;
  leadership_metrics_.leader->Set(view.leads ? 1 : 0);
  leadership_metrics_.term->Set(static_cast<double>(view.term));
  if (view.leads) {
    Log(v1::LOG_LEVEL_INFO,
        absl::StrCat("leads service ", spec().service, " (term ", view.term, ")"));
  } else if (was_leading) {
    Log(v1::LOG_LEVEL_WARNING,
        absl::StrCat("no longer leads service ", spec().service,
                     view.leader.empty()
                         ? std::string(" (no leader known)")
                         : absl::StrCat(" (", view.leader, " leads, term ", view.term, ")")));
  } else {
    Log(v1::LOG_LEVEL_INFO, view.leader.empty()
                                ? absl::StrCat("no leader of service ", spec().service, " is known")
                                : absl::StrCat(view.leader, " leads service ", spec().service,
                                               " (term ", view.term, ")"));
  }
  v1::Event e;
  e.set_name("leader.changed");
  e.set_source("coordinator");
  // The engine knows only the leader's name: a unit that lost its lease without a successor yet
  // is told that nobody leads, at the term it knew.
  e.mutable_leadership()->set_leader(view.leads || view.leader != name_ ? view.leader : "");
  e.mutable_leadership()->set_term(view.term);
  absl::StatusOr<engine::EnqueueResult> queued = engine_->Enqueue(std::move(e));
  if (!queued.ok()) {
    Log(v1::LOG_LEVEL_ERROR,
        absl::StrCat("cannot queue the leadership event: ", queued.status().message()));
  } else {
    last_ticket_ = queued->ticket;
    Kick();
  }
  CheckUnhealthyLeader();
  Notify();
}

void Agent::CheckUnhealthyLeader() {
  const std::optional<absl::Time> since = UnhealthySince();
  if (!campaigner_ || stopped_ || !leadership_.leads || !since.has_value()) {
    if (resign_timer_ != 0) env_.scheduler->Cancel(resign_timer_);
    resign_timer_ = 0;
    return;
  }
  if (resign_timer_ != 0) return;
  std::weak_ptr<bool> alive = alive_;
  const absl::Time from = std::max(*since, leading_since_);
  resign_timer_ = env_.scheduler->At(from + spec().unhealthy_grace, strand_, [this, alive] {
    if (!alive.lock()) return;
    resign_timer_ = 0;
    const std::optional<absl::Time> since = UnhealthySince();
    if (stopped_ || !leadership_.leads || !since.has_value()) return;
    const absl::Duration unhealthy = env_.clock->Now() - *since;
    if (env_.clock->Now() - std::max(*since, leading_since_) < spec().unhealthy_grace) {
      CheckUnhealthyLeader();  // it became unhealthy again since: a later deadline
      return;
    }
    Log(v1::LOG_LEVEL_WARNING,
        absl::StrCat("resigns the leadership of service ", spec().service, " (term ",
                     leadership_.term, "): its workload has been unhealthy for ",
                     absl::FormatDuration(absl::Trunc(unhealthy, absl::Milliseconds(1))),
                     " (unhealthy_grace ", absl::FormatDuration(spec().unhealthy_grace), ")"));
    if (absl::Status s = campaigner_->Resign(); !s.ok()) {
      Log(v1::LOG_LEVEL_ERROR,
          absl::StrCat("cannot resign: ", s.message(), "; trying again in 1s"));
      std::weak_ptr<bool> alive = alive_;
      resign_timer_ = env_.scheduler->After(absl::Seconds(1), strand_, [this, alive] {
        if (!alive.lock()) return;
        resign_timer_ = 0;
        CheckUnhealthyLeader();
      });
    }
  });
}

void Agent::FillLeadership(v1::AgentStatus& s) const {
  if (!spec().leadership) return;
  v1::LeadershipStatus* l = s.mutable_leadership();
  l->set_leader(leadership_.leader);
  l->set_term(leadership_.term);
  l->set_leads(leadership_.leads);
  l->set_error(leadership_error_);
}

}  // namespace parley::services
