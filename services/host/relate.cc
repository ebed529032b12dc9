// Relating two units (the agent API's Relate): ask the remote agent whether it agrees
// (Peer.CheckRelation), then record the relation on both sides. Part of Host (host.h).

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "services/host/host.h"
#include "services/transport/peer_streams.h"
#include "services/transport/status_convert.h"

namespace parley::services {

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
    struct Call {
      grpc::ClientContext context;
      v1::CheckRelationResponse response;
      std::unique_ptr<v1::Peer::Stub> stub;
    };
    auto call = std::make_shared<Call>();
    call->context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    // A remote parleyd that is starting, or a first connection that fails its TLS handshake on a
    // loaded machine ("Handshake read failed"), is a transient failure: wait through it until the
    // deadline instead of failing the relate at the first attempt (seen in
    // webstack_containers_test under ctest -j).
    call->context.set_wait_for_ready(true);
    call->stub = v1::Peer::NewStub(channel);
    {
      absl::MutexLock lock(&mu_);
      ++dialing_;
    }
    const std::string remote_address = request.remote_address();
    call->stub->async()->CheckRelation(
        &call->context, check.get(), &call->response,
        [this, call, check, finish, remote_address](grpc::Status s) {
          if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
            finish(absl::UnavailableError(
                absl::StrCat("parleyd at ", remote_address,
                             " could not be reached within 10s (not running, or unreachable)")));
          } else if (!s.ok()) {
            finish(FromGrpcStatus(s));
          } else {
            finish(call->response);
          }
          StreamDone();
        });
  });
}

}  // namespace parley::services
