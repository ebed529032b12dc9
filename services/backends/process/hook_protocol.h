#pragma once

// Hook protocol (one request per connection): the client sends its arguments as netstrings
// ("<decimal length>:<bytes>,", for example "4:fact,3:set,1:x,") and shuts down its writing side;
// the server answers with one status byte, '0' (done) or '1' (refused), followed by the text to
// print, and closes. A malformed or oversized request gets a '1' reply; it never fails the run.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace parley::services {

// Netstring encoding of a hook request (shared with parley-hook and tests).
std::string EncodeHookRequest(const std::vector<std::string>& args);
// Parses a whole request; INVALID_ARGUMENT for anything that is not a sequence of netstrings.
absl::StatusOr<std::vector<std::string>> DecodeHookRequest(absl::string_view data);

}  // namespace parley::services
