#include "tools/cli/model/model_dir.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "tools/cli/common/client.h"
#include "tools/cli/common/find_binary.h"
#include "tools/cli/deploy/pki.h"

namespace parley::cli {
namespace fs = std::filesystem;

namespace {

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

bool ProcessAlive(int64_t pid) {
  if (pid <= 0) return false;
  if (kill(static_cast<pid_t>(pid), 0) != 0) return errno == EPERM;
  // A zombie (our own child that exited) counts as gone.
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  std::getline(stat, line);
  const size_t paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'Z';
}

// A loopback port that was free a moment ago.
absl::StatusOr<int> FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return Errno("socket", "");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return Errno("bind", "127.0.0.1:0");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace

// Absolute: tools run with another working directory (openssl in the pki directory) are handed
// paths inside it.
ModelDir::ModelDir(std::string path) : path_(fs::absolute(path).lexically_normal().string()) {}

ModelDir::~ModelDir() {
  if (lock_fd_ >= 0) close(lock_fd_);
}

absl::Status ModelDir::Create() const {
  std::error_code ec;
  fs::create_directories(path_, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", path_, ": ", ec.message()));
  return absl::OkStatus();
}

bool ModelDir::Exists() const { return fs::exists(fs::path(path_) / "model.json"); }

absl::StatusOr<v1::ModelState> ModelDir::Load() const {
  const std::string file = (fs::path(path_) / "model.json").string();
  std::ifstream in(file);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("no model in ", path_, " (run `parley up MODEL` first, or pass --model-dir)"));
  }
  std::stringstream text;
  text << in.rdbuf();
  v1::ModelState state;
  auto s = google::protobuf::util::JsonStringToMessage(text.str(), &state);
  if (!s.ok()) {
    return absl::DataLossError(absl::StrCat(file, ": not a model state: ", s.message().ToString()));
  }
  return state;
}

absl::Status ModelDir::Save(const v1::ModelState& state) const {
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  auto s = google::protobuf::util::MessageToJsonString(state, &json, opts);
  if (!s.ok()) return absl::InternalError(s.message().ToString());
  const std::string file = (fs::path(path_) / "model.json").string();
  const std::string tmp = file + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot write", tmp);
  size_t off = 0;
  while (off < json.size()) {
    ssize_t n = write(fd, json.data() + off, json.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      return Errno("cannot write", tmp);
    }
    off += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    close(fd);
    return Errno("cannot sync", tmp);
  }
  close(fd);
  if (rename(tmp.c_str(), file.c_str()) != 0) return Errno("cannot replace", file);
  return absl::OkStatus();
}

absl::Status ModelDir::Lock(absl::Duration timeout) {
  RETURN_IF_ERROR(Create());
  const std::string file = (fs::path(path_) / "lock").string();
  lock_fd_ = open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) return Errno("cannot open", file);
  const absl::Time deadline = absl::Now() + timeout;
  while (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return Errno("cannot lock", file);
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("another parley command is changing the model in ", path_));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::OkStatus();
}

std::string ModelDir::pki_dir() const { return (fs::path(path_) / "pki").string(); }

