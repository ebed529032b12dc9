#pragma once

// Helpers for tests that run real `parleyd` processes: spawn one, wait for it to listen, drive it
// through the agent API, read its metrics, and kill or stop it. Every wait is bounded.
//
// Children get PR_SET_PDEATHSIG(SIGKILL), so a crashed test does not leave daemons behind.
// PARLEYD_BINARY=<path> runs another build of parleyd (for example one with sanitizers).

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "parley/v1/agent.grpc.pb.h"
#include "services/transport/status_convert.h"
#include "tests/testing/free_port.h"

namespace parley::services::testing {

using parley::testing::PickFreePort;

inline int PortOf(const std::string& address) {
  int port = 0;
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) return 0;
  return port;
}

// Starts `args` (args[0] is the program) with stdout and stderr appended to `log`. Returns the
// pid, or -1 if fork failed.
inline pid_t Spawn(const std::vector<std::string>& args, const std::string& log) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid != 0) return pid;
  // Only async-signal-safe calls from here to exec: the test process has threads.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(125);
  const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0 || dup2(fd, STDERR_FILENO) < 0) _exit(126);
  close_range(3, ~0U, 0);
  execv(argv[0], argv.data());
  _exit(127);
}

// Waits up to `timeout` for `pid` to exit; returns its wait status, or nullopt if it still runs.
inline std::optional<int> WaitExit(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return std::nullopt;
    if (absl::Now() > deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

inline std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("killed by signal ", WTERMSIG(status));
  return absl::StrCat("wait status ", status);
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The last `lines` lines of `text`.
inline std::string Tail(const std::string& text, size_t lines) {
  std::vector<std::string> all = absl::StrSplit(text, '\n');
  if (all.size() > lines) all.erase(all.begin(), all.end() - lines);
  return absl::StrJoin(all, "\n");
}

// GET /metrics from 127.0.0.1:port; the Prometheus text, or an error.
inline absl::StatusOr<std::string> FetchMetrics(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket() failed");
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to metrics port ", port));
  }
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) != ssize_t(request.size())) {
    close(fd);
    return absl::UnavailableError("sending the metrics request failed");
  }
  std::string response;
  char buf[8192];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, n);
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (n < 0 || body == std::string::npos || !absl::StartsWith(response, "HTTP/1.")) {
    return absl::UnavailableError(absl::StrCat("bad metrics response from port ", port));
  }
  return response.substr(body + 4);
}

// The value of one series (name with labels exactly as serialized, e.g.
// `parley_peer_stream_up{agent="c/0",peer="a/0"}`), if present.
inline std::optional<double> MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, series) || !absl::ConsumePrefix(&line, " ")) continue;
    double v = 0;
    if (absl::SimpleAtod(line, &v)) return v;
  }
  return std::nullopt;
}

// The parleyd under test: PARLEYD (set by CMake), or $PARLEYD_BINARY (a sanitizer build, say).
inline std::string ParleydBinary() {
  const char* env = getenv("PARLEYD_BINARY");
  return env != nullptr && *env != '\0' ? env : PARLEYD;
}

struct ParleydOptions {
  std::string data;
  // --agents, e.g. "a/0=relay".
  std::string agents;
  std::string listen = "127.0.0.1:0";
  // --advertise; needs an explicit listen port (the address file then holds this address).
  std::string advertise;
  // stdout and stderr of every incarnation are appended here.
  std::string log;
  // Serve /metrics (see Parleyd::Metrics()).
  bool metrics = true;
};

// One running parleyd process. Not thread-safe.
class Parleyd {
 public:
  // Spawns parleyd and waits up to `timeout` until it has written its address file. Retries with
  // another metrics port if the process exits before that (the picked port may have been taken).
  static absl::StatusOr<std::unique_ptr<Parleyd>> Start(
      ParleydOptions options, absl::Duration timeout = absl::Seconds(15)) {
    absl::Status last;
    for (int attempt = 0; attempt < 3; ++attempt) {
      std::unique_ptr<Parleyd> p(new Parleyd(options));
      last = p->Launch(timeout);
      if (last.ok()) return p;
      if (!absl::IsAborted(last)) break;  // aborted: it exited early, maybe a port clash
    }
    return last;
  }

  ~Parleyd() {
    if (running()) Kill();
  }
  Parleyd(const Parleyd&) = delete;
  Parleyd& operator=(const Parleyd&) = delete;

  // The address peers use (the advertised one).
  const std::string& address() const { return address_; }
  // Where the agent API is reachable directly.
  const std::string& api_address() const { return api_address_; }
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  const ParleydOptions& options() const { return options_; }
  v1::Agent::Stub& api() { return *stub_; }

  // SIGKILL, then reap.
  void Kill() {
    kill(pid_, SIGKILL);
    WaitExit(pid_, absl::Seconds(10));
    pid_ = -1;
  }

