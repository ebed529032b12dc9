#pragma once

// A service agent: one service unit's engine and knowledge base on its own strand, connected to
// the agents it relates to by peer sessions. Everything here runs on the agent's strand; other
// threads Post to it. The agent
//  - applies its inbox one run at a time (Kick), retrying failed runs when due;
//  - after a run is durable, sends the new outbox entries to their destinations, and applies
//    relation events from peers exactly once, acknowledging each once it is durable in the inbox
//    (its Delivery, services/agent/delivery.h: the protocol's one home);
//  - turns timers handlers asked for into timer events;
//  - runs its workload's health probes (services/health/monitor.h) once the unit is active, on
//    the monitor's thread, and queues workload.healthy / workload.unhealthy on each transition
//    (agent_health.cc);
//  - campaigns for its service's leadership once the unit is active, when the service declares
//    it, and queues leader.changed on each change of leader or term (agent_leadership.cc).

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "base/executor.h"
#include "engine/engine.h"
#include "parley/v1/agent.pb.h"
#include "parley/v1/peer.pb.h"
#include "services/agent/agent_env.h"
#include "services/agent/delivery.h"
#include "services/agent/session.h"
#include "services/coord/leadership.h"
#include "services/health/monitor.h"
#include "services/telemetry/metrics.h"

namespace parley::services {

struct AgentOptions {
  engine::EngineOptions engine;
  // Fire `update` this often; zero disables it (the default).
  absl::Duration update_interval = absl::ZeroDuration();
  // Outbox entries sent per destination before yielding the strand.
  size_t send_batch = 512;
  // Observers (benchmarks, embedding programs), called on the strand: after each committed run,
  // and once that run is durable.
  std::function<void(const engine::RunResult&)> on_commit;
  std::function<void(const engine::RunResult&)> on_durable;
  // Config applied when the agent is created for the first time: a config.changed event queued
  // between install and start. Checked against the spec's config options.
  std::map<std::string, std::string> initial_config;
};

class Agent : private DeliveryOwner {
 public:
  // Opens the agent's KB namespace (in env.store) and engine. Fires `install` (first start only)
  // and `start`.
  static absl::StatusOr<std::unique_ptr<Agent>> Create(const AgentEnv& env,
                                                       engine::ServiceSpec spec,
                                                       AgentOptions options);
  ~Agent();

  const std::string& name() const { return name_; }
  const engine::ServiceSpec& spec() const { return engine_->spec(); }
  const std::shared_ptr<base::Strand>& strand() const { return strand_; }
  engine::Engine& engine() { return *engine_; }

  // The remaining methods run on the strand.

  // Starts processing the inbox and scheduling timers.
  void Start();
  // Processes due inbox events (soon, on the strand).
  void Kick();

  // Peer sessions and their frames: the protocol (services/agent/delivery.h).
  void Attach(const std::string& remote, std::shared_ptr<PeerSession> session) {
    delivery_->Attach(remote, std::move(session));
  }
  void Detach(const std::string& remote, const PeerSession* session) {
    delivery_->Detach(remote, session);
  }
  void OnFrame(const std::string& remote, const std::shared_ptr<PeerSession>& session,
               const v1::PeerFrame& frame) {
    delivery_->OnFrame(remote, session, frame);
  }

  // Agents this one needs a stream with: relation targets, outbox destinations and agents that
  // announced a relation recently.
  std::set<std::string> WantedPeers() const;
  bool HasSession(const std::string& remote) const { return delivery_->HasSession(remote); }
  // Where `remote` listens, if known.
  std::string AddressOf(const std::string& remote) const;
  absl::Status RememberAddress(const std::string& remote, const std::string& address,
                               bool expect_relation);

