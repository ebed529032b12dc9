#include "tools/bench/agent_bench.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "base/status_macros.h"
#include "parley/v1/agent.grpc.pb.h"
#include "parley/v1/peer.grpc.pb.h"
#include "services/fixtures/builtin_services.h"
#include "services/host/host.h"

extern char** environ;

namespace parley::bench {
namespace {

namespace fs = std::filesystem;
using services::Agent;
using services::Host;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

double RssMb(pid_t pid = 0) {
  std::ifstream in(pid == 0 ? std::string("/proc/self/status")
                            : absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      double kb = 0;
      (void)absl::SimpleAtod(absl::StripAsciiWhitespace(line.substr(6, line.size() - 9)), &kb);
      return kb / 1024.0;
    }
  }
  return 0;
}

// Raw gRPC: a Peer service that echoes every frame back, the reference for the agent protocol.
class EchoPeer : public v1::Peer::CallbackService {
  class Echo : public grpc::ServerBidiReactor<v1::PeerFrame, v1::PeerFrame> {
   public:
    Echo() { StartRead(&frame_); }
    void OnReadDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status::OK);
        return;
      }
      if (echo_) {
        StartWrite(&frame_);
      } else {
        StartRead(&frame_);
      }
    }
    void OnWriteDone(bool ok) override {
      if (!ok) return;
      StartRead(&frame_);
    }
    void OnDone() override { delete this; }
    bool echo_ = true;

   private:
    v1::PeerFrame frame_;
  };

 public:
  grpc::ServerBidiReactor<v1::PeerFrame, v1::PeerFrame>* Connect(
      grpc::CallbackServerContext* ctx) override {
    auto* e = new Echo();
    // Metadata "sink: 1" turns the echo off (streaming throughput).
    auto it = ctx->client_metadata().find("sink");
    if (it != ctx->client_metadata().end()) e->echo_ = false;
    return e;
  }
};

struct RawServer {
  EchoPeer service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
  RawServer() {
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&service);
    server = b.BuildAndStart();
    address = absl::StrCat("127.0.0.1:", port);
  }
};

v1::PeerFrame SampleFrame(int i) {
  v1::PeerFrame f;
  auto* e = f.mutable_event();
  e->set_relation_id("r:1");
  e->set_sender_unit("a/0");
  e->set_sequence(i);
  e->set_kind(v1::RELATION_EVENT_KIND_CHANGED);
  auto* c = e->add_unit_changes();
  c->set_key("value");
  c->set_value(absl::StrCat(i));
  return f;
}

