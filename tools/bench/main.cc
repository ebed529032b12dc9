// parley-bench SCENARIO [options] [--json]: measures the engine and the knowledge base against
// the targets of the performance issue. Flags are parsed here only; scenarios take Options.
//
// Exit status: 0 when the scenario ran (whether or not it met its targets), 1 when it failed,
// 2 on a usage error.

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "tests/services/daemon/chaos.h"
#include "tools/bench/agent_bench.h"
#include "tools/bench/bench.h"
#include "tools/bench/exec_bench.h"
#include "tools/bench/up_bench.h"

namespace pb = parley::bench;

namespace {

constexpr absl::string_view kUsage = R"(usage: parley-bench SCENARIO [options] [--json]

Scenarios:
  engine   Each run enqueues an event "kick" and runs it: one handler on the event, then a chain of
           fact-only handlers, each set off by the fact the previous one set, next to unrelated
           fact-only handlers whose facts never hold. Group-commit KB.
           Reports ns_per_handler (the runs' handler time, commit excluded, per executed handler),
           runs_per_s (enqueue + run + commit), runs_per_s_durable (plus waiting for the last
           commit to be durable). Targets: ns_per_handler <= 1000 with 10000 unrelated handlers,
           and 10000 unrelated handlers within 1.25x of none (see --sweep).
    --chain N        handlers executed by each run (default 50)
    --unrelated M    unrelated fact-only handlers (default 0)
    --runs R         measured runs (default: as many as fit in --seconds, judged by a warm-up)
    --seconds S      measuring time when --runs is not given (default 1.5)
    --sweep          measure M = 0, 1000 and 10000 in one process, interleaved, and report
                     ratio_10000_vs_0 and whether the targets are met
    --rounds N       split the measured runs into N rounds, the configurations taking turns
                     (default 1, or 10 with --sweep)
    --dir D          parent of the temporary KB directories (default: the system's temp dir)

  kb       Commit rate of a typical run (--keys keys of --value-bytes bytes): our Kb on a kSync
           store next to a raw RocksDB synced WriteBatch (target: ours >= 0.8x raw), and our Kb on
           a group-commit store with each commit's durability confirmed by WhenDurable (target:
           >= 5x the raw sync rate). The sides take turns in --rounds slices.
    --seconds S      measured time of each side (default 1.5)
    --rounds N       slices per side (default 6)
    --keys K         keys per commit (default 10)
    --value-bytes B  bytes per value (default 32)
    --dir D          parent of the temporary directories (default: the system's temp dir)

  hop      Latency from a sender's commit to the receiver's run being durable, for one relation
           event between two agents on separate hosts over gRPC (127.0.0.1), next to a raw gRPC
           bidirectional ping-pong measured in the same run; group commit, sync, and group commit
           with the KBs in /dev/shm (to separate the disk's fsync from the protocol's cost).
           Target: group-commit p50 <= raw round trip + 100 us.
    --hops N         measured hops per mode (default 300)
    --dir D          parent of the temporary KB directories

  throughput  Relation events applied per second between two agents (group commit), each event
           its own run on both sides, next to raw unbatched gRPC streaming. Target >= 100000/s.
    --events N       events sent (default 20000)
    --dir D

  converge  From a change at the root until every agent has applied it, N agents hosted by one
           process in a chain, a star or a binary tree. Prints converge_ms and rss_mb.
           Targets: chain of 1000 <= 1000 ms, star of 1000 <= 300 ms.
    --topology T     chain, star or tree (default chain)
    --agents N       agents (default 1000)
    --dir D

  exec     Cost of an `exec` handler whose /bin/sh script calls three hook tools (config get,
           fact set, status set), per executed handler, through a real engine and group-commit KB
           (enqueue + run + commit; every run one handler). References measured in the same run:
           the same script with no hook calls through the engine (exec_no_hooks), spawned bare
           (spawn_script), and a bare spawn of /bin/true. Target: mean <= 10 ms per handler.
    --runs N         measured handlers per configuration (default 300)
    --rounds N       rounds in which the configurations take turns (default 6)
    --hook P         the parley-hook binary (default: beside parley-bench)
    --dir D

  up       Time from `parley up MODEL` to `parley wait` returning, as a user runs them (packages
           already installed): applied_* is `parley up --no-wait` (parleyd started, every unit
           added, related, configured), settled_* adds `parley wait`. Each run starts from an
           empty model directory and ends with `parley down --purge`.
    --model M        default: examples/webstack/model.yaml of the source tree
    --runs N         default 3
    --parley P       the parley binary (default: beside parley-bench)
    --dir D

  chaos    A fault campaign against three real parleyds in a chain (a/0 relay -> b/0 relay -> c/0
           recorder, every link through a TCP proxy) while values are fired at a/0: SIGKILLs at
           random moments, down/up cycles (SIGTERM all, start all), dropped and blackholed links,
           a parleyd SIGSTOPped past the keepalive timeout. Reports faults, values, lost,
           duplicated, out_of_order, stale_units, unsettled_faults, settle_ms_p50, settle_ms_max
           (from a fault's recovery until everything fired before it reached c/0).
           Targets with --kills 300: 0 lost, 0 duplicated, 0 stale, settle_ms_max < 30000.
    --kills N        SIGKILLs (default 300)
    --down-up N      down/up cycles (default 10)
    --link-faults N  link faults (default 10)
    --stops N        SIGSTOP/SIGCONT (default 3)
    --seed S         replay a campaign (default: random; printed)
    --parleyd P      the parleyd binary (default: beside parley-bench)
    --keep           keep the data directories and logs
    --dir D

  memory   Idle RSS of a parleyd process hosting one agent, and per further agent (hosting
           --agents). Targets: <= 25 MB for one, <= 2 MB per further agent.
    --agents N       agents in the second process (default 100)
    --parleyd P      the parleyd binary (default: beside parley-bench)
    --dir D

Common:
  --json   print one JSON object per line (per configuration measured) instead of a table
  --help   print this text
)";

int UsageError(absl::string_view message) {
  std::fprintf(stderr, "parley-bench: %.*s\nRun 'parley-bench --help' for usage.\n",
               static_cast<int>(message.size()), message.data());
  return 2;
}

// Flags of one command line: "--name value", "--name=value" or a bare switch.
struct Flags {
  std::map<std::string, std::string> values;
  std::vector<std::string> switches;
};

// Parses args[first..] given the flags that take a value and the switches; an error is a message.
absl::StatusOr<Flags> ParseFlags(const std::vector<std::string>& args, size_t first,
                                 const std::vector<std::string>& valued,
                                 const std::vector<std::string>& switches) {
  auto contains = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  Flags flags;
  for (size_t i = first; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    const std::string name = arg.substr(2);
    if (contains(switches, name)) {
      if (has_value) {
        return absl::InvalidArgumentError(absl::StrCat("option '--", name, "' takes no value"));
      }
      flags.switches.push_back(name);
    } else if (contains(valued, name)) {
      if (!has_value) {
        if (i + 1 >= args.size()) {
          return absl::InvalidArgumentError(absl::StrCat("option '--", name, "' needs a value"));
        }
        value = args[++i];
      }
      flags.values[name] = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown option '", arg, "'"));
    }
  }
  return flags;
}

bool Has(const Flags& flags, absl::string_view name) {
  return std::find(flags.switches.begin(), flags.switches.end(), name) != flags.switches.end();
}

// Reads an integer flag into `out` if present; it must lie in [lo, hi].
absl::Status IntFlag(const Flags& flags, const std::string& name, int64_t lo, int64_t hi,
                     int64_t& out) {
  auto it = flags.values.find(name);
  if (it == flags.values.end()) return absl::OkStatus();
  int64_t v = 0;
  if (!absl::SimpleAtoi(it->second, &v) || v < lo || v > hi) {
    return absl::InvalidArgumentError(absl::StrCat(
        "option '--", name, "': '", it->second, "' is not a whole number in [", lo, ", ", hi, "]"));
  }
  out = v;
  return absl::OkStatus();
}

absl::Status IntFlag(const Flags& flags, const std::string& name, int64_t lo, int64_t hi,
                     int& out) {
  int64_t v = out;
  absl::Status s = IntFlag(flags, name, lo, hi, v);
  out = static_cast<int>(v);
  return s;
}

absl::Status SecondsFlag(const Flags& flags, const std::string& name, double& out) {
  auto it = flags.values.find(name);
  if (it == flags.values.end()) return absl::OkStatus();
  double v = 0;
  if (!absl::SimpleAtod(it->second, &v) || !(v > 0) || v > 3600) {
    return absl::InvalidArgumentError(absl::StrCat("option '--", name, "': '", it->second,
                                                   "' is not a number of seconds in (0, 3600]"));
  }
  out = v;
  return absl::OkStatus();
}

absl::StatusOr<pb::EngineBenchOptions> EngineOptions(const Flags& flags) {
  pb::EngineBenchOptions o;
  o.sweep = Has(flags, "sweep");
  if (o.sweep && flags.values.contains("unrelated")) {
    return absl::InvalidArgumentError("--sweep chooses the unrelated handlers; drop --unrelated");
  }
  o.rounds = o.sweep ? 10 : 1;
  absl::Status s = IntFlag(flags, "chain", 1, 1000000, o.chain);
  if (s.ok()) s = IntFlag(flags, "unrelated", 0, 10000000, o.unrelated);
  if (s.ok()) s = IntFlag(flags, "runs", 1, int64_t{1} << 40, o.runs);
  if (s.ok()) s = IntFlag(flags, "rounds", 1, 1000, o.rounds);
  if (s.ok()) s = SecondsFlag(flags, "seconds", o.seconds);
  if (!s.ok()) return s;
  if (o.runs > 0 && o.runs < o.rounds) {
    return absl::InvalidArgumentError("--runs must be at least --rounds");
  }
  if (auto it = flags.values.find("dir"); it != flags.values.end()) o.dir = it->second;
  return o;
}

absl::StatusOr<pb::KbBenchOptions> KbOptions(const Flags& flags) {
  pb::KbBenchOptions o;
  absl::Status s = IntFlag(flags, "keys", 1, 100000, o.keys);
  if (s.ok()) s = IntFlag(flags, "value-bytes", 1, 64 << 20, o.value_bytes);
  if (s.ok()) s = IntFlag(flags, "rounds", 1, 1000, o.rounds);
  if (s.ok()) s = SecondsFlag(flags, "seconds", o.seconds);
  if (!s.ok()) return s;
  if (auto it = flags.values.find("dir"); it != flags.values.end()) o.dir = it->second;
  return o;
}

void Print(const std::vector<pb::Report>& reports, bool json) {
  for (const auto& r : reports) {
    if (json) {
      std::printf("%s\n", r.ToJson().c_str());
    } else {
      std::printf("%s\n", r.ToTable().c_str());
    }
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      std::fwrite(kUsage.data(), 1, kUsage.size(), stdout);
      return 0;
    }
  }
  if (args.empty()) {
    return UsageError(
        "no scenario given (engine, kb, hop, throughput, converge, exec, up, chaos or memory)");
  }
  const std::string scenario = args[0];

  absl::StatusOr<std::vector<pb::Report>> reports;
  bool json = false;
  if (scenario == "engine") {
    auto flags = ParseFlags(args, 1, {"chain", "unrelated", "runs", "seconds", "rounds", "dir"},
                            {"sweep", "json"});
    if (!flags.ok()) return UsageError(flags.status().message());
    auto options = EngineOptions(*flags);
    if (!options.ok()) return UsageError(options.status().message());
    json = Has(*flags, "json");
    reports = pb::RunEngineBench(*options);
  } else if (scenario == "kb") {
    auto flags = ParseFlags(args, 1, {"seconds", "rounds", "keys", "value-bytes", "dir"}, {"json"});
    if (!flags.ok()) return UsageError(flags.status().message());
    auto options = KbOptions(*flags);
    if (!options.ok()) return UsageError(options.status().message());
    json = Has(*flags, "json");
    reports = pb::RunKbBench(*options);
  } else if (scenario == "hop") {
    auto flags = ParseFlags(args, 1, {"hops", "dir"}, {"json"});
    if (!flags.ok()) return UsageError(flags.status().message());
    pb::HopBenchOptions o;
    if (auto s = IntFlag(*flags, "hops", 1, 1000000, o.hops); !s.ok())
      return UsageError(s.message());
    if (auto it = flags->values.find("dir"); it != flags->values.end()) o.dir = it->second;
    json = Has(*flags, "json");
    reports = pb::RunHopBench(o);
  } else if (scenario == "throughput") {
    auto flags = ParseFlags(args, 1, {"events", "dir"}, {"json"});
    if (!flags.ok()) return UsageError(flags.status().message());
    pb::ThroughputBenchOptions o;
    if (auto s = IntFlag(*flags, "events", 1, 100000000, o.events); !s.ok()) {
      return UsageError(s.message());
    }
    if (auto it = flags->values.find("dir"); it != flags->values.end()) o.dir = it->second;
    json = Has(*flags, "json");
    reports = pb::RunThroughputBench(o);
  } else if (scenario == "converge") {
    auto flags = ParseFlags(args, 1, {"topology", "agents", "dir"}, {"json"});
    if (!flags.ok()) return UsageError(flags.status().message());
    pb::ConvergeBenchOptions o;
    if (auto s = IntFlag(*flags, "agents", 2, 1000000, o.agents); !s.ok()) {
      return UsageError(s.message());
    }
    if (auto it = flags->values.find("topology"); it != flags->values.end())
      o.topology = it->second;
    if (o.topology != "chain" && o.topology != "star" && o.topology != "tree") {
      return UsageError("--topology must be chain, star or tree");
    }
    if (auto it = flags->values.find("dir"); it != flags->values.end()) o.dir = it->second;
    json = Has(*flags, "json");
    reports = pb::RunConvergeBench(o);
  } else if (scenario == "exec") {
    auto flags = ParseFlags(args, 1, {"runs", "rounds", "hook", "dir"}, {"json"});
    if (!flags.ok()) return UsageError(flags.status().message());
    pb::ExecBenchOptions o;
    absl::Status s = IntFlag(*flags, "runs", 1, 1000000, o.runs);
    if (s.ok()) s = IntFlag(*flags, "rounds", 1, 1000, o.rounds);
    if (!s.ok()) return UsageError(s.message());
    o.hook = (std::filesystem::path(argv[0]).parent_path() / "parley-hook").string();
    if (auto it = flags->values.find("hook"); it != flags->values.end()) o.hook = it->second;
    if (auto it = flags->values.find("dir"); it != flags->values.end()) o.dir = it->second;
    json = Has(*flags, "json");
    reports = pb::RunExecBench(o);
  } else if (scenario == "up") {
    auto flags = ParseFlags(args, 1, {"model", "runs", "parley", "dir"}, {"json"});
    if (!flags.ok()) return UsageError(flags.status().message());
    pb::UpBenchOptions o;
    if (auto s = IntFlag(*flags, "runs", 1, 1000, o.runs); !s.ok()) return UsageError(s.message());
    o.model = PARLEY_SOURCE_DIR "/examples/webstack/model.yaml";
    if (auto it = flags->values.find("model"); it != flags->values.end()) o.model = it->second;
    o.parley = (std::filesystem::path(argv[0]).parent_path() / "parley").string();
    if (auto it = flags->values.find("parley"); it != flags->values.end()) o.parley = it->second;
    if (auto it = flags->values.find("dir"); it != flags->values.end()) o.dir = it->second;
    json = Has(*flags, "json");
    reports = pb::RunUpBench(o);
  } else if (scenario == "chaos") {
    auto flags =
        ParseFlags(args, 1, {"kills", "down-up", "link-faults", "stops", "seed", "parleyd", "dir"},
                   {"json", "keep"});
    if (!flags.ok()) return UsageError(flags.status().message());
    parley::services::testing::ChaosOptions o;
    o.kills = 300;
    o.down_up = 10;
    o.link_faults = 10;
    o.stops = 3;
    int64_t seed = 0;
    absl::Status s = IntFlag(*flags, "kills", 0, 100000, o.kills);
    if (s.ok()) s = IntFlag(*flags, "down-up", 0, 10000, o.down_up);
    if (s.ok()) s = IntFlag(*flags, "link-faults", 0, 10000, o.link_faults);
    if (s.ok()) s = IntFlag(*flags, "stops", 0, 1000, o.stops);
    if (s.ok()) s = IntFlag(*flags, "seed", 0, INT64_MAX, seed);
    if (!s.ok()) return UsageError(s.message());
    o.seed = static_cast<uint64_t>(seed);
    o.keep = Has(*flags, "keep");
    if (auto it = flags->values.find("dir"); it != flags->values.end()) o.dir = it->second;
    std::string parleyd = (std::filesystem::path(argv[0]).parent_path() / "parleyd").string();
    if (auto it = flags->values.find("parleyd"); it != flags->values.end()) parleyd = it->second;
    setenv("PARLEYD_BINARY", parleyd.c_str(), 1);
    json = Has(*flags, "json");
    auto r = parley::services::testing::RunChaos(o);
    if (!r.ok()) {
      reports = r.status();
    } else {
      pb::Report rep("chaos");
      rep.AddInt("seed", static_cast<int64_t>(r->seed));
      rep.AddInt("faults", r->faults);
      rep.AddInt("values", r->values_fired);
      rep.AddInt("lost", r->lost);
      rep.AddInt("duplicated", r->duplicated);
      rep.AddInt("out_of_order", r->out_of_order);
      rep.AddInt("stale_units", r->stale_units);
      rep.AddInt("unsettled_faults", r->unsettled_faults);
      rep.AddDouble("settle_ms_p50", r->settle_ms_p50);
      rep.AddDouble("settle_ms_max", r->settle_ms_max);
      rep.AddDouble("elapsed_s", r->elapsed_s);
      rep.AddBool("meets_targets", r->lost == 0 && r->duplicated == 0 && r->out_of_order == 0 &&
                                       r->stale_units == 0 && r->settle_ms_max < 30000);
      for (const std::string& note : r->notes) {
        std::fprintf(stderr, "parley-bench chaos: %s\n", note.c_str());
      }
      if (!r->notes.empty()) {
        std::fprintf(stderr, "parley-bench chaos: logs kept in %s\n", r->work_dir.c_str());
      }
      reports = std::vector<pb::Report>{std::move(rep)};
    }
  } else if (scenario == "memory") {
    auto flags = ParseFlags(args, 1, {"agents", "parleyd", "dir"}, {"json"});
    if (!flags.ok()) return UsageError(flags.status().message());
    pb::MemoryBenchOptions o;
    if (auto s = IntFlag(*flags, "agents", 2, 100000, o.agents); !s.ok()) {
      return UsageError(s.message());
    }
    o.parleyd = (std::filesystem::path(argv[0]).parent_path() / "parleyd").string();
    if (auto it = flags->values.find("parleyd"); it != flags->values.end()) o.parleyd = it->second;
    if (auto it = flags->values.find("dir"); it != flags->values.end()) o.dir = it->second;
    json = Has(*flags, "json");
    reports = pb::RunMemoryBench(o);
  } else {
    return UsageError(
        absl::StrCat("unknown scenario '", scenario,
                     "' (engine, kb, hop, throughput, converge, exec, up, chaos or memory)"));
  }
  if (!reports.ok()) {
    std::fprintf(stderr, "parley-bench %s: %s\n", scenario.c_str(),
                 std::string(reports.status().ToString()).c_str());
    return 1;
  }
  Print(*reports, json);
  return 0;
}
