// The exec scenario: what a handler that runs a program costs. The issue's target: at most 10 ms
// per executed exec handler calling three hook tools (Juju's fixed cost per hook is about 0.3 s).
// Each run of the engine executes one handler; the time of a run is enqueue + run + commit (not
// waiting for durability).

#include "tools/bench/exec_bench.h"

#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "engine/engine.h"
#include "kb/kb.h"
#include "base/status_macros.h"
#include "kb/store.h"
#include "services/definition/definition.h"
#include "services/backends/backends.h"

namespace parley::bench {
namespace {

namespace pe = parley::engine;
namespace ps = parley::services;

constexpr double kTargetMsPerHandler = 10;

// $HOOK is parley-hook, or the shell's no-op `:` for the same script without hook calls (the
// command substitution still forks a subshell, as it does with the tool).
constexpr char kScript[] = R"(#!/bin/sh
x=$($HOOK config get x)
$HOOK fact set n "$1"
$HOOK status set active "run $1 with $x"
)";

std::string Definition(absl::string_view hook) {
  return absl::StrCat(R"(name: bench
config:
  x: {type: string, default: hello}
actions:
  kick:
    params:
      n: {type: int, required: true}
handlers:
  - name: handler
    on: [action.kick]
    action:
      kind: exec
      command: [./handler.sh, "{{event.n}}"]
      env: {HOOK: ")",
                      hook, R"("}
)");
}

absl::Status WriteFile(const std::string& path, absl::string_view text, mode_t mode = 0644) {
  std::ofstream f(path);
  f << text;
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  if (chmod(path.c_str(), mode) != 0) {
    return absl::InternalError(absl::StrCat("chmod ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

double Mean(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return v.empty() ? 0 : sum / static_cast<double>(v.size());
}

// Something measured one handler (or one spawn) at a time.
class Subject {
 public:
  virtual ~Subject() = default;
  // One measured operation; returns its time in ms.
  virtual absl::StatusOr<double> Once() = 0;
};

// An engine with one exec handler on its own group-commit KB.
class EngineSubject : public Subject {
 public:
  static absl::StatusOr<std::unique_ptr<EngineSubject>> Create(const std::string& dir,
                                                               absl::string_view hook_command,
                                                               const std::string& hook_binary) {
    std::unique_ptr<EngineSubject> s(new EngineSubject);
    std::filesystem::create_directories(dir + "/def");
    RETURN_IF_ERROR(WriteFile(dir + "/def/service.yaml", Definition(hook_command)));
    RETURN_IF_ERROR(WriteFile(dir + "/def/handler.sh", kScript, 0755));
    ASSIGN_OR_RETURN(ps::ServiceDefinition def, ps::LoadServiceDefinition(dir + "/def"));
    ps::BackendOptions options;
    // Absolute: the program runs in the definition directory.
    options.process.extra_path = {
        std::filesystem::absolute(hook_binary).parent_path().lexically_normal().string()};
    options.process.temp_root = dir;
    std::unique_ptr<ps::BackendRegistry> backends = ps::MakeBackends(options);
    ps::BackendRegistry& factory = *backends;
    ASSIGN_OR_RETURN(pe::ServiceSpec spec, ps::BuildSpec(def, "bench/0", factory));
    kb::StoreOptions store_options;
    store_options.durability = kb::Durability::kGroupCommit;
    ASSIGN_OR_RETURN(s->store_, kb::Store::Open(dir + "/kb", store_options));
    ASSIGN_OR_RETURN(s->kb_, kb::Kb::Open(s->store_.get(), "bench/0"));
    ASSIGN_OR_RETURN(s->engine_,
                     pe::Engine::Create(std::move(spec), s->kb_.get(), parley::base::SystemClock::Get()));
    s->hooks_ = hook_command != ":";
    return s;
  }

  absl::StatusOr<double> Once() override {
    const std::string n = absl::StrCat(next_n_++);
    v1::Event event;
    event.set_name("action.kick");
    event.set_source("bench");
    (*event.mutable_params())["n"] = n;
    const double start = NowSeconds();
    RETURN_IF_ERROR(engine_->Enqueue(std::move(event)).status());
    ASSIGN_OR_RETURN(pe::RunResult r, engine_->RunOnce());
    const double took = NowSeconds() - start;
    if (r.outcome != pe::RunOutcome::kCommitted || r.handlers_run != 1) {
      return absl::InternalError(
          absl::StrCat("run ", r.run, " did not commit one handler: ",
                       engine_->failure() ? engine_->failure()->message() : "no failure record"));
    }
    // The hook calls landed (a script whose tools failed silently would look fast).
    if (hooks_ && engine_->FactValue("n") != n) {
      return absl::InternalError(absl::StrCat("run ", r.run, ": fact n is not ", n));
    }
    handler_ms_.push_back(absl::ToDoubleMilliseconds(r.handler_time));
    last_ticket_ = r.ticket;
    return took * 1e3;
  }

  absl::Status WaitDurable() { return store_->WaitDurable(last_ticket_); }
  const std::vector<double>& handler_ms() const { return handler_ms_; }

 private:
  EngineSubject() = default;
  uint64_t next_n_ = 1;
  uint64_t last_ticket_ = 0;
  bool hooks_ = false;
  std::vector<double> handler_ms_;
  std::unique_ptr<kb::Store> store_;
  std::unique_ptr<kb::Kb> kb_;
  std::unique_ptr<pe::Engine> engine_;
};

// posix_spawn of a program with the environment `env`, then waitpid: no engine, no pipes.
class SpawnSubject : public Subject {
 public:
  SpawnSubject(std::vector<std::string> argv, std::vector<std::string> env)
      : argv_(std::move(argv)), env_(std::move(env)) {}

  absl::StatusOr<double> Once() override {
    std::vector<char*> args;
    for (std::string& a : argv_) args.push_back(a.data());
    args.push_back(nullptr);
    std::vector<char*> envp;
    for (std::string& e : env_) envp.push_back(e.data());
    envp.push_back(nullptr);
    const double start = NowSeconds();
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), envp.data());
    if (rc != 0) {
      return absl::InternalError(absl::StrCat("spawn ", argv_[0], ": ", std::strerror(rc)));
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
      if (errno != EINTR) return absl::InternalError("waitpid");
    }
    const double took = NowSeconds() - start;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return absl::InternalError(absl::StrCat(argv_[0], " failed (status ", status, ")"));
    }
    return took * 1e3;
  }

 private:
  std::vector<std::string> argv_;
  std::vector<std::string> env_;
};

struct Config {
  std::string name;
  std::unique_ptr<Subject> subject;
  std::vector<double> ms;
};

Report ConfigReport(const Config& c) {
  Report r("exec");
  r.AddString("config", c.name);
  r.AddInt("runs", static_cast<int64_t>(c.ms.size()));
  r.AddDouble("mean_ms", Mean(c.ms));
  r.AddDouble("p50_ms", Percentile(c.ms, 0.5));
  r.AddDouble("p99_ms", Percentile(c.ms, 0.99));
  if (auto* e = dynamic_cast<EngineSubject*>(c.subject.get())) {
    // The handler alone, as the engine timed it (commit excluded).
    r.AddDouble("handler_mean_ms", Mean(e->handler_ms()));
  }
  return r;
}

}  // namespace

absl::StatusOr<std::vector<Report>> RunExecBench(const ExecBenchOptions& options) {
  if (access(options.hook.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("parley-hook not found at '", options.hook, "' (use --hook)"));
  }
  ASSIGN_OR_RETURN(TempDir dir, TempDir::Create(options.dir));
  std::vector<Config> configs;
  // exec_hooks: the scenario; exec_no_hooks: the same script with `:` for parley-hook, through
  // the engine; spawn_script: that script spawned bare; spawn_true: a bare spawn of /bin/true.
  ASSIGN_OR_RETURN(auto hooks,
                   EngineSubject::Create(dir.Sub("hooks"), "parley-hook", options.hook));
  ASSIGN_OR_RETURN(auto no_hooks, EngineSubject::Create(dir.Sub("no-hooks"), ":", options.hook));
  configs.push_back({"exec_hooks", std::move(hooks), {}});
  configs.push_back({"exec_no_hooks", std::move(no_hooks), {}});
  configs.push_back({"spawn_script",
                     std::make_unique<SpawnSubject>(
                         std::vector<std::string>{dir.Sub("no-hooks/def/handler.sh"), "1"},
                         std::vector<std::string>{"PATH=/usr/bin:/bin", "HOOK=:"}),
                     {}});
  configs.push_back({"spawn_true",
                     std::make_unique<SpawnSubject>(std::vector<std::string>{"/bin/true"},
                                                    std::vector<std::string>{}),
                     {}});

  // Warm-up: page cache, the KB's first writes.
  for (Config& c : configs) {
    for (int i = 0; i < 10; ++i) RETURN_IF_ERROR(c.subject->Once().status());
  }
  const int per_round = std::max(1, options.runs / options.rounds);
  for (int round = 0; round < options.rounds; ++round) {
    for (Config& c : configs) {
      for (int i = 0; i < per_round; ++i) {
        ASSIGN_OR_RETURN(double ms, c.subject->Once());
        c.ms.push_back(ms);
      }
      if (auto* e = dynamic_cast<EngineSubject*>(c.subject.get())) {
        RETURN_IF_ERROR(e->WaitDurable());
      }
    }
  }

  std::vector<Report> reports;
  for (const Config& c : configs) reports.push_back(ConfigReport(c));
  const double hooks_mean = Mean(configs[0].ms);
  const double no_hooks_mean = Mean(configs[1].ms);
  Report summary("exec_summary");
  summary.AddDouble("ms_per_handler_mean", hooks_mean);
  summary.AddDouble("ms_per_handler_p50", Percentile(configs[0].ms, 0.5));
  summary.AddDouble("ms_per_handler_p99", Percentile(configs[0].ms, 0.99));
  summary.AddDouble("ms_per_hook_call", (hooks_mean - no_hooks_mean) / 3);
  summary.AddDouble("ms_backend_overhead", no_hooks_mean - Mean(configs[2].ms));
  summary.AddDouble("ms_spawn_true", Mean(configs[3].ms));
  summary.AddDouble("target_ms_per_handler", kTargetMsPerHandler);
  summary.AddBool("meets_target", hooks_mean <= kTargetMsPerHandler);
  reports.push_back(std::move(summary));
  return reports;
}

}  // namespace parley::bench
