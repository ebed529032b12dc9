#include "services/backends/probes/probes.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "services/backends/common/http_client.h"
#include "services/backends/process/run_command.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;

constexpr char kStandardPath[] = "/usr/local/bin:/usr/bin:/bin";

std::string What(const ProbeDef& p) { return absl::StrCat("probe '", p.name, "'"); }

class TcpProbe : public engine::HealthProbe {
 public:
  TcpProbe(const ProbeDef& p, std::map<std::string, std::string> defaults, std::string unit_host)
      : what_(What(p)),
        host_(p.host),
        port_(p.port),
        defaults_(std::move(defaults)),
        unit_host_(std::move(unit_host)) {}

  absl::Status Check(const engine::ProbeContext& ctx) override {
    std::string host = unit_host_;
    if (host_) {
      ASSIGN_OR_RETURN(host, ExpandTemplate(*host_, what_, ctx.config, ctx.facts, defaults_));
    }
    ASSIGN_OR_RETURN(std::string port_text,
                     ExpandTemplate(port_, what_, ctx.config, ctx.facts, defaults_));
    int port = 0;
    if (!absl::SimpleAtoi(port_text, &port) || port < 1 || port > 65535) {
      return absl::FailedPreconditionError(
          absl::StrCat(what_, ": port '", port_text, "' (", port_.source, ") is not a TCP port"));
    }
    return CheckTcp(host, port, ctx.timeout);
  }

 private:
  const std::string what_;
  const std::optional<Template> host_;
  const Template port_;
  const std::map<std::string, std::string> defaults_;
  const std::string unit_host_;
};

class HttpProbe : public engine::HealthProbe {
 public:
  HttpProbe(const ProbeDef& p, std::map<std::string, std::string> defaults)
      : what_(What(p)), url_(p.url), defaults_(std::move(defaults)) {}

  absl::Status Check(const engine::ProbeContext& ctx) override {
    HttpRequest request;
    ASSIGN_OR_RETURN(request.url, ExpandTemplate(url_, what_, ctx.config, ctx.facts, defaults_));
    request.timeout = ctx.timeout;
    request.max_response_bytes = 64 * 1024;
    absl::StatusOr<HttpResponse> response = SendHttpRequest(request);
    if (!response.ok()) return response.status();
    if (response->status < 200 || response->status >= 400) {
      std::string body = response->body.substr(0, 120);
      for (char& c : body) {
        if (c < 0x20 || c == 0x7f) c = ' ';
      }
      return absl::UnavailableError(absl::StrCat("GET ", request.url, ": status ", response->status,
                                                 body.empty() ? "" : ": ", body));
    }
    return absl::OkStatus();
  }

 private:
  const std::string what_;
  const Template url_;
  const std::map<std::string, std::string> defaults_;
};

class ExecProbe : public engine::HealthProbe {
 public:
  ExecProbe(const ProbeDef& p, const ServiceDefinition& def, ProgramUser user, std::string program,
            const ProcessOptions& options)
      : what_(What(p)), command_(p.command), defaults_(ConfigDefaults(def)), options_(options) {
    base_.dir = fs::absolute(def.dir).lexically_normal().string();
    base_.origin = absl::StrCat(def.file, ":", p.line);
    base_.program = std::move(program);
    base_.user = std::move(user);
    std::vector<std::string> path = options.extra_path;
    path.push_back(kStandardPath);
    base_.env["PATH"] = absl::StrJoin(path, ":");
    base_.env["USER"] = base_.user.name;
    base_.env["LOGNAME"] = base_.user.name;
    base_.env["PARLEY_UNIT_HOST"] = options.unit_host;
  }

  absl::Status Check(const engine::ProbeContext& ctx) override {
    Command c = base_;
    c.timeout = ctx.timeout;
    for (const Template& t : command_) {
      ASSIGN_OR_RETURN(std::string arg, ExpandTemplate(t, what_, ctx.config, ctx.facts, defaults_));
      c.argv.push_back(std::move(arg));
    }
    const std::string service = ctx.unit.substr(0, ctx.unit.find('/'));
    c.env["PARLEY_UNIT"] = ctx.unit;
    c.env["PARLEY_SERVICE"] = service;
    std::string home = "/";
    if (!options_.state_root.empty()) {
      std::string leaf = ctx.unit;
      for (char& ch : leaf) {
        if (ch == '/') ch = '-';
      }
      home = (fs::path(options_.state_root) / leaf).string();
      c.env["PARLEY_STATE_DIR"] = home;
    }
    c.env["HOME"] = home;
    return RunCommand(c);
  }

 private:
  const std::string what_;
  const std::vector<Template> command_;
  const std::map<std::string, std::string> defaults_;
  const ProcessOptions options_;
  Command base_;
};

}  // namespace

absl::Status CheckTcp(const std::string& host, int port, absl::Duration timeout) {
  const std::string where = absl::StrCat(host, ":", port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string service = absl::StrCat(port);
  if (int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("connect ", where, ": cannot resolve '", host, "': ", gai_strerror(rc)));
  }
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd =
        socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last = std::strerror(errno);
      continue;
    }
    int rc = connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      const int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now()));
      int n;
      do {
        n = poll(&p, 1, static_cast<int>(ms));
      } while (n < 0 && errno == EINTR);
      if (n == 0) {
        close(fd);
        freeaddrinfo(found);
        return absl::DeadlineExceededError(
            absl::StrCat("connect ", where, ": no answer within ", absl::FormatDuration(timeout)));
      }
      int error = 0;
      socklen_t len = sizeof(error);
      if (n < 0) {
        error = errno;
      } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0) {
        error = errno;
      }
      rc = error == 0 ? 0 : -1;
      errno = error;
    }
    const int saved = errno;
    close(fd);
    if (rc == 0) {
      freeaddrinfo(found);
      return absl::OkStatus();
    }
    last = std::strerror(saved);
  }
  freeaddrinfo(found);
  return absl::UnavailableError(absl::StrCat("connect ", where, ": ", last));
}

absl::StatusOr<std::shared_ptr<engine::HealthProbe>> MakeHealthProbe(
    const ServiceDefinition& def, const ProbeDef& probe, const ProcessOptions& options) {
  switch (probe.kind) {
    case ProbeDef::Kind::kTcp:
      return std::make_shared<TcpProbe>(probe, ConfigDefaults(def), options.unit_host);
    case ProbeDef::Kind::kHttp:
      return std::make_shared<HttpProbe>(probe, ConfigDefaults(def));
    case ProbeDef::Kind::kExec: {
      ASSIGN_OR_RETURN(ProgramUser user, ResolveProgramUser(def, options));
      std::vector<std::string> dirs = options.extra_path;
      for (const char* d : {"/usr/local/bin", "/usr/bin", "/bin"}) dirs.push_back(d);
      const std::string dir = fs::absolute(def.dir).lexically_normal().string();
      ASSIGN_OR_RETURN(std::string program, FindProgram(probe.command[0].source, dir, dirs,
                                                        absl::StrCat(def.file, ":", probe.line,
                                                                     ": health.", probe.name)));
      return std::make_shared<ExecProbe>(probe, def, std::move(user), std::move(program), options);
    }
  }
  return absl::InternalError("unknown probe kind");
}

}  // namespace parley::services
