#pragma once

// Transport security of listeners and dials. TLS is the default; plaintext only when asked for.
// With `ca_file` set, the listener requires and verifies client certificates (mutual TLS) and
// dials verify the server against it.
//
// With mutual TLS every caller has a verified certificate, and what it may do follows from it
// (docs/deploy.md, "Certificates and what they allow"):
//  - its role, a URI subjectAltName "parley:role/<role>": "operator" (the CLI, people running it)
//    may call all of the agent API; "host" (a parleyd) only what probes need (api_service.cc).
//    A certificate without one was made before roles existed and counts as a host's.
//  - its IP addresses and DNS names: a peer speaks for an agent only from a machine they name
//    (peer_streams.cc).

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/auth_context.h"
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

// True when listeners made from `tls` require and verify client certificates: only then has a
// caller an identity to check.
bool RequiresClientCertificates(const TlsOptions& tls);

// The URI subjectAltName prefix of a certificate's role, and the roles the CLI issues
// (tools/cli/deploy/pki.h).
inline constexpr absl::string_view kRoleUriPrefix = "parley:role/";
inline constexpr absl::string_view kOperatorRole = "operator";
inline constexpr absl::string_view kHostRole = "host";

// Who called, as the verified client certificate says.
struct CallerIdentity {
  std::string common_name;
  // subjectAltNames: IP addresses (as text), DNS names, and the roles of parley:role/ URIs.
  std::vector<std::string> ips;
  std::vector<std::string> dns_names;
  std::vector<std::string> roles;

  // True when the only role named is "operator".
  bool IsOperator() const;
  // True when `host` (an address's host: an IP address or a DNS name) is one of the IP addresses
  // or DNS names (a leading "*." matches one label).
  bool Covers(absl::string_view host) const;
  // For messages: "CN=east; role host; IP 10.0.0.1; DNS east.example".
  std::string Describe() const;
};

// The identity of the caller whose connection `auth` describes (empty when it presented no
// certificate).
CallerIdentity IdentityOf(const grpc::AuthContext& auth);

// The host of "host:port", "[v6]:port" or a bare host.
std::string HostOfAddress(absl::string_view address);

}  // namespace parley::services
