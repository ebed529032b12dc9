#pragma once

// The agents' Prometheus metrics. Names follow parley_<area>_<what>_<unit>; every series carries
// the agent's name. One Metrics per Host, on the registry main() owns and exposes.

#include <memory>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace parley::services {

class Metrics {
 public:
  explicit Metrics(prometheus::Registry& registry);

  // The series of one agent, looked up once.
  struct Agent {
    prometheus::Counter* runs_committed;
    prometheus::Counter* runs_failed;
    prometheus::Histogram* run_duration;
    prometheus::Counter* handler_executions;
    prometheus::Counter* handler_failures;
    prometheus::Gauge* inbox_depth;
    prometheus::Gauge* outbox_unacked;
    // 1 while the event at the inbox head failed and waits for its retry (AGENT_STATE_ERROR).
    prometheus::Gauge* in_error;
    prometheus::Counter* events_sent;
    prometheus::Counter* events_received;
    prometheus::Counter* events_deduplicated;
    prometheus::Counter* acks_received;
    // Failed inbox heads an operator resolved (ResolveEvent), by mode.
    prometheus::Counter* events_retried;
    prometheus::Counter* events_skipped;
  };
  Agent ForAgent(const std::string& agent);

  prometheus::Counter& Rejected(const std::string& agent, const std::string& reason);
  prometheus::Gauge& PeerUp(const std::string& agent, const std::string& peer);
  prometheus::Counter& Reconnects(const std::string& agent, const std::string& peer);

  // The series of one health probe of an agent (docs/operations.md, "Health").
  struct Probe {
    prometheus::Counter* passed;
    prometheus::Counter* failed;
    prometheus::Histogram* duration;
    // 1 healthy, 0 unhealthy, -1 before its thresholds decided.
    prometheus::Gauge* healthy;
  };
  Probe ForProbe(const std::string& agent, const std::string& probe);
  // 1 while the agent's workload is healthy, 0 while unhealthy, -1 before its probes decided.
  prometheus::Gauge& WorkloadHealthy(const std::string& agent);
  // A unit of a service that declares leadership (docs/coordination.md): 1 while it leads, 0
  // while it does not; the term it knows (the leader's).
  struct Leadership {
    prometheus::Gauge* leader;
    prometheus::Gauge* term;
  };
  Leadership ForLeadership(const std::string& agent);

 private:
  prometheus::Family<prometheus::Counter>& runs_;
  prometheus::Family<prometheus::Histogram>& run_duration_;
  prometheus::Family<prometheus::Counter>& handler_executions_;
  prometheus::Family<prometheus::Counter>& handler_failures_;
  prometheus::Family<prometheus::Gauge>& inbox_depth_;
  prometheus::Family<prometheus::Gauge>& outbox_unacked_;
  prometheus::Family<prometheus::Gauge>& in_error_;
  prometheus::Family<prometheus::Counter>& events_sent_;
  prometheus::Family<prometheus::Counter>& events_received_;
  prometheus::Family<prometheus::Counter>& events_deduplicated_;
  prometheus::Family<prometheus::Counter>& events_rejected_;
  prometheus::Family<prometheus::Counter>& acks_received_;
  prometheus::Family<prometheus::Counter>& events_resolved_;
  prometheus::Family<prometheus::Gauge>& peer_up_;
  prometheus::Family<prometheus::Counter>& reconnects_;
  prometheus::Family<prometheus::Counter>& probe_checks_;
  prometheus::Family<prometheus::Histogram>& probe_duration_;
  prometheus::Family<prometheus::Gauge>& probe_healthy_;
  prometheus::Family<prometheus::Gauge>& workload_healthy_;
  prometheus::Family<prometheus::Gauge>& leader_;
  prometheus::Family<prometheus::Gauge>& leader_term_;
};

}  // namespace parley::services