// Round trips of one frame on a raw bidi stream, in microseconds.
std::vector<double> RawPingPong(int n) {
  RawServer s;
  auto stub = v1::Peer::NewStub(grpc::CreateChannel(s.address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  auto stream = stub->Connect(&ctx);
  std::vector<double> rtt;
  v1::PeerFrame in;
  for (int i = 0; i < n + 50; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    stream->Write(SampleFrame(i));
    stream->Read(&in);
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= 50) rtt.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  stream->WritesDone();
  stream->Finish().IgnoreError();
  return rtt;
}

// Frames per second streamed one by one on a raw bidi stream.
double RawStreaming(int n) {
  RawServer s;
  auto stub = v1::Peer::NewStub(grpc::CreateChannel(s.address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.AddMetadata("sink", "1");
  auto stream = stub->Connect(&ctx);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) stream->Write(SampleFrame(i));
  stream->WritesDone();
  stream->Finish().IgnoreError();  // returns once the server has read everything
  const auto t1 = std::chrono::steady_clock::now();
  return n / std::chrono::duration<double>(t1 - t0).count();
}

double FsyncMicros(const std::string& dir, int n) {
  const std::string path = dir + "/fsync-probe";
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return -1;
  std::vector<double> lat;
  for (int i = 0; i < n; ++i) {
    std::fputs("x", f);
    std::fflush(f);
    const auto t0 = std::chrono::steady_clock::now();
    fdatasync(fileno(f));
    lat.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  std::fclose(f);
  std::remove(path.c_str());
  return Percentile(lat, 0.5);
}

// Two hosts (separate KBs, real gRPC) with relay a/0 -> recorder c/0, plus observers.
struct Pair {
  std::unique_ptr<Host> h1, h2;
  Agent* a = nullptr;
  Agent* c = nullptr;
  absl::Mutex mu;
  std::map<std::string, absl::Time> committed ABSL_GUARDED_BY(mu);  // value -> sender commit
  std::map<std::string, absl::Time> applied ABSL_GUARDED_BY(mu);    // value -> receiver durable
  int64_t applied_count ABSL_GUARDED_BY(mu) = 0;
  bool record = true;

  // The receiver's kind: `recorder` keeps every value (hop), `relay` does constant work per
  // event (throughput).
  absl::Status Start(const std::string& dir, kb::Durability durability,
                     const std::string& receiver = "recorder") {
    services::HostOptions o;
    o.tls.plaintext = true;
    o.durability = durability;
    o.data_dir = dir + "/h1";
    ASSIGN_OR_RETURN(h1, Host::Start(o));
    o.data_dir = dir + "/h2";
    ASSIGN_OR_RETURN(h2, Host::Start(o));
    if (getenv("PARLEY_BENCH_LOG") != nullptr) {
      h1->logs().set_echo(true);
      h2->logs().set_echo(true);
    }
    services::AgentOptions ao;
    ao.on_commit = [this](const engine::RunResult& r) {
      const auto& t = r.trace->trigger();
      if (t.name() != "action.set" || !record) return;
      const absl::Time now = absl::Now();
      absl::MutexLock lock(&mu);
      committed[t.params().at("value")] = now;
    };
    ASSIGN_OR_RETURN(auto spec, services::BuiltinService("relay", "a/0"));
    ASSIGN_OR_RETURN(a, h1->AddAgent(std::move(spec), ao));
    services::AgentOptions co;
    co.on_durable = [this](const engine::RunResult& r) {
      const auto& t = r.trace->trigger();
      if (t.name() != "in.changed") return;
      const absl::Time now = absl::Now();
      absl::MutexLock lock(&mu);
      ++applied_count;
      if (!record) return;
      for (const auto& ch : t.relation().unit_changes()) {
        if (ch.key() == "value") applied[ch.value()] = now;
      }
    };
    ASSIGN_OR_RETURN(auto cspec, services::BuiltinService(receiver, "c/0"));
    ASSIGN_OR_RETURN(c, h2->AddAgent(std::move(cspec), co));
    v1::RelateRequest r;
    r.set_agent("a/0");
    r.set_relation_id("bench:1");
    r.set_endpoint("out");
    r.set_remote_agent("c/0");
    r.set_remote_address(h2->address());
    r.set_remote_endpoint("in");
    absl::Notification done;
    absl::Status status;
    h1->Relate(r, [&](absl::StatusOr<v1::RelateResponse> resp) {
      status = resp.status();
      done.Notify();
    });
    done.WaitForNotification();
    RETURN_IF_ERROR(status);
    // The introduction (joined) reaches the recorder first; wait for it.
    return Fire("0", /*wait=*/true);
  }

  absl::Status Fire(const std::string& value, bool wait) {
    v1::FireEventRequest f;
    f.set_agent("a/0");
    f.set_event("action.set");
    (*f.mutable_params())["value"] = value;
    absl::Notification posted;
    absl::Status status;
    a->strand()->Post([&] {
      status = a->FireEvent(f).status();
      posted.Notify();
    });
    posted.WaitForNotification();
    RETURN_IF_ERROR(status);
    if (!wait) return absl::OkStatus();
    absl::MutexLock lock(&mu);
    auto has = [this, &value]()
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return applied.contains(value); };
    if (!mu.AwaitWithTimeout(absl::Condition(&has), absl::Seconds(30))) {
      return absl::DeadlineExceededError(absl::StrCat("value ", value, " never arrived"));
    }
    return absl::OkStatus();
  }
};

absl::StatusOr<Report> HopOnce(const std::string& dir, kb::Durability durability, int hops,
                               const std::string& label, double target_p50_us) {
  Pair p;
  RETURN_IF_ERROR(p.Start(dir, durability));
  for (int i = 1; i <= 20; ++i) RETURN_IF_ERROR(p.Fire(absl::StrCat("w", i), true));  // warm-up
  std::vector<double> lat;
  for (int i = 1; i <= hops; ++i) {
    const std::string v = absl::StrCat(i);
    RETURN_IF_ERROR(p.Fire(v, true));
    absl::MutexLock lock(&p.mu);
    lat.push_back(absl::ToDoubleMicroseconds(p.applied[v] - p.committed[v]));
  }
  Report r("hop");
  r.AddString("mode", label);
  r.AddInt("hops", hops);
  r.AddDouble("p50_us", Percentile(lat, 0.5));
  r.AddDouble("p99_us", Percentile(lat, 0.99));
  r.AddDouble("target_p50_us", target_p50_us);
  r.AddBool("meets_target", Percentile(lat, 0.5) <= target_p50_us);
  return r;
}

}  // namespace

absl::StatusOr<std::vector<Report>> RunHopBench(const HopBenchOptions& options) {
  std::vector<Report> out;
  const std::vector<double> raw = RawPingPong(options.hops * 3);
  const double raw_p50 = Percentile(raw, 0.5);
  // The target: p50 <= raw round trip + 100 us, with group commit.
  const double target = raw_p50 + 100;
  ASSIGN_OR_RETURN(TempDir disk, TempDir::Create(options.dir));
  struct Mode {
    std::string label;
    kb::Durability durability;
    bool tmpfs;
  };
  std::vector<Mode> modes = {{"group", kb::Durability::kGroupCommit, false},
                             {"sync", kb::Durability::kSync, false}};
  if (options.tmpfs_too && fs::exists("/dev/shm")) {
    modes.push_back({"group-tmpfs", kb::Durability::kGroupCommit, true});
  }
  for (const Mode& m : modes) {
    std::optional<TempDir> shm;
    std::string dir = disk.Sub(m.label);
    if (m.tmpfs) {
      auto t = TempDir::Create("/dev/shm");
      if (!t.ok()) return t.status();
      shm.emplace(std::move(*t));
      dir = shm->Sub(m.label);
    }
    fs::create_directories(dir);
    const double fsync_us = FsyncMicros(dir, 50);
    ASSIGN_OR_RETURN(Report r, HopOnce(dir, m.durability, options.hops, m.label, target));
    r.AddDouble("fsync_p50_us", fsync_us);
    r.AddDouble("raw_grpc_rtt_p50_us", raw_p50);
    r.AddDouble("raw_grpc_rtt_p99_us", Percentile(raw, 0.99));
    out.push_back(std::move(r));
  }
  return out;
}

absl::StatusOr<std::vector<Report>> RunThroughputBench(const ThroughputBenchOptions& options) {
  const double raw = RawStreaming(options.events * 5);
  ASSIGN_OR_RETURN(TempDir disk, TempDir::Create(options.dir));
  Pair p;
  RETURN_IF_ERROR(p.Start(disk.Sub("x"), kb::Durability::kGroupCommit, "relay"));
  p.record = false;
  int64_t before;
  {
    absl::MutexLock lock(&p.mu);
    before = p.applied_count;
  }
  const absl::Time t0 = absl::Now();
  // Every event is its own run on both sides: the sender applies action.set events one by one.
  absl::Notification posted;
  absl::Status status;
  p.a->strand()->Post([&] {
    for (int i = 1; i <= options.events && status.ok(); ++i) {
      v1::FireEventRequest f;
      f.set_agent("a/0");
      f.set_event("action.set");
      (*f.mutable_params())["value"] = absl::StrCat(i);
      status = p.a->FireEvent(f).status();
    }
    posted.Notify();
  });
  posted.WaitForNotification();
  RETURN_IF_ERROR(status);
  {
    absl::MutexLock lock(&p.mu);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(p.mu) {
      return p.applied_count - before >= options.events;
    };
    if (!p.mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(120))) {
      return absl::DeadlineExceededError("throughput: events did not all arrive in 120 s");
    }
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - t0);
  Report r("throughput");
  r.AddInt("events", options.events);
  r.AddDouble("seconds", seconds);
  r.AddDouble("events_per_s", options.events / seconds);
  r.AddDouble("raw_grpc_stream_msgs_per_s", raw);
  r.AddDouble("target_events_per_s", 100000);
  r.AddBool("meets_target", options.events / seconds >= 100000);
  return std::vector<Report>{std::move(r)};
}

absl::StatusOr<std::vector<Report>> RunConvergeBench(const ConvergeBenchOptions& options) {
  if (options.agents < 2) return absl::InvalidArgumentError("--agents must be at least 2");
  if (options.topology != "chain" && options.topology != "star" && options.topology != "tree") {
    return absl::InvalidArgumentError("--topology must be chain, star or tree");
  }
  ASSIGN_OR_RETURN(TempDir dir, TempDir::Create(options.dir));
  services::HostOptions o;
  o.tls.plaintext = true;
  o.data_dir = dir.Sub("kb");
  o.log_capacity = 1000;
  ASSIGN_OR_RETURN(auto host, Host::Start(o));
  const double rss_empty = RssMb();

  absl::Mutex mu;
  int reached = 0;
  std::string want;
  services::AgentOptions ao;
  ao.on_durable = [&](const engine::RunResult& r) {
    for (const auto& s : r.trace->facts_changed()) {
      if (s.name() == "value" && s.set()) {
        absl::MutexLock lock(&mu);
        if (s.value() == want) ++reached;
      }
    }
  };
  std::vector<Agent*> agents;
  for (int i = 0; i < options.agents; ++i) {
    ASSIGN_OR_RETURN(auto spec, services::BuiltinService("relay", absl::StrCat("n", i, "/0")));
    ASSIGN_OR_RETURN(Agent * a, host->AddAgent(std::move(spec), ao));
    agents.push_back(a);
  }
  auto parent_of = [&](int i) {
    if (options.topology == "chain") return i - 1;
    if (options.topology == "star") return 0;
    return (i - 1) / 2;  // binary tree
  };
  std::atomic<int> pending{0};
  absl::Status relate_status;
  absl::Mutex rmu;
  for (int i = 1; i < options.agents; ++i) {
    v1::RelateRequest r;
    r.set_agent(agents[parent_of(i)]->name());
    r.set_relation_id(absl::StrCat("t:", i));
    r.set_endpoint("out");
    r.set_remote_agent(agents[i]->name());
    r.set_remote_endpoint("in");
    ++pending;
    host->Relate(r, [&](absl::StatusOr<v1::RelateResponse> resp) {
      if (!resp.ok()) {
        absl::MutexLock lock(&rmu);
        relate_status = resp.status();
      }
      --pending;
    });
  }
  auto settled = [&]() -> bool {
    for (int round = 0; round < 2; ++round) {
      for (Agent* a : agents) {
        absl::Notification n;
        bool idle = false;
        a->strand()->Post([&] {
          idle = a->CheckIdle().idle();
          n.Notify();
        });
        n.WaitForNotification();
        if (!idle) return false;
      }
    }
    return true;
  };
  const absl::Time setup_deadline = absl::Now() + absl::Seconds(120);
  while ((pending > 0 || !settled()) && absl::Now() < setup_deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  RETURN_IF_ERROR(relate_status);
  const double rss_idle = RssMb();

  {
    absl::MutexLock lock(&mu);
    want = "converged";
    reached = 0;
  }
  const absl::Time t0 = absl::Now();
  v1::FireEventRequest f;
  f.set_agent(agents[0]->name());
  f.set_event("action.set");
  (*f.mutable_params())["value"] = "converged";
  absl::Notification fired;
  agents[0]->strand()->Post([&] {
    (void)agents[0]->FireEvent(f);
    fired.Notify();
  });
  fired.WaitForNotification();
  {
    absl::MutexLock lock(&mu);
    auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return reached >= options.agents; };
    if (!mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(120))) {
      return absl::DeadlineExceededError(
          absl::StrCat("converge: only ", reached, " of ", options.agents, " agents reached"));
    }
  }
  const double converge_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
  Report r("converge");
  r.AddString("topology", options.topology);
  r.AddInt("agents", options.agents);
  r.AddDouble("converge_ms", converge_ms);
  r.AddDouble("rss_mb", rss_idle);
  r.AddDouble("rss_per_agent_mb", (rss_idle - rss_empty) / options.agents);
  const double target = options.topology == "chain" ? 1000 : options.topology == "star" ? 300 : -1;
  if (target > 0 && options.agents >= 1000) {
    r.AddDouble("target_ms", target);
    r.AddBool("meets_target", converge_ms <= target);
  }
  host->Shutdown();
  return std::vector<Report>{std::move(r)};
}

