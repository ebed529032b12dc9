#include "tools/bench/up_bench.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>

extern char** environ;

namespace parley::bench {
namespace {

// Runs `args` with PARLEY_MODEL_DIR=`model_dir`, output appended to `log`; returns its exit code.
absl::StatusOr<int> Run(const std::vector<std::string>& args, const std::string& model_dir,
                        const std::string& log) {
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string(*e).rfind("PARLEY_MODEL_DIR=", 0) != 0) env_strings.push_back(*e);
  }
  env_strings.push_back("PARLEY_MODEL_DIR=" + model_dir);
  std::vector<char*> argv, envp;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("cannot run ", args[0], ": ", std::strerror(rc)));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string Tail(const std::string& path) {
  std::ifstream in(path);
  std::stringstream all;
  all << in.rdbuf();
  const std::string s = all.str();
  return s.size() > 1500 ? s.substr(s.size() - 1500) : s;
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

absl::StatusOr<std::vector<Report>> RunUpBench(const UpBenchOptions& options) {
  namespace fs = std::filesystem;
  const fs::path root = options.dir.empty() ? fs::temp_directory_path() : fs::path(options.dir);
  const fs::path work = root / absl::StrCat("parley-bench-up-", getpid());
  fs::create_directories(work);
  const std::string log = (work / "parley.log").string();
  std::vector<double> applied, settled;
  absl::Status failure;
  for (int i = 0; i < options.runs && failure.ok(); ++i) {
    const std::string model_dir = (work / absl::StrCat("model-", i)).string();
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<int> up =
        Run({options.parley, "up", options.model, "--no-wait"}, model_dir, log);
    const auto t1 = std::chrono::steady_clock::now();
    absl::StatusOr<int> wait =
        up.ok() && *up == 0 ? Run({options.parley, "wait", "--timeout", "300s"}, model_dir, log)
                            : up;
    const auto t2 = std::chrono::steady_clock::now();
    if (!up.ok() || *up != 0 || !wait.ok() || *wait != 0) {
      failure = absl::InternalError(
          absl::StrCat("run ", i, ": parley up/wait failed; ", log, " ends with:\n", Tail(log)));
    } else {
      applied.push_back(Seconds(t1 - t0));
      settled.push_back(Seconds(t2 - t0));
    }
    (void)Run({options.parley, "down", "--purge"}, model_dir, log);
  }
  if (!failure.ok()) return failure;
  fs::remove_all(work);
  std::vector<Report> out;
  auto stats = [&](Report& r, const std::string& name, std::vector<double> v) {
    std::sort(v.begin(), v.end());
    double sum = 0;
    for (double x : v) sum += x;
    r.AddDouble(name + "_mean_s", sum / v.size());
    r.AddDouble(name + "_min_s", v.front());
    r.AddDouble(name + "_max_s", v.back());
  };
  Report r("up");
  r.AddString("model", options.model);
  r.AddInt("runs", static_cast<int64_t>(settled.size()));
  stats(r, "applied", applied);
  stats(r, "settled", settled);
  out.push_back(std::move(r));
  return out;
}

}  // namespace parley::bench
