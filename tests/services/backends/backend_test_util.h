#pragma once

// Shared by the tests of the process-based backends (exec, ansible): a real engine on a real KB
// for one unit built from a service definition written into a temp dir, and helpers to make
// events, run shell commands and wait for processes to go.

#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "engine/engine.h"
#include "kb/kb.h"
#include "kb/store.h"
#include "services/definition/definition.h"
#include "services/backends/backends.h"
#include "tests/testing/temp_dir.h"

namespace parley::services::testing {

inline v1::Event Named(std::string name, std::map<std::string, std::string> params = {}) {
  v1::Event e;
  e.set_name(std::move(name));
  for (auto& [k, v] : params) (*e.mutable_params())[k] = v;
  return e;
}

inline v1::Event Joined(std::string endpoint, std::string id, std::string unit,
                        std::vector<std::pair<std::string, std::string>> data = {}) {
  v1::Event e;
  e.set_name(endpoint + ".joined");
  auto* r = e.mutable_relation();
  r->set_relation_id(id);
  r->set_endpoint(endpoint);
  r->set_remote_service(unit.substr(0, unit.find('/')));
  r->set_remote_unit(unit);
  r->set_kind(v1::RELATION_EVENT_KIND_JOINED);
  for (auto& [k, v] : data) {
    auto* c = r->add_unit_changes();
    c->set_key(k);
    c->set_value(v);
  }
  return e;
}

// Runs `command` through sh; returns its output (stdout and stderr) and exit status.
inline std::pair<std::string, int> Shell(const std::string& command) {
  FILE* f = popen((command + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const int status = pclose(f);
  return {out, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

// Whether process `pid` is gone (or a zombie) before `deadline`.
inline bool Gone(int pid, absl::Time deadline) {
  while (true) {
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    if (!std::getline(stat, line)) return true;
    const size_t paren = line.rfind(')');
    if (paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z') {
      return true;
    }
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

// An engine and KB for unit web/0 of the definition in `svc/` (interfaces in `shared/`).
class BackendTest : public ::testing::Test {
 protected:
  // Loads the definition written under dir_ and starts the engine; call from SetUp after writing
  // the files, and wrap in ASSERT_NO_FATAL_FAILURE.
  void Start(BackendOptions options) {
    auto def = LoadServiceDefinition(dir_.Sub("svc"), dir_.Sub("shared"));
    ASSERT_TRUE(def.ok()) << def.status();
    options.log = [this](absl::string_view, absl::string_view handler, absl::string_view source,
                         absl::string_view text) {
      logs_.push_back(absl::StrCat(handler, "|", source, "|", text));
    };
    std::unique_ptr<BackendRegistry> backends = MakeBackends(options);
    BackendRegistry& factory = *backends;
    auto spec = BuildSpec(*def, "web/0", factory);
    ASSERT_TRUE(spec.ok()) << spec.status();
    kb::StoreOptions o;
    o.durability = kb::Durability::kGroupCommit;
    auto store = kb::Store::Open(dir_.Sub("kb"), o);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto kb = kb::Kb::Open(store_.get(), "web/0");
    ASSERT_TRUE(kb.ok()) << kb.status();
    kb_ = std::move(*kb);
    auto engine = engine::Engine::Create(std::move(*spec), kb_.get(), &clock_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }

  void Write(const std::string& rel, const std::string& text) {
    const std::string path = dir_.Sub(rel);
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream(path) << text;
  }

  void Script(const std::string& rel, const std::string& text) {
    Write(rel, text);
    chmod(dir_.Sub(rel).c_str(), 0755);
  }

  engine::RunResult Run(v1::Event e) {
    auto id = engine_->Enqueue(std::move(e));
    EXPECT_TRUE(id.ok()) << id.status();
    auto r = engine_->RunOnce();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : engine::RunResult{};
  }

  std::string FailureMessage() const {
    return engine_->failure() ? engine_->failure()->message() : "(no failure)";
  }

  std::map<std::string, std::string> LocalBag(const std::string& relation) {
    auto bag = engine_->Bag(relation, "lu");
    EXPECT_TRUE(bag.ok()) << bag.status();
    return bag.ok() ? *bag : std::map<std::string, std::string>{};
  }

  ::parley::testing::TempDir dir_;
  base::ManualClock clock_;
  std::unique_ptr<kb::Store> store_;
  std::unique_ptr<kb::Kb> kb_;
  std::unique_ptr<engine::Engine> engine_;
  std::vector<std::string> logs_;
};

}  // namespace parley::services::testing