  // SIGTERM; the wait status once it exits within `timeout`. On timeout it is SIGKILLed and an
  // error returned.
  absl::StatusOr<int> Terminate(absl::Duration timeout) {
    kill(pid_, SIGTERM);
    std::optional<int> status = WaitExit(pid_, timeout);
    if (!status) {
      Kill();
      return absl::DeadlineExceededError(absl::StrCat(
          "parleyd did not exit within ", absl::FormatDuration(timeout), " of SIGTERM"));
    }
    pid_ = -1;
    return *status;
  }

  absl::StatusOr<std::string> Metrics() const {
    if (!options_.metrics) return absl::FailedPreconditionError("started without metrics");
    return FetchMetrics(metrics_port_);
  }

 private:
  explicit Parleyd(ParleydOptions options) : options_(std::move(options)) {}

  absl::Status Launch(absl::Duration timeout) {
    static int counter = 0;
    const std::string address_file =
        absl::StrCat(options_.data, ".addr.", getpid(), ".", counter++);
    std::filesystem::remove(address_file);
    std::vector<std::string> args = {ParleydBinary(),
                                     "--data=" + options_.data,
                                     "--listen=" + options_.listen,
                                     "--agents=" + options_.agents,
                                     "--plaintext",
                                     "--address_file=" + address_file,
                                     "--log_stderr=true"};
    if (options_.metrics) {
      metrics_port_ = PickFreePort();
      args.push_back(absl::StrCat("--metrics_listen=127.0.0.1:", metrics_port_));
    }
    if (!options_.advertise.empty()) args.push_back("--advertise=" + options_.advertise);
    std::ofstream(options_.log, std::ios::app)
        << "=== test: starting " << absl::StrJoin(args, " ") << "\n";
    pid_ = Spawn(args, options_.log);
    if (pid_ < 0) return absl::InternalError("fork failed");
    const absl::Time deadline = absl::Now() + timeout;
    while (!std::filesystem::exists(address_file)) {
      if (std::optional<int> status = WaitExit(pid_, absl::ZeroDuration())) {
        pid_ = -1;
        return absl::AbortedError(absl::StrCat("parleyd exited before listening (",
                                               DescribeWaitStatus(*status),
                                               "): ", Tail(ReadFile(options_.log), 5)));
      }
      if (absl::Now() > deadline) {
        Kill();
        return absl::DeadlineExceededError("parleyd did not write its address file in time");
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    address_ = std::string(absl::StripAsciiWhitespace(ReadFile(address_file)));
    std::filesystem::remove(address_file);
    api_address_ = options_.advertise.empty() ? address_ : options_.listen;
    stub_ =
        v1::Agent::NewStub(grpc::CreateChannel(api_address_, grpc::InsecureChannelCredentials()));
    return absl::OkStatus();
  }

  ParleydOptions options_;
  pid_t pid_ = -1;
  int metrics_port_ = 0;
  std::string address_;
  std::string api_address_;
  std::unique_ptr<v1::Agent::Stub> stub_;
};

// The agent API, one call each, with a deadline.

inline std::unique_ptr<grpc::ClientContext> CallContext(absl::Duration timeout = absl::Seconds(5)) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return ctx;
}

inline absl::StatusOr<std::map<std::string, std::string>> GetFacts(Parleyd& p,
                                                                   const std::string& agent) {
  v1::GetFactsRequest req;
  req.set_agent(agent);
  v1::GetFactsResponse resp;
  auto ctx = CallContext();
  if (auto s = FromGrpcStatus(p.api().GetFacts(ctx.get(), req, &resp)); !s.ok()) return s;
  std::map<std::string, std::string> facts;
  for (const auto& f : resp.facts()) facts[f.name()] = f.value();
  return facts;
}

// One fact, or "" when unset or unreachable.
inline std::string FactOr(Parleyd& p, const std::string& agent, const std::string& name) {
  auto facts = GetFacts(p, agent);
  if (!facts.ok()) return "";
  auto it = facts->find(name);
  return it == facts->end() ? "" : it->second;
}

inline absl::Status FireEvent(Parleyd& p, const std::string& agent, const std::string& event,
                              const std::map<std::string, std::string>& params) {
  v1::FireEventRequest req;
  req.set_agent(agent);
  req.set_event(event);
  for (const auto& [k, v] : params) (*req.mutable_params())[k] = v;
  v1::FireEventResponse resp;
  auto ctx = CallContext();
  return FromGrpcStatus(p.api().FireEvent(ctx.get(), req, &resp));
}

inline absl::Status Relate(Parleyd& p, const v1::RelateRequest& req) {
  v1::RelateResponse resp;
  auto ctx = CallContext(absl::Seconds(15));
  return FromGrpcStatus(p.api().Relate(ctx.get(), req, &resp));
}

inline absl::StatusOr<v1::CheckIdleResponse> CheckIdle(Parleyd& p, const std::string& agent) {
  v1::CheckIdleRequest req;
  req.set_agent(agent);
  v1::CheckIdleResponse resp;
  auto ctx = CallContext();
  if (auto s = FromGrpcStatus(p.api().CheckIdle(ctx.get(), req, &resp)); !s.ok()) return s;
  return resp;
}

inline absl::StatusOr<v1::AgentStatus> GetStatus(Parleyd& p, const std::string& agent) {
  v1::GetStatusRequest req;
  req.set_agent(agent);
  v1::AgentStatus resp;
  auto ctx = CallContext();
  if (auto s = FromGrpcStatus(p.api().GetStatus(ctx.get(), req, &resp)); !s.ok()) return s;
  return resp;
}

// One agent of one process.
struct AgentRef {
  Parleyd* process;
  std::string agent;
};

// Every agent idle, twice in a row with no progress in between.
inline bool Settled(const std::vector<AgentRef>& agents) {
  auto snapshot = [&](uint64_t* progress) {
    *progress = 0;
    for (const auto& a : agents) {
      auto r = CheckIdle(*a.process, a.agent);
      if (!r.ok() || !r->idle()) return false;
      *progress += r->progress();
    }
    return true;
  };
  uint64_t p1 = 0, p2 = 0;
  if (!snapshot(&p1)) return false;
  return snapshot(&p2) && p1 == p2;
}

// Polls `condition` every `interval` until it holds or `timeout` passes; returns whether it held.
inline bool PollFor(const std::function<bool()>& condition, absl::Duration timeout,
                    absl::Duration interval = absl::Milliseconds(5)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(interval);
  }
  return condition();
}

