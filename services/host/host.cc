#include "services/host/host.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "base/process_reaper.h"
#include "base/status_macros.h"
#include "services/transport/api_service.h"
#include "services/transport/peer_streams.h"
#include "services/transport/status_convert.h"

namespace parley::services {
namespace {
constexpr absl::string_view kRecipePrefix = "recipe/";
// The secret the agents' process cookies are derived from.
constexpr absl::string_view kCookieSecretKey = "unit_cookie_secret";
}  // namespace

absl::StatusOr<std::unique_ptr<Host>> Host::Start(HostOptions options) {
  std::unique_ptr<Host> host(new Host(std::move(options)));
  RETURN_IF_ERROR(host->Init());
  return host;
}

Host::Host(HostOptions options)
    : options_(std::move(options)),
      logs_(options_.log_capacity),
      links_(PeerLinksOptions{.initial_backoff = options_.reconnect_initial,
                              .max_backoff = options_.reconnect_max,
                              .jitter = options_.reconnect_jitter}) {}

absl::Status Host::Init() {
  if (options_.data_dir.empty()) return absl::InvalidArgumentError("host: data_dir is not set");
  kb::StoreOptions so;
  so.durability = options_.durability;
  ASSIGN_OR_RETURN(store_, kb::Store::Open(options_.data_dir, so));
  // Unit names are "<service>/<number>" and agents added in code never start with '.'.
  ASSIGN_OR_RETURN(host_kb_, kb::Kb::Open(store_.get(), ".parleyd"));
  ASSIGN_OR_RETURN(std::optional<std::string> secret,
                   host_kb_->Get(kb::Space::kMeta, kCookieSecretKey));
  if (secret) {
    cookie_secret_ = std::move(*secret);
  } else {
    // Made once per data dir, durably before any agent may start a program.
    ASSIGN_OR_RETURN(cookie_secret_, base::RandomHex(16));
    auto txn = host_kb_->Begin();
    txn->Put(kb::Space::kMeta, kCookieSecretKey, cookie_secret_);
    ASSIGN_OR_RETURN(uint64_t ticket, host_kb_->Commit(*txn));
    RETURN_IF_ERROR(store_->WaitDurable(ticket));
  }
  pool_ = std::make_unique<base::ThreadPool>(options_.threads);
  scheduler_ = std::make_unique<base::Scheduler>(options_.clock);
  hosting_ = std::make_unique<base::ThreadPool>(1);
  if (!options_.registry) options_.registry = std::make_shared<prometheus::Registry>();
  metrics_ = std::make_unique<Metrics>(*options_.registry);

  ASSIGN_OR_RETURN(auto creds, ServerCredentials(options_.tls));
  // Without usable dialing credentials (a TLS server given no CA) the host serves but cannot dial.
  if (auto dial = ChannelCredentials(options_.tls); dial.ok()) channel_credentials_ = *dial;
  peer_service_ = MakePeerService(this);
  agent_service_ = MakeAgentService(this);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen, creds, &port);
  builder.RegisterService(peer_service_.get());
  builder.RegisterService(agent_service_.get());
  // gRPC's own limit sits above ours so that an oversized frame reaches the stream, which
  // refuses it with a reason it can count.
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes + (64 << 10));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  server_ = builder.BuildAndStart();
  if (!server_ || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.listen));
  }
  if (!options_.advertise.empty()) {
    address_ = options_.advertise;
  } else {
    std::string host = options_.listen.substr(0, options_.listen.rfind(':'));
    if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
    address_ = absl::StrCat(host, ":", port);
  }
  return absl::OkStatus();
}

Host::~Host() { Shutdown(); }

std::function<absl::StatusOr<std::unique_ptr<coord::Coordinator>>()> Host::CoordinatorFactory()
    const {
  if (options_.etcd.endpoints.empty()) return nullptr;
  return [etcd = options_.etcd] { return coord::NewEtcdCoordinator(etcd); };
}

