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
#include "tools/cli/commands.h"
#include "tools/cli/container_runtime.h"
#include "tools/cli/export_kubernetes.h"
#include "tools/cli/model_dir.h"
#include "tools/cli/session.h"
#include "tools/cli/unit_host.h"

namespace parley::cli {
namespace {

const FlagSpec kTimeoutFlag = {"--timeout", true, "How long to wait (e.g. 90s, 5m)"};

const std::vector<Command>& Commands() {
  static const auto* commands = new std::vector<Command>{
      {"up",
       "MODEL",
       "Start the model on this machine, or apply what changed in it; waits until settled",
       {{"--no-wait", false, "Return once applied, without waiting to settle"},
        {"--dry-run", false, "Print what would change, and change nothing"},
        {"--plaintext", false, "A new model without TLS (default: mutual TLS from the model's CA)"},
        {"--runtime", true,
         "A new model's units each in a container: podman or docker (docs/deploy.md)"},
        {"--image", true, "With --runtime: the image (default localhost/parley:latest)"},
        kTimeoutFlag},
       1,
       1},
      {"start",
       "",
       "Bring the model's parleyd (or containers) back after a crash or `down`, as it was: the "
       "units keep their config and state; the model file is not applied again",
       {{"--no-wait", false, "Return once started, without waiting to settle"}, kTimeoutFlag},
       0,
       0},
      {"down",
       "",
       "Stop every unit (fires stop) and the model's parleyd (or its containers)",
       {{"--purge", false,
         "Also delete the model directory (and containers, volumes, network): knowledge bases, "
         "unit state"}},
       0,
       0},
      {"status",
       "",
       "Services, units, relations",
       {{"--json", false, "Print JSON (v1.ModelStatus)"},
        {"--watch", false, "Redraw every second until interrupted"}},
       0,
       0},
      {"wait", "", "Wait until every unit is idle with nothing in flight", {kTimeoutFlag}, 0, 0},
      {"relate", "SERVICE:ENDPOINT SERVICE:ENDPOINT", "Relate two services' endpoints", {}, 2, 2},
      {"unrelate", "SERVICE:ENDPOINT SERVICE:ENDPOINT", "Remove a relation", {}, 2, 2},
      {"config",
       "SERVICE [KEY=VALUE ...]",
       "Show a service's config, or change it (KEY= resets to the default)",
       {},
       1,
       -1},
      {"add-unit",
       "SERVICE",
       "Add units to a service",
       {{"-n", true, "How many (default 1)"}},
       1,
       1},
      {"remove-unit", "UNIT...", "Stop units, depart their relations and remove them", {}, 1, -1},
      {"resolve",
       "UNIT",
       "Unstick a unit whose event failed: retry it now (default) or skip it",
       {{"--retry", false, "Try the failed event again now and wait for the attempt (default)"},
        {"--skip", false, "Drop the failed event unapplied; the events behind it run"},
        {"--no-wait", false, "With --retry: return without waiting for the attempt"},
        kTimeoutFlag},
       1,
       1},
      {"run",
       "UNIT ACTION [KEY=VALUE ...]",
       "Run a user action and print its output",
       {{"--no-wait", false, "Queue it and return"}, kTimeoutFlag},
       2,
       -1},
      {"logs",
       "",
       "Agents' log records",
       {{"-f", false, "Follow new records"},
        {"--unit", true, "Only this unit"},
        {"--level", true, "Minimum level: debug, info, warning, error"},
        {"--contains", true, "Only records containing this text"},
        {"-n", true, "How many past records (default all kept)"}},
       0,
       0},
      {"facts", "UNIT", "Facts set on a unit", {{"--json", false, "Print JSON"}}, 1, 1},
      {"relation-data",
       "UNIT ENDPOINT",
       "Relation data of a unit's endpoint",
       {{"--json", false, "Print JSON"}},
       2,
       2},
      {"trace",
       "UNIT",
       "A unit's newest runs, step by step",
       {{"--last", true, "How many (default 5)"}},
       1,
       1},
      {"metrics-config",
       "[MODEL]",
       "A Prometheus scrape config for the running model",
       {{"--interval", true, "Scrape and evaluation interval (default 15s)"},
        {"--rules", true, "Alert rules file to load (e.g. deploy/prometheus/alerts.yml)"},
        {"--name", true, "The model label (default: the model file's directory name)"}},
       0,
       1},
      {"cert",
       "NAME",
       "Issue a certificate from the model's CA for a parleyd on another host, or an operator",
       {{"--ip", true, "IP addresses it is reached at, comma-separated"},
        {"--dns", true, "DNS names it is reached at, comma-separated"},
        {"--operator", false,
         "For a person or program using the agent API (another CLI): may change the model and "
         "read agents' data; no --ip or --dns needed"},
        {"--out", true, "Directory for cert.pem, key.pem, ca.pem (default <model dir>/pki/NAME)"}},
       1,
       1},
      {"version", "", "Versions of parley and of the model's parleyd", {}, 0, 0},
      {"export",
       "kubernetes|compose MODEL",
       "Write the model as Kubernetes manifests or a compose project (docs/deploy.md)",
       {{"--image", true, "The image the units run (default parley:latest)"},
        {"--namespace", true, "kubernetes: put every resource in this namespace"},
        {"--storage", true, "kubernetes: each unit's volume claim (default 1Gi)"},
        {"-o", true, "kubernetes: a file instead of stdout; compose: the project directory"}},
       2,
       2},
      {"host-unit",
       "",
       "Run parleyd hosting one unit of an exported model (a pod's entry point)",
       {{"--plan", true, "The exported plan (default /etc/parley/plan/model.json)"},
        {"--unit", true, "The unit (default: from $POD_NAME or the host name, app-1 is app/1)"}},
       0,
       0},
      {"probe",
       "",
       "Exit 0 when the parleyd answers (and with --ready, its units are idle and related)",
       {{"--ready", false, "Readiness: idle, with every relation's remote units joined"},
        {"--address", true, "The parleyd (default 127.0.0.1:7000)"},
        {"--plan", true, "Ready also means every relation of this exported plan is there"}},
       0,
       0},
  };
  return *commands;
}

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

int HostUnitCommand(const Args& args) {
  HostUnitOptions o;
  o.plan_file = args.Get("--plan", kPlanFile);
  o.unit = args.Get("--unit");
  o.bundles_dir = kBundlesDir;
  o.data_dir = kUnitDataDir;
  o.parleyd = FindBinary("parleyd");
  o.port = kAgentPort;
  o.metrics_port = kMetricsPort;
  return HostUnit(o);
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
  Args args;
  for (size_t i = 1; i < rest.size(); ++i) {
    const std::string& t = rest[i];
    if (t.size() > 1 && t[0] == '-' &&
        !(cmd->name == "config" && t.find('=') != std::string::npos && t[1] != '-')) {
      std::string flag = t, value;
      const size_t eq = t.find('=');
      if (eq != std::string::npos) {
        flag = t.substr(0, eq);
        value = t.substr(eq + 1);
      }
      auto spec = std::find_if(cmd->flags.begin(), cmd->flags.end(),
                               [&](const FlagSpec& f) { return f.name == flag; });
      if (spec == cmd->flags.end()) {
        std::fprintf(stderr, "parley %s: unknown flag '%s' (see parley %s --help)\n",
                     cmd->name.c_str(), flag.c_str(), cmd->name.c_str());
        return kUsage;
      }
      if (spec->takes_value && eq == std::string::npos) {
        if (i + 1 == rest.size()) {
          std::fprintf(stderr, "parley %s: %s needs a value\n", cmd->name.c_str(), flag.c_str());
          return kUsage;
        }
        value = rest[++i];
      } else if (!spec->takes_value && eq != std::string::npos) {
        std::fprintf(stderr, "parley %s: %s takes no value\n", cmd->name.c_str(), flag.c_str());
        return kUsage;
      }
      args.flags[flag] = value;
    } else {
      args.positional.push_back(t);
    }
  }
  const int n = static_cast<int>(args.positional.size());
  if (n < cmd->min_args || (cmd->max_args >= 0 && n > cmd->max_args)) {
    std::fprintf(stderr, "usage: parley %s %s\n", cmd->name.c_str(), cmd->usage.c_str());
    return kUsage;
  }

  if (name == "host-unit") return HostUnitCommand(args);
  Session s(model_dir);
  int exit_code = kFailed;
  absl::Status st;
  using Handler = std::function<absl::Status(Session&, const Args&)>;
  const std::map<std::string, Handler> handlers = {
      {"up", Up},
      {"start", Start},
      {"down", Down},
      {"status", Status},
      {"wait", Wait},
      {"relate", [](Session& s, const Args& a) { return Relate(s, a, true); }},
      {"unrelate", [](Session& s, const Args& a) { return Relate(s, a, false); }},
      {"config", Config},
      {"add-unit", AddUnit},
      {"remove-unit", RemoveUnit},
      {"resolve", [&exit_code](Session& s, const Args& a) { return Resolve(s, a, exit_code); }},
      {"run", [&exit_code](Session& s, const Args& a) { return Run(s, a, exit_code); }},
      {"logs", Logs},
      {"facts", Facts},
      {"relation-data", RelationData},
      {"trace", Trace},
      {"metrics-config", MetricsConfig},
      {"cert", Cert},
      {"version", Version},
      {"export", [](Session&, const Args& a) { return Export(a); }},
      {"probe",
       [](Session&, const Args& a) {
         return Probe(a.Get("--address", absl::StrCat("127.0.0.1:", kAgentPort)), a.Has("--ready"),
                      a.Get("--plan"));
       }},
  };
  st = handlers.at(name)(s, args);
  if (st.ok()) return kOk;
  std::fprintf(stderr, "parley %s: %s\n", name.c_str(), std::string(st.message()).c_str());
  if (absl::IsInvalidArgument(st)) return kUsage;
  if (absl::IsDeadlineExceeded(st) && (name == "wait" || name == "up" || name == "run")) {
    return kTimedOut;
  }
  return exit_code;
}

}  // namespace
}  // namespace parley::cli

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  return parley::cli::Main(argc, argv);
}
