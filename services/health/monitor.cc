#include "services/health/monitor.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace parley::services {

bool ProbeTracker::Record(bool passed) {
  if (passed) {
    failures_ = 0;
    ++successes_;
    if (successes_ >= success_threshold_ && health_ != v1::WORKLOAD_HEALTH_HEALTHY) {
      health_ = v1::WORKLOAD_HEALTH_HEALTHY;
      return true;
    }
    return false;
  }
  successes_ = 0;
  ++failures_;
  if (failures_ >= failure_threshold_ && health_ != v1::WORKLOAD_HEALTH_UNHEALTHY) {
    health_ = v1::WORKLOAD_HEALTH_UNHEALTHY;
    return true;
  }
  return false;
}

v1::WorkloadHealth Combine(const std::vector<v1::WorkloadHealth>& probes) {
  if (probes.empty()) return v1::WORKLOAD_HEALTH_UNSPECIFIED;
  bool all_healthy = true;
  for (v1::WorkloadHealth h : probes) {
    if (h == v1::WORKLOAD_HEALTH_UNHEALTHY) return v1::WORKLOAD_HEALTH_UNHEALTHY;
    all_healthy = all_healthy && h == v1::WORKLOAD_HEALTH_HEALTHY;
  }
  return all_healthy ? v1::WORKLOAD_HEALTH_HEALTHY : v1::WORKLOAD_HEALTH_UNSPECIFIED;
}

HealthMonitor::HealthMonitor(std::string unit, std::vector<engine::HealthCheckSpec> checks,
                             HealthMonitorOptions options)
    : unit_(std::move(unit)), options_(std::move(options)) {
  context_.unit = unit_;
  for (engine::HealthCheckSpec& c : checks) {
    const uint32_t failures = std::max<uint32_t>(1, c.failure_threshold);
    const uint32_t successes = std::max<uint32_t>(1, c.success_threshold);
    probes_.push_back(
        Probe{std::move(c), ProbeTracker(failures, successes), absl::InfiniteFuture(), "", {}});
    probes_.back().last_check = absl::InfinitePast();
  }
}

HealthMonitor::~HealthMonitor() {
  Stop();
  if (thread_.joinable()) thread_.join();
}

void HealthMonitor::Start() {
  absl::MutexLock lock(&mu_);
  if (started_ || stopping_ || probes_.empty()) return;
  started_ = true;
  const absl::Time now = options_.clock->Now();
  for (Probe& p : probes_) p.due = now + p.spec.initial_delay;
  thread_ = std::thread([this] { Loop(); });
}

void HealthMonitor::Stop() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
}

bool HealthMonitor::started() const {
  absl::MutexLock lock(&mu_);
  return started_;
}

void HealthMonitor::SetContext(std::map<std::string, std::string> config,
                               std::map<std::string, std::string> facts) {
  absl::MutexLock lock(&mu_);
  context_.config = std::move(config);
  context_.facts = std::move(facts);
}

v1::WorkloadHealth HealthMonitor::health() const {
  absl::MutexLock lock(&mu_);
  return health_;
}

std::optional<absl::Time> HealthMonitor::unhealthy_since() const {
  absl::MutexLock lock(&mu_);
  if (health_ != v1::WORKLOAD_HEALTH_UNHEALTHY) return std::nullopt;
  return unhealthy_since_;
}

std::vector<v1::ProbeStatus> HealthMonitor::Probes() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::ProbeStatus> out;
  for (const Probe& p : probes_) {
    v1::ProbeStatus& s = out.emplace_back();
    s.set_name(p.spec.name);
    s.set_target(p.spec.target);
    s.set_health(p.tracker.health());
    s.set_consecutive_failures(p.tracker.failures());
    s.set_consecutive_successes(p.tracker.successes());
    s.set_last_error(p.last_error);
    if (p.last_check != absl::InfinitePast())
      s.set_last_check_unix_ms(absl::ToUnixMillis(p.last_check));
  }
  return out;
}

void HealthMonitor::Loop() {
  while (true) {
    size_t next = 0;
    {
      absl::MutexLock lock(&mu_);
      for (size_t i = 1; i < probes_.size(); ++i) {
        if (probes_[i].due < probes_[next].due) next = i;
      }
      const absl::Time due = probes_[next].due;
      options_.clock->AwaitWithDeadline(mu_, absl::Condition(&stopping_), due);
      if (stopping_) return;
      // Time may have moved less than asked (a spurious wake): look again.
      if (options_.clock->Now() < due) continue;
    }
    std::optional<HealthChange> change = CheckOne(next);
    if (change && options_.on_change) options_.on_change(*change);
  }
}

std::optional<HealthChange> HealthMonitor::CheckOne(size_t i) {
  std::shared_ptr<engine::HealthProbe> probe;
  engine::ProbeContext ctx;
  {
    absl::MutexLock lock(&mu_);
    probe = probes_[i].spec.probe;
    ctx = context_;
    ctx.timeout = probes_[i].spec.timeout;
  }
  const absl::Time start = options_.clock->Now();
  absl::Status result = probe ? probe->Check(ctx) : absl::InternalError("the probe has no check");
  const absl::Time end = options_.clock->Now();

  absl::MutexLock lock(&mu_);
  if (stopping_) return std::nullopt;
  Probe& p = probes_[i];
  p.due = std::max(end, start + p.spec.interval);
  p.last_check = end;
  const bool passed = result.ok();
  if (passed) {
    p.last_error.clear();
  } else {
    std::string error(result.message());
    if (error.size() > options_.error_limit) {
      error = absl::StrCat(error.substr(0, options_.error_limit), "...");
    }
    p.last_error = std::move(error);
  }
  const bool probe_changed = p.tracker.Record(passed);
  if (options_.on_check) options_.on_check(i, passed, end - start, p.tracker.health());
  if (!probe_changed) return std::nullopt;
  std::vector<v1::WorkloadHealth> all;
  for (const Probe& q : probes_) all.push_back(q.tracker.health());
  const v1::WorkloadHealth now = Combine(all);
  if (now == health_ || now == v1::WORKLOAD_HEALTH_UNSPECIFIED) return std::nullopt;
  health_ = now;
  unhealthy_since_ = now == v1::WORKLOAD_HEALTH_UNHEALTHY ? end : absl::InfiniteFuture();
  HealthChange change{now, p.spec.name, p.last_error, end};
  return change;
}

}  // namespace parley::services
