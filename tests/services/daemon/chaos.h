#pragma once

// A fault campaign against real parleyd processes: three units in a chain (a/0 relay -> b/0
// relay -> c/0 recorder), each in a parleyd of its own, every link through a TCP proxy, values
// fired at a/0 all along. Between values it injects, at seeded random moments: SIGKILL of a
// parleyd (restarted on the same data, on a new port behind the same proxy), SIGTERM of all three
// and start again (down/up), a link dropped or blackholed for a while, a parleyd SIGSTOPped for
// longer than the keepalive timeout. After each fault it waits (bounded) until everything fired
// before the fault reached c/0; at the end, until every unit is settled. Accounting, not sleeps,
// decides: c/0's `seen` fact lists every value it applied, in order.
//
// Used by chaos_test (a bounded campaign in `make test`) and `parley-bench chaos`.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace parley::services::testing {

struct ChaosOptions {
  int kills = 30;       // SIGKILLs of one parleyd
  int down_up = 5;      // SIGTERM of every parleyd, then all started again
  int link_faults = 3;  // links dropped or blackholed (alternately) through their proxies
  int stops = 1;        // a parleyd SIGSTOPped past the keepalive timeout, then SIGCONT
  uint64_t seed = 0;    // 0: random
  // A fault whose values have not reached c/0 within this counts as not settled (the campaign
  // goes on; the figure is reported).
  absl::Duration settle_bound = absl::Seconds(30);
  std::string dir;    // parent of the data directories; empty: the system's temp dir
  bool keep = false;  // keep the directories (and logs) afterwards
};

struct ChaosResult {
  uint64_t seed = 0;
  int faults = 0;
  int values_fired = 0;
  int lost = 0;              // fired (acknowledged by FireEvent) but never applied by c/0
  int duplicated = 0;        // applied more than once
  int out_of_order = 0;      // applied after a greater value
  int stale_units = 0;       // not idle, inbox or outbox not empty, or not at the last value
  int unsettled_faults = 0;  // faults after which values did not arrive within settle_bound
  double settle_ms_p50 = 0;
  double settle_ms_max = 0;
  double elapsed_s = 0;
  std::vector<std::string> notes;  // what went wrong, for a human
  std::string work_dir;
};

// Runs the campaign. An error means the campaign itself could not run (a parleyd that does not
// start, a proxy that cannot listen); what the faults did is in the result.
absl::StatusOr<ChaosResult> RunChaos(const ChaosOptions& options);

}  // namespace parley::services::testing