absl::StatusOr<Agent*> Host::AddAgent(engine::ServiceSpec spec, AgentOptions options) {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return absl::FailedPreconditionError("host is shut down");
    if (agents_.contains(spec.unit)) {
      return absl::AlreadyExistsError(absl::StrCat("agent '", spec.unit, "' already hosted"));
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Agent> agent,
                   Agent::Create(AgentEnv{.store = store_.get(),
                                          .pool = pool_.get(),
                                          .scheduler = scheduler_.get(),
                                          .clock = options_.clock,
                                          .logs = &logs_,
                                          .metrics = metrics_.get(),
                                          .links = this,
                                          .coordinator = CoordinatorFactory(),
                                          .election_prefix = options_.election_prefix},
                                 std::move(spec), options));
  Agent* raw = agent.get();
  {
    // Checked again: another AddAgent of the same name, or Shutdown, may have come in between.
    absl::MutexLock lock(&mu_);
    if (shut_down_) return absl::FailedPreconditionError("host is shut down");
    if (agents_.contains(raw->name())) {
      return absl::AlreadyExistsError(absl::StrCat("agent '", raw->name(), "' already hosted"));
    }
    agents_.emplace(raw->name(), std::move(agent));
  }
  // A handler of a parleyd that died on this data (SIGKILL, a crash) may still be running:
  // nothing ties a handler's life to its parleyd's. Its run is retried by this agent, so it must
  // not go on beside the retry (the webstack campaign saw two redis-hook starts at once lose
  // redis.pid). Before the agent runs anything, what is left of its handlers - tagged processes
  // that did not detach - is killed; the daemons they started in sessions of their own stay.
  const std::string cookie = base::DeriveUnitCookie(cookie_secret_, raw->name());
  raw->strand()->Post([this, raw, cookie] {
    base::ReapOptions leftover;
    leftover.only_attached = true;
    leftover.grace = absl::ZeroDuration();
    for (const base::ReapedProcess& r : base::ReapTaggedProcesses(cookie, leftover)) {
      v1::LogRecord record;
      record.set_agent(raw->name());
      record.set_level(r.fate == base::ProcessFate::kSurvived ? v1::LOG_LEVEL_ERROR
                                                              : v1::LOG_LEVEL_WARNING);
      record.set_message(absl::StrCat("stopped pid ", r.process.pid, " (", r.process.command,
                                      "): a handler left running by a parleyd that ended without "
                                      "waiting for it",
                                      r.error.empty() ? "" : absl::StrCat("; ", r.error)));
      logs_.Add(std::move(record));
    }
    raw->Start();
  });
  return raw;
}

absl::StatusOr<std::string> Host::AddAgentFromRecipe(const v1::AgentRecipe& recipe) {
  absl::MutexLock hosting(&hosting_mu_);
  if (!options_.build_agent) {
    return absl::UnimplementedError(
        absl::StrCat("the server at ", address_, " does not host agents from definitions"));
  }
  if (Find(recipe.agent()) != nullptr) {
    return absl::AlreadyExistsError(
        absl::StrCat("agent '", recipe.agent(), "' is already hosted at ", address_));
  }
  ASSIGN_OR_RETURN(engine::ServiceSpec spec, options_.build_agent(recipe));
  std::string service = spec.service;
  AgentOptions agent_options = options_.recipe_agent_options;
  for (const auto& [k, v] : recipe.config()) agent_options.initial_config[k] = v;
  // Check the config before anything is recorded, so that a refused recipe leaves no trace.
  for (const auto& [k, v] : recipe.config()) RETURN_IF_ERROR(engine::CheckConfig(spec, k, v));
  auto txn = host_kb_->Begin();
  txn->Put(kb::Space::kMeta, absl::StrCat(kRecipePrefix, recipe.agent()),
           recipe.SerializeAsString());
  ASSIGN_OR_RETURN(uint64_t ticket, host_kb_->Commit(*txn));
  RETURN_IF_ERROR(store_->WaitDurable(ticket));
  if (absl::Status added = AddAgent(std::move(spec), std::move(agent_options)).status();
      !added.ok()) {
    // Not hosted: not hosted again after a restart either.
    txn->Delete(kb::Space::kMeta, absl::StrCat(kRecipePrefix, recipe.agent()));
    if (auto undone = host_kb_->Commit(*txn); undone.ok()) {
      store_->WaitDurable(*undone).IgnoreError();
    }
    return added;
  }
  return service;
}

