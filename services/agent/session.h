#pragma once

// One end of the stream between two agents. Implementations: the gRPC client and server
// reactors (services/transport/peer_streams.cc) and an in-process pair for agents hosted by the
// same server.

#include "absl/status/status.h"
#include "parley/v1/peer.pb.h"

namespace parley::services {

class PeerSession {
 public:
  virtual ~PeerSession() = default;
  // Queues `frame` for sending. Thread-safe; frames sent after Close are dropped.
  virtual void Send(v1::PeerFrame frame) = 0;
  // Ends the stream; the remote side sees `why` (gRPC streams carry it as their status).
  virtual void Close(const absl::Status& why) = 0;
  // True when both ends write to the same KB store. Its write-ahead log recovers to a prefix, so
  // the receiver's writes can never outlive the sender's earlier ones: events and acks may go
  // before the writes they follow are synced.
  virtual bool SharesStore() const { return false; }
};

}  // namespace parley::services
