#pragma once

// A child process for tests that run a real server (an HTTP server in python3, a container
// engine): started with its output appended to a log file, stopped (SIGTERM, then SIGKILL) when
// the object goes. Children get PR_SET_PDEATHSIG(SIGKILL), so a crashed test leaves none behind.

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace parley::testing {

// Calls `ready` until it returns true or `timeout` elapses; returns its last answer.
inline bool WaitFor(const std::function<bool()>& ready, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!ready()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

class ChildProcess {
 public:
  // Starts `args` (args[0] is a path or a program in PATH) with stdout and stderr appended to
  // `log`, in a process group of its own. pid() is -1 if fork failed.
  ChildProcess(const std::vector<std::string>& args, const std::string& log) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ != 0) return;
    // Only async-signal-safe calls from here to exec: the test process may have threads.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    setpgid(0, 0);
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execvp(argv[0], argv.data());
    _exit(127);
  }
  ~ChildProcess() { Stop(); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }

  // Whether it has not exited yet.
  bool Running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return false;
    }
    return true;
  }

  // Waits up to `timeout` for it to exit; returns its exit code (128 + the signal if a signal
  // ended it), or -1 if it is still running.
  int Wait(absl::Duration timeout) {
    WaitFor([this] { return !Running(); }, timeout);
    return pid_ > 0 ? -1 : exit_code_;
  }

  // SIGTERM to its group, SIGKILL after `grace`; returns once it is reaped.
  void Stop(absl::Duration grace = absl::Seconds(10)) {
    if (pid_ <= 0) return;
    if (kill(-pid_, SIGTERM) != 0) kill(pid_, SIGTERM);  // not yet its own group leader
    if (!WaitFor([this] { return !Running(); }, grace)) {
      if (kill(-pid_, SIGKILL) != 0) kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int exit_code_ = -1;
};

}  // namespace parley::testing