absl::Status Host::RestoreAgents() {
  if (!options_.build_agent) return absl::OkStatus();
  absl::MutexLock hosting(&hosting_mu_);
  std::vector<v1::AgentRecipe> recipes;
  absl::Status parse;
  RETURN_IF_ERROR(host_kb_->Scan(
      kb::Space::kMeta, kRecipePrefix, [&](absl::string_view key, absl::string_view value) {
        v1::AgentRecipe r;
        if (!r.ParseFromString(std::string(value))) {
          parse = absl::DataLossError(
              absl::StrCat(options_.data_dir, ": the recipe of agent '", key, "' does not parse"));
          return false;
        }
        recipes.push_back(std::move(r));
        return true;
      }));
  RETURN_IF_ERROR(parse);
  std::vector<std::string> failed;
  for (const v1::AgentRecipe& recipe : recipes) {
    absl::StatusOr<engine::ServiceSpec> spec = options_.build_agent(recipe);
    absl::Status st = spec.status();
    if (st.ok()) {
      AgentOptions agent_options = options_.recipe_agent_options;
      for (const auto& [k, v] : recipe.config()) agent_options.initial_config[k] = v;
      st = AddAgent(std::move(*spec), std::move(agent_options)).status();
    }
    if (!st.ok()) failed.push_back(absl::StrCat(recipe.agent(), ": ", st.message()));
  }
  if (failed.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("agents not hosted again: ", absl::StrJoin(failed, "; ")));
}

namespace {

v1::ProcessFate FateOf(base::ProcessFate fate) {
  switch (fate) {
    case base::ProcessFate::kTerminated:
      return v1::PROCESS_FATE_TERMINATED;
    case base::ProcessFate::kKilled:
      return v1::PROCESS_FATE_KILLED;
    case base::ProcessFate::kSurvived:
      return v1::PROCESS_FATE_SURVIVED;
  }
  return v1::PROCESS_FATE_UNSPECIFIED;
}

std::string Describe(const v1::StoppedProcess& p) {
  switch (p.fate()) {
    case v1::PROCESS_FATE_TERMINATED:
      return absl::StrCat("process ", p.pid(),
                          " was still running; stopped by SIGTERM: ", p.command());
    case v1::PROCESS_FATE_KILLED:
      return absl::StrCat(
          "process ", p.pid(),
          " was still running and outlived SIGTERM; killed (SIGKILL): ", p.command());
    default:
      return absl::StrCat("process ", p.pid(), " was still running and could not be stopped (",
                          p.error(), "): ", p.command());
  }
}

}  // namespace

absl::StatusOr<std::string> Host::UnitCookie(absl::string_view name) const {
  absl::MutexLock lock(&mu_);
  if (!agents_.contains(name)) {
    return absl::NotFoundError(absl::StrCat("no agent '", name, "' at ", address_));
  }
  if (removing_.contains(name)) {
    return absl::FailedPreconditionError(
        absl::StrCat("unit ", name, " is being removed: no program of it may start"));
  }
  return base::DeriveUnitCookie(cookie_secret_, name);
}