  // The agent API, on the strand.
  v1::AgentStatus Status() const;
  v1::CheckIdleResponse CheckIdle() const;
  absl::StatusOr<uint64_t> SetConfig(const v1::SetConfigRequest& request);
  absl::StatusOr<uint64_t> FireEvent(const v1::FireEventRequest& request);
  // Retries or skips the failed inbox head (Engine::Resolve), logs it naming `request.by()` (and
  // the caller's `certificate` when there is one) and kicks the inbox. INVALID_ARGUMENT for an
  // unspecified mode or a `by` that is not one short printable line; FAILED_PRECONDITION as
  // Engine::Resolve.
  absl::StatusOr<v1::ResolveEventResponse> ResolveEvent(const v1::ResolveEventRequest& request,
                                                        const std::string& certificate = "");
  // Checks a config change against the service's declared options: INVALID_ARGUMENT naming the
  // service and the key.
  absl::Status CheckConfig(const std::string& key, const std::string& value) const;
  // Validates and records a relation whose other side already agreed (see Host::Relate,
  // services/host/host.h). Relating an existing relation to one more remote unit adds it (same
  // endpoint and remote service); relating it to a unit it already targets changes nothing but
  // where that unit is, when the request gives another address (how an operator tells agents that a
  // unit moved).
  absl::Status Relate(const v1::RelateRequest& request, const std::string& remote_service,
                      const std::string& interface);
  absl::Status Unrelate(const std::string& relation_id);
  // The local departures (or the break, with no remote unit) that unrelate `relation_id`.
  absl::StatusOr<std::vector<v1::Event>> DeparturesOf(const std::string& relation_id) const;
  // Begins the unit's removal (docs/engine.md, "A unit's life"): queues the removal's `stop`,
  // which makes the unit dying when it is applied, and departs every relation. Called again (a
  // retried removal, a restart) it queues nothing new. UNAVAILABLE while a run is in progress
  // (the engine cannot queue the removal then): call it again after the run.
  absl::Status BeginRemoval(absl::string_view by);
  // Dying, everything queued applied, no run in progress, and every departure acknowledged by
  // its peers: the unit can be removed.
  bool Dead() const;
  // A relation id may be used for a new relation, or for one more remote unit of the relation
  // that has it (same endpoint, remote service and remote endpoint); else ALREADY_EXISTS.
  absl::Status CheckRelationId(const std::string& relation_id, const std::string& endpoint,
                               const std::string& remote_service,
                               const std::string& remote_endpoint) const;
  // Checks a relation another agent proposes to this one; returns this side's role.
  absl::StatusOr<v1::CheckRelationResponse> CheckRelation(const v1::CheckRelationRequest& r);
  v1::GetRelationDataResponse RelationData(const std::string& endpoint) const;

  // Called on status changes (after runs, on API calls); `fn` runs on the strand.
  using Watcher = std::function<void(const v1::AgentStatus&)>;
  uint64_t Watch(Watcher fn);
  void Unwatch(uint64_t id);

  // The workload's health (agent_health.cc): UNSPECIFIED without probes or before they decided.
  v1::WorkloadHealth health() const;
  // While the workload is unhealthy: since when (in the host's clock's time). For a leader that
  // must resign when its workload stays unhealthy past a grace.
  std::optional<absl::Time> UnhealthySince() const;
  // Called on the strand after each change of the workload's health (once its event is queued).
  using HealthWatcher = std::function<void(const HealthChange&)>;
  void WatchHealth(HealthWatcher fn) { health_watchers_.push_back(std::move(fn)); }

  // Stops timers and detaches sessions; the strand must be drained afterwards.
  void Stop();
  bool stopped() const { return stopped_; }

 private:
  Agent(const AgentEnv& env, std::unique_ptr<kb::Kb> kb, std::unique_ptr<engine::Engine> engine,
        AgentOptions options);

