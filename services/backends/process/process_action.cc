#include "services/backends/process/process_action.h"

#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/process_reaper.h"
#include "base/status_macros.h"
#include "engine/run_context.h"
#include "services/backends/process/child.h"
#include "services/backends/process/context_file.h"
#include "services/backends/process/fd.h"
#include "services/backends/process/hook_server.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;

using process::Child;
using process::Errno;
using process::Fd;
using process::HookEnv;
using process::HookServer;
using process::OutputPipe;

constexpr char kStandardPath[] = "/usr/local/bin:/usr/bin:/bin";

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

}  // namespace

absl::StatusOr<ProgramUser> ResolveProgramUser(const ServiceDefinition& def,
                                               const ProcessOptions& options) {
  ASSIGN_OR_RETURN(ProgramUser self, CurrentUser());
  const bool root = self.uid == 0;
  if (def.user.empty()) {
    if (!root || options.default_user.empty() || options.default_user == self.name) return self;
    absl::StatusOr<ProgramUser> user = LookupUser(options.default_user);
    if (!user.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          def.file, ": no user: is given, and the default user '", options.default_user,
          "' for programs does not exist on this machine (tools/setup adds it); name a user with "
          "user: (user: root to run them as root)"));
    }
    return user;
  }
  const std::string where = absl::StrCat(def.file, ":", def.user_line, ": user: ");
  if (def.user == self.name) return self;
  absl::StatusOr<ProgramUser> user = LookupUser(def.user);
  if (!user.ok())
    return absl::FailedPreconditionError(absl::StrCat(where, user.status().message()));
  if (user->uid == self.uid) return self;
  if (!root) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, "the agent runs as '", self.name, "' (uid ", self.uid,
                     "), not root, and cannot run programs as '", def.user,
                     "': run parleyd as root, or drop user: to run them as '", self.name, "'"));
  }
  return user;
}

absl::StatusOr<ProcessActionSetup> MakeProcessActionSetup(const ServiceDefinition& def,
                                                          const HandlerDef& handler,
                                                          const ProcessOptions& options,
                                                          BackendLog log) {
  ProcessActionSetup setup;
  setup.dir = fs::absolute(def.dir.empty() ? "." : def.dir).lexically_normal().string();
  ASSIGN_OR_RETURN(setup.user, ResolveProgramUser(def, options));
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
  const ProgramUser& user = setup_.user;
  if (mkdir(root.c_str(), 0755) == 0) {
    chmod(root.c_str(), 0755);  // whatever the umask
  } else if (errno != EEXIST) {
    std::error_code ec;
    fs::create_directories(root, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot make ", root, ": ", ec.message()));
    chmod(root.c_str(), 0755);
  }
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
  // Exactly the unit's user's, 0700. A directory another user owned (the definition's user:
  // changed) is given to the new one whole, its data included.
  if (st.st_uid != user.uid || st.st_gid != user.gid) {
    RETURN_IF_ERROR(Chown(user, dir, /*recursive=*/st.st_uid != user.uid));
  }
  if ((st.st_mode & 07777) != 0700 && chmod(dir.c_str(), 0700) != 0) {
    return Errno(absl::StrCat("cannot make the state dir ", dir, " mode 0700"));
  }
  if (user.switches)
    RETURN_IF_ERROR(CheckReachable(user, dir, absl::StrCat("the state dir ", dir)));
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
  RETURN_IF_ERROR(process::WriteContextFile(run.context_file, ctx, run.service, run.config));
  ASSIGN_OR_RETURN(Invocation inv, Prepare(ctx, run));
  ASSIGN_OR_RETURN(Fd listener, process::Listen(socket_path));
  const ProgramUser& user = setup_.user;
  if (user.switches) {
    // The run dir, the context file, the socket and what the kind wrote there are the program's.
    RETURN_IF_ERROR(Chown(user, dir.path(), /*recursive=*/true));
    RETURN_IF_ERROR(
        CheckReachable(user, dir.path(), absl::StrCat("the run's temp dir ", dir.path())));
    RETURN_IF_ERROR(
        CheckReachable(user, setup_.dir, absl::StrCat("the definition directory ", setup_.dir)));
  }

  // Environment: PATH, the kind's variables, then ours (which they cannot override).
  std::map<std::string, std::string> env;
  std::vector<std::string> path = options.extra_path;
  path.push_back(kStandardPath);
  env["PATH"] = absl::StrJoin(path, ":");
  for (auto& [k, v] : inv.env) env[k] = std::move(v);
  env["HOME"] = dir.path();
  env["USER"] = user.name;
  env["LOGNAME"] = user.name;
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
    return process::Spawn(setup_.dir, setup_.origin, inv.program, inv.argv, env, user, out, err,
                          child);
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
