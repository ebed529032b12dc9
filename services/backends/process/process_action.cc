#include "services/backends/process/process_action.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/process_reaper.h"
#include "base/status_macros.h"
#include "engine/run_context.h"
#include "services/backends/common/json.h"
#include "services/backends/process/hook_protocol.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;

constexpr char kStandardPath[] = "/usr/local/bin:/usr/bin:/bin";
// A hook request larger than this is refused.
constexpr size_t kMaxRequest = 1 << 20;
// Hook connections served at once; more are refused.
constexpr size_t kMaxConnections = 32;

absl::Status Errno(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Text from a program, quoted in errors.

std::string Printable(absl::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f)) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

void TailBuffer::Append(absl::string_view data) {
  total_ += data.size();
  if (data.size() >= limit_) {
    data_.assign(data.data() + data.size() - limit_, limit_);
    return;
  }
  data_.append(data.data(), data.size());
  // Trim in chunks so that appending stays linear.
  if (data_.size() > 2 * limit_) data_.erase(0, data_.size() - limit_);
}

absl::string_view TailBuffer::Tail(size_t n) const {
  absl::string_view d = Kept();
  return d.size() <= n ? d : d.substr(d.size() - n);
}

absl::string_view TailBuffer::Kept() const {
  absl::string_view d = data_;
  return d.size() <= limit_ ? d : d.substr(d.size() - limit_);
}

// "stderr (last 120 bytes): ..." or "stderr: (empty)".
std::string DescribeTail(absl::string_view name, const TailBuffer& b, size_t n) {
  if (b.total() == 0) return absl::StrCat(name, ": (empty)");
  absl::string_view tail = b.Tail(n);
  std::string head = tail.size() == b.total()
                         ? std::string(name)
                         : absl::StrCat(name, " (last ", tail.size(), " of ", b.total(), " bytes",
                                        b.dropped() > 0 ? ", truncated" : "", ")");
  return absl::StrCat(head, ": ", Printable(absl::StripAsciiWhitespace(tail)));
}

