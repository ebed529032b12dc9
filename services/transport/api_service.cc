#include "services/transport/api_service.h"

#include <algorithm>
#include <deque>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "services/agent/agent.h"
#include "services/transport/status_convert.h"
#include "services/transport/tls.h"

namespace parley::services {
namespace {

// Server-streaming writer with a queue: one write in flight; Finish once, when drained.
template <typename T>
class QueuedWriter : public grpc::ServerWriteReactor<T> {
 public:
  // Lets callbacks on other threads push messages without outliving the reactor.
  struct Guard {
    absl::Mutex mu;
    QueuedWriter* writer ABSL_GUARDED_BY(mu);
    void Push(T message) {
      absl::MutexLock lock(&mu);
      if (writer != nullptr) writer->Push(std::move(message));
    }
  };
  QueuedWriter() : guard_(std::make_shared<Guard>()) {
    absl::MutexLock lock(&guard_->mu);
    guard_->writer = this;
  }
  std::shared_ptr<Guard> guard() const { return guard_; }

  void Push(T message) {
    absl::MutexLock lock(&mu_);
    if (done_ || finishing_) return;
    queue_.push_back(std::move(message));
    if (!writing_) {
      writing_ = true;
      this->StartWrite(&queue_.front());
    }
  }
  void End(grpc::Status status) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    finishing_ = true;
    status_ = status;
    if (!writing_) this->Finish(status_);
  }
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    queue_.pop_front();
    if (ok && !queue_.empty()) {
      this->StartWrite(&queue_.front());
      return;
    }
    writing_ = false;
    if (!ok && !finishing_) {
      finishing_ = true;
      status_ = grpc::Status::CANCELLED;
    }
    if (finishing_) this->Finish(status_);
  }
  void OnCancel() override { End(grpc::Status::CANCELLED); }
  void OnDone() override {
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
    }
    {
      absl::MutexLock lock(&guard_->mu);
      guard_->writer = nullptr;
    }
    Cleanup();
    delete this;
  }

 protected:
  virtual void Cleanup() {}

 private:
  std::shared_ptr<Guard> guard_;
  absl::Mutex mu_;
  std::deque<T> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

class StatusWatch : public QueuedWriter<v1::AgentStatus> {
 public:
  explicit StatusWatch(Agent* agent) : agent_(agent) {}
  void Begin() {
    auto guard = this->guard();
    auto id = id_;
    agent_->strand()->Post([agent = agent_, guard, id] {
      *id = agent->Watch([guard](const v1::AgentStatus& s) { guard->Push(s); });
    });
  }

 protected:
  void Cleanup() override {
    auto id = id_;
    Agent* agent = agent_;
    agent->strand()->Post([agent, id] { agent->Unwatch(*id); });
  }

 private:
  Agent* agent_;
  std::shared_ptr<uint64_t> id_ = std::make_shared<uint64_t>(0);
};

class LogStream : public QueuedWriter<v1::LogRecord> {
 public:
  LogStream(ApiHost* host, v1::StreamLogsRequest filter)
      : host_(host), filter_(std::move(filter)) {}
  void Begin() {
    if (filter_.follow()) {
      auto guard = this->guard();
      v1::StreamLogsRequest filter = filter_;
      subscription_ = host_->logs().Subscribe([guard, filter](const v1::LogRecord& r) {
        if (LogBuffer::Matches(filter, r)) guard->Push(r);
      });
    }
    for (auto& r : host_->logs().Snapshot(filter_)) Push(std::move(r));
    if (!filter_.follow()) End(grpc::Status::OK);
  }

 protected:
  void Cleanup() override {
    if (subscription_) host_->logs().Unsubscribe(subscription_);
  }

 private:
  ApiHost* host_;
  const v1::StreamLogsRequest filter_;
  uint64_t subscription_ = 0;
};

// What a host certificate may call (docs/api.md): what probes and monitoring of a parleyd need,
// nothing that changes a model or reads what agents keep (config, relation data, facts, traces and
// logs may hold passwords). parleyds never call each other's agent API; `parley host-unit` talks
// to its own parleyd in plaintext.
constexpr absl::string_view kHostMethods[] = {"GetHost", "ListAgents", "GetStatus", "WatchStatus",
                                              "CheckIdle"};

class AgentService : public v1::Agent::CallbackService {
 public:
  explicit AgentService(ApiHost* host) : host_(host) {}

