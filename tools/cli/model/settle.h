#pragma once

// When `parley wait` (and `up`, `start`) may stop waiting, judged from what the units report at
// each poll, with no I/O: a unit test feeds it polls and times.
//
// The model has settled when every unit is idle with the same progress in two polls running
// (docs/protocol.md, "Knowing a model has settled"). Waiting ends early when it cannot:
//  - a failing unit's head event has failed with the same error kSameFailures attempts running
//    (its traces say so, or this wait saw them): a permanent failure, reported with the unit,
//    handler and error;
//  - a failing unit's next retry is due after the deadline: nothing can move it before then.
// Not thread-safe; one per wait.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "parley/v1/agent.pb.h"

namespace parley::cli {

// Failures of the same handler with the same error, one attempt after another, that make a
// failure permanent: with the engine's backoff (1 s, doubling) about 15 s of retries.
inline constexpr int kSameFailures = 5;

// What one unit said in one poll.
struct UnitPoll {
  std::string unit;
  // CheckIdle.
  bool idle = false;
  uint64_t progress = 0;
  // GetStatus, asked when the unit is not idle; unset when it was not asked or did not answer.
  std::optional<v1::AgentStatus> status;
  // The unit's newest runs (GetTraces, any order), asked when its failing head is new to this
  // wait or failed again: they say how many attempts running failed the same way, including
  // those before the wait began. Empty when not asked.
  std::vector<v1::Trace> traces;
};

struct SettleVerdict {
  enum class Outcome {
    kWaiting,
    kSettled,
    // A unit failed the same way kSameFailures times running: `reason` names unit, handler, error.
    kFailedPermanently,
    // A failing unit's next retry is due after the deadline.
    kCannotSettleInTime,
  };
  Outcome outcome = Outcome::kWaiting;
  // Units settled in this poll, and what the progress line shows: the most seen settled so far
  // for this set of units (it never counts down while they stay the same).
  size_t settled = 0;
  size_t shown = 0;
  size_t units = 0;
  // The units not settled.
  std::vector<std::string> pending;
  // Failures seen for the first time, one line each, to print.
  std::vector<std::string> new_failures;
  // For kFailedPermanently and kCannotSettleInTime.
  std::string reason;
};

class SettleJudge {
 public:
  // `deadline`: when the wait gives up. With `failed_settles` (for `down`), a failing unit that
  // has not moved counts as settled, and waiting never ends early.
  SettleJudge(absl::Time deadline, bool failed_settles, int same_failures = kSameFailures)
      : deadline_(deadline), failed_settles_(failed_settles), same_failures_(same_failures) {}

  SettleVerdict Observe(const std::vector<UnitPoll>& polls);

 private:
  // A unit's failing head as last seen, and how many attempts running failed the same way.
  struct Failing {
    uint64_t event_id = 0;
    uint32_t attempt = 0;
    std::string handler;
    std::string message;
    int same = 0;
  };

  const absl::Time deadline_;
  const bool failed_settles_;
  const int same_failures_;
  std::map<std::string, uint64_t> last_progress_;
  std::map<std::string, std::string> reported_;
  std::map<std::string, Failing> failing_;
  std::set<std::string> unit_set_;
  size_t shown_ = 0;
};

}  // namespace parley::cli
