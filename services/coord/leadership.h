#pragma once

// One unit's part in its service's leadership (docs/coordination.md): it holds a lease it keeps
// alive, campaigns on it, watches who leads, and reports every change of (leader, term, whether
// this unit leads) to a callback. All of it runs on threads of its own; the callback is called
// from them, one call at a time, and must only post the news to its owner (the agent's strand).
//
// Safety: this unit reports that it leads only between winning its campaign and the moment its
// lease can have expired (the last successful refresh's send time plus the TTL); after that it
// reports that it does not, even when etcd cannot be reached to say so. Another unit wins only
// once the lease is gone, so two units never both report leading at the same instant, as long
// as clocks run at the same rate.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/coord/coordinator.h"

namespace parley::coord {

struct LeadershipOptions {
  // The election: Parley uses "parley/<model>/leader/<service>".
  std::string election;
  // This unit's name, proclaimed as the leader's value.
  std::string candidate;
  // The lease's TTL: a leader that dies is replaced within it.
  absl::Duration lease_ttl = absl::Seconds(5);
  // How long a unit told that it leads keeps leading at least, unless it resigns: the lease is
  // refreshed often enough that a refresh that fails this long still leaves it alive.
  absl::Duration leading_interval = absl::Seconds(2);
};

// OK when the options hold together: an election and a candidate, a TTL of at least 2 s (etcd
// raises shorter ones) and a leading interval above zero and at most half the TTL, so that three
// refreshes fit in what is left. INVALID_ARGUMENT naming the field otherwise.
absl::Status ValidateLeadershipOptions(const LeadershipOptions& options);
// The timing part of that check alone (service.yaml's `leadership:` is checked with it).
absl::Status ValidateLeaseTiming(absl::Duration lease_ttl, absl::Duration leading_interval);

// How often a lease is refreshed: a third of what the TTL leaves after the leading interval.
absl::Duration KeepAliveInterval(const LeadershipOptions& options);

// What a unit knows of its service's leadership.
struct LeadershipView {
  std::string leader;  // the leading unit; empty while nobody is known to lead
  int64_t term = 0;    // its term (grows with every new leader)
  bool leads = false;  // this unit leads

  bool operator==(const LeadershipView&) const = default;
};

class Campaigner {
 public:
  using Callback = std::function<void(const LeadershipView&)>;

  // Campaigns through `coordinator`, its own (Stop closes it). Validate the options first.
  Campaigner(std::unique_ptr<Coordinator> coordinator, LeadershipOptions options,
             Callback on_change);
  // Stops (see Stop).
  ~Campaigner();
  Campaigner(const Campaigner&) = delete;
  Campaigner& operator=(const Campaigner&) = delete;

  // Starts campaigning and watching.
  void Start();
  // Gives leadership up now, when leading, and campaigns again at the end of the line, so that
  // the next candidate leads (for a leader whose workload is unhealthy). OK when not leading.
  absl::Status Resign();
  // Resigns (when leading), revokes the lease and joins the threads. Idempotent.
  void Stop();

  // What was last reported.
  LeadershipView View() const;

  // Whether `term` is still this unit's current term, checked against the store (linearizable):
  // for a run that commits service data written under it.
  absl::StatusOr<bool> StillLeads(int64_t term);

 private:
  void CampaignLoop();
  void KeepAliveLoop();
  void ObserveLoop();
  // The view as the state stands.
  LeadershipView ViewNow() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Recomputes the view and reports it when it changed.
  void Report() ABSL_LOCKS_EXCLUDED(mu_);
  // Waits up to `d` or until Stop; false once stopping.
  bool Sleep(absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_);

  const std::unique_ptr<Coordinator> coordinator_;
  const LeadershipOptions options_;
  const Callback on_change_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  // The lease (0: none yet or lost), the key this unit leads with, and until when the lease is
  // surely alive.
  LeaseId lease_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<LeaderKey> key_ ABSL_GUARDED_BY(mu_);
  absl::Time lease_alive_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // The newest leader observed.
  Leader observed_ ABSL_GUARDED_BY(mu_);
  LeadershipView reported_ ABSL_GUARDED_BY(mu_);
  // Serializes the callback (the two threads publish).
  absl::Mutex callback_mu_;

  std::thread campaign_thread_;
  std::thread keepalive_thread_;
  std::thread observe_thread_;
};

}  // namespace parley::coord