  // With mutual TLS, whether the caller's certificate allows `method`: OK or PERMISSION_DENIED
  // naming the method, the certificate and what is needed.
  grpc::Status Authorize(grpc::CallbackServerContext* ctx, absl::string_view method) const {
    if (!RequiresClientCertificates(host_->tls())) return grpc::Status::OK;
    const CallerIdentity caller = IdentityOf(*ctx->auth_context());
    if (caller.IsOperator() || std::find(std::begin(kHostMethods), std::end(kHostMethods),
                                         method) != std::end(kHostMethods)) {
      return grpc::Status::OK;
    }
    std::string message = absl::StrCat(
        "Agent.", method, " needs an operator certificate (", kRoleUriPrefix, kOperatorRole,
        "); the caller's certificate (", caller.Describe(), ") ",
        caller.roles.empty()
            ? absl::StrCat("names no role: it was made before certificates had roles and counts "
                           "as a host's. The parley CLI renews its own; for another operator run "
                           "`parley cert NAME --operator` and use that certificate")
            : "is not an operator's",
        "; a host certificate may call only ", absl::StrJoin(kHostMethods, ", "));
    v1::LogRecord r;
    r.set_level(v1::LOG_LEVEL_WARNING);
    r.set_agent("-");
    r.set_message(absl::StrCat("refused API call: ", message));
    host_->logs().Add(std::move(r));
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, message);
  }

  // A reactor finished with the refusal, or null when `method` is allowed.
  grpc::ServerUnaryReactor* Deny(grpc::CallbackServerContext* ctx, absl::string_view method) {
    grpc::Status allowed = Authorize(ctx, method);
    if (allowed.ok()) return nullptr;
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(allowed);
    return reactor;
  }

  // Runs `fn(agent)` on the agent's strand and finishes the call with its status.
  template <typename Fn>
  grpc::ServerUnaryReactor* OnAgent(grpc::CallbackServerContext* ctx, const std::string& name,
                                    Fn fn) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    Agent* agent = host_->Find(name);
    if (agent == nullptr) {
      reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                   absl::StrCat("no agent '", name, "' at ", host_->address())));
      return reactor;
    }
    agent->strand()->Post([agent, reactor, fn] {
      // Stopped (shutting down, or being removed): its KB must not change and nothing it would
      // wait for will come.
      if (agent->stopped()) {
        reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                     absl::StrCat("agent ", agent->name(), " is stopping")));
        return;
      }
      const grpc::Status status = ToGrpcStatus(fn(agent));
      // Answer only once what the answer reports is durable.
      agent->AfterDurable([reactor, status](absl::Status durable) {
        reactor->Finish(durable.ok() ? status : ToGrpcStatus(durable));
      });
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* ListAgents(grpc::CallbackServerContext* ctx,
                                       const v1::ListAgentsRequest*,
                                       v1::ListAgentsResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "ListAgents")) return denied;
    for (Agent* a : host_->Agents()) {
      v1::AgentSummary* s = resp->add_agents();
      s->set_agent(a->name());
      s->set_service(a->spec().service);
    }
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* ctx,
                                      const v1::GetStatusRequest* req,
                                      v1::AgentStatus* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "GetStatus")) return denied;
    return OnAgent(ctx, req->agent(), [resp](Agent* a) {
      *resp = a->Status();
      return absl::OkStatus();
    });
  }

  grpc::ServerWriteReactor<v1::AgentStatus>* WatchStatus(grpc::CallbackServerContext* ctx,
                                                         const v1::GetStatusRequest* req) override {
    if (grpc::Status allowed = Authorize(ctx, "WatchStatus"); !allowed.ok()) {
      auto* w = new QueuedWriter<v1::AgentStatus>();
      w->End(allowed);
      return w;
    }
    Agent* agent = host_->Find(req->agent());
    if (agent == nullptr) {
      auto* w = new QueuedWriter<v1::AgentStatus>();
      w->End(
          grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("no agent '", req->agent(), "'")));
      return w;
    }
    auto* w = new StatusWatch(agent);
    w->Begin();
    return w;
  }

  grpc::ServerUnaryReactor* GetFacts(grpc::CallbackServerContext* ctx,
                                     const v1::GetFactsRequest* req,
                                     v1::GetFactsResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "GetFacts")) return denied;
    return OnAgent(ctx, req->agent(), [resp](Agent* a) {
      for (const auto& [k, v] : a->engine().Facts()) {
        v1::Fact* f = resp->add_facts();
        f->set_name(k);
        f->set_value(v);
      }
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* GetRelationData(grpc::CallbackServerContext* ctx,
                                            const v1::GetRelationDataRequest* req,
                                            v1::GetRelationDataResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "GetRelationData")) return denied;
    return OnAgent(ctx, req->agent(), [req, resp](Agent* a) {
      if (!req->endpoint().empty()) {
        bool known = false;
        for (const auto& e : a->spec().endpoints) known |= e.name == req->endpoint();
        if (!known) {
          return absl::NotFoundError(
              absl::StrCat("agent ", a->name(), " has no endpoint '", req->endpoint(), "'"));
        }
      }
      *resp = a->RelationData(req->endpoint());
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* GetTraces(grpc::CallbackServerContext* ctx,
                                      const v1::GetTracesRequest* req,
                                      v1::GetTracesResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "GetTraces")) return denied;
    return OnAgent(ctx, req->agent(), [req, resp](Agent* a) -> absl::Status {
      auto traces = a->engine().Traces(req->last() == 0 ? 10 : req->last());
      if (!traces.ok()) return traces.status();
      for (auto& t : *traces) *resp->add_traces() = std::move(t);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* GetConfig(grpc::CallbackServerContext* ctx,
                                      const v1::GetConfigRequest* req,
                                      v1::GetConfigResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "GetConfig")) return denied;
    return OnAgent(ctx, req->agent(), [resp](Agent* a) {
      for (const auto& [k, v] : a->engine().config()) (*resp->mutable_config())[k] = v;
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* SetConfig(grpc::CallbackServerContext* ctx,
                                      const v1::SetConfigRequest* req,
                                      v1::SetConfigResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "SetConfig")) return denied;
    return OnAgent(ctx, req->agent(), [req, resp](Agent* a) -> absl::Status {
      auto id = a->SetConfig(*req);
      if (!id.ok()) return id.status();
      resp->set_event_id(*id);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* Relate(grpc::CallbackServerContext* ctx, const v1::RelateRequest* req,
                                   v1::RelateResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "Relate")) return denied;
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    host_->Relate(*req, [reactor, resp](absl::StatusOr<v1::RelateResponse> r) {
      if (r.ok()) *resp = *r;
      reactor->Finish(ToGrpcStatus(r.status()));
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* Unrelate(grpc::CallbackServerContext* ctx,
                                     const v1::UnrelateRequest* req,
                                     v1::UnrelateResponse*) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "Unrelate")) return denied;
    return OnAgent(ctx, req->agent(), [req](Agent* a) { return a->Unrelate(req->relation_id()); });
  }

  grpc::ServerUnaryReactor* FireEvent(grpc::CallbackServerContext* ctx,
                                      const v1::FireEventRequest* req,
                                      v1::FireEventResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "FireEvent")) return denied;
    return OnAgent(ctx, req->agent(), [req, resp](Agent* a) -> absl::Status {
      auto id = a->FireEvent(*req);
      if (!id.ok()) return id.status();
      resp->set_event_id(*id);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* ResolveEvent(grpc::CallbackServerContext* ctx,
                                         const v1::ResolveEventRequest* req,
                                         v1::ResolveEventResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "ResolveEvent")) return denied;
    // `by` is what the caller says; the certificate it proved is recorded beside it.
    std::string certificate;
    if (RequiresClientCertificates(host_->tls())) {
      certificate = absl::StrCat("CN=", IdentityOf(*ctx->auth_context()).common_name);
    }
    return OnAgent(ctx, req->agent(), [req, resp, certificate](Agent* a) -> absl::Status {
      auto r = a->ResolveEvent(*req, certificate);
      if (!r.ok()) return r.status();
      *resp = *std::move(r);
      return absl::OkStatus();
    });
  }

  grpc::ServerWriteReactor<v1::LogRecord>* StreamLogs(grpc::CallbackServerContext* ctx,
                                                      const v1::StreamLogsRequest* req) override {
    if (grpc::Status allowed = Authorize(ctx, "StreamLogs"); !allowed.ok()) {
      auto* w = new QueuedWriter<v1::LogRecord>();
      w->End(allowed);
      return w;
    }
    auto* w = new LogStream(host_, *req);
    w->Begin();
    return w;
  }

  grpc::ServerUnaryReactor* GetHost(grpc::CallbackServerContext* ctx, const v1::GetHostRequest*,
                                    v1::HostInfo* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "GetHost")) return denied;
    *resp = host_->Info();
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  // Hosting changes block (definition files, durable writes, stopping a strand): they run on the
  // host's hosting executor, one at a time, never on a gRPC or pool thread.
  grpc::ServerUnaryReactor* AddAgent(grpc::CallbackServerContext* ctx,
                                     const v1::AddAgentRequest* req,
                                     v1::AddAgentResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "AddAgent")) return denied;
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    host_->AddAgentLater(req->recipe(), [resp, reactor](absl::StatusOr<std::string> service) {
      if (service.ok()) resp->set_service(*service);
      reactor->Finish(ToGrpcStatus(service.status()));
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* RemoveAgent(grpc::CallbackServerContext* ctx,
                                        const v1::RemoveAgentRequest* req,
                                        v1::RemoveAgentResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "RemoveAgent")) return denied;
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    host_->RemoveAgentLater(*req,
                            [resp, reactor](absl::StatusOr<v1::RemoveAgentResponse> removed) {
                              if (removed.ok()) *resp = std::move(*removed);
                              reactor->Finish(ToGrpcStatus(removed.status()));
                            });
    return reactor;
  }

  grpc::ServerUnaryReactor* CheckIdle(grpc::CallbackServerContext* ctx,
                                      const v1::CheckIdleRequest* req,
                                      v1::CheckIdleResponse* resp) override {
    if (grpc::ServerUnaryReactor* denied = Deny(ctx, "CheckIdle")) return denied;
    return OnAgent(ctx, req->agent(), [resp](Agent* a) {
      *resp = a->CheckIdle();
      return absl::OkStatus();
    });
  }

 private:
  ApiHost* host_;
};

}  // namespace

std::unique_ptr<v1::Agent::CallbackService> MakeAgentService(ApiHost* host) {
  return std::make_unique<AgentService>(host);
}

}  // namespace parley::services
