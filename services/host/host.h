#pragma once

// A Host is what `parleyd` runs: one gRPC server (peer protocol and agent API), one knowledge
// base store, a thread pool with a strand per agent, and any number of agents, each addressed by
// its name. Agents on the same host talk through in-process sessions with the same semantics as
// gRPC streams; agents elsewhere through one stream per pair, opened by the agent whose name
// sorts first.
//
// It is the environment of its agents (AgentEnv, AgentLinks) and of its gRPC services (PeerHost,
// ApiHost): they reach it only through those interfaces. Hosting work from the API (adding and
// removing agents) runs on one serial executor of the host, joined at shutdown.
//
// One class, three files: host.cc (registry, recipes, hosting work, shutdown), links.cc (channels
// and sessions with peers, dialing, backoff) and relate.cc (the two-phase Relate).
//
// Thread-safe.

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/clock.h"
#include "base/executor.h"
#include "grpcpp/grpcpp.h"
#include "kb/kb.h"
#include "kb/store.h"
#include "parley/v1/agent.grpc.pb.h"
#include "parley/v1/peer.grpc.pb.h"
#include "prometheus/registry.h"
#include "services/agent/agent.h"
#include "services/agent/agent_env.h"
#include "services/coord/etcd_coordinator.h"
#include "services/host/peer_links.h"
#include "services/telemetry/log_buffer.h"
#include "services/telemetry/metrics.h"
#include "services/transport/tls.h"
#include "services/transport/transport_host.h"

namespace parley::services {

struct HostOptions {
  // host:port to listen on; port 0 picks one (see Host::address()).
  std::string listen = "127.0.0.1:0";
  // The address peers should dial; defaults to the listen host with the bound port.
  std::string advertise;
  // Directory of the knowledge base shared by the hosted agents.
  std::string data_dir;
  kb::Durability durability = kb::Durability::kGroupCommit;
  int threads = 2;
  TlsOptions tls;
  // Backoff between attempts to reach a peer.
  absl::Duration reconnect_initial = absl::Milliseconds(50);
  absl::Duration reconnect_max = absl::Seconds(5);
  // Each wait is shortened by a random fraction of up to this (PeerLinksOptions::jitter).
  double reconnect_jitter = 0.5;
  // A dialed stream whose listener does not answer the Hello within this is cancelled.
  absl::Duration handshake_timeout = absl::Seconds(3);
  // Largest peer or API message accepted.
  int max_message_bytes = 4 << 20;
  // Metrics go here when set (owned by main, which exposes it).
  std::shared_ptr<prometheus::Registry> registry;
  size_t log_capacity = 10000;
  // What every timeout, backoff, retry and timer of the host and its agents runs on (gRPC's own
  // deadlines aside); tests pass a base::ManualClock. Must outlive the host.
  base::Clock* clock = base::SystemClock::Get();
  // Builds the spec of an agent from its recipe (a service definition), for the AddAgent call and
  // to host recipes again after a restart. Unset: the host only runs agents added in code.
  std::function<absl::StatusOr<engine::ServiceSpec>(const v1::AgentRecipe&)> build_agent;
  // Options of agents built from recipes.
  AgentOptions recipe_agent_options;
  // RemoveAgent: the run in progress gets `remove_blocked_after` to end; after that the agent is
  // blocked (a handler hangs) and its processes are stopped under it, which ends the run. Every
  // process of the agent still running then gets SIGTERM, and SIGKILL `remove_kill_grace` later.
  absl::Duration remove_blocked_after = absl::Seconds(10);
  absl::Duration remove_kill_grace = absl::Seconds(10);
  // RemoveAgentLater without `force` and without a grace of its own: how long a unit may take to
  // die before it is removed anyway.
  absl::Duration remove_dying_grace = absl::Seconds(60);
  // Reported by GetHost.
  std::string version;
  std::string metrics_address;
  // Leadership (docs/coordination.md): the etcd members units of services that declare
  // leadership campaign through (no endpoints: none is configured, and such units never lead),
  // and the prefix of their elections' names ("parley/<model>/leader/" for a model, so that two
  // models on one etcd do not share leaders).
  coord::EtcdOptions etcd;
  std::string election_prefix = "parley/leader/";
};

class Host : public AgentLinks, public ApiHost {
 public:
  static absl::StatusOr<std::unique_ptr<Host>> Start(HostOptions options);
  // Shuts down if not done yet.
  ~Host() override;
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  // Adds and starts an agent for `spec` (its name is spec.unit).
  absl::StatusOr<Agent*> AddAgent(engine::ServiceSpec spec, AgentOptions options = {});
  Agent* Find(absl::string_view name) const override;