namespace {

// ---------------------------------------------------------------------------------------------
// Hook requests.

// What a hook request needs besides the RunContext.
struct HookEnv {
  engine::RunContext* ctx;
  const std::map<std::string, std::string>* defaults;
  const std::map<std::string, EndpointContract>* endpoints;
  const BackendLog* log;
};

struct Reply {
  bool ok = true;
  std::string text;
};

Reply Ok(std::string text = "") { return {true, std::move(text)}; }
Reply Refused(std::string text) { return {false, std::move(text)}; }
Reply FromStatus(const absl::Status& s) {
  return s.ok() ? Ok() : Refused(std::string(s.message()));
}

std::map<std::string, std::string> MergedConfig(const HookEnv& env) {
  std::map<std::string, std::string> config = *env.defaults;
  for (const auto& [k, v] : env.ctx->config()) config[k] = v;
  return config;
}

// The relations `name` designates: a relation id, or every relation of an endpoint.
absl::StatusOr<std::vector<const v1::RelationRecord*>> RelationsNamed(const HookEnv& env,
                                                                      absl::string_view name) {
  for (const v1::RelationRecord* r : env.ctx->Relations()) {
    if (r->relation_id() == name) return std::vector<const v1::RelationRecord*>{r};
  }
  if (env.endpoints->find(std::string(name)) == env.endpoints->end()) {
    return absl::NotFoundError(
        absl::StrCat("'", name, "' is neither an endpoint nor the id of a current relation"));
  }
  return env.ctx->Relations(name);
}

absl::StatusOr<const v1::RelationRecord*> OneRelation(const HookEnv& env, absl::string_view name) {
  ASSIGN_OR_RETURN(auto rels, RelationsNamed(env, name));
  if (rels.empty())
    return absl::NotFoundError(absl::StrCat("endpoint '", name, "' has no relation"));
  if (rels.size() > 1) {
    std::vector<std::string> ids;
    for (const auto* r : rels) ids.push_back(r->relation_id());
    return absl::FailedPreconditionError(
        absl::StrCat("endpoint '", name, "' has ", rels.size(),
                     " relations; name one of: ", absl::StrJoin(ids, ", ")));
  }
  return rels[0];
}

Reply RelationGet(const HookEnv& env, const std::vector<std::string>& a) {
  if (a.size() < 3 || a.size() > 5) {
    return Refused("usage: relation get ENDPOINT|RELATION_ID [UNIT] [KEY]");
  }
  auto rel = OneRelation(env, a[2]);
  if (!rel.ok()) return FromStatus(rel.status());
  std::string unit = a.size() >= 4 ? a[3] : "";
  if (unit.empty() || unit == "-") {
    const v1::Event& e = env.ctx->event();
    if (e.has_relation() && e.relation().relation_id() == (*rel)->relation_id() &&
        !e.relation().remote_unit().empty()) {
      unit = e.relation().remote_unit();
    } else if ((*rel)->remote_units_size() == 1) {
      unit = (*rel)->remote_units(0);
    } else {
      return Refused(absl::StrCat("relation '", (*rel)->relation_id(), "' has ",
                                  (*rel)->remote_units_size(),
                                  " remote units and the event is not about one of them; name "
                                  "the unit"));
    }
  }
  std::string bag;
  if (unit == env.ctx->unit()) {
    bag = "lu";
  } else if (unit == (*rel)->remote_service()) {
    bag = "rs";
  } else {
    bag = absl::StrCat("ru:", unit);
  }
  auto data = env.ctx->Bag((*rel)->relation_id(), bag);
  if (!data.ok()) return FromStatus(data.status());
  if (a.size() == 5) {
    auto it = data->find(a[4]);
    if (it == data->end()) {
      return Refused(absl::StrCat("relation '", (*rel)->relation_id(), "': unit '", unit,
                                  "' has no key '", a[4], "'"));
    }
    return Ok(it->second);
  }
  std::string out;
  JsonMap(out, *data);
  return Ok(out + "\n");
}

Reply RelationSet(const HookEnv& env, const std::vector<std::string>& a) {
  if (a.size() != 5) return Refused("usage: relation set ENDPOINT|RELATION_ID KEY VALUE");
  auto rels = RelationsNamed(env, a[2]);
  if (!rels.ok()) return FromStatus(rels.status());
  for (const v1::RelationRecord* r : *rels) {
    auto ep = env.endpoints->find(r->endpoint());
    if (ep == env.endpoints->end()) {
      return Refused(absl::StrCat("relation '", r->relation_id(), "': endpoint '", r->endpoint(),
                                  "' is not declared"));
    }
    absl::Status s = ValidateRelationData(ep->second.schema, a[3], a[4], ep->second.role);
    if (!s.ok()) return FromStatus(s);
    s = env.ctx->SetData(r->relation_id(), a[3], a[4]);
    if (!s.ok()) return FromStatus(s);
  }
  return Ok();
}

Reply RelationList(const HookEnv& env, const std::vector<std::string>& a) {
  if (a.size() > 3) return Refused("usage: relation list [ENDPOINT]");
  if (a.size() == 3 && env.endpoints->find(a[2]) == env.endpoints->end()) {
    return Refused(absl::StrCat("'", a[2], "' is not an endpoint of this service"));
  }
  std::string out = "[";
  bool first = true;
  for (const v1::RelationRecord* r : env.ctx->Relations(a.size() == 3 ? a[2] : "")) {
    if (!first) out += ',';
    first = false;
    out += "{\"id\":";
    JsonString(out, r->relation_id());
    out += ",\"endpoint\":";
    JsonString(out, r->endpoint());
    out += ",\"remote_service\":";
    JsonString(out, r->remote_service());
    out += ",\"remote_units\":";
    JsonList(out, {r->remote_units().begin(), r->remote_units().end()});
    out += '}';
  }
  return Ok(out + "]\n");
}

std::optional<v1::WorkloadState> ParseState(absl::string_view s) {
  if (s == "maintenance") return v1::WORKLOAD_STATE_MAINTENANCE;
  if (s == "blocked") return v1::WORKLOAD_STATE_BLOCKED;
  if (s == "waiting") return v1::WORKLOAD_STATE_WAITING;
  if (s == "active") return v1::WORKLOAD_STATE_ACTIVE;
  if (s == "error") return v1::WORKLOAD_STATE_ERROR;
  return std::nullopt;
}

Reply Handle(const HookEnv& env, const std::vector<std::string>& a) {
  const std::string verb = a.size() >= 2 ? absl::StrCat(a[0], " ", a[1]) : (a.empty() ? "" : a[0]);
  engine::RunContext& ctx = *env.ctx;
  if (verb == "fact set") {
    if (a.size() != 3 && a.size() != 4) return Refused("usage: fact set NAME [VALUE]");
    return FromStatus(ctx.Set(a[2], a.size() == 4 ? a[3] : ""));
  }
  if (verb == "fact clear") {
    if (a.size() != 3) return Refused("usage: fact clear NAME");
    return FromStatus(ctx.Clear(a[2]));
  }
  if (verb == "fact get") {
    if (a.size() != 3) return Refused("usage: fact get NAME");
    std::optional<std::string> v = ctx.Value(a[2]);
    if (!v) return Refused(absl::StrCat("fact '", a[2], "' is not set"));
    return Ok(*v);
  }
  if (verb == "relation get") return RelationGet(env, a);
  if (verb == "relation set") return RelationSet(env, a);
  if (verb == "relation list") return RelationList(env, a);
  if (verb == "config get") {
    if (a.size() > 3) return Refused("usage: config get [KEY]");
    std::map<std::string, std::string> config = MergedConfig(env);
    if (a.size() == 3) {
      auto it = config.find(a[2]);
      if (it == config.end()) {
        return Refused(absl::StrCat("config option '", a[2], "' has no value and no default"));
      }
      return Ok(it->second);
    }
    std::string out;
    JsonMap(out, config);
    return Ok(out + "\n");
  }
  if (verb == "status set") {
    if (a.size() != 4) return Refused("usage: status set STATE MESSAGE");
    std::optional<v1::WorkloadState> state = ParseState(a[2]);
    if (!state) {
      return Refused(absl::StrCat("unknown state '", a[2],
                                  "' (expected maintenance, blocked, waiting, active or error)"));
    }
    return FromStatus(ctx.SetStatus(*state, a[3]));
  }
  if (!a.empty() && a[0] == "log") {
    if (a.size() != 2) return Refused("usage: log MESSAGE");
    if (*env.log) (*env.log)(ctx.unit(), ctx.handler(), "log", a[1]);
    return Ok();
  }
  if (verb == "event fire") {
    if (a.size() != 3) return Refused("usage: event fire NAME");
    return FromStatus(ctx.Fire(a[2]));
  }
  if (verb == "timer set") {
    if (a.size() != 4) return Refused("usage: timer set NAME SECONDS");
    double seconds = 0;
    if (!absl::SimpleAtod(a[3], &seconds) || !(seconds >= 0) || seconds > 1e9) {
      return Refused(absl::StrCat("timer set: expected a number of seconds, got '", a[3], "'"));
    }
    return FromStatus(ctx.SetTimer(a[2], absl::Seconds(seconds)));
  }
  if (verb == "action output") {
    if (a.size() != 4) return Refused("usage: action output KEY VALUE");
    if (a[2].empty()) return Refused("action output: the key is empty");
    return FromStatus(ctx.Output(a[2], a[3]));
  }
  return Refused(absl::StrCat(
      "unknown request '", Printable(verb.substr(0, 100)),
      "' (expected fact set|clear|get, relation get|set|list, config get, status set, log, "
      "event fire, timer set or action output)"));
}

// ---------------------------------------------------------------------------------------------
// One run of a program.

// A file descriptor closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { Reset(); }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// The private temp dir; removed with its contents on destruction.
class RunDir {
 public:
  static absl::StatusOr<RunDir> Make(const std::string& root) {
    std::string tmpl = absl::StrCat(root, "/parley-exec-XXXXXX");
    if (mkdtemp(tmpl.data()) == nullptr) {
      return Errno(absl::StrCat("cannot make a temp dir in ", root));
    }
    RunDir d;
    d.path_ = tmpl;
    return d;
  }
  RunDir() = default;
  RunDir(RunDir&& o) noexcept : path_(std::exchange(o.path_, "")) {}
  RunDir& operator=(RunDir&&) = delete;
  ~RunDir() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The child; killed (its whole process group) and reaped if still running on destruction.
class Child {
 public:
  ~Child() {
    if (pid_ > 0 && !exited_) {
      kill(-pid_, SIGKILL);
      int status = 0;
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }
  pid_t pid_ = -1;
  Fd pidfd_;
  bool exited_ = false;
  int status_ = 0;

  // Reaps the child if it exited.
  bool Poll() {
    if (exited_) return true;
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      status_ = status;
    }
    return exited_;
  }
  void KillGroup() {
    if (pid_ > 0 && !exited_) kill(-pid_, SIGKILL);
  }
  void Wait() {
    if (exited_) return;
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0) {
      if (errno != EINTR) return;
    }
    exited_ = true;
    status_ = status;
  }
};

struct Connection {
  Fd fd;
  std::string in;
  std::string out;
  size_t written = 0;
  bool replying = false;
};

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Serves hook requests on `listener` while the program runs.
class HookServer {
 public:
  HookServer(Fd listener, HookEnv env) : listener_(std::move(listener)), env_(env) {}

