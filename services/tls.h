#pragma once

// Transport security of listeners and dials. TLS is the default; plaintext only when asked for.
// With `ca_file` set, the listener requires and verifies client certificates (mutual TLS) and
// dials verify the server against it.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace parley::services {

struct TlsOptions {
  bool plaintext = false;
  // PEM files: this process's certificate chain and private key, and the CA that signs peers.
  std::string cert_file;
  std::string key_file;
  std::string ca_file;
  // Expected name in peers' certificates (overrides the address's host when dialing).
  std::string server_name_override;
};

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsOptions& tls);
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(const TlsOptions& tls);

}  // namespace parley::services
