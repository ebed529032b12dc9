#pragma once

// One short program run to completion outside any handler run — a health probe's command
// (services/health/probes/): spawned without a shell in its own process group, as the
// definition's user, stdin /dev/null, its output bounded, killed (the whole group) when its
// timeout elapses. No temp dir, context file or hook socket: the program cannot act on the unit.

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "services/backends/process/program_user.h"

namespace parley::services {

struct Command {
  // The working directory (the definition directory).
  std::string dir;
  // "<service.yaml>:<line>", for errors that it cannot start.
  std::string origin;
  // The path run, and the arguments (argv[0] as written).
  std::string program;
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
  ProgramUser user;
  absl::Duration timeout = absl::Seconds(1);
  // Bytes kept of each of stdout and stderr, and of stderr (else stdout) quoted in an error.
  size_t output_limit = 4096;
  size_t error_tail = 200;
};

// Runs `command` until it exits or its timeout elapses. OK when it exits 0; otherwise
// DEADLINE_EXCEEDED (timed out and killed), ABORTED (a non-zero exit or a signal; the message
// quotes the tail of its stderr, else of its stdout) or FAILED_PRECONDITION (it cannot start).
absl::Status RunCommand(const Command& command);

// `name` as a program path: relative to `dir` when it has a '/', else found in `path_dirs`
// (executable). NOT_FOUND naming `origin` and the directories.
absl::StatusOr<std::string> FindProgram(const std::string& name, const std::string& dir,
                                        const std::vector<std::string>& path_dirs,
                                        const std::string& origin);

}  // namespace parley::services
