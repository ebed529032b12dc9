#pragma once

// The parsed command line of a `parley` command, and the parsing every command shares.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace parley::cli {

// Exit codes (docs/cli.md).
constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsage = 2;
constexpr int kTimedOut = 3;

struct FlagSpec {
  std::string name;  // "--json", "-n"
  bool takes_value = false;
  std::string help;
};

struct Command {
  std::string name;
  std::string usage;  // arguments after the command name
  std::string summary;
  std::vector<FlagSpec> flags;
  int min_args = 0;
  int max_args = 0;  // -1: any number
};

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;

  bool Has(const std::string& f) const { return flags.contains(f); }
  std::string Get(const std::string& f, const std::string& fallback = "") const {
    auto it = flags.find(f);
    return it == flags.end() ? fallback : it->second;
  }
};

// "90s", "5m", "1h30m", "500ms" or a number of seconds; INVALID_ARGUMENT naming --timeout.
absl::StatusOr<absl::Duration> ParseDuration(const std::string& text);

// "KEY=VALUE" arguments.
absl::StatusOr<std::map<std::string, std::string>> ParseAssignments(
    const std::vector<std::string>& items);

}  // namespace parley::cli