absl::StatusOr<std::vector<Report>> RunMemoryBench(const MemoryBenchOptions& options) {
  ASSIGN_OR_RETURN(TempDir dir, TempDir::Create(options.dir));
  auto measure = [&](int agents) -> absl::StatusOr<double> {
    std::string list;
    for (int i = 0; i < agents; ++i) absl::StrAppend(&list, i ? "," : "", "m", i, "/0=relay");
    const std::string data = dir.Sub(absl::StrCat("kb", agents));
    const std::string addr = dir.Sub(absl::StrCat("addr", agents));
    std::vector<std::string> args = {
        options.parleyd,    "--data=" + data,         "--plaintext",
        "--agents=" + list, "--address_file=" + addr, "--log_stderr=false"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    const int spawned =
        posix_spawn(&pid, options.parleyd.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) return absl::UnavailableError(absl::StrCat("cannot start ", options.parleyd));
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (!fs::exists(addr) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
    // Let start-up runs finish and memory settle: take the last of several readings once two
    // agree within 1%.
    double rss = 0, prev = -1;
    for (int i = 0; i < 50; ++i) {
      absl::SleepFor(absl::Milliseconds(200));
      rss = RssMb(pid);
      if (prev > 0 && std::abs(rss - prev) < prev * 0.01) break;
      prev = rss;
    }
    kill(pid, SIGTERM);
    int st = 0;
    waitpid(pid, &st, 0);
    if (rss <= 0) return absl::InternalError("could not read parleyd's RSS");
    return rss;
  };
  ASSIGN_OR_RETURN(double one, measure(1));
  ASSIGN_OR_RETURN(double many, measure(options.agents));
  Report r("memory");
  r.AddDouble("rss_one_agent_mb", one);
  r.AddInt("agents", options.agents);
  r.AddDouble("rss_many_agents_mb", many);
  const double per = (many - one) / (options.agents - 1);
  r.AddDouble("rss_per_extra_agent_mb", per);
  r.AddBool("meets_target", one <= 25 && per <= 2);
  return std::vector<Report>{std::move(r)};
}

}  // namespace parley::bench
