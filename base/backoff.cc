#include "base/backoff.h"

#include <algorithm>

namespace parley::base {

absl::Duration Backoff::Delay(uint32_t attempt) {
  absl::Duration delay = options_.initial;
  for (uint32_t i = 1; i < attempt && delay < options_.max; ++i) delay *= 2;
  delay = std::min(delay, options_.max);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  delay -= delay * (options_.jitter * unit(random_));
  return delay;
}

}  // namespace parley::base
