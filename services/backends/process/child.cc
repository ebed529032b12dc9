#include "services/backends/process/child.h"

#include <grp.h>
#include <linux/close_range.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace parley::services::process {

Child::~Child() {
  if (pid_ > 0 && !exited_) {
    kill(-pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
}

bool Child::Poll() {
  if (exited_) return true;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exited_ = true;
    status_ = status;
  }
  return exited_;
}

void Child::KillGroup() {
  if (pid_ > 0 && !exited_) kill(-pid_, SIGKILL);
}

void Child::Wait() {
  if (exited_) return;
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0) {
    if (errno != EINTR) return;
  }
  exited_ = true;
  status_ = status;
}

void OutputPipe::Drain() {
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

namespace {

// What the child of SpawnAs reports on its error pipe when a step before exec fails.
struct SpawnFailure {
  int step;
  int error;
};

constexpr const char* kSteps[] = {"open /dev/null",
                                  "redirect output",
                                  "change to the directory",
                                  "set the supplementary groups",
                                  "set the group",
                                  "set the user",
                                  "exec"};

// posix_spawn cannot change credentials: fork, then in the child only async-signal-safe calls
// (raw syscalls for the credentials, which then hold for its only thread), then exec. A step that
// fails is written to `report` (close-on-exec: EOF means exec succeeded).
pid_t ForkAs(const ProgramUser& user, const char* dir, const char* program, char* const* args,
             char* const* envp, int out_w, int err_w, int report) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  auto fail = [report](int step) {
    SpawnFailure f{step, errno};
    (void)!write(report, &f, sizeof(f));
    _exit(127);
  };
  setpgid(0, 0);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);
  const int null_fd = open("/dev/null", O_RDONLY);
  if (null_fd < 0) fail(0);
  if (dup2(null_fd, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0) fail(1);
  // Everything but stdio and the report pipe (close-on-exec) goes.
  const unsigned lo = 3, rep = static_cast<unsigned>(report);
  if (rep > lo) syscall(SYS_close_range, lo, rep - 1, 0);
  syscall(SYS_close_range, rep + 1, ~0U, 0);
  if (syscall(SYS_setgroups, user.groups.size(), user.groups.data()) != 0) fail(3);
  if (syscall(SYS_setresgid, user.gid, user.gid, user.gid) != 0) fail(4);
  if (syscall(SYS_setresuid, user.uid, user.uid, user.uid) != 0) fail(5);
  // As the user: the directory must be open to it.
  if (chdir(dir) != 0) fail(2);
  execve(program, args, envp);
  fail(6);
  return -1;  // not reached
}

}  // namespace

absl::Status Spawn(const std::string& dir, const std::string& origin, const std::string& program,
                   const std::vector<std::string>& argv,
                   const std::map<std::string, std::string>& env, const ProgramUser& user,
                   OutputPipe& out, OutputPipe& err, Child& child) {
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
  if (user.switches) {
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return Errno("pipe");
    Fd report_r(report[0]), report_w(report[1]);
    pid = ForkAs(user, dir.c_str(), program.c_str(), args.data(), envp.data(), out_w.get(),
                 err_w.get(), report_w.get());
    if (pid < 0) return Errno("fork");
    setpgid(pid, pid);  // as the child does: the group exists before anyone signals it
    report_w.Reset();
    SpawnFailure f{};
    ssize_t n;
    while ((n = read(report_r.get(), &f, sizeof(f))) < 0 && errno == EINTR) {
    }
    if (n > 0) {
      int status = 0;
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      const std::string step =
          f.step == 2 ? absl::StrCat("change to ", dir) : std::string(kSteps[f.step]);
      return absl::FailedPreconditionError(absl::StrCat(origin, ": cannot run '", program,
                                                        "' as user '", user.name, "': ", step, ": ",
                                                        strerror(f.error)));
    }
  } else {
    const int rc = posix_spawn(&pid, program.c_str(), &fa, &attr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(origin, ": cannot run '", program, "': ", strerror(rc)));
    }
  }
  child.pid_ = pid;
  child.pidfd_ = Fd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  return absl::OkStatus();
}

}  // namespace parley::services::process
