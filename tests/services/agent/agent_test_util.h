#pragma once

// Helpers for agent tests: run code on an agent's strand and wait for conditions with a bound.

#include <chrono>
#include <functional>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "base/clock.h"
#include "services/agent/agent.h"
#include "services/host/host.h"

namespace parley::services::testing {

// Runs `fn` on `agent`'s strand and returns its result.
template <typename Fn>
auto OnStrand(Agent* agent, Fn fn) -> decltype(fn()) {
  using R = decltype(fn());
  absl::Notification done;
  std::optional<R> result;
  agent->strand()->Post([&] {
    result.emplace(fn());
    done.Notify();
  });
  done.WaitForNotification();
  return std::move(*result);
}

// Polls `condition` until it holds or `timeout` passes; returns whether it held.
inline bool WaitFor(const std::function<bool()>& condition,
                    absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return condition();
}

// Moves `host`'s manual clock by `d` and returns once what became due on `agent` ran: the timers
// fired (Scheduler::Flush) and the closures they posted to its strand are done. Work they start
// elsewhere (a dial) may still be under way.
inline void Advance(base::ManualClock& clock, Host* host, Agent* agent, absl::Duration d) {
  clock.Advance(d);
  host->scheduler().Flush();
  agent->strand()->Drain();
}

// Relates `a`'s endpoint `ep` to `remote_agent`'s `remote_ep` through `host` (a's host).
inline absl::StatusOr<v1::RelateResponse> Relate(Host* host, const std::string& id, Agent* a,
                                                 const std::string& ep,
                                                 const std::string& remote_address,
                                                 const std::string& remote_agent,
                                                 const std::string& remote_ep) {
  v1::RelateRequest r;
  r.set_agent(a->name());
  r.set_relation_id(id);
  r.set_endpoint(ep);
  r.set_remote_agent(remote_agent);
  r.set_remote_address(remote_address);
  r.set_remote_endpoint(remote_ep);
  absl::Notification done;
  absl::StatusOr<v1::RelateResponse> result;
  host->Relate(r, [&](absl::StatusOr<v1::RelateResponse> resp) {
    result = std::move(resp);
    done.Notify();
  });
  if (!done.WaitForNotificationWithTimeout(absl::Seconds(15))) {
    return absl::DeadlineExceededError("Host::Relate did not answer");
  }
  return result;
}

// Puts `event` with `params` in `a`'s inbox, as the agent API's FireEvent does.
inline absl::StatusOr<uint64_t> FireEvent(
    Agent* a, const std::string& event,
    const std::vector<std::pair<std::string, std::string>>& params = {}) {
  v1::FireEventRequest r;
  r.set_agent(a->name());
  r.set_event(event);
  for (const auto& [k, v] : params) (*r.mutable_params())[k] = v;
  return OnStrand(a, [&] { return a->FireEvent(r); });
}

inline std::optional<std::string> Fact(Agent* agent, const std::string& name) {
  return OnStrand(agent, [&] { return agent->engine().FactValue(name); });
}

// Every agent of every host idle, twice in a row with no progress in between.
inline bool Settled(const std::vector<Host*>& hosts) {
  auto snapshot = [&](uint64_t* progress) {
    bool idle = true;
    *progress = 0;
    for (Host* h : hosts) {
      for (Agent* a : h->Agents()) {
        auto r = OnStrand(a, [a] { return a->CheckIdle(); });
        idle &= r.idle();
        *progress += r.progress();
      }
    }
    return idle;
  };
  uint64_t p1, p2;
  if (!snapshot(&p1)) return false;
  return snapshot(&p2) && p1 == p2;
}

}  // namespace parley::services::testing
