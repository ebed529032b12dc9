#pragma once

// Where agents' work runs. A ThreadPool has a few worker threads; each agent owns a Strand on it:
// closures posted to one strand run one at a time, in order, never concurrently, so an agent's
// engine and KB need no locks (Envoy's dispatcher, asio's strand). Network threads only Post.
// A Scheduler runs closures at a time of its clock, on a strand.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/clock.h"

namespace parley::base {

using Closure = std::function<void()>;

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  // Runs every closure already posted, then joins the workers.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Post(Closure fn);

 private:
  void Work();

  absl::Mutex mu_;
  std::deque<Closure> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

// Thread-safe. The pool must outlive the strand; closures still queued when the strand is
// destroyed are dropped, so owners drain it first (see Drain).
class Strand : public std::enable_shared_from_this<Strand> {
 public:
  explicit Strand(ThreadPool* pool) : pool_(pool) {}

  void Post(Closure fn);
  // True on the thread currently running this strand's closures.
  bool IsCurrent() const;
  // Blocks until every closure posted before the call has run. Not from the strand itself.
  void Drain();

 private:
  void RunBatch();

  ThreadPool* pool_;
  absl::Mutex mu_;
  std::deque<Closure> queue_ ABSL_GUARDED_BY(mu_);
  bool scheduled_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<std::thread::id> running_on_{};
};

// Runs closures at given times of `clock` on their strands. One thread for all timers of a host;
// it waits through the clock (Clock::AwaitWithDeadline), so a ManualClock's Advance fires what
// became due as real time passing does for a SystemClock. The clock must outlive the scheduler.
// Thread-safe.
class Scheduler {
 public:
  explicit Scheduler(Clock* clock = SystemClock::Get());
  // Drops the entries not fired yet.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  Clock* clock() const { return clock_; }
  // Returns an id for Cancel. `fn` is posted to `strand` once the clock reaches `when` (at once if
  // it has), unless the strand is gone by then.
  uint64_t At(absl::Time when, std::shared_ptr<Strand> strand, Closure fn);
  // `fn` at Now() + `delay`.
  uint64_t After(absl::Duration delay, std::shared_ptr<Strand> strand, Closure fn) {
    return At(clock_->Now() + delay, std::move(strand), std::move(fn));
  }
  void Cancel(uint64_t id);
  // Blocks until every entry due at the clock's time of the call has been posted to its strand.
  // For tests on a ManualClock: after Advance, Flush, then Drain the strand, and what the
  // advance made due has run.
  void Flush();

 private:
  void Loop();

  Clock* const clock_;

  struct Entry {
    std::weak_ptr<Strand> strand;
    Closure fn;
  };
  absl::Mutex mu_;
  std::map<std::pair<absl::Time, uint64_t>, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, absl::Time> by_id_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Passes made over the due entries. Flush waits for one that starts after it is called: a pass
  // made earlier at the same clock time missed entries added since (At with a time in the past).
  uint64_t passes_ ABSL_GUARDED_BY(mu_) = 0;
  // Set by Flush: the loop makes a pass now.
  bool sweep_wanted_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace parley::base
