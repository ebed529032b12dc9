#pragma once

// The Coordinator on etcd (3.4), through its own v3 gRPC API: the KV, Lease, Election and Lock
// services, generated at build time from the contracts Debian installs
// (services/coord/CMakeLists.txt). Leadership is etcd's election service (a candidate's key is
// "<election>/<lease in hex>"; the lowest create revision leads); locks are its lock service
// (waiters queued by create revision).

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/coord/coordinator.h"

namespace parley::coord {

struct EtcdOptions {
  // "host:port" of the members; the channel fails over between them.
  std::vector<std::string> endpoints;
  // Mutual TLS when `ca_file` is set: the members are verified against it and this client shows
  // `cert_file` / `key_file`. Plaintext otherwise.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // Every call that does not wait (a read, a write, a lease refresh) ends after this.
  absl::Duration call_timeout = absl::Seconds(3);
};

// Builds a coordinator for `options`; InvalidArgument (naming the field) for bad options, and
// NotFound naming the file when a TLS file cannot be read. It does not dial yet.
absl::StatusOr<std::unique_ptr<Coordinator>> NewEtcdCoordinator(const EtcdOptions& options);

}  // namespace parley::coord
