#include "services/transport/peer_streams.h"

#include <deque>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "services/agent/agent.h"
#include "services/transport/status_convert.h"
#include "services/transport/tls.h"

namespace parley::services {
namespace {

// The caller's certificate when listeners require client certificates; null otherwise (nothing to
// check: plaintext, or TLS without a CA).
std::shared_ptr<const CallerIdentity> Caller(PeerHost* host,
                                             const grpc::CallbackServerContext* ctx) {
  if (!RequiresClientCertificates(host->tls())) return nullptr;
  return std::make_shared<const CallerIdentity>(IdentityOf(*ctx->auth_context()));
}

// A peer may speak for `claimed` only from a machine its certificate names: the host of the
// address it gives, and of the address `agent` recorded for `claimed` if any, must be among the
// certificate's IP addresses and DNS names. Otherwise any machine of the model could pose as any
// agent, or point an agent's traffic for another one at itself (docs/protocol.md, "Peer
// identity"). PERMISSION_DENIED when not; OK without a `caller` (no client certificates). On
// `agent`'s strand.
absl::Status CheckClaim(const Agent* agent, const CallerIdentity* caller,
                        const std::string& claimed, const std::string& address) {
  if (caller == nullptr) return absl::OkStatus();
  const std::string recorded = agent->AddressOf(claimed);
  if (address.empty() && recorded.empty()) {
    return absl::PermissionDeniedError(
        absl::StrCat(agent->name(), " refuses to hear from ", claimed,
                     ": no address is given or known for it that the caller's certificate (",
                     caller->Describe(), ") could vouch for"));
  }
  for (const std::string* a : {&address, &recorded}) {
    if (a->empty() || caller->Covers(HostOfAddress(*a))) continue;
    return absl::PermissionDeniedError(absl::StrCat(
        agent->name(), " refuses to hear from ", claimed, " at ", *a,
        a == &recorded ? absl::StrCat(" (where ", agent->name(), " knows it to be)") : "",
        ": the caller's certificate (", caller->Describe(), ") does not name ", HostOfAddress(*a)));
  }
  return absl::OkStatus();
}

// A warning in the host's log for something a peer was refused.
void LogRefusal(PeerHost* host, const std::string& agent, absl::string_view what,
                const absl::Status& why) {
  v1::LogRecord r;
  r.set_level(v1::LOG_LEVEL_WARNING);
  r.set_agent(agent);
  r.set_message(absl::StrCat("refused ", what, ": ", why.message()));
  host->logs().Add(std::move(r));
}

// A session whose frames go to a stream reactor while it lives. Reactors are deleted by gRPC in
// OnDone; the handle outlives them in the agent's channel table and then drops frames.
class StreamHandle : public PeerSession {
 public:
  class Writer {
   public:
    virtual ~Writer() = default;
    virtual void Write(v1::PeerFrame frame) = 0;
    virtual void End(const absl::Status& why) = 0;
  };
  explicit StreamHandle(Writer* writer) : writer_(writer) {}

  void Send(v1::PeerFrame frame) override {
    absl::MutexLock lock(&mu_);
    if (writer_ != nullptr) writer_->Write(std::move(frame));
  }
  void Close(const absl::Status& why) override {
    absl::MutexLock lock(&mu_);
    if (writer_ != nullptr) writer_->End(why);
  }
  // Dialed streams: set once the listener answered the Hello.
  void set_established() { established_ = true; }
  bool established() const { return established_; }

  void Detach() {
    absl::MutexLock lock(&mu_);
    writer_ = nullptr;
  }

 private:
  absl::Mutex mu_;
  Writer* writer_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> established_{false};
};

// One write in flight, the rest queued (gRFC L67); Finish only when no write is outstanding.
template <typename Reactor>
class WriteQueue {
 public:
  explicit WriteQueue(Reactor* reactor) : reactor_(reactor) {}

  void Write(v1::PeerFrame frame) {
    absl::MutexLock lock(&mu_);
    if (ending_) return;
    queue_.push_back(std::move(frame));
    if (!writing_) {
      writing_ = true;
      reactor_->StartWrite(&queue_.front());
    }
  }

