// The agent's side of its workload's health (docs/service-definitions.md, "Health"): the monitor
// (services/health/monitor.h) checks on its own thread and reports changes; the agent queues
// each as its event, through the inbox like every internal event (durable, in order with the
// rest), logs it and shows it in its status and metrics.

#include <map>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "services/agent/agent.h"

namespace parley::services {

void Agent::MakeHealthMonitor() {
  const std::vector<engine::HealthCheckSpec>& checks = spec().health;
  if (checks.empty()) return;
  auto probe_metrics = std::make_shared<std::vector<Metrics::Probe>>();
  for (const engine::HealthCheckSpec& c : checks) {
    probe_metrics->push_back(env_.metrics->ForProbe(name_, c.name));
  }
  workload_healthy_ = &env_.metrics->WorkloadHealthy(name_);
  workload_healthy_->Set(-1);
  HealthMonitorOptions options;
  options.clock = env_.clock;
  std::weak_ptr<bool> alive = alive_;
  std::shared_ptr<base::Strand> strand = strand_;
  options.on_change = [this, alive, strand](const HealthChange& change) {
    strand->Post([this, alive, change] {
      if (alive.lock()) OnHealthChange(change);
    });
  };
  options.on_check = [probe_metrics](size_t i, bool passed, absl::Duration took,
                                     v1::WorkloadHealth health) {
    const Metrics::Probe& m = (*probe_metrics)[i];
    (passed ? m.passed : m.failed)->Increment();
    m.duration->Observe(absl::ToDoubleSeconds(took));
    m.healthy->Set(health == v1::WORKLOAD_HEALTH_HEALTHY     ? 1
                   : health == v1::WORKLOAD_HEALTH_UNHEALTHY ? 0
                                                             : -1);
  };
  health_ = std::make_unique<HealthMonitor>(name_, checks, std::move(options));
}

void Agent::UpdateHealth() {
  if (!health_ || stopped_) return;
  const v1::UnitStage stage = engine_->stage();
  if (stage == v1::UNIT_STAGE_DYING || stage == v1::UNIT_STAGE_DEAD) {
    // Nothing of a dying unit may start, and its workload is going away.
    health_->Stop();
    return;
  }
  health_->SetContext(engine_->config(), engine_->Facts());
  // Probing starts once `start` committed: before, the workload is not meant to run.
  if (stage == v1::UNIT_STAGE_ACTIVE) health_->Start();
}

void Agent::OnHealthChange(const HealthChange& change) {
  if (stopped_) return;
  const bool healthy = change.health == v1::WORKLOAD_HEALTH_HEALTHY;
  if (workload_healthy_ != nullptr) workload_healthy_->Set(healthy ? 1 : 0);
  if (healthy) {
    Log(v1::LOG_LEVEL_INFO, absl::StrCat("workload healthy (probe ", change.probe, " passes)"));
  } else {
    Log(v1::LOG_LEVEL_WARNING,
        absl::StrCat("workload unhealthy: probe ", change.probe, " failed: ", change.reason));
  }
  std::map<std::string, std::string> params{{"probe", change.probe}};
  if (!healthy) params["reason"] = change.reason;
  absl::StatusOr<engine::EnqueueResult> queued = engine_->EnqueueHealth(change.health, params);
  if (!queued.ok()) {
    Log(v1::LOG_LEVEL_ERROR,
        absl::StrCat("cannot queue the workload's health event: ", queued.status().message()));
  } else if (queued->event_id != 0) {
    last_ticket_ = queued->ticket;
    Kick();
  }
  for (const HealthWatcher& w : health_watchers_) w(change);
  CheckUnhealthyLeader();
  Notify();
}

v1::WorkloadHealth Agent::health() const {
  return health_ ? health_->health() : v1::WORKLOAD_HEALTH_UNSPECIFIED;
}

std::optional<absl::Time> Agent::UnhealthySince() const {
  if (!health_) return std::nullopt;
  return health_->unhealthy_since();
}

void Agent::FillHealth(v1::AgentStatus& s) const {
  if (!health_) return;
  s.set_health(health_->health());
  if (std::optional<absl::Time> since = health_->unhealthy_since()) {
    s.set_unhealthy_since_unix_ms(absl::ToUnixMillis(*since));
  }
  for (v1::ProbeStatus& p : health_->Probes()) *s.add_probes() = std::move(p);
}

}  // namespace parley::services