  // Agents built from service definitions (options.build_agent). The host records each recipe in
  // its store, durably, before it starts the agent, and RestoreAgents hosts them again after a
  // restart. Both block; call them from a thread of your own (not a strand).
  // Returns the service the agent belongs to.
  absl::StatusOr<std::string> AddAgentFromRecipe(const v1::AgentRecipe& recipe);
  // Hosts every recorded recipe (at startup). A recipe that no longer builds (its definition
  // changed or vanished) is skipped and reported in the returned error; the others start.
  absl::Status RestoreAgents();
  // Stops the agent, stops every process its handlers started that is still running (found by
  // the agent's cookie, see UnitCookie; even when the agent is blocked, see HostOptions), forgets
  // its recipe and deletes its knowledge base. Returns the processes it stopped, which the log
  // names too. Its memory is freed when the host shuts down. Blocks for up to about
  // 2 * remove_blocked_after + 2 * remove_kill_grace; DEADLINE_EXCEEDED when the agent's run
  // still has not ended then (the call may be repeated).
  absl::StatusOr<v1::RemoveAgentResponse> RemoveAgent(const std::string& name);
  // What Shutdown is waiting for (for a daemon to report a shutdown that takes long); "" before.
  const char* shutdown_phase() const { return shutdown_phase_.load(); }
  // The two above on the hosting executor, one hosting change at a time (ApiHost). Work queued
  // when Shutdown begins does not run: its `done` gets UNAVAILABLE.
  void AddAgentLater(v1::AgentRecipe recipe,
                     std::function<void(absl::StatusOr<std::string>)> done) override;
  // Without `force`, the unit first dies (Agent::BeginRemoval) and RemoveAgent runs once it is
  // dead or the grace passed; the wait holds neither the executor nor a thread.
  void RemoveAgentLater(v1::RemoveAgentRequest request,
                        std::function<void(absl::StatusOr<v1::RemoveAgentResponse>)> done) override;
  // The cookie that tags the processes `name`'s handlers start (base/process_reaper.h): derived
  // from a random secret kept in the host's store, so the same across restarts and different on
  // every other data dir. NOT_FOUND when no such agent is hosted; FAILED_PRECONDITION while it is
  // being removed (no program of it may start then). Thread-safe.
  absl::StatusOr<std::string> UnitCookie(absl::string_view name) const;
  v1::HostInfo Info() const override;
  std::vector<Agent*> Agents() const override;
  const std::string& address() const override { return address_; }

  // Waits for the hosting work in flight (the work queued behind it does not run), finishes the
  // run in progress, lets commits become durable, closes streams and the server.
  void Shutdown();

  // Relates request.agent's endpoint to a remote agent: asks the remote side to check the
  // relation, then records it locally. `done` runs on an arbitrary thread.
  void Relate(v1::RelateRequest request,
              std::function<void(absl::StatusOr<v1::RelateResponse>)> done) override;

  // Makes sure `local` gets a session with `remote`: pairs them in-process, dials, or asks the
  // remote to dial, with backoff between attempts. Called on local's strand.
  void EnsureSession(Agent* local, const std::string& remote) override;
  PeerLinkView Link(const std::string& local, const std::string& remote) const override {
    return links_.Get(local, remote);
  }

