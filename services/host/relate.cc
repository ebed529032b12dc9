// Relating two units (the agent API's Relate): ask the remote agent whether it agrees
// (Peer.CheckRelation), then record the relation on both sides. Part of Host (host.h).

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "services/host/host.h"
#include "services/transport/peer_streams.h"
#include "services/transport/status_convert.h"

namespace parley::services {

namespace {

// How long a relate's check of a remote parleyd waits for a connection after a first attempt
// found it unavailable.
constexpr absl::Duration kRelateRetryWait = absl::Seconds(5);

}  // namespace

void Host::Relate(v1::RelateRequest request,
                  std::function<void(absl::StatusOr<v1::RelateResponse>)> done) {
  Agent* agent = Find(request.agent());
  if (agent == nullptr) {
    done(absl::NotFoundError(absl::StrCat("no agent '", request.agent(), "' at ", address_)));
    return;
  }
  agent->strand()->Post([this, agent, request, done] {
    const engine::EndpointSpec* ep = nullptr;
    for (const auto& e : agent->spec().endpoints) {
      if (e.name == request.endpoint()) ep = &e;
    }
    if (ep == nullptr) {
      done(absl::NotFoundError(absl::StrCat("agent ", agent->name(), " (service ",
                                            agent->spec().service, ") has no endpoint '",
                                            request.endpoint(), "'")));
      return;
    }
    if (request.relation_id().empty() || request.remote_agent().empty() ||
        request.remote_endpoint().empty()) {
      done(
          absl::InvalidArgumentError("relate needs relation_id, remote_agent and remote_endpoint"));
      return;
    }
    auto check = std::make_shared<v1::CheckRelationRequest>();
    check->set_agent(request.remote_agent());
    check->set_endpoint(request.remote_endpoint());
    check->set_remote_agent(agent->name());
    check->set_remote_service(agent->spec().service);
    check->set_remote_endpoint(request.endpoint());
    check->set_interface(ep->interface);
    check->set_role(std::string(engine::RoleName(ep->role)));
    check->set_relation_id(request.relation_id());
    check->set_remote_address(address_);
    auto finish = [agent, request, done](absl::StatusOr<v1::CheckRelationResponse> r) {
      agent->strand()->Post([agent, request, done, r] {
        if (!r.ok()) {
          done(absl::Status(r.status().code(),
                            absl::StrCat("relating ", request.agent(), ":", request.endpoint(),
                                         " to ", request.remote_agent(), ":",
                                         request.remote_endpoint(), ": ", r.status().message())));
          return;
        }
        if (agent->stopped()) {
          done(absl::UnavailableError(absl::StrCat("agent ", agent->name(), " is stopping")));
          return;
        }
        if (absl::Status s = agent->Relate(request, r->service(), r->interface()); !s.ok()) {
          done(s);
          return;
        }
        v1::RelateResponse resp;
        resp.set_interface(r->interface());
        // Answer only once the relation is durable.
        agent->AfterDurable([done, resp](absl::Status durable) {
          if (durable.ok()) {
            done(resp);
          } else {
            done(durable);
          }
        });
      });
    };
    if (Agent* remote = Find(request.remote_agent())) {
      remote->strand()->Post([remote, check, finish] { finish(remote->CheckRelation(*check)); });
      return;
    }
    if (request.remote_address().empty()) {
      done(absl::InvalidArgumentError(absl::StrCat(
          "agent ", request.remote_agent(), " is not hosted here: remote_address is required")));
      return;
    }
    auto channel = ChannelTo(request.remote_address());
    if (!channel) {
      done(absl::FailedPreconditionError("TLS credentials for dialing are not usable"));
      return;
    }
    // A remote parleyd that is starting, or a first connection that fails its TLS handshake on a
    // loaded machine ("Handshake read failed", seen in webstack_containers_test under ctest -j),
    // may fail once and then answer. So a first attempt that finds it UNAVAILABLE is followed by
    // one that waits for a connection (wait_for_ready) for up to kRelateRetryWait; if that one
    // still gets none, the error is the first attempt's, which says why (a wrong CA, say).
    struct Call {
      grpc::ClientContext context;
      v1::CheckRelationResponse response;
    };
    struct Attempts {
      std::shared_ptr<v1::Peer::Stub> stub;
      absl::Time deadline;
      std::string first_error;
      std::function<void(bool)> issue;
    };
    auto attempts = std::make_shared<Attempts>();
    attempts->stub = v1::Peer::NewStub(channel);
    attempts->deadline = absl::Now() + absl::Seconds(10);
    const std::string remote_address = request.remote_address();
    // The closure holds the attempts weakly: each call's callback holds them strongly while it
    // is in flight, so they live exactly as long as an attempt does.
    std::weak_ptr<Attempts> weak = attempts;
    attempts->issue = [this, weak, check, finish, remote_address](bool wait) {
      std::shared_ptr<Attempts> at = weak.lock();
      if (at == nullptr) return;
      auto call = std::make_shared<Call>();
      call->context.set_deadline(absl::ToChronoTime(
          wait ? std::min(at->deadline, absl::Now() + kRelateRetryWait) : at->deadline));
      call->context.set_wait_for_ready(wait);
      {
        absl::MutexLock lock(&mu_);
        ++dialing_;
      }
      at->stub->async()->CheckRelation(
          &call->context, check.get(), &call->response,
          [this, at, call, finish, remote_address, wait](grpc::Status s) {
            if (s.error_code() == grpc::StatusCode::UNAVAILABLE && !wait &&
                absl::Now() < at->deadline) {
              at->first_error = s.error_message();
              at->issue(true);
            } else if (wait && s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
              finish(absl::UnavailableError(absl::StrCat(
                  at->first_error, " (parleyd at ", remote_address, " still not reachable ",
                  absl::FormatDuration(kRelateRetryWait), " later)")));
            } else if (!s.ok()) {
              finish(FromGrpcStatus(s));
            } else {
              finish(call->response);
            }
            StreamDone();
          });
    };
    attempts->issue(false);
  });
}

}  // namespace parley::services