// Fires `action.set value=i` at `sender` (a relay) for i in [from, to] from a thread, in bursts of
// `burst` values `pace` apart, so that the test can kill and cut things while values flow and
// the sender has a backlog. A call that fails (the sender is down or restarting) is retried until
// it succeeds, before the next value: a retried value that had in fact been applied is harmless,
// because setting the value the relay already has changes no relation data and so sends nothing.
class Firer {
 public:
  Firer(const std::string& address, std::string sender, int from, int to, int burst,
        absl::Duration pace)
      : address_(address), sender_(std::move(sender)), next_(from), to_(to) {
    thread_ = std::thread([this, burst, pace] { Run(burst, pace); });
  }
  ~Firer() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  // Where the sender's API is now (it restarted).
  void SetAddress(const std::string& address) {
    absl::MutexLock lock(&mu_);
    address_ = address;
  }
  // Values fired so far (the last is next() - 1).
  int next() const { return next_.load(); }
  // Fires no value above `through` until allowed further (default: every value up to `to`).
  void Allow(int through) { allowed_ = through; }

  // Waits (bounded) until every value was fired.
  absl::Status Wait(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (next_ <= to_ && !failed_) {
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("firing stuck at value ", next_.load()));
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    stop_ = true;
    thread_.join();
    absl::MutexLock lock(&mu_);
    return error_;
  }

 private:
  void Run(int burst, absl::Duration pace) {
    std::string address;
    std::unique_ptr<v1::Agent::Stub> stub;
    absl::Time failing_since = absl::InfiniteFuture();
    while (!stop_ && next_ <= to_) {
      if (next_ > allowed_) {
        absl::SleepFor(absl::Milliseconds(2));
        continue;
      }
      {
        absl::MutexLock lock(&mu_);
        if (address != address_) {
          address = address_;
          stub =
              v1::Agent::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
        }
      }
      v1::FireEventRequest req;
      req.set_agent(sender_);
      req.set_event("action.set");
      (*req.mutable_params())["value"] = absl::StrCat(next_.load());
      v1::FireEventResponse resp;
      auto ctx = CallContext();
      const grpc::Status s = stub->FireEvent(ctx.get(), req, &resp);
      if (s.ok()) {
        failing_since = absl::InfiniteFuture();
        if (next_++ % burst == 0) absl::SleepFor(pace);
        continue;
      }
      failing_since = std::min(failing_since, absl::Now());
      if (absl::Now() - failing_since > absl::Seconds(30)) {
        absl::MutexLock lock(&mu_);
        error_ = absl::UnavailableError(
            absl::StrCat("firing value ", next_.load(), " at ", address, ": ", s.error_message()));
        failed_ = true;
        return;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

  absl::Mutex mu_;
  std::string address_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  const std::string sender_;
  std::atomic<int> next_;
  const int to_;
  std::atomic<int> allowed_{INT32_MAX};
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  std::thread thread_;
};

}  // namespace parley::services::testing
