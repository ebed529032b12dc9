#include "tools/cli/model/settle.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace parley::cli {
namespace {

std::string Handler(const v1::RunFailure& f) {
  return f.handler().empty() ? "outside a handler" : absl::StrCat("handler '", f.handler(), "'");
}

std::string ResolveHint(const std::string& unit) {
  return absl::StrCat("`parley resolve ", unit, "` retries it now, `--skip` drops it");
}

// How many of the newest runs in `traces` are failed attempts of `event_id` with the same error
// as the newest one.
int SameFailuresRunning(std::vector<v1::Trace> traces, uint64_t event_id) {
  std::sort(traces.begin(), traces.end(),
            [](const v1::Trace& a, const v1::Trace& b) { return a.run() > b.run(); });
  int same = 0;
  for (const v1::Trace& t : traces) {
    if (t.trigger().id() != event_id || t.result() != v1::Trace::RESULT_ROLLED_BACK ||
        t.error() != traces.front().error()) {
      break;
    }
    ++same;
  }
  return std::max(same, 1);
}

}  // namespace

SettleVerdict SettleJudge::Observe(const std::vector<UnitPoll>& polls) {
  SettleVerdict v;
  v.units = polls.size();
  std::set<std::string> units;
  std::map<std::string, uint64_t> progress;
  std::vector<std::string> permanent, late;
  for (const UnitPoll& p : polls) {
    units.insert(p.unit);
    progress[p.unit] = p.progress;
    auto last = last_progress_.find(p.unit);
    const bool unmoved = last != last_progress_.end() && last->second == p.progress;
    const bool failing =
        !p.idle && p.status.has_value() && p.status->agent_state() == v1::AGENT_STATE_ERROR;
    // A unit between two attempts (executing the retry) keeps its count; an idle one got through.
    if (p.idle) failing_.erase(p.unit);
    if ((p.idle && unmoved) || (failing && failed_settles_ && unmoved)) {
      ++v.settled;
    } else {
      v.pending.push_back(p.unit);
    }
    if (!failing) continue;
    const v1::RunFailure& f = p.status->failure();
    if (reported_[p.unit] != f.message()) {
      reported_[p.unit] = f.message();
      v.new_failures.push_back(absl::StrCat(p.unit, ": ", f.event_name(), " failed (attempt ",
                                            f.attempt(), "): ", f.message(), "; ",
                                            ResolveHint(p.unit)));
    }
    // Attempts running that failed the same way. The traces count them; without, a new attempt
    // of the same event, handler and error adds one, and anything else starts again from one.
    Failing& seen = failing_[p.unit];
    if (!p.traces.empty()) {
      seen.same = SameFailuresRunning(p.traces, f.event_id());
    } else if (seen.same > 0 && seen.event_id == f.event_id() && seen.attempt == f.attempt()) {
      // The same attempt as in the last poll.
    } else if (seen.same > 0 && seen.event_id == f.event_id() && seen.handler == f.handler() &&
               seen.message == f.message()) {
      ++seen.same;
    } else {
      seen.same = 1;
    }
    seen.event_id = f.event_id();
    seen.attempt = f.attempt();
    seen.handler = f.handler();
    seen.message = f.message();
    if (failed_settles_) continue;
    if (seen.same >= same_failures_) {
      // The engine's message usually names the handler already.
      const std::string in = absl::StrContains(f.message(), Handler(f)) ? "" : " in " + Handler(f);
      permanent.push_back(absl::StrCat(p.unit, ": event ", f.event_id(), " (", f.event_name(),
                                       ") failed ", seen.same, " attempts running", in,
                                       ", each with: ", f.message(), "\n", ResolveHint(p.unit),
                                       "; `parley trace ", p.unit, "` shows the attempts"));
    } else if (absl::FromUnixMillis(f.next_retry_unix_ms()) > deadline_) {
      late.push_back(
          absl::StrCat(p.unit, " (", f.event_name(), " failed in ", Handler(f), ", next retry at ",
                       absl::FormatTime("%H:%M:%S", absl::FromUnixMillis(f.next_retry_unix_ms()),
                                        absl::LocalTimeZone()),
                       ")"));
    }
  }
  last_progress_ = std::move(progress);
  if (units != unit_set_) {
    unit_set_ = std::move(units);
    shown_ = 0;
  }
  shown_ = std::max(shown_, v.settled);
  v.shown = shown_;
  if (v.settled == v.units) {
    v.outcome = SettleVerdict::Outcome::kSettled;
  } else if (!permanent.empty()) {
    v.outcome = SettleVerdict::Outcome::kFailedPermanently;
    v.reason = absl::StrJoin(permanent, "\n");
  } else if (!late.empty()) {
    v.outcome = SettleVerdict::Outcome::kCannotSettleInTime;
    v.reason =
        absl::StrCat("the next retry of ", absl::StrJoin(late, ", "), " is due after the timeout");
  }
  return v;
}

}  // namespace parley::cli
