#pragma once

// The peer protocol over gRPC: the server side of Peer (streams dialed by other agents,
// CheckRelation, RequestConnect), the client side of a stream this host dials, and in-process
// sessions between agents of the same host.

#include <memory>
#include <string>

#include "parley/v1/peer.grpc.pb.h"
#include "services/agent/session.h"
#include "services/transport/transport_host.h"

namespace parley::services {

std::unique_ptr<v1::Peer::CallbackService> MakePeerService(PeerHost* host);

// Opens a stream from `local` to `remote` on `stub` and attaches it to `local` (on its strand).
void DialPeer(PeerHost* host, Agent* local, const std::string& remote, v1::Peer::Stub* stub);

// Connects two agents of the same host: each gets a session whose frames reach the other's
// strand.
void PairLocally(PeerHost* host, Agent* a, Agent* b);

}  // namespace parley::services
