#pragma once

// The parley CLI's view of a parleyd: its agent API (proto/parley/v1/agent.proto) with a deadline
// on every call and errors as absl::Status naming the address.

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "parley/v1/agent.grpc.pb.h"

namespace parley::cli {

class AgentClient {
 public:
  // `credentials`: the model's (see ModelDir::credentials()); plaintext when null.
  explicit AgentClient(std::string address,
                       std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr)
      : address_(std::move(address)),
        stub_(v1::Agent::NewStub(grpc::CreateChannel(
            address_, credentials ? credentials : grpc::InsecureChannelCredentials()))) {}

  // Over `channel` (one with channel arguments of its own).
  AgentClient(std::string address, const std::shared_ptr<grpc::Channel>& channel)
      : address_(std::move(address)), stub_(v1::Agent::NewStub(channel)) {}

  const std::string& address() const { return address_; }

  // Calls wait (until their deadline) for a connection instead of failing at once while the
  // channel is in transient failure. For waiting until a parleyd answers: a blocking client
  // makes progress on a connection only while a call is pending (otherwise gRPC's backup poller
  // does, every 5 s), so a loop of calls that fail at once took 15-20 s to get through a
  // connection's TCP and TLS handshakes.
  void set_wait_for_ready(bool wait) { wait_for_ready_ = wait; }
  v1::Agent::Stub* stub() { return stub_.get(); }

  // Calls `method` with `request`; the answer lands in `response`. A parleyd that does not
  // answer within `timeout` (a loaded machine, a process paused) is asked again, with twice the
  // deadline each time, up to kAttempts, and the CLI says so on stderr; a call that cannot be
  // repeated safely (FireEvent: each call queues an event) is not. A parleyd that is not there at
  // all (connection refused: UNAVAILABLE) fails at once. The final error says what was asked and
  // how long each attempt waited, and the machine's load.
  template <typename Req, typename Resp>
  absl::Status Call(grpc::Status (v1::Agent::Stub::*method)(grpc::ClientContext*, const Req&,
                                                            Resp*),
                    const Req& request, Resp* response,
                    absl::Duration timeout = absl::Seconds(30)) {
    constexpr bool kRepeatable = !std::is_same_v<Req, v1::FireEventRequest>;
    const std::string what = RpcName(Req::descriptor()->name());
    std::vector<std::string> waited;
    absl::Duration deadline = timeout;
    for (int attempt = 1;; ++attempt) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
      ctx.set_wait_for_ready(wait_for_ready_);
      grpc::Status s = (stub_.get()->*method)(&ctx, request, response);
      if (s.ok()) return absl::OkStatus();
      // A repeated add or remove that finds its own first attempt's work done.
      if (attempt > 1 && ((std::is_same_v<Req, v1::AddAgentRequest> &&
                           s.error_code() == grpc::StatusCode::ALREADY_EXISTS) ||
                          (std::is_same_v<Req, v1::RemoveAgentRequest> &&
                           s.error_code() == grpc::StatusCode::NOT_FOUND))) {
        return absl::OkStatus();
      }
      if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
        waited.push_back(absl::FormatDuration(deadline));
        if (kRepeatable && attempt < kAttempts) {
          std::fprintf(stderr,
                       "parley: parleyd at %s did not answer %s within %s (load average %s); "
                       "asking again, waiting up to %s (attempt %d of %d)\n",
                       address_.c_str(), what.c_str(), waited.back().c_str(), LoadAverage().c_str(),
                       absl::FormatDuration(std::min(deadline * 2, kMaxDeadline)).c_str(),
                       attempt + 1, kAttempts);
          deadline = std::min(deadline * 2, kMaxDeadline);
          continue;
        }
        return absl::DeadlineExceededError(absl::StrCat(
            "parleyd at ", address_, " did not answer ", what, " (waited ",
            absl::StrJoin(waited, ", "), kRepeatable ? "" : "; not repeated: it queues an event",
            "; load average ", LoadAverage(), ")"));
      }
      if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
        return absl::UnavailableError(
            absl::StrCat("parleyd at ", address_, ": ", what, ": ", s.error_message()));
      }
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    }
  }

  absl::StatusOr<v1::AgentStatus> Status(const std::string& agent,
                                         absl::Duration timeout = absl::Seconds(10)) {
    v1::GetStatusRequest req;
    req.set_agent(agent);
    v1::AgentStatus resp;
    absl::Status s = Call(&v1::Agent::Stub::GetStatus, req, &resp, timeout);
    if (!s.ok()) return s;
    return resp;
  }

  absl::StatusOr<v1::CheckIdleResponse> CheckIdle(const std::string& agent) {
    v1::CheckIdleRequest req;
    req.set_agent(agent);
    v1::CheckIdleResponse resp;
    absl::Status s = Call(&v1::Agent::Stub::CheckIdle, req, &resp, absl::Seconds(10));
    if (!s.ok()) return s;
    return resp;
  }

  absl::StatusOr<v1::HostInfo> Host(absl::Duration timeout = absl::Seconds(2)) {
    v1::HostInfo resp;
    absl::Status s = Call(&v1::Agent::Stub::GetHost, v1::GetHostRequest(), &resp, timeout);
    if (!s.ok()) return s;
    return resp;
  }

 private:
  std::string address_;
  std::unique_ptr<v1::Agent::Stub> stub_;
  static constexpr int kAttempts = 3;
  static constexpr absl::Duration kMaxDeadline = absl::Minutes(2);

  // "GetStatusRequest" -> "GetStatus".
  static std::string RpcName(const std::string& request_type) {
    return std::string(absl::StripSuffix(request_type, "Request"));
  }
  // The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
  static std::string LoadAverage() {
    std::ifstream in("/proc/loadavg");
    std::string one, five, fifteen;
    if (!(in >> one >> five >> fifteen)) return "unknown";
    return absl::StrCat(one, " ", five, " ", fifteen);
  }

  bool wait_for_ready_ = false;
};

}  // namespace parley::cli