absl::StatusOr<v1::RemoveAgentResponse> Host::RemoveAgent(const std::string& name) {
  absl::MutexLock hosting(&hosting_mu_);
  Agent* agent = Find(name);
  if (agent == nullptr) {
    return absl::NotFoundError(absl::StrCat("no agent '", name, "' at ", address_));
  }
  {
    // From here on no program of the agent starts (UnitCookie refuses), so what the reaper
    // finds after the run ended is all there is.
    absl::MutexLock lock(&mu_);
    removing_.insert(name);
  }
  auto log = [&](v1::LogLevel level, std::string message) {
    v1::LogRecord r;
    r.set_agent(name);
    r.set_level(level);
    r.set_message(std::move(message));
    logs_.Add(std::move(r));
  };
  const std::string cookie = base::DeriveUnitCookie(cookie_secret_, name);
  base::ReapOptions reap_options;
  reap_options.grace = options_.remove_kill_grace;
  v1::RemoveAgentResponse response;
  auto reap = [&] {
    for (const base::ReapedProcess& r : base::ReapTaggedProcesses(cookie, reap_options)) {
      v1::StoppedProcess* p = response.add_stopped_processes();
      p->set_pid(r.process.pid);
      p->set_command(r.process.command);
      p->set_fate(FateOf(r.fate));
      p->set_error(r.error);
      log(r.fate == base::ProcessFate::kSurvived ? v1::LOG_LEVEL_ERROR : v1::LOG_LEVEL_WARNING,
          absl::StrCat("removing: ", Describe(*p)));
    }
  };
  // Let the run in progress finish, then stop; nothing else runs on the strand afterwards. The
  // notification is shared: a blocked strand runs the closure after this call may have returned.
  struct Stopped {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
  };
  auto stopped = std::make_shared<Stopped>();
  agent->strand()->Post([agent, stopped] {
    agent->Stop();
    absl::MutexLock lock(&stopped->mu);
    stopped->done = true;
  });
  // Waits on the host's clock, like every timeout of the host.
  auto wait_stopped = [&] {
    absl::MutexLock lock(&stopped->mu);
    return options_.clock->AwaitWithDeadline(stopped->mu, absl::Condition(&stopped->done),
                                             options_.clock->Now() + options_.remove_blocked_after);
  };
  if (!wait_stopped()) {
    // Blocked in a handler: stopping the agent's processes, the handler's among them, ends the
    // handler and with it the run (it fails and rolls back).
    response.set_was_blocked(true);
    log(v1::LOG_LEVEL_WARNING, absl::StrCat("removing: the run in progress did not end within ",
                                            absl::FormatDuration(options_.remove_blocked_after),
                                            "; stopping the agent's processes under it"));
    reap();
    if (!wait_stopped()) {
      return absl::DeadlineExceededError(
          absl::StrCat("agent '", name, "' at ", address_, " is still in a run ",
                       absl::FormatDuration(options_.remove_blocked_after),
                       " after its processes were stopped (see its log); call RemoveAgent again"));
    }
  }
  // What the handlers left running: daemons they detached.
  reap();
  // Forget the recipe and delete the knowledge base in one atomic write; only then is the agent
  // no longer hosted (if the write fails, a retry finds it, stopped, and tries again).
  auto txn = host_kb_->Begin();
  txn->Delete(kb::Space::kMeta, absl::StrCat(kRecipePrefix, name));
  RETURN_IF_ERROR(txn->DeleteAgent(name));
  ASSIGN_OR_RETURN(uint64_t ticket, host_kb_->Commit(*txn));
  RETURN_IF_ERROR(store_->WaitDurable(ticket));
  {
    absl::MutexLock lock(&mu_);
    auto it = agents_.find(name);
    retired_.push_back(std::move(it->second));
    agents_.erase(it);
    removing_.erase(name);
  }
  log(v1::LOG_LEVEL_INFO,
      absl::StrCat("removed: agent stopped and its knowledge base deleted",
                   response.stopped_processes_size() == 0
                       ? ""
                       : absl::StrCat("; ", response.stopped_processes_size(),
                                      " process(es) it left running were stopped")));
  return response;
}

bool Host::PostHosting(std::function<void()> work) {
  absl::MutexLock lock(&mu_);
  // Shutdown destroys the executor after setting shut_down_, outside mu_: a post under mu_ that
  // saw it unset comes before.
  if (shut_down_) return false;
  hosting_->Post([this, work = std::move(work)] { work(); });
  return true;
}

namespace {
absl::Status ShuttingDown(absl::string_view address) {
  return absl::UnavailableError(absl::StrCat("the server at ", address, " is shutting down"));
}
}  // namespace

void Host::AddAgentLater(v1::AgentRecipe recipe,
                         std::function<void(absl::StatusOr<std::string>)> done) {
  auto work = [this, recipe = std::move(recipe), done] {
    {
      absl::MutexLock lock(&mu_);
      if (shut_down_) {
        done(ShuttingDown(address_));
        return;
      }
    }
    done(AddAgentFromRecipe(recipe));
  };
  if (!PostHosting(std::move(work))) done(ShuttingDown(address_));
}

