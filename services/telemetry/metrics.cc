#include "services/telemetry/metrics.h"

namespace parley::services {
namespace {

// The reasons a frame addressed to a hosted agent can be refused for (the handshake in
// services/transport/peer_streams.cc, the rest in services/agent/delivery.cc). Their series exist
// from the start at 0, so that increase() sees the first refusal; Prometheus cannot tell a new
// series at 1 from one that was always 1.
constexpr const char* kRejectReasons[] = {
    "protocol_version", "no_sender", "too_large",        "unexpected_frame",
    "wrong_sender",     "invalid",   "unknown_relation", "not_party_to_relation",
    "sequence_gap"};

}  // namespace

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

Metrics::Metrics(prometheus::Registry& r)
    : runs_(BuildCounter()
                .Name("parley_agent_runs_total")
                .Help("Engine runs by result (committed or failed)")
                .Register(r)),
      run_duration_(BuildHistogram()
                        .Name("parley_agent_run_duration_seconds")
                        .Help("Duration of engine runs, commit included")
                        .Register(r)),
      handler_executions_(BuildCounter()
                              .Name("parley_agent_handler_executions_total")
                              .Help("Handlers executed")
                              .Register(r)),
      handler_failures_(BuildCounter()
                            .Name("parley_agent_handler_failures_total")
                            .Help("Handler executions that failed and rolled their run back")
                            .Register(r)),
      inbox_depth_(BuildGauge()
                       .Name("parley_agent_inbox_depth")
                       .Help("Events waiting in the agent's inbox")
                       .Register(r)),
      outbox_unacked_(BuildGauge()
                          .Name("parley_agent_outbox_unacked")
                          .Help("Relation events sent or to send, not yet acknowledged")
                          .Register(r)),
      in_error_(BuildGauge()
                    .Name("parley_agent_in_error")
                    .Help("1 while the event at the inbox head failed and waits for its retry")
                    .Register(r)),
      events_sent_(BuildCounter()
                       .Name("parley_peer_events_sent_total")
                       .Help("Relation events sent to peers (resends included)")
                       .Register(r)),
      events_received_(BuildCounter()
                           .Name("parley_peer_events_received_total")
                           .Help("Relation events from peers accepted into the inbox")
                           .Register(r)),
      events_deduplicated_(BuildCounter()
                               .Name("parley_peer_events_deduplicated_total")
                               .Help("Relation events from peers already received (resends)")
                               .Register(r)),
      events_rejected_(BuildCounter()
                           .Name("parley_peer_events_rejected_total")
                           .Help("Peer frames refused, by reason")
                           .Register(r)),
      acks_received_(BuildCounter()
                         .Name("parley_peer_acks_received_total")
                         .Help("Acknowledgements received from peers")
                         .Register(r)),
      events_resolved_(BuildCounter()
                           .Name("parley_agent_events_resolved_total")
                           .Help("Failed inbox head events an operator resolved, by mode "
                                 "(retry or skip)")
                           .Register(r)),
      peer_up_(BuildGauge()
                   .Name("parley_peer_stream_up")
                   .Help("1 while the stream to the peer is open")
                   .Register(r)),
      reconnects_(BuildCounter()
                      .Name("parley_peer_reconnects_total")
                      .Help("Streams to the peer that ended and were opened again")
                      .Register(r)),
      probe_checks_(BuildCounter()
                        .Name("parley_agent_probe_checks_total")
                        .Help("Health probe checks of the workload, by probe and result "
                              "(pass or fail)")
                        .Register(r)),
      probe_duration_(BuildHistogram()
                          .Name("parley_agent_probe_duration_seconds")
                          .Help("Duration of health probe checks")
                          .Register(r)),
      probe_healthy_(BuildGauge()
                         .Name("parley_agent_probe_healthy")
                         .Help("1 while the probe judges the workload healthy, 0 unhealthy, -1 "
                               "before its thresholds decided")
                         .Register(r)),
      workload_healthy_(BuildGauge()
                            .Name("parley_agent_workload_healthy")
                            .Help("1 while every health probe passes, 0 while one failed its "
                                  "threshold, -1 before they decided")
                            .Register(r)),
      leader_(BuildGauge()
                  .Name("parley_agent_leader")
                  .Help("1 while the unit leads its service, 0 while it does not (services "
                        "that declare leadership only)")
                  .Register(r)),
      leader_term_(BuildGauge()
                       .Name("parley_agent_leader_term")
                       .Help("The term of the service's leader as the unit knows it (0: none)")
                       .Register(r)) {}

Metrics::Agent Metrics::ForAgent(const std::string& agent) {
  const prometheus::Labels l{{"agent", agent}};
  Agent a;
  a.runs_committed = &runs_.Add({{"agent", agent}, {"result", "committed"}});
  a.runs_failed = &runs_.Add({{"agent", agent}, {"result", "failed"}});
  a.run_duration = &run_duration_.Add(l, prometheus::Histogram::BucketBoundaries{
                                             0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30});
  a.handler_executions = &handler_executions_.Add(l);
  a.handler_failures = &handler_failures_.Add(l);
  a.inbox_depth = &inbox_depth_.Add(l);
  a.outbox_unacked = &outbox_unacked_.Add(l);
  a.in_error = &in_error_.Add(l);
  a.events_sent = &events_sent_.Add(l);
  a.events_received = &events_received_.Add(l);
  a.events_deduplicated = &events_deduplicated_.Add(l);
  a.acks_received = &acks_received_.Add(l);
  a.events_retried = &events_resolved_.Add({{"agent", agent}, {"mode", "retry"}});
  a.events_skipped = &events_resolved_.Add({{"agent", agent}, {"mode", "skip"}});
  for (const char* reason : kRejectReasons) Rejected(agent, reason);
  return a;
}

prometheus::Counter& Metrics::Rejected(const std::string& agent, const std::string& reason) {
  return events_rejected_.Add({{"agent", agent}, {"reason", reason}});
}

prometheus::Gauge& Metrics::PeerUp(const std::string& agent, const std::string& peer) {
  return peer_up_.Add({{"agent", agent}, {"peer", peer}});
}

Metrics::Probe Metrics::ForProbe(const std::string& agent, const std::string& probe) {
  const prometheus::Labels l{{"agent", agent}, {"probe", probe}};
  Probe p;
  p.passed = &probe_checks_.Add({{"agent", agent}, {"probe", probe}, {"result", "pass"}});
  p.failed = &probe_checks_.Add({{"agent", agent}, {"probe", probe}, {"result", "fail"}});
  p.duration = &probe_duration_.Add(
      l, prometheus::Histogram::BucketBoundaries{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30});
  p.healthy = &probe_healthy_.Add(l);
  p.healthy->Set(-1);
  return p;
}

prometheus::Gauge& Metrics::WorkloadHealthy(const std::string& agent) {
  return workload_healthy_.Add({{"agent", agent}});
}

Metrics::Leadership Metrics::ForLeadership(const std::string& agent) {
  return {&leader_.Add({{"agent", agent}}), &leader_term_.Add({{"agent", agent}})};
}

prometheus::Counter& Metrics::Reconnects(const std::string& agent, const std::string& peer) {
  return reconnects_.Add({{"agent", agent}, {"peer", peer}});
}

}  // namespace parley::services
