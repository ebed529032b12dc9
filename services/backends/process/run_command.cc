#include "services/backends/process/run_command.h"

#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "services/backends/process/child.h"
#include "services/backends/process/fd.h"

namespace parley::services {

using process::Child;
using process::Fd;
using process::OutputPipe;

namespace {

std::string Quote(const OutputPipe& out, const OutputPipe& err, size_t n) {
  if (!err.buffer.Kept().empty()) return DescribeTail("stderr", err.buffer, n);
  if (!out.buffer.Kept().empty()) return DescribeTail("stdout", out.buffer, n);
  return "no output";
}

}  // namespace

absl::Status RunCommand(const Command& c) {
  const absl::Time deadline = absl::Now() + c.timeout;
  OutputPipe out{Fd(), TailBuffer(c.output_limit)};
  OutputPipe err{Fd(), TailBuffer(c.output_limit)};
  Child child;
  RETURN_IF_ERROR(
      process::Spawn(c.dir, c.origin, c.program, c.argv, c.env, c.user, out, err, child));
  bool timed_out = false;
  // Output still open after the exit (a background process holding the pipes) is not waited for.
  while (!child.exited_) {
    if (child.Poll()) break;
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      timed_out = true;
      break;
    }
    std::vector<pollfd> fds;
    fds.push_back({out.fd.get(), POLLIN, 0});
    fds.push_back({err.fd.get(), POLLIN, 0});
    fds.push_back({child.pidfd_.get(), POLLIN, 0});
    absl::Time until = deadline;
    if (!child.pidfd_.valid()) until = std::min(until, now + absl::Milliseconds(10));
    const int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(until - now) + 1);
    const int n = poll(fds.data(), fds.size(), static_cast<int>(std::min<int64_t>(ms, 1000)));
    if (n < 0 && errno != EINTR) return process::Errno("poll");
    if (n <= 0) continue;
    if (fds[0].revents) out.Drain();
    if (fds[1].revents) err.Drain();
  }
  child.KillGroup();
  if (!child.exited_) child.Wait();
  out.Drain();
  err.Drain();
  const std::string& name = c.argv.empty() ? c.program : c.argv[0];
  if (timed_out) {
    return absl::DeadlineExceededError(
        absl::StrCat(name, " timed out after ", absl::FormatDuration(c.timeout),
                     " and was killed; ", Quote(out, err, c.error_tail)));
  }
  if (WIFSIGNALED(child.status_)) {
    return absl::AbortedError(absl::StrCat(name, " was killed by signal ", WTERMSIG(child.status_),
                                           "; ", Quote(out, err, c.error_tail)));
  }
  const int code = WIFEXITED(child.status_) ? WEXITSTATUS(child.status_) : -1;
  if (code != 0) {
    return absl::AbortedError(
        absl::StrCat(name, " exited with status ", code, "; ", Quote(out, err, c.error_tail)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FindProgram(const std::string& name, const std::string& dir,
                                        const std::vector<std::string>& path_dirs,
                                        const std::string& origin) {
  namespace fs = std::filesystem;
  if (name.find('/') != std::string::npos) {
    fs::path p(name);
    return (p.is_absolute() ? p : fs::path(dir) / p).lexically_normal().string();
  }
  for (const std::string& d : path_dirs) {
    std::string candidate = absl::StrCat(d, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return absl::NotFoundError(
      absl::StrCat(origin, ": program '", name, "' is not in ", absl::StrJoin(path_dirs, ":")));
}

}  // namespace parley::services