  base::ThreadPool& pool() { return *pool_; }
  base::Scheduler& scheduler() override { return *scheduler_; }
  kb::Store& store() { return *store_; }
  Metrics& metrics() override { return *metrics_; }
  LogBuffer& logs() override { return logs_; }
  const TlsOptions& tls() const override { return options_.tls; }
  int max_message_bytes() const override { return options_.max_message_bytes; }
  absl::Duration handshake_timeout() const override { return options_.handshake_timeout; }
  base::Clock* clock() const { return options_.clock; }
  const HostOptions& options() const { return options_; }
  // The state of every peer link (for status and tests).
  const PeerLinks& links() const { return links_; }

  // Called by sessions: the stream (or attempt) from `local` to `remote` is over. `established`:
  // it carried frames, so the next attempt starts with the initial backoff.
  void SessionEnded(const std::string& local, const std::string& remote, bool established,
                    const absl::Status& status) override;
  // Called once by every dialed stream when gRPC is done with it.
  void StreamDone() override;

 private:
  // What builds each leadership campaign's coordinator (AgentEnv::coordinator); none without
  // etcd endpoints.
  std::function<absl::StatusOr<std::unique_ptr<coord::Coordinator>>()> CoordinatorFactory() const;
  explicit Host(HostOptions options);
  absl::Status Init();
  std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address);
  void Dial(Agent* local, const std::string& remote, const std::string& address);
  void AskToDial(Agent* local, const std::string& remote, const std::string& address);
  // Calls EnsureSession again at `when` on local's strand (one pending retry per link), unless
  // by then local has a session with remote or no longer wants one.
  void ScheduleRetry(Agent* local, const std::string& remote, absl::Time when);
  // Posts `work` to the hosting executor, or returns false once Shutdown began.
  bool PostHosting(std::function<void()> work);

  HostOptions options_;
  std::unique_ptr<kb::Store> store_;
  std::unique_ptr<base::ThreadPool> pool_;
  std::unique_ptr<base::Scheduler> scheduler_;
  // One thread: hosting changes run one at a time, in order; Shutdown joins it.
  std::unique_ptr<base::ThreadPool> hosting_;
  std::unique_ptr<Metrics> metrics_;
  LogBuffer logs_;
  std::unique_ptr<v1::Peer::CallbackService> peer_service_;
  std::unique_ptr<v1::Agent::CallbackService> agent_service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;

  std::atomic<const char*> shutdown_phase_{""};
  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Agent>, std::less<>> agents_ ABSL_GUARDED_BY(mu_);
  // Removed agents: stopped, kept until shutdown because closures may still name them.
  std::vector<std::unique_ptr<Agent>> retired_ ABSL_GUARDED_BY(mu_);
  // Agents RemoveAgent is removing: their programs may not start.
  std::set<std::string, std::less<>> removing_ ABSL_GUARDED_BY(mu_);
  // Removals waiting for their unit to die, by id; each answered exactly once (TakeRemoval), by
  // its wait or by Shutdown.
  struct PendingRemoval {
    std::string name;
    absl::Time started;
    absl::Time deadline;
    std::function<void(absl::StatusOr<v1::RemoveAgentResponse>)> done;
  };
  std::map<uint64_t, std::shared_ptr<PendingRemoval>> removals_ ABSL_GUARDED_BY(mu_);
  uint64_t next_removal_ ABSL_GUARDED_BY(mu_) = 0;
  void AwaitDeath(uint64_t id);
  void AwaitDeathLater(uint64_t id, std::shared_ptr<base::Strand> strand);
  std::shared_ptr<PendingRemoval> TakeRemoval(uint64_t id);
  // What the agents' cookies are derived from (set by Init, then read only).
  std::string cookie_secret_;
  // The host's own records (recipes) in the store.
  std::unique_ptr<kb::Kb> host_kb_;
  // Serializes AddAgentFromRecipe / RemoveAgent also when called in code, besides the executor.
  absl::Mutex hosting_mu_;
  const absl::Time started_ = options_.clock->Now();
  PeerLinks links_;
  // What every dial uses, read once at start: the files may change or vanish later.
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<v1::Peer::Stub>> stubs_ ABSL_GUARDED_BY(mu_);
  // Dialed streams gRPC has not finished with yet.
  int dialing_ ABSL_GUARDED_BY(mu_) = 0;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace parley::services
