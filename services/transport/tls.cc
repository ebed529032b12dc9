#include "services/transport/tls.h"

#include <arpa/inet.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpc/grpc_security_constants.h"
#include "grpcpp/security/credentials.h"
#include "base/status_macros.h"

namespace parley::services {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view what) {
  if (path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS: ", what, " file is not set (or ask for plaintext)"));
  }
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("TLS: cannot read ", what, " file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string pem = ss.str();
  if (pem.find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS: ", what, " file ", path, " holds no PEM block"));
  }
  return pem;
}

// An IP address in canonical text (so that "::0:1" and "::1" compare equal); nullopt if `text`
// is not one.
std::optional<std::string> CanonicalIp(absl::string_view text) {
  const std::string t(text);
  unsigned char bytes[16];
  char out[INET6_ADDRSTRLEN];
  if (inet_pton(AF_INET, t.c_str(), bytes) == 1) {
    return std::string(inet_ntop(AF_INET, bytes, out, sizeof(out)));
  }
  if (inet_pton(AF_INET6, t.c_str(), bytes) == 1) {
    return std::string(inet_ntop(AF_INET6, bytes, out, sizeof(out)));
  }
  return std::nullopt;
}

bool DnsMatches(absl::string_view pattern, absl::string_view host) {
  if (absl::EqualsIgnoreCase(pattern, host)) return true;
  if (!absl::StartsWith(pattern, "*.")) return false;
  const size_t dot = host.find('.');
  return dot != absl::string_view::npos && dot > 0 &&
         absl::EqualsIgnoreCase(pattern.substr(1), host.substr(dot));
}

std::vector<std::string> Values(const grpc::AuthContext& auth, const char* property) {
  std::vector<std::string> out;
  for (const grpc::string_ref& v : auth.FindPropertyValues(property)) {
    out.emplace_back(v.data(), v.size());
  }
  return out;
}

}  // namespace

bool RequiresClientCertificates(const TlsOptions& tls) {
  return !tls.plaintext && !tls.ca_file.empty();
}

bool CallerIdentity::IsOperator() const {
  return !roles.empty() && std::all_of(roles.begin(), roles.end(),
                                       [](const std::string& r) { return r == kOperatorRole; });
}

bool CallerIdentity::Covers(absl::string_view host) const {
  if (host.empty()) return false;
  if (std::optional<std::string> ip = CanonicalIp(host)) {
    return std::any_of(ips.begin(), ips.end(),
                       [&](const std::string& mine) { return CanonicalIp(mine) == ip; });
  }
  return std::any_of(dns_names.begin(), dns_names.end(),
                     [&](const std::string& mine) { return DnsMatches(mine, host); });
}

std::string CallerIdentity::Describe() const {
  std::vector<std::string> parts = {
      absl::StrCat("CN=", common_name.empty() ? "(none)" : common_name),
      roles.empty() ? "no role" : absl::StrCat("role ", absl::StrJoin(roles, ", "))};
  if (!ips.empty()) parts.push_back(absl::StrCat("IP ", absl::StrJoin(ips, ", ")));
  if (!dns_names.empty()) parts.push_back(absl::StrCat("DNS ", absl::StrJoin(dns_names, ", ")));
  return absl::StrJoin(parts, "; ");
}

CallerIdentity IdentityOf(const grpc::AuthContext& auth) {
  CallerIdentity id;
  for (const std::string& cn : Values(auth, GRPC_X509_CN_PROPERTY_NAME)) id.common_name = cn;
  id.ips = Values(auth, GRPC_PEER_IP_PROPERTY_NAME);
  id.dns_names = Values(auth, GRPC_PEER_DNS_PROPERTY_NAME);
  for (const std::string& uri : Values(auth, GRPC_PEER_URI_PROPERTY_NAME)) {
    if (absl::StartsWith(uri, kRoleUriPrefix))
      id.roles.push_back(uri.substr(kRoleUriPrefix.size()));
  }
  return id;
}

std::string HostOfAddress(absl::string_view address) {
  if (absl::StartsWith(address, "[")) {
    const size_t end = address.find(']');
    return std::string(address.substr(1, end == absl::string_view::npos ? address.npos : end - 1));
  }
  const size_t colon = address.rfind(':');
  // More than one colon and no brackets: a bare IPv6 address.
  if (colon == absl::string_view::npos || address.find(':') != colon) return std::string(address);
  return std::string(address.substr(0, colon));
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsOptions& tls) {
  if (tls.plaintext) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  ASSIGN_OR_RETURN(std::string cert, ReadPem(tls.cert_file, "certificate"));
  ASSIGN_OR_RETURN(std::string key, ReadPem(tls.key_file, "private key"));
  options.pem_key_cert_pairs.push_back({key, cert});
  if (!tls.ca_file.empty()) {
    ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(tls.ca_file, "CA"));
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const TlsOptions& tls) {
  if (tls.plaintext) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(tls.ca_file, "CA"));
  if (!tls.cert_file.empty()) {
    ASSIGN_OR_RETURN(options.pem_cert_chain, ReadPem(tls.cert_file, "certificate"));
    ASSIGN_OR_RETURN(options.pem_private_key, ReadPem(tls.key_file, "private key"));
  }
  return grpc::SslCredentials(options);
}

}  // namespace parley::services