  void Process();
  void AfterCommit(const engine::RunResult& result);
  void ScheduleTimers();
  void ScheduleRetry(absl::Time when);
  void Notify();
  // Health (agent_health.cc): the monitor follows the unit's stage and sees its committed config
  // and facts; a change it reports is queued as an event on the strand.
  void MakeHealthMonitor();
  void UpdateHealth();
  void OnHealthChange(const HealthChange& change);
  void FillHealth(v1::AgentStatus& s) const;
  // Leadership (agent_leadership.cc): the campaign starts once the unit is active and ends
  // (resigning) when it is dying or stops; each change of what it reports becomes a
  // leader.changed event on the strand.
  void MakeCampaigner();
  void UpdateLeadership();
  void OnLeadershipChange(const coord::LeadershipView& view);
  void FillLeadership(v1::AgentStatus& s) const;
  // A leader whose workload stays unhealthy past the spec's unhealthy_grace resigns: called on
  // each change of health or leadership, it schedules (or cancels) that check.
  void CheckUnhealthyLeader();
  void Log(v1::LogLevel level, std::string message) const;
  // Runs `fn` on the strand once `ticket` is durable, after the work queued before it.
  void WhenDurable(uint64_t ticket, std::function<void()> fn);
  void WaitForStore(uint64_t ticket);
  void OnDurable(uint64_t ticket, const absl::Status& status);
  // DeliveryOwner.
  void PeerEventQueued(uint64_t ticket) override;
  uint64_t LastTicket() const override { return last_ticket_; }
  void WakeWhenDurable(uint64_t ticket) override;
  void HeardFrom(const std::string& remote) override;
  void SessionDown(const std::string& remote) override;
  void StatusChanged() override { Notify(); }

 public:
  // Calls `answer` on the strand once everything this agent wrote so far is durable, with OK:
  // what the API reports must not be lost by a crash. Every answer is called exactly once: with
  // UNAVAILABLE if the agent stops first, with the store's error if its sync fails, so that no
  // caller waits for an answer that would never come.
  void AfterDurable(std::function<void(absl::Status)> answer);

 private:
  const AgentEnv env_;
  const std::string name_;
  std::unique_ptr<kb::Kb> kb_;
  std::unique_ptr<engine::Engine> engine_;
  const AgentOptions options_;
  std::shared_ptr<base::Strand> strand_;
  // Guards callbacks that outlive the agent: they hold a weak_ptr to this flag.
  std::shared_ptr<bool> alive_;

  uint64_t last_ticket_ = 0;
  bool kick_scheduled_ = false;
  bool executing_ = false;
  uint64_t retry_timer_ = 0;
  absl::Time retry_at_ = absl::InfiniteFuture();
  std::map<std::string, std::pair<absl::Time, uint64_t>> timer_ids_;
  uint64_t update_timer_ = 0;
  std::map<std::string, std::string> addresses_;
  std::map<std::string, absl::Time> expecting_;
  uint64_t last_run_ = 0;
  std::string last_event_;
  absl::Time last_run_time_ = absl::InfinitePast();
  std::map<uint64_t, Watcher> watchers_;
  uint64_t next_watcher_ = 1;
  bool stopped_ = false;
  // Work waiting for durability, in ticket order, and the ticket the store will wake us for.
  std::deque<std::pair<uint64_t, std::function<void()>>> durable_work_;
  // AfterDurable's answers not given yet, by id.
  std::map<uint64_t, std::function<void(absl::Status)>> answers_;
  uint64_t next_answer_ = 1;
  // Gives every pending answer `status` (the agent stops, or the store failed).
  void AbandonAnswers(const absl::Status& status);
  uint64_t waiting_for_ = 0;
  Metrics::Agent metrics_;
  // The peer protocol: sessions, the pump, checking and acknowledging arriving events.
  std::unique_ptr<Delivery> delivery_;
  // Set when the spec declares health probes.
  std::unique_ptr<HealthMonitor> health_;
  std::vector<HealthWatcher> health_watchers_;
  prometheus::Gauge* workload_healthy_ = nullptr;
  // Set when the spec declares leadership and a coordinator could be made; otherwise, for such a
  // spec, `leadership_error_` says why not.
  std::unique_ptr<coord::Campaigner> campaigner_;
  bool campaigning_ = false;
  uint64_t resign_timer_ = 0;
  // When this unit last began to lead (the host's clock): a grace runs from the later of this and
  // the workload's turning unhealthy, so that a unit re-elected while unhealthy (no healthier
  // candidate) leads a whole grace again before it resigns again.
  absl::Time leading_since_ = absl::InfinitePast();
  coord::LeadershipView leadership_;
  std::string leadership_error_;
  Metrics::Leadership leadership_metrics_{};
};

}  // namespace parley::services
