#pragma once

// The exec scenario of parley-bench: the cost of an `exec` handler whose /bin/sh script calls
// three hook tools, per executed handler, through a real engine and KB, next to references
// measured in the same run (the same script with no hook calls, through the engine and spawned
// bare, and a bare spawn of /bin/true).

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/bench/bench.h"

namespace parley::bench {

struct ExecBenchOptions {
  // Measured handlers per configuration, split over `rounds` in which the configurations take
  // turns (a noisy moment of the shared machine then lands on all of them).
  int runs = 300;
  int rounds = 6;
  // The parley-hook binary.
  std::string hook;
  // Parent of the temporary directories; empty: the system's temporary directory.
  std::string dir;
};

absl::StatusOr<std::vector<Report>> RunExecBench(const ExecBenchOptions& options);

}  // namespace parley::bench
