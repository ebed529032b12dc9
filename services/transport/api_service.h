#pragma once

// The agent API (proto/parley/v1/agent.proto) over gRPC's callback API: each call posts its work
// to the named agent's strand and finishes from there; nothing blocks a gRPC thread. With mutual
// TLS, only an operator certificate may call what changes the model or reads agents' data; a host
// certificate only what probes need (api_service.cc, kHostMethods).

#include <memory>

#include "parley/v1/agent.grpc.pb.h"
#include "services/transport/transport_host.h"

namespace parley::services {

std::unique_ptr<v1::Agent::CallbackService> MakeAgentService(ApiHost* host);

}  // namespace parley::services
