// parley: brings a model up on this machine and shows where it stands (docs/cli.md).
//
// The CLI reads model.yaml and the definitions it names, starts one parleyd for the model and
// asks it to host every unit, then relates the units and sets their config through the agent
// API. From then on the agents negotiate among themselves; the CLI only records in the model
// directory what it applied and where the agents are.
//
// Exit codes: 0 done; 1 failed; 2 bad command line or invalid model/definition/value; 3 `wait`
// (or `up`, `run`) timed out before the model settled.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tools/cli/args.h"
#include "tools/cli/commands/commands.h"

namespace parley::cli {
namespace {

void PrintHelp() {
  std::printf(
      "parley: run a Parley model on this machine.\n\n"
      "Usage: parley [--model-dir DIR] COMMAND [ARGS] [FLAGS]\n\n"
      "The model directory (default $PARLEY_MODEL_DIR, else ./.parley) records what was applied\n"
      "and holds the model's parleyd state.\n\nCommands:\n");
  for (const Command& c : Commands()) {
    std::printf("  %-14s %s\n", c.name.c_str(), c.summary.c_str());
  }
  std::printf(
      "\nparley COMMAND --help shows a command's arguments and flags.\n"
      "Exit codes: 0 done, 1 failed, 2 bad usage or invalid input, 3 timed out.\n");
}

void PrintCommandHelp(const Command& c) {
  std::printf("Usage: parley %s %s\n\n%s.\n", c.name.c_str(), c.usage.c_str(), c.summary.c_str());
  if (!c.flags.empty()) std::printf("\nFlags:\n");
  for (const FlagSpec& f : c.flags) {
    const std::string name = f.takes_value ? f.name + " VALUE" : f.name;
    std::printf("  %-18s %s\n", name.c_str(), f.help.c_str());
  }
  std::printf("  %-18s %s\n", "--model-dir DIR", "The model directory");
}

int Main(int argc, char** argv) {
  std::vector<std::string> tokens(argv + 1, argv + argc);
  std::string model_dir;
  if (const char* env = getenv("PARLEY_MODEL_DIR"); env != nullptr && *env != '\0') {
    model_dir = env;
  }
  // Global flags may come anywhere.
  std::vector<std::string> rest;
  bool help = false;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& t = tokens[i];
    if (t == "--model-dir" || t == "-m") {
      if (i + 1 == tokens.size()) {
        std::fprintf(stderr, "parley: %s needs a directory\n", t.c_str());
        return kUsage;
      }
      model_dir = tokens[++i];
    } else if (absl::StartsWith(t, "--model-dir=")) {
      model_dir = t.substr(12);
    } else if (t == "--help" || t == "-h") {
      help = true;
    } else if (t == "--version" && rest.empty()) {
      rest.push_back("version");
    } else {
      rest.push_back(t);
    }
  }
  if (model_dir.empty()) model_dir = ".parley";
  if (rest.empty()) {
    PrintHelp();
    return help ? kOk : kUsage;
  }
  const std::string name = rest[0];
  if (name == "help") {
    PrintHelp();
    return kOk;
  }
  const Command* cmd = nullptr;
  for (const Command& c : Commands()) {
    if (c.name == name) cmd = &c;
  }
  if (cmd == nullptr) {
    std::fprintf(stderr, "parley: unknown command '%s' (see parley --help)\n", name.c_str());
    return kUsage;
  }
  if (help) {
    PrintCommandHelp(*cmd);
    return kOk;
  }
  absl::StatusOr<Args> args =
      ParseArgs(*cmd, std::vector<std::string>(rest.begin() + 1, rest.end()));
  if (!args.ok()) {
    const std::string message(args.status().message());
    if (absl::StartsWith(message, "usage:")) {
      std::fprintf(stderr, "%s\n", message.c_str());
    } else {
      std::fprintf(stderr, "parley %s: %s\n", name.c_str(), message.c_str());
    }
    return kUsage;
  }
  if (cmd->run_alone) return cmd->run_alone(*args);
  Session s(model_dir);
  int exit_code = kFailed;
  const absl::Status st = cmd->run(s, *args, exit_code);
  if (st.ok()) return kOk;
  std::fprintf(stderr, "parley %s: %s\n", name.c_str(), std::string(st.message()).c_str());
  if (absl::IsInvalidArgument(st)) return kUsage;
  if (absl::IsDeadlineExceeded(st) && cmd->waits) return kTimedOut;
  return exit_code;
}

}  // namespace
}  // namespace parley::cli

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  return parley::cli::Main(argc, argv);
}
