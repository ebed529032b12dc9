#pragma once

// The up scenario of parley-bench: how long `parley up MODEL` takes to a settled model, as a user
// sees it: `parley up --no-wait` (parleyd started, every unit added, related and configured) and
// then `parley wait` returning (every unit idle, nothing in flight), packages already installed.
// Each run starts from an empty model directory and ends with `parley down --purge`.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/bench/bench.h"

namespace parley::bench {

struct UpBenchOptions {
  // The model to bring up (default: examples/webstack/model.yaml of the source tree).
  std::string model;
  int runs = 3;
  // The parley binary.
  std::string parley;
  // Parent of the model directories; empty: the system's temporary directory.
  std::string dir;
};

absl::StatusOr<std::vector<Report>> RunUpBench(const UpBenchOptions& options);

}  // namespace parley::bench