void Host::RemoveAgentLater(v1::RemoveAgentRequest request,
                            std::function<void(absl::StatusOr<v1::RemoveAgentResponse>)> done) {
  auto work = [this, request = std::move(request), done] {
    uint64_t id = 0;
    {
      // Queued behind work that was in flight at shutdown: the agent is about to be freed.
      absl::MutexLock lock(&mu_);
      if (shut_down_) {
        done(ShuttingDown(address_));
        return;
      }
      if (!request.force()) {
        if (!agents_.contains(request.agent())) {
          done(absl::NotFoundError(absl::StrCat("no agent '", request.agent(), "' at ", address_)));
          return;
        }
        auto pending = std::make_shared<PendingRemoval>();
        pending->name = request.agent();
        pending->started = options_.clock->Now();
        pending->deadline =
            pending->started + (request.grace_seconds() > 0 ? absl::Seconds(request.grace_seconds())
                                                            : options_.remove_dying_grace);
        pending->done = done;
        id = ++next_removal_;
        removals_[id] = std::move(pending);
      }
    }
    if (id != 0) {
      AwaitDeath(id);
      return;
    }
    done(RemoveAgent(request.agent()));
  };
  if (!PostHosting(std::move(work))) done(ShuttingDown(address_));
}

std::shared_ptr<Host::PendingRemoval> Host::TakeRemoval(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = removals_.find(id);
  if (it == removals_.end()) return nullptr;
  std::shared_ptr<PendingRemoval> r = std::move(it->second);
  removals_.erase(it);
  return r;
}

void Host::AwaitDeathLater(uint64_t id, std::shared_ptr<base::Strand> strand) {
  // Under mu_: Shutdown sets shut_down_ before it destroys the scheduler (and answers the
  // pending removals itself).
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  scheduler_->After(absl::Milliseconds(100), std::move(strand), [this, id] { AwaitDeath(id); });
}

void Host::AwaitDeath(uint64_t id) {
  std::shared_ptr<PendingRemoval> r;
  Agent* agent = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    auto it = removals_.find(id);
    if (it == removals_.end()) return;
    r = it->second;
    auto a = agents_.find(r->name);
    if (a != agents_.end()) agent = a->second.get();
  }
  if (agent == nullptr) {
    // Removed meanwhile (a forced removal, or a second removal that finished first).
    if (auto taken = TakeRemoval(id)) {
      taken->done(absl::NotFoundError(absl::StrCat("no agent '", r->name, "' at ", address_)));
    }
    return;
  }
  agent->strand()->Post([this, agent, id, r] {
    if (agent->stopped()) {
      // A forced removal is under way, or the host shuts down: the next look says which.
      AwaitDeathLater(id, agent->strand());
      return;
    }
    // Idempotent: queues the stop and the departures once; refused during a run (tried again).
    const absl::Status begun = agent->BeginRemoval("remove");
    if (!begun.ok() && !absl::IsUnavailable(begun)) {
      v1::LogRecord rec;
      rec.set_agent(r->name);
      rec.set_level(v1::LOG_LEVEL_ERROR);
      rec.set_message(absl::StrCat("removing: its removal could not begin: ", begun.message()));
      logs_.Add(std::move(rec));
    }
    const bool dead = begun.ok() && agent->Dead();
    const absl::Time now = options_.clock->Now();
    if (!dead && now < r->deadline) {
      AwaitDeathLater(id, agent->strand());
      return;
    }
    const v1::UnitStage stage = agent->engine().stage();
    const int64_t dying_ms = absl::ToInt64Milliseconds(now - r->started);
    if (!dead) {
      const v1::AgentStatus status = agent->Status();
      v1::LogRecord rec;
      rec.set_agent(r->name);
      rec.set_level(v1::LOG_LEVEL_WARNING);
      rec.set_message(absl::StrCat(
          "removing: not dead after ", absl::FormatDuration(r->deadline - r->started), " (",
          v1::UnitStage_Name(stage), ", ", status.inbox_depth(), " event(s) queued, ",
          status.outbox_unacked(), " unacknowledged",
          status.has_failure() ? absl::StrCat(", failing: ", status.failure().message()) : "",
          "); removing it anyway"));
      logs_.Add(std::move(rec));
    }
    auto finish = [this, id, stage, dying_ms] {
      std::shared_ptr<PendingRemoval> taken = TakeRemoval(id);
      if (taken == nullptr) return;
      {
        absl::MutexLock lock(&mu_);
        if (shut_down_) {
          taken->done(ShuttingDown(address_));
          return;
        }
      }
      absl::StatusOr<v1::RemoveAgentResponse> removed = RemoveAgent(taken->name);
      if (removed.ok()) {
        removed->set_stage(stage);
        removed->set_dying_ms(dying_ms);
      }
      taken->done(std::move(removed));
    };
    if (!PostHosting(finish)) {
      if (auto taken = TakeRemoval(id)) taken->done(ShuttingDown(address_));
    }
  });
}

