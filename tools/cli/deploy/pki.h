#pragma once

// A model's certificate authority and the certificates it issues, for mutual TLS between the
// model's parleyd processes and the CLI. Keys are ECDSA P-256, made with the `openssl` command
// (Debian's openssl package); private keys are written 0600.
//
//   <pki>/ca.pem, ca.key           the model's CA (10 years)
//   <pki>/<name>/cert.pem, key.pem a certificate for one parleyd or client, signed by the CA,
//   <pki>/<name>/ca.pem            with the CA beside it (what a parleyd needs, in one directory)
//   <pki>/<name>/role              the role it was issued with (read instead of the certificate)
//
// A certificate names its holder in subjectAltName (IP addresses and DNS names): peers and the
// CLI dial a parleyd by address and check it against them, and a parleyd lets a peer speak only
// for agents at the addresses they name. Its role is a URI subjectAltName, parley:role/operator
// (the CLI: may call all of the agent API) or parley:role/host (a parleyd: only what probes
// need); see services/transport/tls.h.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace parley::cli {

struct CertFiles {
  std::string dir;
  std::string cert;
  std::string key;
  std::string ca;
  // True when a certificate without a role (made before roles) was replaced.
  bool reissued = false;
};

enum class CertRole { kHost, kOperator };

// Creates the CA unless it exists.
absl::Status EnsureCa(const std::string& pki_dir);

// Issues (or, when `name` already has one, returns) a certificate for `name` in the `role`, valid
// for `ips` and `dns_names`, in `out_dir` (default <pki>/<name>). A host certificate needs at
// least one IP address or DNS name. A certificate that exists with that role is kept as it is;
// one without a role is replaced; one with the other role is an error (FAILED_PRECONDITION).
absl::StatusOr<CertFiles> IssueCert(const std::string& pki_dir, const std::string& name,
                                    CertRole role, const std::vector<std::string>& ips,
                                    const std::vector<std::string>& dns_names,
                                    const std::string& out_dir = "");

}  // namespace parley::cli
