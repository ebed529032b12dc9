#pragma once

// The health monitor of one unit (docs/service-definitions.md, "Health"): runs the unit's probes
// (engine::HealthCheckSpec, declared under `health:`) on a thread of its own — never inside a run
// and never on the agent's strand — and turns their results into the workload's health:
//  - each probe becomes UNHEALTHY after `failure_threshold` consecutive failed checks and HEALTHY
//    after `success_threshold` consecutive passed ones (ProbeTracker); before either it is
//    undecided (UNSPECIFIED);
//  - the workload is UNHEALTHY while some probe is, HEALTHY once every probe is, undecided
//    otherwise;
//  - `on_change` is called on each change of the workload's health to HEALTHY or UNHEALTHY (the
//    agent queues the event: engine::Engine::EnqueueHealth), from the monitor's thread.
// Probes are checked one after another; each one's first check comes `initial_delay` after Start,
// the next `interval` after the previous one began (at once if it took longer).
//
// Thread-safe: every method may be called from any thread. The destructor stops the thread,
// waiting for the check in progress (bounded by its timeout).

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "engine/spec.h"
#include "parley/v1/agent.pb.h"

namespace parley::services {

// One probe's judgement from its consecutive results (Kubernetes' failureThreshold and
// successThreshold; Consul's failures_before_critical and success_before_passing).
class ProbeTracker {
 public:
  ProbeTracker(uint32_t failure_threshold, uint32_t success_threshold)
      : failure_threshold_(failure_threshold), success_threshold_(success_threshold) {}
  // Records one check; true when it changed the probe's health.
  bool Record(bool passed);
  v1::WorkloadHealth health() const { return health_; }
  uint32_t failures() const { return failures_; }
  uint32_t successes() const { return successes_; }

 private:
  uint32_t failure_threshold_;
  uint32_t success_threshold_;
  uint32_t failures_ = 0;
  uint32_t successes_ = 0;
  v1::WorkloadHealth health_ = v1::WORKLOAD_HEALTH_UNSPECIFIED;
};

// The workload's health from its probes': UNHEALTHY if any is, HEALTHY if all are (and there is
// one), UNSPECIFIED otherwise.
v1::WorkloadHealth Combine(const std::vector<v1::WorkloadHealth>& probes);

// A change of the workload's health.
struct HealthChange {
  v1::WorkloadHealth health = v1::WORKLOAD_HEALTH_UNSPECIFIED;
  // UNHEALTHY: the probe that failed its threshold and its last error (truncated); HEALTHY: the
  // probe whose success completed it.
  std::string probe;
  std::string reason;
  // When the change was decided (the monitor's clock).
  absl::Time at;
};

struct HealthMonitorOptions {
  // Not owned; must outlive the monitor.
  base::Clock* clock = base::SystemClock::Get();
  // Characters of a probe's error kept (status, logs, the event's `reason`).
  size_t error_limit = 240;
  // Called from the monitor's thread, outside its lock: must not block (post elsewhere).
  std::function<void(const HealthChange&)> on_change;
  // After every check: the probe's index, whether it passed, how long it took and the probe's
  // health after it (for metrics). Called from the monitor's thread with its lock held: it must
  // not call the monitor.
  std::function<void(size_t probe, bool passed, absl::Duration took, v1::WorkloadHealth health)>
      on_check;
};

class HealthMonitor {
 public:
  HealthMonitor(std::string unit, std::vector<engine::HealthCheckSpec> checks,
                HealthMonitorOptions options);
  ~HealthMonitor();
  HealthMonitor(const HealthMonitor&) = delete;
  HealthMonitor& operator=(const HealthMonitor&) = delete;

  // Starts checking (the unit became active); later calls do nothing.
  void Start();
  // Stops checking (the unit is dying, or its agent stops); the check in progress finishes on
  // the thread, without effect. Later Starts do nothing.
  void Stop();
  bool started() const;

  // What probes see of the unit: its config (with defaults) and facts, as last committed.
  void SetContext(std::map<std::string, std::string> config,
                  std::map<std::string, std::string> facts);

  v1::WorkloadHealth health() const;
  // While UNHEALTHY: since when (the leadership rule "a leader whose workload stays unhealthy
  // past a grace resigns" asks this); nullopt otherwise.
  std::optional<absl::Time> unhealthy_since() const;
  // Each probe's judgement, in declaration order.
  std::vector<v1::ProbeStatus> Probes() const;

 private:
  struct Probe {
    engine::HealthCheckSpec spec;
    ProbeTracker tracker;
    absl::Time due;
    std::string last_error;
    absl::Time last_check = absl::InfinitePast();
  };

  void Loop();
  // Runs the check of probe `i` (without the lock) and records it; returns the change to report.
  std::optional<HealthChange> CheckOne(size_t i);

  const std::string unit_;
  const HealthMonitorOptions options_;
  mutable absl::Mutex mu_;
  std::vector<Probe> probes_ ABSL_GUARDED_BY(mu_);
  engine::ProbeContext context_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  v1::WorkloadHealth health_ ABSL_GUARDED_BY(mu_) = v1::WORKLOAD_HEALTH_UNSPECIFIED;
  absl::Time unhealthy_since_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  std::thread thread_;
};

}  // namespace parley::services
