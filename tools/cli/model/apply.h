#pragma once

// Applying a plan (plan.h): each step through the session's calls to the model's parleyds, the
// record saved after each, so that an interrupted `up` leaves an exact record of what it got
// done and the next `up` plans from there.

#include "absl/status/status.h"
#include "tools/cli/model/plan.h"
#include "tools/cli/model/session.h"

namespace parley::cli {

// Applies `plan`'s steps in order, then puts the recorded services in the plan's order. Stops at
// the first step that fails, with its error.
absl::Status Apply(const ModelPlan& plan, Session& s);

}  // namespace parley::cli
