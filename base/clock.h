#pragma once

// Time is injected so that tests and traces can be exact: production uses SystemClock, tests a
// ManualClock that moves only when told. Whatever waits for a time (base::Scheduler, a timeout)
// waits through its clock, so that advancing a ManualClock wakes it as time passing wakes a
// SystemClock's waiters.

#include <map>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace parley::base {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  // absl::Mutex::AwaitWithDeadline in this clock's time: with `mu` held, waits until `cond` holds
  // or Now() reaches `deadline`, and returns whether `cond` holds. `mu` is held again on return
  // and, as with Await, may be released meanwhile. Thread-safe.
  virtual bool AwaitWithDeadline(absl::Mutex& mu, const absl::Condition& cond, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
};

class SystemClock : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
  bool AwaitWithDeadline(absl::Mutex& mu, const absl::Condition& cond, absl::Time deadline) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return mu.AwaitWithDeadline(cond, deadline);
  }
  // A process-wide instance; it has no state.
  static Clock* Get() {
    static SystemClock clock;
    return &clock;
  }
};

// Thread-safe, starts at `start` and moves only by Advance/Set, which wake every waiter whose
// deadline it reached (each re-checks its condition and deadline).
class ManualClock : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::FromUnixSeconds(1700000000)) : now_(start) {}
  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    {
      absl::MutexLock lock(&mu_);
      now_ += d;
    }
    WakeWaiters();
  }
  void Set(absl::Time t) {
    {
      absl::MutexLock lock(&mu_);
      now_ = t;
    }
    WakeWaiters();
  }

  bool AwaitWithDeadline(absl::Mutex& mu, const absl::Condition& cond, absl::Time deadline) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (cond.Eval() || Now() >= deadline) return cond.Eval();
    // Registered with `mu` released: WakeWaiters takes waiters_mu_ before a waiter's mutex.
    bool moved = false;
    mu.Unlock();
    {
      absl::MutexLock lock(&waiters_mu_);
      waiters_.emplace(&moved, &mu);
    }
    mu.Lock();
    // `moved` is set under `mu`, which wakes this Await; the deadline is checked again then.
    auto done = [&] { return moved || cond.Eval() || Now() >= deadline; };
    for (;;) {
      mu.Await(absl::Condition(&done));
      if (cond.Eval() || Now() >= deadline) break;
      moved = false;  // time moved, not far enough
    }
    mu.Unlock();
    {
      absl::MutexLock lock(&waiters_mu_);
      waiters_.erase(&moved);
    }
    mu.Lock();
    return cond.Eval();
  }

 private:
  void WakeWaiters() {
    absl::MutexLock lock(&waiters_mu_);
    for (auto& [moved, mu] : waiters_) {
      absl::MutexLock waiter(mu);
      *moved = true;
    }
  }

  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  // Threads in AwaitWithDeadline: the flag each waits on, and the mutex that guards it.
  absl::Mutex waiters_mu_;
  std::map<bool*, absl::Mutex*> waiters_ ABSL_GUARDED_BY(waiters_mu_);
};

}  // namespace parley::base
