#pragma once

// When the event of a failed run is tried again, and when a host dials a peer again
// (services/host/peer_links.h): jittered exponential backoff. Not thread-safe.

#include <cstdint>
#include <random>

#include "absl/time/time.h"

namespace parley::base {

struct BackoffOptions {
  absl::Duration initial = absl::Seconds(1);
  absl::Duration max = absl::Minutes(5);
  // Each delay is shortened by a random fraction of up to this.
  double jitter = 0.2;
  uint64_t seed = 0x9e3779b97f4a7c15ULL;
};

class Backoff {
 public:
  explicit Backoff(const BackoffOptions& options) : options_(options), random_(options.seed) {}

  // The delay before the next try once `attempt` tries failed (1: the first one): `initial`,
  // doubling with each attempt up to `max`, less up to `jitter` of it. Draws from the random
  // source, so equal seeds give equal sequences of delays.
  absl::Duration Delay(uint32_t attempt);

 private:
  const BackoffOptions options_;
  std::mt19937_64 random_;
};

}  // namespace parley::base
