// A small service agent's engine, driven through a relation's lifecycle, printing each run's
// trace: what `make demo` shows until the CLI lands.

#include <cstdio>
#include <filesystem>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/engine.h"
#include "engine/trace_format.h"

namespace pe = parley::engine;
namespace v1 = parley::v1;

namespace {

pe::ServiceSpec AppSpec() {
  pe::ServiceSpec spec;
  spec.service = "app";
  spec.unit = "app/0";
  spec.endpoints.push_back({"db", pe::Role::kRequires, "redis", {"host", "port", "password"}});
  spec.endpoints.push_back({"website", pe::Role::kProvides, "http", {}});
  auto add = [&](std::string name, std::vector<std::string> when, std::vector<std::string> when_not,
                 std::vector<std::string> on, std::function<absl::Status(pe::RunContext&)> fn) {
    spec.handlers.push_back({std::move(name), std::move(when), std::move(when_not), std::move(on),
                             pe::MakeAction(std::move(fn))});
  };
  add("install", {}, {"app.installed"}, {},
      [](pe::RunContext& ctx) { return ctx.Set("app.installed", "1.4.2"); });
  add("wait-for-db", {"app.installed"}, {"db.ready"}, {}, [](pe::RunContext& ctx) {
    return ctx.SetStatus(v1::WORKLOAD_STATE_WAITING, "waiting for a database");
  });
  add("configure", {"app.installed", "db.ready"}, {}, {}, [](pe::RunContext& ctx) {
    for (const auto* rel : ctx.Relations("db")) {
      for (const auto& unit : rel->remote_units()) {
        auto bag = ctx.Bag(rel->relation_id(), absl::StrCat("ru:", unit));
        if (!bag.ok()) return bag.status();
        return ctx.Set("app.configured", absl::StrCat((*bag)["host"], ":", (*bag)["port"]));
      }
    }
    return absl::OkStatus();
  });
  add("start", {"app.configured"}, {"app.running"}, {}, [](pe::RunContext& ctx) {
    if (auto s = ctx.Set("app.running"); !s.ok()) return s;
    return ctx.SetStatus(v1::WORKLOAD_STATE_ACTIVE, "serving");
  });
  // The first restart attempt finds the old process still holding the port: a transient failure
  // that rolls the run back; the retry succeeds.
  auto attempts = std::make_shared<int>(0);
  add("restart", {"app.running"}, {}, {"config.changed"}, [attempts](pe::RunContext& ctx) {
    if (auto s = ctx.Set("app.port", ctx.event().params().at("port")); !s.ok()) return s;
    if ((*attempts)++ == 0) {
      return absl::UnavailableError("port still held by the previous process");
    }
    return ctx.Fire("app.restarted");
  });
  add("announce", {"app.running"}, {}, {"app.restarted"}, [](pe::RunContext& ctx) {
    for (const auto* rel : ctx.Relations("website")) {
      if (auto s = ctx.SetData(rel->relation_id(), "url", "http://10.0.0.5:8080"); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  });
  add("stop-on-db-loss", {"app.running"}, {"db.joined"}, {}, [](pe::RunContext& ctx) {
    if (auto s = ctx.Clear("app.running"); !s.ok()) return s;
    if (auto s = ctx.Clear("app.configured"); !s.ok()) return s;
    return ctx.SetStatus(v1::WORKLOAD_STATE_BLOCKED, "database relation broken");
  });
  return spec;
}

v1::Event Relation(std::string endpoint, v1::RelationEventKind kind, std::string name,
                   std::string id, std::string remote_unit,
                   std::vector<std::pair<std::string, std::string>> data = {}) {
  v1::Event e;
  e.set_name(name);
  e.set_source("demo");
  auto* r = e.mutable_relation();
  r->set_relation_id(id);
  r->set_endpoint(endpoint);
  r->set_remote_service(remote_unit.substr(0, remote_unit.find('/')));
  r->set_remote_unit(remote_unit);
  r->set_kind(kind);
  for (auto& [k, v] : data) {
    auto* c = r->add_unit_changes();
    c->set_key(k);
    c->set_value(v);
  }
  return e;
}

v1::Event Internal(std::string name, std::vector<std::pair<std::string, std::string>> params = {}) {
  v1::Event e;
  e.set_name(name);
  e.set_source("demo");
  for (auto& [k, v] : params) (*e.mutable_params())[k] = v;
  return e;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "parley-engine-demo: %s\n", std::string(s.message()).c_str());
  return 1;
}

}  // namespace

int main() {
  const std::string dir =
      (std::filesystem::temp_directory_path() / absl::StrCat("parley-demo-", getpid())).string();
  parley::kb::StoreOptions options;
  auto store = parley::kb::Store::Open(dir, options);
  if (!store.ok()) return Fail(store.status());
  auto kb = parley::kb::Kb::Open(store->get(), "app/0");
  if (!kb.ok()) return Fail(kb.status());
  parley::base::Clock& clock = *parley::base::SystemClock::Get();
  pe::EngineOptions engine_options;
  engine_options.retry_initial = absl::Milliseconds(300);
  auto engine = pe::Engine::Create(AppSpec(), kb->get(), &clock, engine_options);
  if (!engine.ok()) return Fail(engine.status());

  std::printf("Parley engine demo: service 'app' (unit app/0), KB at %s\n\n", dir.c_str());
  std::vector<std::pair<std::string, v1::Event>> script = {
      {"The agent starts.", Internal("install")},
      {"A redis unit joins the db relation; its data is not complete yet.",
       Relation("db", v1::RELATION_EVENT_KIND_JOINED, "db.joined", "db:1", "redis/0",
                {{"host", "10.0.0.7"}})},
      {"The redis unit publishes port and password: db.ready is derived, the app configures.",
       Relation("db", v1::RELATION_EVENT_KIND_CHANGED, "db.changed", "db:1", "redis/0",
                {{"port", "6379"}, {"password", "s3cret"}})},
      {"A balancer relates on website.", Relation("website", v1::RELATION_EVENT_KIND_JOINED,
                                                  "website.joined", "website:2", "haproxy/0")},
      {"The operator changes the port. The restart fails once: the whole run rolls back (app.port"
       " is not kept), the event stays at the inbox head and is retried after a backoff.",
       Internal("config.changed", {{"port", "8080"}})},
      {"The database goes away.",
       Relation("db", v1::RELATION_EVENT_KIND_DEPARTED, "db.departed", "db:1", "redis/0")},
  };
  for (auto& [what, event] : script) {
    std::printf("# %s\n", what.c_str());
    if (auto r = (*engine)->Enqueue(event); !r.ok()) return Fail(r.status());
    for (;;) {
      auto r = (*engine)->RunOnce();
      if (!r.ok()) return Fail(r.status());
      if (r->trace) std::printf("%s", pe::FormatTrace(*r->trace).c_str());
      if (r->outcome == pe::RunOutcome::kFailed) {
        const v1::RunFailure f = *(*engine)->failure();
        std::printf(
            "  agent error: handler %s failed (attempt %u): %s; app.port is %s; retry in %.2f s\n",
            f.handler().c_str(), f.attempt(), f.message().c_str(),
            (*engine)->IsSet("app.port") ? "set" : "not set",
            absl::ToDoubleSeconds(r->next_attempt - clock.Now()));
        absl::SleepFor(r->next_attempt - clock.Now());
        continue;
      }
      if (r->outcome != pe::RunOutcome::kCommitted) break;
      if (auto s = (*kb)->store()->WaitDurable(r->ticket); !s.ok()) return Fail(s);
    }
    std::printf("\n");
  }
  auto facts = (*engine)->Facts();
  std::printf("Facts now:\n");
  for (const auto& [k, v] : facts)
    std::printf("  %s%s%s\n", k.c_str(), v.empty() ? "" : " = ", v.c_str());
  const auto st = (*engine)->workload_status();
  std::printf("Workload status: %s %s\n", v1::WorkloadState_Name(st.state()).c_str(),
              st.message().c_str());
  std::filesystem::remove_all(dir);
  return 0;
}