  // Adds the server's descriptors to `fds` (remembering where).
  void AddPollFds(std::vector<pollfd>& fds) {
    base_ = fds.size();
    fds.push_back({listener_.get(), POLLIN, 0});
    for (const Connection& c : conns_) {
      fds.push_back({c.fd.get(), static_cast<short>(c.replying ? POLLOUT : POLLIN), 0});
    }
  }

  // Acts on what poll() reported.
  void Serve(const std::vector<pollfd>& fds) {
    for (size_t i = 0; i < conns_.size(); ++i) {
      const short revents = fds[base_ + 1 + i].revents;
      if (revents != 0) Step(conns_[i], revents);
    }
    std::erase_if(conns_, [](const Connection& c) { return !c.fd.valid(); });
    if (fds[base_].revents & POLLIN) Accept();
  }

 private:
  void Accept() {
    while (true) {
      int fd = accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      Connection c;
      c.fd = Fd(fd);
      if (conns_.size() >= kMaxConnections) {
        StartReply(c, Refused("too many hook requests at once"));
        Step(c, POLLOUT);
        continue;  // a client that does not read its reply is dropped
      }
      conns_.push_back(std::move(c));
    }
  }

  void StartReply(Connection& c, const Reply& r) {
    c.replying = true;
    c.out = absl::StrCat(r.ok ? "0" : "1", r.text);
    c.written = 0;
  }