  // Returns true when the reactor should end now (no write in flight).
  bool RequestEnd(const absl::Status& why) {
    absl::MutexLock lock(&mu_);
    if (ending_) return false;
    ending_ = true;
    why_ = why;
    queue_.erase(queue_.begin() + (writing_ ? 1 : 0), queue_.end());
    return !writing_;
  }

  // Returns true when an end was requested and can happen now.
  bool WriteDone(bool ok) {
    absl::MutexLock lock(&mu_);
    queue_.pop_front();
    if (ok && !queue_.empty() && !ending_) {
      reactor_->StartWrite(&queue_.front());
      return false;
    }
    writing_ = false;
    if (!ok) ending_ = true;
    return ending_;
  }

  absl::Status why() {
    absl::MutexLock lock(&mu_);
    return why_;
  }

 private:
  Reactor* reactor_;
  absl::Mutex mu_;
  std::deque<v1::PeerFrame> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status why_ ABSL_GUARDED_BY(mu_);
};

class ServerStream : public grpc::ServerBidiReactor<v1::PeerFrame, v1::PeerFrame>,
                     public StreamHandle::Writer {
 public:
  ServerStream(PeerHost* host, std::shared_ptr<const CallerIdentity> caller)
      : host_(host), caller_(std::move(caller)), writes_(this) {
    StartRead(&in_);
  }

  void Write(v1::PeerFrame frame) override { writes_.Write(std::move(frame)); }
  void End(const absl::Status& why) override {
    if (writes_.RequestEnd(why)) FinishOnce(ToGrpcStatus(why));
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      End(absl::OkStatus());
      return;
    }
    if (const size_t size = in_.ByteSizeLong();
        size > static_cast<size_t>(host_->max_message_bytes())) {
      const absl::Status s = absl::ResourceExhaustedError(
          absl::StrCat("frame of ", size, " bytes from ", remote_.empty() ? "a peer" : remote_,
                       " is larger than the limit of ", host_->max_message_bytes()));
      host_->metrics().Rejected(agent_ ? agent_->name() : "-", "too_large").Increment();
      Log(s);
      End(s);
      return;
    }
    if (agent_ == nullptr) {
      std::string reason;
      if (absl::Status s = Handshake(&reason); !s.ok()) {
        // The agent label is ours, never the peer's claim: a peer must not mint series.
        Agent* named = in_.has_hello() ? host_->Find(in_.hello().to_agent()) : nullptr;
        host_->metrics().Rejected(named ? named->name() : "-", reason).Increment();
        Log(s);
        End(s);
      }
      // Admit reads on once the agent accepted the peer.
      return;
    }
    Agent* agent = agent_;
    std::string remote = remote_;
    std::shared_ptr<StreamHandle> handle = handle_;
    agent->strand()->Post(
        [agent, remote, handle, frame = std::move(in_)] { agent->OnFrame(remote, handle, frame); });
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    if (writes_.WriteDone(ok)) FinishOnce(ToGrpcStatus(writes_.why()));
  }

  void OnDone() override {
    if (handle_) {
      handle_->Detach();
      Agent* agent = agent_;
      std::string remote = remote_;
      std::shared_ptr<StreamHandle> handle = handle_;
      agent->strand()->Post([agent, remote, handle] { agent->Detach(remote, handle.get()); });
    }
    delete this;
  }

 private:
  void Log(const absl::Status& s) { LogRefusal(host_, agent_ ? agent_->name() : "-", "stream", s); }

