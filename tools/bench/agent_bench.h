#pragma once

// Agent scenarios of parley-bench: hop latency and throughput between two agents on separate
// hosts over real gRPC (next to raw gRPC measured in the same run), convergence of many agents
// hosted by one process, and idle memory of parleyd.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/bench/bench.h"

namespace parley::bench {

struct HopBenchOptions {
  int hops = 300;
  // Also measure with the KBs in /dev/shm (fsync costs nothing there), to separate the
  // protocol's cost from the disk's.
  bool tmpfs_too = true;
  std::string dir;
};

struct ThroughputBenchOptions {
  int events = 20000;
  std::string dir;
};

struct ConvergeBenchOptions {
  std::string topology = "chain";  // chain, star or tree
  int agents = 1000;
  std::string dir;
};

struct MemoryBenchOptions {
  std::string parleyd;  // path of the parleyd binary
  int agents = 100;
  std::string dir;
};

absl::StatusOr<std::vector<Report>> RunHopBench(const HopBenchOptions& options);
absl::StatusOr<std::vector<Report>> RunThroughputBench(const ThroughputBenchOptions& options);
absl::StatusOr<std::vector<Report>> RunConvergeBench(const ConvergeBenchOptions& options);
absl::StatusOr<std::vector<Report>> RunMemoryBench(const MemoryBenchOptions& options);

}  // namespace parley::bench
