#pragma once

// The command line of a `parley` command: the commands' table entries (commands/table.cc), the
// arguments one was given, and the parsing every command shares.

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tools/cli/model/session.h"

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

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;

  bool Has(const std::string& f) const { return flags.contains(f); }
  std::string Get(const std::string& f, const std::string& fallback = "") const {
    auto it = flags.find(f);
    return it == flags.end() ? fallback : it->second;
  }
};

// What a command does with the model directory's session and its arguments. An error becomes
// exit 2 when INVALID_ARGUMENT, else `exit_code` (kFailed unless the command set another) or,
// for DEADLINE_EXCEEDED from a command that waits, kTimedOut.
using Handler = std::function<absl::Status(Session& s, const Args& args, int& exit_code)>;

struct Command {
  std::string name;
  std::string usage;  // arguments after the command name
  std::string summary;
  std::vector<FlagSpec> flags;
  int min_args = 0;
  int max_args = 0;  // -1: any number
  Handler run = nullptr;
  // Whether a DEADLINE_EXCEEDED error of the command means "timed out waiting" (exit 3).
  bool waits = false;
  // Instead of `run`, for a command that needs no model directory and ends with an exit code of
  // its own (host-unit: the code of the parleyd it ran).
  std::function<int(const Args& args)> run_alone = nullptr;
};

// The arguments after the command name, checked against `command`'s flags and argument count;
// INVALID_ARGUMENT saying what is wrong ("unknown flag '--x' (see parley status --help)").
absl::StatusOr<Args> ParseArgs(const Command& command, const std::vector<std::string>& tokens);

// "90s", "5m", "1h30m", "500ms" or a number of seconds; INVALID_ARGUMENT naming --timeout.
absl::StatusOr<absl::Duration> ParseDuration(const std::string& text);

// "KEY=VALUE" arguments.
absl::StatusOr<std::map<std::string, std::string>> ParseAssignments(
    const std::vector<std::string>& items);

}  // namespace parley::cli