  absl::Status Handshake(std::string* reason) {
    if (!in_.has_hello()) {
      *reason = "no_hello";
      return absl::FailedPreconditionError("the first frame of a peer stream must be a Hello");
    }
    const v1::Hello& h = in_.hello();
    if (h.protocol_version() != v1::PROTOCOL_VERSION_1) {
      *reason = "protocol_version";
      return absl::FailedPreconditionError(
          absl::StrCat("protocol version ", h.protocol_version(), " from ", h.from_agent(),
                       " is not supported; this agent speaks version 1"));
    }
    if (h.from_agent().empty()) {
      *reason = "no_sender";
      return absl::InvalidArgumentError("Hello names no sender");
    }
    Agent* agent = host_->Find(h.to_agent());
    if (agent == nullptr) {
      *reason = "unknown_agent";
      return absl::NotFoundError(
          absl::StrCat("no agent '", h.to_agent(), "' here (", host_->address(), ")"));
    }
    // Whether the peer may speak for its sender depends on what the agent recorded: decided on
    // its strand. Nothing is read meanwhile (the reactor lives until Admit ends or reads on).
    {
      // Until Admit is done with the reactor it must not be finished (and deleted): Admit writes
      // and reads from the strand, outside any reaction, and a dialer gone meanwhile fails them.
      absl::MutexLock lock(&finish_mu_);
      admitting_ = true;
    }
    agent->strand()->Post([this, agent, hello = h] {
      Admit(agent, hello);
      std::optional<grpc::Status> deferred;
      {
        absl::MutexLock lock(&finish_mu_);
        admitting_ = false;
        deferred.swap(deferred_);
      }
      if (deferred) Finish(*deferred);  // the last use of `this`
    });
    return absl::OkStatus();
  }

  // On `agent`'s strand: accepts the stream (answers the Hello, attaches it, reads on) or refuses
  // it, with the KB untouched.
  void Admit(Agent* agent, const v1::Hello& hello) {
    if (absl::Status s = CheckClaim(agent, caller_.get(), hello.from_agent(), hello.from_address());
        !s.ok()) {
      host_->metrics().Rejected(agent->name(), "identity").Increment();
      LogRefusal(host_, agent->name(), "stream", s);
      End(s);
      return;
    }
    agent_ = agent;
    remote_ = hello.from_agent();
    handle_ = std::make_shared<StreamHandle>(this);
    // The handshake is two-way: the answer tells the dialer the stream really reached us.
    v1::PeerFrame answer;
    answer.mutable_hello()->set_protocol_version(v1::PROTOCOL_VERSION_1);
    answer.mutable_hello()->set_from_agent(agent->name());
    answer.mutable_hello()->set_to_agent(remote_);
    answer.mutable_hello()->set_from_address(host_->address());
    Write(std::move(answer));
    if (!hello.from_address().empty()) {
      agent->RememberAddress(remote_, hello.from_address(), false).IgnoreError();
    }
    agent->Attach(remote_, handle_);
    StartRead(&in_);
  }

  void FinishOnce(const grpc::Status& status) {
    {
      absl::MutexLock lock(&finish_mu_);
      if (finished_) return;
      finished_ = true;
      if (admitting_) {
        deferred_ = status;  // finished when Admit is done
        return;
      }
    }
    // Not under finish_mu_: OnDone may run (and delete this) before Finish returns.
    Finish(status);
  }

