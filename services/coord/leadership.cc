#include "services/coord/leadership.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace parley::coord {

absl::Status ValidateLeadershipOptions(const LeadershipOptions& o) {
  if (o.election.empty()) return absl::InvalidArgumentError("leadership election: empty");
  if (o.candidate.empty()) return absl::InvalidArgumentError("leadership candidate: empty");
  return ValidateLeaseTiming(o.lease_ttl, o.leading_interval);
}

absl::Status ValidateLeaseTiming(absl::Duration lease_ttl, absl::Duration leading_interval) {
  LeadershipOptions o;
  o.lease_ttl = lease_ttl;
  o.leading_interval = leading_interval;
  if (o.lease_ttl < absl::Seconds(2)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "leadership lease_ttl ", absl::FormatDuration(o.lease_ttl), ": must be at least 2s"));
  }
  if (o.leading_interval <= absl::ZeroDuration() || o.leading_interval * 2 > o.lease_ttl) {
    return absl::InvalidArgumentError(absl::StrCat(
        "leadership leading_interval ", absl::FormatDuration(o.leading_interval),
        ": must be above zero and at most half of lease_ttl (", absl::FormatDuration(o.lease_ttl),
        "), so that the lease is refreshed in time"));
  }
  return absl::OkStatus();
}

absl::Duration KeepAliveInterval(const LeadershipOptions& o) {
  return (o.lease_ttl - o.leading_interval) / 3;
}

Campaigner::Campaigner(std::unique_ptr<Coordinator> coordinator, LeadershipOptions options,
                       Callback on_change)
    : coordinator_(std::move(coordinator)),
      options_(std::move(options)),
      on_change_(std::move(on_change)) {}

Campaigner::~Campaigner() { Stop(); }

void Campaigner::Start() {
  absl::MutexLock lock(&mu_);
  if (started_ || stopping_) return;
  started_ = true;
  campaign_thread_ = std::thread([this] { CampaignLoop(); });
  keepalive_thread_ = std::thread([this] { KeepAliveLoop(); });
  observe_thread_ = std::thread([this] { ObserveLoop(); });
}

void Campaigner::Stop() {
  std::optional<LeaderKey> key;
  LeaseId lease = 0;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    key = std::exchange(key_, std::nullopt);
    lease = std::exchange(lease_, 0);
  }
  // Best effort: a successor need not wait for the lease to expire.
  if (key.has_value()) (void)coordinator_->Resign(*key);
  if (lease != 0) (void)coordinator_->RevokeLease(lease);
  coordinator_->Close();
  for (std::thread* t : {&campaign_thread_, &keepalive_thread_, &observe_thread_}) {
    if (t->joinable()) t->join();
  }
  Report();
}

LeadershipView Campaigner::View() const {
  absl::MutexLock lock(&mu_);
  return reported_;
}

absl::Status Campaigner::Resign() {
  std::optional<LeaderKey> key;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || !key_.has_value()) return absl::OkStatus();
    key = key_;
  }
  if (absl::Status s = coordinator_->Resign(*key); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    // The campaign loop wakes on the cleared key and campaigns again on the same lease.
    if (key_.has_value() && key_->key == key->key) key_.reset();
  }
  Report();
  return absl::OkStatus();
}

absl::StatusOr<bool> Campaigner::StillLeads(int64_t term) {
  std::optional<LeaderKey> key;
  {
    absl::MutexLock lock(&mu_);
    if (!key_.has_value() || key_->term != term || absl::Now() >= lease_alive_until_) {
      return false;
    }
    key = key_;
  }
  return coordinator_->StillLeads(*key);
}

bool Campaigner::Sleep(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&stopping_), d);
  return !stopping_;
}

