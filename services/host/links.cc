// A host's links to remote agents: the channel to each address, making sure an agent gets a
// session with a peer (pairing in-process, dialing, or asking the peer to dial), and the backoff
// between attempts (PeerLinks, peer_links.h). Part of Host (host.h).

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "services/host/host.h"
#include "services/transport/peer_streams.h"
#include "services/transport/status_convert.h"

namespace parley::services {

std::shared_ptr<grpc::Channel> Host::ChannelTo(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto it = channels_.find(address);
  if (it != channels_.end()) return it->second;
  if (!channel_credentials_) return nullptr;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options_.max_message_bytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  if (!options_.tls.server_name_override.empty()) {
    args.SetSslTargetNameOverride(options_.tls.server_name_override);
  }
  auto channel = grpc::CreateCustomChannel(address, channel_credentials_, args);
  channels_.emplace(address, channel);
  return channel;
}

void Host::EnsureSession(Agent* local, const std::string& remote) {
  const absl::Time now = options_.clock->Now();
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
  }
  Agent* other = Find(remote);
  // Both directions of an in-process pair are claimed at once: two agents pairing with each
  // other at the same moment get one session between them.
  switch (other != nullptr ? links_.BeginPair(local->name(), remote, now)
                           : links_.Begin(local->name(), remote, now)) {
    case PeerLinks::Claim::kGo:
      break;
    case PeerLinks::Claim::kLater:
      ScheduleRetry(local, remote, links_.Get(local->name(), remote).next_attempt);
      return;
    case PeerLinks::Claim::kBusy:
      // Our own attempt or session is under way: its end schedules the next. For a pair it may
      // be the other direction instead (a session being set up or torn down, whose end the other
      // agent may not act on): look again shortly.
      if (other != nullptr) ScheduleRetry(local, remote, now + options_.reconnect_initial);
      return;
  }
  if (other != nullptr) {
    PairLocally(this, local, other);
    return;
  }
  const std::string address = local->AddressOf(remote);
  if (address.empty()) {
    SessionEnded(local->name(), remote, false,
                 absl::NotFoundError(absl::StrCat("no address known for ", remote)));
    return;
  }
  if (local->name() < remote) {
    Dial(local, remote, address);
  } else {
    AskToDial(local, remote, address);
  }
}

void Host::Dial(Agent* local, const std::string& remote, const std::string& address) {
  auto channel = ChannelTo(address);
  if (!channel) {
    SessionEnded(local->name(), remote, false,
                 absl::InvalidArgumentError("TLS credentials for dialing are not usable"));
    return;
  }
  std::shared_ptr<v1::Peer::Stub> stub;
  {
    absl::MutexLock lock(&mu_);
    auto& s = stubs_[address];
    if (!s) s = v1::Peer::NewStub(channel);
    stub = s;
    ++dialing_;
  }
  DialPeer(this, local, remote, stub.get());
}

void Host::AskToDial(Agent* local, const std::string& remote, const std::string& address) {
  auto channel = ChannelTo(address);
  if (!channel) {
    SessionEnded(local->name(), remote, false,
                 absl::InvalidArgumentError("TLS credentials for dialing are not usable"));
    return;
  }
  struct Call {
    grpc::ClientContext context;
    v1::RequestConnectRequest request;
    v1::RequestConnectResponse response;
    std::shared_ptr<v1::Peer::Stub> stub;
  };
  auto call = std::make_shared<Call>();
  call->request.set_agent(remote);
  call->request.set_from_agent(local->name());
  call->request.set_from_address(address_);
  call->context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  call->stub = v1::Peer::NewStub(channel);
  const std::string name = local->name();
  {
    absl::MutexLock lock(&mu_);
    ++dialing_;
  }
  call->stub->async()->RequestConnect(&call->context, &call->request, &call->response,
                                      [this, call, name, remote](grpc::Status s) {
                                        // Not a session: retry later if none appears.
                                        SessionEnded(name, remote, false, FromGrpcStatus(s));
                                        StreamDone();
                                      });
}

void Host::SessionEnded(const std::string& local, const std::string& remote, bool established,
                        const absl::Status& status) {
  const absl::Time next = links_.Ended(local, remote, established, options_.clock->Now(),
                                       status.ok() ? "" : status.ToString());
  // Whatever ended (a stream, a failed dial, a request to dial us), try again after the backoff
  // if the agent still wants the peer and has no session with it by then.
  Agent* agent = Find(local);
  if (agent != nullptr) ScheduleRetry(agent, remote, next);
  absl::MutexLock lock(&mu_);
  if (!status.ok() && !shut_down_) {
    v1::LogRecord r;
    r.set_agent(local);
    r.set_level(v1::LOG_LEVEL_INFO);
    r.set_message(absl::StrCat("stream to ", remote, " ended: ", status.ToString()));
    logs_.Add(std::move(r));
  }
}

void Host::ScheduleRetry(Agent* local, const std::string& remote, absl::Time when) {
  absl::MutexLock lock(&mu_);
  // The scheduler goes away in Shutdown, after shut_down_ is set.
  if (shut_down_ || !links_.MarkRetryScheduled(local->name(), remote)) return;
  scheduler_->At(when, local->strand(), [this, local, remote] {
    links_.RetryFired(local->name(), remote);
    if (!local->HasSession(remote) && local->WantedPeers().contains(remote)) {
      EnsureSession(local, remote);
    }
  });
}

void Host::StreamDone() {
  absl::MutexLock lock(&mu_);
  --dialing_;
}

}  // namespace parley::services