  PeerHost* host_;
  const std::shared_ptr<const CallerIdentity> caller_;
  WriteQueue<ServerStream> writes_;
  v1::PeerFrame in_;
  // Set by Admit, before it reads on.
  Agent* agent_ = nullptr;
  std::string remote_;
  std::shared_ptr<StreamHandle> handle_;
  absl::Mutex finish_mu_;
  bool finished_ ABSL_GUARDED_BY(finish_mu_) = false;
  bool admitting_ ABSL_GUARDED_BY(finish_mu_) = false;
  std::optional<grpc::Status> deferred_ ABSL_GUARDED_BY(finish_mu_);
};

class ClientStream : public grpc::ClientBidiReactor<v1::PeerFrame, v1::PeerFrame>,
                     public StreamHandle::Writer {
 public:
  ClientStream(PeerHost* host, Agent* local, std::string remote, v1::Peer::Stub* stub)
      : host_(host), local_(local), remote_(std::move(remote)), writes_(this) {
    handle_ = std::make_shared<StreamHandle>(this);
    stub->async()->Connect(&context_, this);
    v1::PeerFrame hello;
    hello.mutable_hello()->set_protocol_version(v1::PROTOCOL_VERSION_1);
    hello.mutable_hello()->set_from_agent(local_->name());
    hello.mutable_hello()->set_to_agent(remote_);
    hello.mutable_hello()->set_from_address(host_->address());
    Write(std::move(hello));
    StartRead(&in_);
  }

  // Starts the call; OnDone may run (and delete this) before Start returns.
  void Start() { StartCall(); }

  std::shared_ptr<StreamHandle> handle() const { return handle_; }

  void Write(v1::PeerFrame frame) override { writes_.Write(std::move(frame)); }
  // Cancels the call; the link reports `why` rather than gRPC's "Cancelled".
  void End(const absl::Status& why) override {
    {
      absl::MutexLock lock(&end_mu_);
      if (end_reason_.ok()) end_reason_ = why;
    }
    context_.TryCancel();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (!established_) {
      // The first frame must be the listener's answer to our Hello.
      if (!in_.has_hello() || in_.hello().from_agent() != remote_ ||
          in_.hello().protocol_version() != v1::PROTOCOL_VERSION_1) {
        context_.TryCancel();
        return;
      }
      established_ = true;
      handle_->set_established();
      // Only now is it a stream: until the answer, status shows the link connecting and the
      // log says nothing of it being up (a blackholed dial is an attempt). Posted before any
      // frame of the listener's and before OnDone's Detach (reactions of one call are serial).
      Agent* agent = local_;
      std::string remote = remote_;
      std::shared_ptr<StreamHandle> handle = handle_;
      agent->strand()->Post([agent, remote, handle] { agent->Attach(remote, handle); });
      StartRead(&in_);
      return;
    }
    Agent* agent = local_;
    std::string remote = remote_;
    std::shared_ptr<StreamHandle> handle = handle_;
    agent->strand()->Post(
        [agent, remote, handle, frame = std::move(in_)] { agent->OnFrame(remote, handle, frame); });
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    if (writes_.WriteDone(ok)) context_.TryCancel();
  }

  void OnDone(const grpc::Status& status) override {
    handle_->Detach();
    Agent* agent = local_;
    std::string remote = remote_;
    std::shared_ptr<StreamHandle> handle = handle_;
    agent->strand()->Post([agent, remote, handle] { agent->Detach(remote, handle.get()); });
    absl::Status ended = FromGrpcStatus(status);
    {
      absl::MutexLock lock(&end_mu_);
      if (!ended.ok() && !end_reason_.ok()) ended = end_reason_;
    }
    host_->SessionEnded(local_->name(), remote_, established_, ended);
    PeerHost* host = host_;
    delete this;
    host->StreamDone();
  }

 private:
  PeerHost* host_;
  Agent* local_;
  const std::string remote_;
  grpc::ClientContext context_;
  WriteQueue<ClientStream> writes_;
  v1::PeerFrame in_;
  std::shared_ptr<StreamHandle> handle_;
  std::atomic<bool> established_{false};
  absl::Mutex end_mu_;
  // Why End cancelled the call, if it did.
  absl::Status end_reason_ ABSL_GUARDED_BY(end_mu_);
};

class LocalSession : public PeerSession {
 public:
  LocalSession(PeerHost* host, std::string from, std::string to)
      : host_(host), from_(std::move(from)), to_(std::move(to)) {}
  void set_peer(std::weak_ptr<LocalSession> peer) { peer_ = std::move(peer); }
  bool SharesStore() const override { return true; }

  void Send(v1::PeerFrame frame) override {
    if (closed_) return;
    Agent* to = host_->Find(to_);
    std::shared_ptr<LocalSession> peer = peer_.lock();
    if (to == nullptr || !peer) return;
    std::string from = from_;
    to->strand()->Post(
        [to, from, peer, frame = std::move(frame)] { to->OnFrame(from, peer, frame); });
  }

  void Close(const absl::Status& why) override {
    if (closed_.exchange(true)) return;
    if (auto peer = peer_.lock()) peer->Close(why);
    if (Agent* a = host_->Find(from_)) {
      std::string to = to_;
      const PeerSession* self = this;
      a->strand()->Post([a, to, self] { a->Detach(to, self); });
    }
    host_->SessionEnded(from_, to_, true, why);
  }

