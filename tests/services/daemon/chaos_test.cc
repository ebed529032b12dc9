// The bounded fault campaign of `make test` (issue 9): 30 SIGKILLs, 5 down/up cycles, 3 link
// faults and a SIGSTOP across three parleyds in a chain, values flowing all along. Nothing fired
// may be lost, applied twice or out of order, and no unit may be left behind.
// PARLEY_CHAOS_SEED=<n> replays a campaign; the seed is printed.

#include "tests/services/daemon/chaos.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"

namespace parley::services::testing {
namespace {

TEST(ChaosTest, BoundedCampaignLosesNothingAndSettles) {
  ChaosOptions o;
  o.kills = 30;
  o.down_up = 5;
  o.link_faults = 3;
  o.stops = 1;
  if (const char* env = getenv("PARLEY_CHAOS_SEED")) (void)absl::SimpleAtoi(env, &o.seed);
  absl::StatusOr<ChaosResult> r = RunChaos(o);
  ASSERT_TRUE(r.ok()) << r.status();
  std::cout << "PARLEY_CHAOS_SEED=" << r->seed << ": " << r->faults << " faults, "
            << r->values_fired << " values, settle p50 " << r->settle_ms_p50 << " ms, max "
            << r->settle_ms_max << " ms, " << r->elapsed_s << " s\n";
  RecordProperty("seed", std::to_string(r->seed));
  EXPECT_EQ(r->faults, 39);
  EXPECT_GT(r->values_fired, 300);
  EXPECT_EQ(r->lost, 0);
  EXPECT_EQ(r->duplicated, 0);
  EXPECT_EQ(r->out_of_order, 0);
  EXPECT_EQ(r->stale_units, 0);
  EXPECT_EQ(r->unsettled_faults, 0);
  EXPECT_TRUE(r->notes.empty()) << absl::StrJoin(r->notes, "\n") << "\nlogs in " << r->work_dir;
}

}  // namespace
}  // namespace parley::services::testing
