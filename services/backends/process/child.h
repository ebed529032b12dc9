#pragma once

// Internal to services/backends/process/: the program of one run as a child process — spawned
// without a shell in a process group of its own, its stdout and stderr captured through
// non-blocking pipes, killed (the whole group) and reaped at the latest when it goes out of scope.
// Used on one thread (the run's).

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "services/backends/process/fd.h"
#include "services/backends/process/program_user.h"
#include "services/backends/process/tail_buffer.h"

namespace parley::services::process {

// The child; killed (its whole process group) and reaped if still running on destruction.
class Child {
 public:
  Child() = default;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();

  // Reaps the child if it exited; true once it has.
  bool Poll();
  // SIGKILL to the child's process group, if it is still running.
  void KillGroup();
  // Blocks until the child exits and reaps it.
  void Wait();

  pid_t pid_ = -1;
  // Readable when the child exits; invalid where the kernel has no pidfd_open (then Poll).
  Fd pidfd_;
  bool exited_ = false;
  // The wait status, once exited_.
  int status_ = 0;
};

// A pipe read end and what was read from it; EOF or an error closes it.
struct OutputPipe {
  Fd fd;
  TailBuffer buffer;

  // Reads what is available without blocking.
  void Drain();
};

// Starts `program` (argv and envp as given, stdin /dev/null) in `dir`, in a process group of its
// own, its output into `out` and `err`, as `user` (its uid, primary group and supplementary
// groups) when `user.switches`. A program that cannot be started is FAILED_PRECONDITION naming
// `origin`, the program and, for a user switch, the user and the step that failed.
absl::Status Spawn(const std::string& dir, const std::string& origin, const std::string& program,
                   const std::vector<std::string>& argv,
                   const std::map<std::string, std::string>& env, const ProgramUser& user,
                   OutputPipe& out, OutputPipe& err, Child& child);

}  // namespace parley::services::process