LeadershipView Campaigner::ViewNow() const {
  LeadershipView view;
  if (stopping_) return view;
  const bool key_alive = key_.has_value() && absl::Now() < lease_alive_until_;
  if (key_alive && key_->term >= observed_.term) {
    view = {options_.candidate, key_->term, true};
  } else if (observed_.term > 0) {
    view = {observed_.value, observed_.term, false};
  }
  return view;
}

void Campaigner::Report() {
  absl::MutexLock order(&callback_mu_);
  LeadershipView view;
  {
    absl::MutexLock lock(&mu_);
    view = ViewNow();
    if (view == reported_) return;
    reported_ = view;
  }
  if (on_change_) on_change_(view);
}

void Campaigner::CampaignLoop() {
  const absl::Duration pause = absl::Milliseconds(200);
  while (true) {
    LeaseId lease = 0;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      lease = lease_;
    }
    if (lease == 0) {
      const absl::Time sent = absl::Now();
      auto granted = coordinator_->GrantLease(options_.lease_ttl);
      if (!granted.ok()) {
        if (!Sleep(pause)) return;
        continue;
      }
      absl::MutexLock lock(&mu_);
      lease_ = lease = *granted;
      lease_alive_until_ = sent + options_.lease_ttl;
    }
    auto won = coordinator_->Campaign(options_.election, options_.candidate, lease,
                                      absl::Now() + absl::Hours(24));
    if (!won.ok()) {
      if (won.status().code() == absl::StatusCode::kFailedPrecondition) {
        absl::MutexLock lock(&mu_);
        if (lease_ == lease) lease_ = 0;  // it ended while waiting: take a new one
      }
      if (!Sleep(pause)) return;
      continue;
    }
    {
      absl::MutexLock lock(&mu_);
      key_ = *won;
    }
    Report();
    // Lead until the lease is lost (the keep-alive loop clears the key) or Stop.
    absl::MutexLock lock(&mu_);
    auto lost = [this]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !key_.has_value(); };
    mu_.Await(absl::Condition(&lost));
    if (stopping_) return;
  }
}

void Campaigner::KeepAliveLoop() {
  const absl::Duration interval = KeepAliveInterval(options_);
  while (true) {
    absl::Duration wait = interval;
    {
      absl::MutexLock lock(&mu_);
      // Wake in time to report the end of leadership when refreshes keep failing.
      if (key_.has_value()) wait = std::min(wait, lease_alive_until_ - absl::Now());
    }
    if (!Sleep(std::max(wait, absl::Milliseconds(1)))) return;
    LeaseId lease = 0;
    {
      absl::MutexLock lock(&mu_);
      lease = lease_;
      if (key_.has_value() && absl::Now() >= lease_alive_until_) {
        // No refresh succeeded within the TTL: the lease may be gone, so this unit no longer
        // leads; it campaigns again on a new lease.
        key_.reset();
        lease_ = 0;
        lease = 0;
      }
    }
    Report();
    if (lease == 0) continue;
    const absl::Time sent = absl::Now();
    auto left = coordinator_->KeepAlive(lease);
    {
      absl::MutexLock lock(&mu_);
      if (lease_ != lease) continue;
      if (left.ok()) {
        lease_alive_until_ =
            std::max(lease_alive_until_, sent + std::min(*left, options_.lease_ttl));
      } else if (left.status().code() == absl::StatusCode::kNotFound) {
        key_.reset();
        lease_ = 0;
      }
    }
    Report();
  }
}

void Campaigner::ObserveLoop() {
  while (true) {
    int64_t after = 0;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      after = observed_.term;
    }
    auto leader =
        coordinator_->WaitForLeader(options_.election, after, absl::Now() + absl::Seconds(30));
    if (leader.ok()) {
      {
        absl::MutexLock lock(&mu_);
        if (leader->term > observed_.term) observed_ = *leader;
      }
      Report();
    } else if (leader.status().code() != absl::StatusCode::kDeadlineExceeded) {
      if (!Sleep(absl::Milliseconds(200))) return;
    }
  }
}

}  // namespace parley::coord
