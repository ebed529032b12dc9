#include "tools/cli/deploy/pki.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "services/transport/tls.h"
#include "tools/cli/common/find_binary.h"

namespace parley::cli {
namespace fs = std::filesystem;
namespace {

// Runs openssl with `args` in `dir`; its stderr becomes the error. Its stdout goes to `out` if
// given (it must stay small: it is read after stderr).
absl::Status Openssl(const std::string& dir, std::vector<std::string> args,
                     std::string* out_text = nullptr) {
  const std::string openssl = FindBinary("openssl");
  args.insert(args.begin(), openssl);
  int err[2];
  if (pipe2(err, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  int std_out[2] = {-1, -1};
  if (out_text != nullptr && pipe2(std_out, O_CLOEXEC) != 0) {
    close(err[0]);
    close(err[1]);
    return absl::InternalError("pipe failed");
  }
  const pid_t pid = fork();
  if (pid < 0) {
    for (int fd : {err[0], err[1], std_out[0], std_out[1]}) {
      if (fd >= 0) close(fd);
    }
    return absl::InternalError(absl::StrCat("cannot run openssl: fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    if (chdir(dir.c_str()) != 0) _exit(126);
    const int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(std_out[1] >= 0 ? std_out[1] : null, 1);
    dup2(err[1], 2);
    umask(077);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(openssl.c_str(), argv.data());
    _exit(127);
  }
  close(err[1]);
  if (std_out[1] >= 0) close(std_out[1]);
  std::string out;
  char buf[1024];
  ssize_t n;
  while ((n = read(err[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(err[0]);
  if (std_out[0] >= 0) {
    while ((n = read(std_out[0], buf, sizeof(buf))) > 0) {
      out_text->append(buf, static_cast<size_t>(n));
    }
    close(std_out[0]);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
    return absl::FailedPreconditionError("the openssl command is missing: run tools/setup");
  }
  return absl::InternalError(absl::StrCat("openssl ", args[1], " failed in ", dir, ": ", out));
}

std::string RoleUri(CertRole role) {
  return absl::StrCat(services::kRoleUriPrefix,
                      role == CertRole::kOperator ? services::kOperatorRole : services::kHostRole);
}

// The roles (parley:role/ URIs) `cert` names.
absl::StatusOr<std::vector<std::string>> RolesOf(const std::string& dir, const std::string& cert) {
  std::string text;
  RETURN_IF_ERROR(Openssl(dir, {"x509", "-in", cert, "-noout", "-ext", "subjectAltName"}, &text));
  std::vector<std::string> roles;
  const std::string uri = absl::StrCat("URI:", services::kRoleUriPrefix);
  for (size_t at = text.find(uri); at != std::string::npos; at = text.find(uri, at + 1)) {
    const size_t start = at + 4;
    const size_t end = text.find_first_of(", \n", start);
    roles.push_back(text.substr(start, end == std::string::npos ? end : end - start));
  }
  return roles;
}

// What tells one certificate file from another (not a security check: the role file only
// caches what the certificate says).
std::string Fingerprint(const std::string& cert) {
  std::ifstream in(cert, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  uint64_t h = 14695981039346656037ull;  // FNV-1a: the same in every process, unlike absl::Hash
  for (unsigned char c : text.str()) h = (h ^ c) * 1099511628211ull;
  return absl::StrCat(absl::Hex(h, absl::kZeroPad16));
}

}  // namespace

absl::Status EnsureCa(const std::string& pki_dir) {
  std::error_code ec;
  fs::create_directories(pki_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", pki_dir, ": ", ec.message()));
  chmod(pki_dir.c_str(), 0700);
  if (fs::exists(fs::path(pki_dir) / "ca.pem") && fs::exists(fs::path(pki_dir) / "ca.key")) {
    return absl::OkStatus();
  }
  // Written beside and renamed, so that a CA is either whole or absent.
  RETURN_IF_ERROR(Openssl(
      pki_dir, {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", "ca.key.tmp", "-out", "ca.pem.tmp", "-days", "3650", "-subj",
                "/O=parley/CN=Parley model CA", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign"}));
  fs::rename(fs::path(pki_dir) / "ca.key.tmp", fs::path(pki_dir) / "ca.key", ec);
  if (!ec) fs::rename(fs::path(pki_dir) / "ca.pem.tmp", fs::path(pki_dir) / "ca.pem", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot write the CA in ", pki_dir));
  return absl::OkStatus();
}

absl::StatusOr<CertFiles> IssueCert(const std::string& pki_dir, const std::string& name,
                                    CertRole role, const std::vector<std::string>& ips,
                                    const std::vector<std::string>& dns_names,
                                    const std::string& out_dir) {
  CertFiles files;
  files.dir = out_dir.empty() ? (fs::path(pki_dir) / name).string() : out_dir;
  files.cert = (fs::path(files.dir) / "cert.pem").string();
  files.key = (fs::path(files.dir) / "key.pem").string();
  files.ca = (fs::path(files.dir) / "ca.pem").string();
  std::error_code ec;
  const fs::path role_file = fs::path(files.dir) / "role";
  if (fs::exists(files.cert) && fs::exists(files.key) && fs::exists(files.ca)) {
    // The role recorded beside the certificate when it was issued spares every command an
    // openssl run (about 25 ms); without that record, or for another certificate put in its
    // place, the certificate itself is read.
    std::vector<std::string> roles;
    std::string role_line;
    std::vector<std::string> recorded;
    if (std::ifstream in(role_file); in && std::getline(in, role_line)) {
      recorded = absl::StrSplit(role_line, ' ');
    }
    if (recorded.size() == 2 && recorded[1] == Fingerprint(files.cert)) {
      roles.push_back(recorded[0]);
    } else {
      ASSIGN_OR_RETURN(roles, RolesOf(files.dir, files.cert));
      if (roles.size() == 1) {
        std::ofstream(role_file) << roles[0] << " " << Fingerprint(files.cert) << "\n";
      }
    }
    if (roles.size() == 1 && roles[0] == RoleUri(role)) return files;
    if (!roles.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          files.cert, " is a certificate with ", absl::StrJoin(roles, ", "), ", not ",
          RoleUri(role), ": pick another name, or remove ", files.dir, " to issue it anew"));
    }
    // Made before certificates had roles: what it allowed was never checked, so it is replaced.
    files.reissued = true;
  }
  RETURN_IF_ERROR(EnsureCa(pki_dir));
  fs::create_directories(files.dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", files.dir, ": ", ec.message()));
  chmod(files.dir.c_str(), 0700);
  std::vector<std::string> sans;
  for (const auto& ip : ips) sans.push_back("IP:" + ip);
  for (const auto& dns : dns_names) sans.push_back("DNS:" + dns);
  if (sans.empty() && role == CertRole::kHost) {
    return absl::InvalidArgumentError(
        absl::StrCat("a certificate for ", name, " needs at least one IP address or DNS name"));
  }
  sans.push_back(absl::StrCat("URI:", RoleUri(role)));
  const fs::path work = fs::path(files.dir);
  {
    std::ofstream ext(work / "ext.cnf");
    ext << "subjectAltName=" << absl::StrJoin(sans, ",") << "\n"
        << "extendedKeyUsage=serverAuth,clientAuth\n"
        << "basicConstraints=critical,CA:FALSE\n"
        << "keyUsage=critical,digitalSignature,keyEncipherment\n";
  }
  const std::string ca_pem = (fs::path(pki_dir) / "ca.pem").string();
  const std::string ca_key = (fs::path(pki_dir) / "ca.key").string();
  RETURN_IF_ERROR(Openssl(
      files.dir,
      {"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
       "key.pem.tmp", "-out", "cert.csr", "-subj", absl::StrCat("/O=parley/CN=", name)}));
  RETURN_IF_ERROR(
      Openssl(files.dir, {"x509", "-req", "-in", "cert.csr", "-CA", ca_pem, "-CAkey", ca_key,
                          "-CAcreateserial", "-CAserial", (fs::path(pki_dir) / "ca.srl").string(),
                          "-out", "cert.pem.tmp", "-days", "825", "-extfile", "ext.cnf"}));
  fs::copy_file(ca_pem, files.ca, fs::copy_options::overwrite_existing, ec);
  if (!ec) fs::rename(work / "key.pem.tmp", files.key, ec);
  if (!ec) fs::rename(work / "cert.pem.tmp", files.cert, ec);
  if (!ec) {
    std::ofstream(role_file) << RoleUri(role) << " " << Fingerprint(files.cert) << "\n";
  }
  fs::remove(work / "cert.csr");
  fs::remove(work / "ext.cnf");
  if (ec) return absl::InternalError(absl::StrCat("cannot write ", files.dir, ": ", ec.message()));
  return files;
}

}  // namespace parley::cli