 private:
  PeerHost* host_;
  const std::string from_, to_;
  std::weak_ptr<LocalSession> peer_;
  std::atomic<bool> closed_{false};
};

class PeerService : public v1::Peer::CallbackService {
 public:
  explicit PeerService(PeerHost* host) : host_(host) {}

  grpc::ServerBidiReactor<v1::PeerFrame, v1::PeerFrame>* Connect(
      grpc::CallbackServerContext* ctx) override {
    return new ServerStream(host_, Caller(host_, ctx));
  }

  grpc::ServerUnaryReactor* CheckRelation(grpc::CallbackServerContext* ctx,
                                          const v1::CheckRelationRequest* request,
                                          v1::CheckRelationResponse* response) override {
    return OnAgent(ctx, request->agent(),
                   [this, caller = Caller(host_, ctx), request, response](Agent* agent) {
                     absl::Status s = Vouch(agent, caller.get(), "CheckRelation",
                                            request->remote_agent(), request->remote_address());
                     if (!s.ok()) return s;
                     auto r = agent->CheckRelation(*request);
                     if (r.ok()) *response = *r;
                     return r.status();
                   });
  }

  grpc::ServerUnaryReactor* RequestConnect(grpc::CallbackServerContext* ctx,
                                           const v1::RequestConnectRequest* request,
                                           v1::RequestConnectResponse*) override {
    return OnAgent(
        ctx, request->agent(), [this, caller = Caller(host_, ctx), request](Agent* agent) {
          absl::Status s = Vouch(agent, caller.get(), "RequestConnect", request->from_agent(),
                                 request->from_address());
          if (!s.ok()) return s;
          return agent->RememberAddress(request->from_agent(), request->from_address(), true);
        });
  }

 private:
  // CheckClaim, with a refusal counted and logged.
  absl::Status Vouch(Agent* agent, const CallerIdentity* caller, absl::string_view what,
                     const std::string& claimed, const std::string& address) {
    absl::Status s = CheckClaim(agent, caller, claimed, address);
    if (!s.ok()) {
      host_->metrics().Rejected(agent->name(), "identity").Increment();
      LogRefusal(host_, agent->name(), what, s);
    }
    return s;
  }

  // Runs `fn(agent)` on the named agent's strand and finishes the call with its status.
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
    agent->strand()->Post([agent, reactor, fn] { reactor->Finish(ToGrpcStatus(fn(agent))); });
    return reactor;
  }

  PeerHost* host_;
};

}  // namespace

std::unique_ptr<v1::Peer::CallbackService> MakePeerService(PeerHost* host) {
  return std::make_unique<PeerService>(host);
}

void DialPeer(PeerHost* host, Agent* local, const std::string& remote, v1::Peer::Stub* stub) {
  auto* stream = new ClientStream(host, local, remote, stub);
  std::shared_ptr<StreamHandle> handle = stream->handle();
  // The stream attaches itself to `local` once the listener answers the Hello.
  stream->Start();
  // A dial that gets no answer (a peer that vanished, a blackholed link) must not hold the link
  // forever: cancel it, which ends the stream and schedules the next attempt.
  std::weak_ptr<StreamHandle> weak = handle;
  const absl::Duration timeout = host->handshake_timeout();
  host->scheduler().After(timeout, local->strand(), [weak, remote, timeout] {
    if (auto h = weak.lock(); h && !h->established()) {
      h->Close(absl::DeadlineExceededError(absl::StrCat(
          "no answer to the Hello from ", remote, " within ", absl::FormatDuration(timeout))));
    }
  });
}

void PairLocally(PeerHost* host, Agent* a, Agent* b) {
  auto ab = std::make_shared<LocalSession>(host, a->name(), b->name());
  auto ba = std::make_shared<LocalSession>(host, b->name(), a->name());
  ab->set_peer(ba);
  ba->set_peer(ab);
  const std::string an = a->name(), bn = b->name();
  a->strand()->Post([a, bn, ab] { a->Attach(bn, ab); });
  b->strand()->Post([b, an, ba] { b->Attach(an, ba); });
}

}  // namespace parley::services