  void Step(Connection& c, short revents) {
    if (!c.replying) {
      char buf[16384];
      while (true) {
        ssize_t n = read(c.fd.get(), buf, sizeof(buf));
        if (n > 0) {
          c.in.append(buf, n);
          if (c.in.size() > kMaxRequest) {
            StartReply(c, Refused(absl::StrCat("request larger than ", kMaxRequest, " bytes")));
            break;
          }
          continue;
        }
        if (n == 0) {
          auto args = DecodeHookRequest(c.in);
          StartReply(
              c, args.ok() ? Handle(env_, *args) : Refused(std::string(args.status().message())));
          break;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        c.fd.Reset();
        return;
      }
    } else if (!(revents & (POLLOUT | POLLERR | POLLHUP))) {
      return;
    }
    while (c.written < c.out.size()) {
      ssize_t n =
          send(c.fd.get(), c.out.data() + c.written, c.out.size() - c.written, MSG_NOSIGNAL);
      if (n > 0) {
        c.written += n;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      break;  // the client went away
    }
    c.fd.Reset();
  }

  Fd listener_;
  HookEnv env_;
  std::vector<Connection> conns_;
  size_t base_ = 0;
};

// A pipe read end; EOF or an error closes it.
struct OutputPipe {
  Fd fd;
  TailBuffer buffer;

  void Drain() {
    char buf[65536];
    while (fd.valid()) {
      ssize_t n = read(fd.get(), buf, sizeof(buf));
      if (n > 0) {
        buffer.Append(absl::string_view(buf, n));
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return;
      } else {
        fd.Reset();
      }
    }
  }
};

std::string ContextJson(const engine::RunContext& ctx, absl::string_view service,
                        const std::map<std::string, std::string>& config) {
  std::string out = "{\"unit\":";
  JsonString(out, ctx.unit());
  out += ",\"service\":";
  JsonString(out, service);
  out += ",\"handler\":";
  JsonString(out, ctx.handler());
  const v1::Event& e = ctx.event();
  out += ",\"event\":{\"name\":";
  JsonString(out, e.name());
  out += ",\"params\":";
  JsonMap(out, {e.params().begin(), e.params().end()});
  if (e.has_relation()) {
    out += ",\"relation_id\":";
    JsonString(out, e.relation().relation_id());
    out += ",\"endpoint\":";
    JsonString(out, e.relation().endpoint());
    out += ",\"remote_unit\":";
    JsonString(out, e.relation().remote_unit());
  }
  out += "},\"config\":";
  JsonMap(out, config);
  out += ",\"facts\":";
  JsonMap(out, ctx.Facts());
  out += ",\"relations\":[";
  bool first = true;
  for (const v1::RelationRecord* r : ctx.Relations()) {
    if (!first) out += ',';
    first = false;
    auto bag = [&](absl::string_view name) {
      auto data = ctx.Bag(r->relation_id(), name);
      JsonMap(out, data.ok() ? *data : std::map<std::string, std::string>{});
    };
    out += "{\"id\":";
    JsonString(out, r->relation_id());
    out += ",\"endpoint\":";
    JsonString(out, r->endpoint());
    out += ",\"interface\":";
    JsonString(out, r->interface());
    out += ",\"remote_service\":";
    JsonString(out, r->remote_service());
    out += ",\"remote_units\":";
    JsonList(out, {r->remote_units().begin(), r->remote_units().end()});
    out += ",\"local_unit_data\":";
    bag("lu");
    out += ",\"local_service_data\":";
    bag("ls");
    out += ",\"remote_service_data\":";
    bag("rs");
    out += ",\"remote_unit_data\":{";
    for (int i = 0; i < r->remote_units_size(); ++i) {
      if (i > 0) out += ',';
      JsonString(out, r->remote_units(i));
      out += ':';
      bag(absl::StrCat("ru:", r->remote_units(i)));
    }
    out += "}}";
  }
  out += "]}\n";
  return out;
}

absl::Status WriteFile(const std::string& path, absl::string_view data) {
  Fd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return Errno(absl::StrCat("cannot create ", path));
  while (!data.empty()) {
    ssize_t n = write(fd.get(), data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Errno(absl::StrCat("cannot write ", path));
    data.remove_prefix(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<Fd> Listen(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
  }
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Errno("socket");
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Errno(absl::StrCat("bind ", path));
  }
  if (listen(fd.get(), 64) != 0) return Errno("listen");
  return fd;
}
// Hands the captured output to the backend's log.
void Report(const engine::RunContext& ctx, const BackendLog& log, const OutputPipe& out,
            const OutputPipe& err) {
  if (!log) return;
  const std::pair<const char*, const OutputPipe*> pipes[] = {{"stdout", &out}, {"stderr", &err}};
  for (const auto& [name, p] : pipes) {
    if (p->buffer.total() == 0) continue;
    std::string text(p->buffer.Kept());
    if (p->buffer.dropped() > 0) {
      text = absl::StrCat("[truncated: ", p->buffer.dropped(), " of ", p->buffer.total(),
                          " bytes dropped]\n", text);
    }
    log(ctx.unit(), ctx.handler(), name, text);
  }
}

// Starts `program` in `dir`, in a process group of its own, its output into `out` and `err`.
absl::Status Spawn(const std::string& dir, const std::string& origin, const std::string& program,
                   const std::vector<std::string>& argv,
                   const std::map<std::string, std::string>& env, OutputPipe& out, OutputPipe& err,
                   Child& child) {
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return Errno("pipe");
  Fd out_w(out_pipe[1]);
  out.fd = Fd(out_pipe[0]);
  if (pipe2(err_pipe, O_CLOEXEC) != 0) return Errno("pipe");
  Fd err_w(err_pipe[1]);
  err.fd = Fd(err_pipe[0]);
  SetNonBlocking(out.fd.get());
  SetNonBlocking(err.fd.get());

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_w.get(), 1);
  posix_spawn_file_actions_adddup2(&fa, err_w.get(), 2);
  posix_spawn_file_actions_addchdir_np(&fa, dir.c_str());
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_USEVFORK);

  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env) env_strings.push_back(absl::StrCat(k, "=", v));
  std::vector<char*> envp, args;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (std::string& a : argv_copy) args.push_back(a.data());
  args.push_back(nullptr);

  pid_t pid = -1;
  const int rc = posix_spawn(&pid, program.c_str(), &fa, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(origin, ": cannot run '", program, "': ", strerror(rc)));
  }
  child.pid_ = pid;
  child.pidfd_ = Fd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  return absl::OkStatus();
}

}  // namespace

