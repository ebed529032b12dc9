#include "services/tls.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/security/credentials.h"
#include "kb/status_macros.h"

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

}  // namespace

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
