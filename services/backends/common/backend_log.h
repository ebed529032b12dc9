#pragma once

// Where a backend sends what a run printed or reported: `parley-hook log` messages and the
// captured output of each run, by source ("log", "stdout", "stderr", "http", "container"), with
// the unit and handler that produced them. Called on the thread running the action. May be empty.

#include <functional>

#include "absl/strings/string_view.h"

namespace parley::services {

using BackendLog = std::function<void(absl::string_view unit, absl::string_view handler,
                                      absl::string_view source, absl::string_view text)>;

}  // namespace parley::services