ProcessActionSetup MakeProcessActionSetup(const ServiceDefinition& def, const HandlerDef& handler,
                                          const ProcessOptions& options, BackendLog log) {
  ProcessActionSetup setup;
  setup.dir = fs::absolute(def.dir.empty() ? "." : def.dir).lexically_normal().string();
  setup.origin = absl::StrCat(def.file, ":", handler.action.line);
  setup.timeout = handler.timeout;
  setup.config_defaults = ConfigDefaults(def);
  setup.endpoints = EndpointContracts(def);
  setup.options = options;
  setup.log = std::move(log);
  return setup;
}

ProcessAction::ProcessAction(ProcessActionSetup setup) : setup_(std::move(setup)) {}

absl::Status ProcessAction::Run(engine::RunContext& ctx) {
  absl::Status s = RunProgram(ctx);
  if (s.ok() || absl::StartsWith(s.message(), "handler '")) return s;
  return absl::Status(s.code(), absl::StrCat("handler '", ctx.handler(), "': ", s.message()));
}

absl::StatusOr<std::string> ProcessAction::StateDir(absl::string_view unit) const {
  std::string name(unit);
  std::replace(name.begin(), name.end(), '/', '-');
  if (name.empty() || name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat("unit '", unit, "' has no state dir name"));
  }
  const std::string& root = setup_.options.state_root;
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot make ", root, ": ", ec.message()));
  std::string dir = absl::StrCat(root, "/", name);
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Errno(absl::StrCat("cannot make the state dir ", dir));
  }
  struct stat st;
  if (lstat(dir.c_str(), &st) != 0) return Errno(absl::StrCat("cannot stat ", dir));
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("the state dir ", dir, " exists and is not a directory"));
  }
  return dir;
}

