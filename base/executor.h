#pragma once

// Where agents' work runs. A ThreadPool has a few worker threads; each agent owns a Strand on it:
// closures posted to one strand run one at a time, in order, never concurrently, so an agent's
// engine and KB need no locks (Envoy's dispatcher, asio's strand). Network threads only Post.
// A Scheduler runs closures at a time, on a strand.

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

// Runs closures at given times on their strands. One thread for all timers of a process.
class Scheduler {
 public:
  Scheduler();
  ~Scheduler();

  // Returns an id for Cancel. `fn` is posted to `strand` at `when` (real time).
  uint64_t At(absl::Time when, std::shared_ptr<Strand> strand, Closure fn);
  void Cancel(uint64_t id);

 private:
  void Loop();

  struct Entry {
    std::weak_ptr<Strand> strand;
    Closure fn;
  };
  absl::Mutex mu_;
  std::map<std::pair<absl::Time, uint64_t>, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, absl::Time> by_id_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace parley::base