v1::HostInfo Host::Info() const {
  v1::HostInfo info;
  info.set_version(options_.version);
  info.set_pid(getpid());
  info.set_address(address_);
  info.set_data_dir(options_.data_dir);
  info.set_started_unix_ms(absl::ToUnixMillis(started_));
  info.set_hosts_definitions(static_cast<bool>(options_.build_agent));
  info.set_metrics_address(options_.metrics_address);
  return info;
}

Agent* Host::Find(absl::string_view name) const {
  absl::MutexLock lock(&mu_);
  auto it = agents_.find(name);
  return it == agents_.end() ? nullptr : it->second.get();
}

std::vector<Agent*> Host::Agents() const {
  absl::MutexLock lock(&mu_);
  std::vector<Agent*> out;
  for (const auto& [name, a] : agents_) out.push_back(a.get());
  return out;
}

void Host::Shutdown() {
  std::vector<Agent*> agents;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  // Hosting work in flight finishes (an AddAgent now fails: the host is shut down); what is
  // queued behind it sees shut_down_ and answers UNAVAILABLE. Then the set of agents is final.
  shutdown_phase_ = "waiting for the hosting work in flight (an AddAgent or RemoveAgent)";
  hosting_.reset();
  std::map<uint64_t, std::shared_ptr<PendingRemoval>> removals;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, a] : agents_) agents.push_back(a.get());
    removals.swap(removals_);
  }
  // Removals waiting for their unit to die are answered; the unit dies on after a restart, and
  // the removal repeated finds it further on (BeginRemoval queues nothing twice).
  for (auto& [id, r] : removals) r->done(ShuttingDown(address_));
  // The run in progress, if any, finishes: strands run closures to completion.
  shutdown_phase_ = "waiting for the agents' runs in progress to end";
  for (Agent* a : agents) a->strand()->Post([a] { a->Stop(); });
  for (Agent* a : agents) a->strand()->Drain();
  // The agents closed their streams already; what is left are API clients' idle channels.
  // gRPC's deadlines are real time, whatever the host's clock (also below and in dial requests).
  shutdown_phase_ = "waiting for the gRPC server's calls and streams to end";
  if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Milliseconds(200)));
  {
    absl::MutexLock lock(&mu_);
    shutdown_phase_ = "waiting for dials and relate checks in flight (up to 5 s)";
    auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return dialing_ == 0; };
    mu_.AwaitWithTimeout(absl::Condition(&none), absl::Seconds(5));
  }
  for (Agent* a : agents) a->strand()->Drain();
  // Nothing is left unsynced: every commit reported or not becomes durable. Then a barrier
  // behind every durability callback (they run in ticket order), so that none is still being
  // delivered when the agents and the pool they post to go away.
  shutdown_phase_ = "waiting for the store's commits to become durable";
  if (store_) {
    store_->WaitDurable(store_->written_ticket()).IgnoreError();
    absl::Notification delivered;
    store_->WhenDurable(store_->written_ticket(), [&](absl::Status) { delivered.Notify(); });
    delivered.WaitForNotification();
  }
  for (Agent* a : agents) a->strand()->Drain();
  // No timer may fire into an agent being destroyed.
  shutdown_phase_ = "stopping the scheduler";
  scheduler_.reset();
  for (Agent* a : agents) a->strand()->Drain();
  {
    absl::MutexLock lock(&mu_);
    agents_.clear();
    retired_.clear();
  }
  shutdown_phase_ = "stopping the thread pool";
  pool_.reset();
  shutdown_phase_ = "done";
}

}  // namespace parley::services