absl::Status ModelDir::UseTls(bool tls) {
  tls_ = tls;
  if (!tls) {
    credentials_ = nullptr;
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(CertFiles cli,
                   IssueCert(pki_dir(), "cli", CertRole::kOperator, {}, {"parley-cli"}));
  auto read = [](const std::string& file) {
    std::ifstream in(file);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = read(cli.ca);
  options.pem_cert_chain = read(cli.cert);
  options.pem_private_key = read(cli.key);
  if (options.pem_root_certs.empty() || options.pem_private_key.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read the CLI's certificate in ", cli.dir));
  }
  credentials_ = grpc::SslCredentials(options);
  return absl::OkStatus();
}

std::string ModelDir::LogTail(size_t bytes) const {
  std::ifstream in(fs::path(path_) / "parleyd.log", std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff start = size > static_cast<std::streamoff>(bytes) ? size - bytes : 0;
  in.seekg(start);
  std::string tail((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return tail;
}

bool ModelDir::Serves(const v1::HostInfo& info, const v1::HostRecord& host) {
  if (info.pid() == host.pid()) return true;
  if (info.data_dir().empty() || host.data_dir().empty()) return false;
  std::error_code a, b;
  const fs::path theirs = fs::weakly_canonical(info.data_dir(), a);
  const fs::path ours = fs::weakly_canonical(host.data_dir(), b);
  return !a && !b && theirs == ours;
}

absl::Status ModelDir::EnsureHost(const std::string& parleyd, v1::HostRecord& host,
                                  bool* started) const {
  if (started != nullptr) *started = false;
  if (!host.address().empty()) {
    AgentClient client(host.address(), credentials_);
    absl::StatusOr<v1::HostInfo> info = client.Host(absl::Seconds(2));
    if (info.ok() && Serves(*info, host)) {
      host.set_pid(info->pid());
      if (!info->metrics_address().empty()) host.set_metrics_address(info->metrics_address());
      return absl::OkStatus();
    }
    if (ProcessAlive(host.pid())) {
      return absl::UnavailableError(absl::StrCat(
          "parleyd (pid ", host.pid(), ") is running but does not answer at ", host.address(),
          info.ok() ? "" : absl::StrCat(": ", info.status().message())));
    }
  }
  RETURN_IF_ERROR(Create());
  const fs::path dir(path_);
  host.set_data_dir((dir / "kb").string());
  host.set_state_dir((dir / "units").string());
  host.set_log_file((dir / "parleyd.log").string());
  // Keep the ports of an earlier run so that addresses recorded by peers stay valid.
  std::string listen = host.address();
  if (listen.empty()) {
    absl::StatusOr<int> port = FreePort();
    if (!port.ok()) return port.status();
    listen = absl::StrCat("127.0.0.1:", *port);
  }
  std::string metrics = host.metrics_address();
  if (metrics.empty()) {
    absl::StatusOr<int> port = FreePort();
    if (!port.ok()) return port.status();
    metrics = absl::StrCat("127.0.0.1:", *port);
  }
  const std::string address_file = (dir / "parleyd.address").string();
  fs::remove(address_file);
  std::vector<std::string> args = {parleyd,
                                   "--data=" + host.data_dir(),
                                   "--state_dir=" + host.state_dir(),
                                   "--listen=" + listen,
                                   "--metrics_listen=" + metrics,
                                   "--address_file=" + address_file};
  if (host.etcd_size() > 0) {
    args.push_back("--etcd=" + absl::StrJoin(host.etcd(), ","));
    args.push_back("--election_prefix=" + host.election_prefix());
  }
  if (tls_) {
    ASSIGN_OR_RETURN(CertFiles files,
                     IssueCert(pki_dir(), "local", CertRole::kHost, {"127.0.0.1"}, {"localhost"}));
    args.push_back("--tls_cert=" + files.cert);
    args.push_back("--tls_key=" + files.key);
    args.push_back("--tls_ca=" + files.ca);
  } else {
    args.push_back("--plaintext");
  }
  const int log = open(host.log_file().c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) return Errno("cannot open", host.log_file());
  const pid_t pid = fork();
  if (pid < 0) {
    close(log);
    return Errno("fork", parleyd);
  }
  if (pid == 0) {
    // The daemon outlives this command: its own session, no terminal, output to the log.
    setsid();
    const int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(log, 1);
    dup2(log, 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(parleyd.c_str(), argv.data());
    dprintf(2, "parley: cannot run %s: %s\n", parleyd.c_str(), std::strerror(errno));
    _exit(127);
  }
  close(log);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (true) {
    std::ifstream in(address_file);
    std::string address;
    if (in && std::getline(in, address) && !address.empty()) {
      host.set_address(address);
      host.set_pid(pid);
      host.set_metrics_address(metrics);
      if (started != nullptr) *started = true;
      return absl::OkStatus();
    }
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return absl::UnavailableError(absl::StrCat("parleyd exited at startup; the end of ",
                                                 host.log_file(), ":\n", LogTail(2000)));
    }
    if (absl::Now() > deadline) {
      kill(pid, SIGKILL);
      return absl::DeadlineExceededError(
          absl::StrCat("parleyd did not start listening within 30 s; see ", host.log_file()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::Status ModelDir::StopHost(const v1::HostRecord& host, absl::Duration grace) const {
  // Only signal a process that says it is this model's parleyd (pids get reused); it may have
  // been restarted by a supervisor or by hand since the record was written.
  AgentClient client(host.address(), credentials_);
  absl::StatusOr<v1::HostInfo> info = client.Host(absl::Seconds(2));
  if (!info.ok() || !Serves(*info, host)) {
    if (!ProcessAlive(host.pid())) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("process ", host.pid(), " is not the parleyd recorded at ", host.address()));
  }
  const pid_t pid = static_cast<pid_t>(info->pid());
  kill(pid, SIGTERM);
  const absl::Time deadline = absl::Now() + grace;
  while (ProcessAlive(pid)) {
    waitpid(pid, nullptr, WNOHANG);
    if (absl::Now() > deadline) {
      kill(pid, SIGKILL);
      return absl::DeadlineExceededError(absl::StrCat("parleyd (pid ", pid,
                                                      ") did not stop within ",
                                                      absl::FormatDuration(grace), "; killed it"));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::OkStatus();
}

}  // namespace parley::cli