absl::Status ProcessAction::RunProgram(engine::RunContext& ctx) {
  const ProcessOptions& options = setup_.options;
  const absl::Time deadline = absl::Now() + setup_.timeout;
  std::string cookie;
  if (options.unit_cookie) {
    ASSIGN_OR_RETURN(cookie, options.unit_cookie(ctx.unit()));
  }
  std::string root = options.temp_root;
  if (root.empty()) {
    const char* t = getenv("TMPDIR");
    root = t != nullptr && *t != '\0' ? t : "/tmp";
  }
  ASSIGN_OR_RETURN(RunDir dir, RunDir::Make(root));
  ProcessRun run;
  run.temp_dir = dir.path();
  run.context_file = dir.path() + "/context.json";
  run.service = ctx.unit().substr(0, ctx.unit().find('/'));
  run.config = setup_.config_defaults;
  for (const auto& [k, v] : ctx.config()) run.config[k] = v;
  if (!options.state_root.empty()) {
    ASSIGN_OR_RETURN(run.state_dir, StateDir(ctx.unit()));
  }
  const std::string socket_path = dir.path() + "/hook.sock";
  RETURN_IF_ERROR(WriteFile(run.context_file, ContextJson(ctx, run.service, run.config)));
  ASSIGN_OR_RETURN(Invocation inv, Prepare(ctx, run));
  ASSIGN_OR_RETURN(Fd listener, Listen(socket_path));

  // Environment: PATH, the kind's variables, then ours (which they cannot override).
  std::map<std::string, std::string> env;
  std::vector<std::string> path = options.extra_path;
  path.push_back(kStandardPath);
  env["PATH"] = absl::StrJoin(path, ":");
  for (auto& [k, v] : inv.env) env[k] = std::move(v);
  env["HOME"] = dir.path();
  env["PARLEY_HOOK_SOCKET"] = socket_path;
  env["PARLEY_CONTEXT"] = run.context_file;
  if (!run.state_dir.empty()) env["PARLEY_STATE_DIR"] = run.state_dir;
  env["PARLEY_UNIT"] = ctx.unit();
  env["PARLEY_UNIT_HOST"] = options.unit_host;
  env["PARLEY_SERVICE"] = run.service;
  env["PARLEY_EVENT"] = ctx.event().name();
  env["PARLEY_HANDLER"] = ctx.handler();
  if (!cookie.empty()) env[base::kUnitCookieVariable] = cookie;

  OutputPipe out{Fd(), TailBuffer(options.output_limit)};
  OutputPipe err{Fd(), TailBuffer(options.output_limit)};
  Child child;
  // The environment may be wiped by what the program starts; the label, inherited from its
  // first instruction, stays.
  auto spawn = [&] {
    return Spawn(setup_.dir, setup_.origin, inv.program, inv.argv, env, out, err, child);
  };
  if (absl::Status labelled = base::SpawnLabelled(cookie, spawn); !labelled.ok()) {
    if (child.pid_ > 0 || !absl::IsFailedPrecondition(labelled) || cookie.empty()) return labelled;
    // A hard limit below the label: run it with its environment as the only tag.
    if (setup_.log) {
      setup_.log(ctx.unit(), ctx.handler(), "stderr",
                 absl::StrCat("parley: cannot label the program's processes for removal (",
                              labelled.message(), "); only its environment tags them"));
    }
    RETURN_IF_ERROR(base::SpawnLabelled("", spawn));
  }

  HookServer server(std::move(listener),
                    HookEnv{&ctx, &setup_.config_defaults, &setup_.endpoints, &setup_.log});
  bool timed_out = false;
  std::optional<absl::Time> drain_until;
  while (true) {
    if (!child.exited_ && child.Poll()) drain_until = absl::Now() + options.drain_grace;
    if (child.exited_ && (!out.fd.valid() && !err.fd.valid())) break;
    const absl::Time now = absl::Now();
    if (drain_until && now >= *drain_until) break;
    if (!child.exited_ && now >= deadline) {
      timed_out = true;
      child.KillGroup();
      child.Wait();
      out.Drain();
      err.Drain();
      break;
    }
    std::vector<pollfd> fds;
    fds.push_back({out.fd.get(), POLLIN, 0});  // a negative fd is ignored by poll
    fds.push_back({err.fd.get(), POLLIN, 0});
    fds.push_back({child.pidfd_.get(), POLLIN, 0});
    if (!child.exited_) server.AddPollFds(fds);
    absl::Time until = child.exited_ ? *drain_until : deadline;
    // Without a pidfd the child's exit is polled for.
    if (!child.pidfd_.valid() && !child.exited_)
      until = std::min(until, now + absl::Milliseconds(10));
    const int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(until - now) + 1);
    int n = poll(fds.data(), fds.size(), static_cast<int>(std::min<int64_t>(ms, 1000)));
    if (n < 0 && errno != EINTR) return Errno("poll");
    if (n <= 0) continue;
    if (fds[0].revents) out.Drain();
    if (fds[1].revents) err.Drain();
    if (!child.exited_) server.Serve(fds);
  }
  child.KillGroup();  // nothing may outlive the run holding the pipes (drain grace elapsed)
  Report(ctx, setup_.log, out, err);

  const std::string& name = inv.name.empty() ? inv.argv[0] : inv.name;
  if (timed_out) {
    return absl::DeadlineExceededError(
        absl::StrCat("handler '", ctx.handler(), "': ", name, " timed out after ",
                     absl::FormatDuration(setup_.timeout), " and was killed; ",
                     FailureDetail(out.buffer, err.buffer, /*exited=*/false)));
  }
  if (WIFSIGNALED(child.status_)) {
    return absl::AbortedError(absl::StrCat("handler '", ctx.handler(), "': ", name,
                                           " was killed by signal ", WTERMSIG(child.status_), "; ",
                                           FailureDetail(out.buffer, err.buffer, false)));
  }
  const int code = WIFEXITED(child.status_) ? WEXITSTATUS(child.status_) : -1;
  if (code != 0) {
    return absl::AbortedError(absl::StrCat("handler '", ctx.handler(), "': ", name,
                                           " exited with status ", code, "; ",
                                           FailureDetail(out.buffer, err.buffer, true)));
  }
  return absl::OkStatus();
}

std::string ProcessAction::FailureDetail(const TailBuffer& out, const TailBuffer& err,
                                         bool exited) const {
  std::string detail = DescribeTail("stderr", err, setup_.options.error_tail);
  if (exited && out.dropped() > 0) {
    absl::StrAppend(&detail, "; stdout truncated (", out.total(), " bytes, the last ",
                    out.Kept().size(), " kept)");
  }
  return detail;
}

absl::StatusOr<std::string> ProcessAction::ResolveProgram(const std::string& name) const {
  if (name.find('/') != std::string::npos) {
    fs::path p(name);
    return (p.is_absolute() ? p : fs::path(setup_.dir) / p).lexically_normal().string();
  }
  std::vector<std::string> dirs = setup_.options.extra_path;
  dirs.push_back("/usr/local/bin");
  dirs.push_back("/usr/bin");
  dirs.push_back("/bin");
  for (const std::string& d : dirs) {
    std::string candidate = absl::StrCat(d, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return absl::NotFoundError(
      absl::StrCat(setup_.origin, ": program '", name, "' is not in ", absl::StrJoin(dirs, ":")));
}

}  // namespace parley::services
