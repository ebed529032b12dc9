#include "base/executor.h"

#include "absl/time/clock.h"

namespace parley::base {

ThreadPool::ThreadPool(int threads) {
  if (threads < 1) threads = 1;
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { Work(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (auto& t : workers_) t.join();
}

void ThreadPool::Post(Closure fn) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(fn));
}

void ThreadPool::Work() {
  for (;;) {
    Closure fn;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping and drained
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn();
  }
}

void Strand::Post(Closure fn) {
  bool schedule = false;
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(fn));
    if (!scheduled_) {
      scheduled_ = true;
      schedule = true;
    }
  }
  if (schedule) {
    pool_->Post([self = shared_from_this()] { self->RunBatch(); });
  }
}

bool Strand::IsCurrent() const { return running_on_.load() == std::this_thread::get_id(); }

void Strand::RunBatch() {
  // Run what is queued now, then yield the worker so that other strands get their turn.
  std::deque<Closure> batch;
  {
    absl::MutexLock lock(&mu_);
    batch.swap(queue_);
  }
  running_on_.store(std::this_thread::get_id());
  for (auto& fn : batch) fn();
  running_on_.store(std::thread::id());
  bool more;
  {
    absl::MutexLock lock(&mu_);
    more = !queue_.empty();
    if (!more) scheduled_ = false;
  }
  if (more) pool_->Post([self = shared_from_this()] { self->RunBatch(); });
}

void Strand::Drain() {
  absl::Mutex mu;
  bool done = false;
  Post([&] {
    absl::MutexLock lock(&mu);
    done = true;
  });
  absl::MutexLock lock(&mu);
  mu.Await(absl::Condition(&done));
}

Scheduler::Scheduler(Clock* clock) : clock_(clock), thread_([this] { Loop(); }) {}

Scheduler::~Scheduler() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

uint64_t Scheduler::At(absl::Time when, std::shared_ptr<Strand> strand, Closure fn) {
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  entries_.emplace(std::make_pair(when, id), Entry{strand, std::move(fn)});
  by_id_.emplace(id, when);
  return id;
}

void Scheduler::Cancel(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return;
  entries_.erase(std::make_pair(it->second, id));
  by_id_.erase(it);
}

void Scheduler::Flush() {
  absl::MutexLock lock(&mu_);
  sweep_wanted_ = true;
  // The loop holds mu_ for a whole pass, so the next pass starts after this call, at a clock
  // time no earlier than the caller's.
  const uint64_t target = passes_ + 1;
  auto swept = [this, target]()
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || passes_ >= target; };
  mu_.Await(absl::Condition(&swept));
}

void Scheduler::Loop() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    const absl::Time now = clock_->Now();
    while (!entries_.empty() && entries_.begin()->first.first <= now) {
      auto node = entries_.extract(entries_.begin());
      by_id_.erase(node.key().second);
      if (auto strand = node.mapped().strand.lock()) strand->Post(std::move(node.mapped().fn));
    }
    ++passes_;
    sweep_wanted_ = false;
    const absl::Time next =
        entries_.empty() ? absl::InfiniteFuture() : entries_.begin()->first.first;
    // Wakes early when a sooner entry is added, on shutdown, and when Flush waits for a pass at
    // a time this one did not reach (a ManualClock that moved).
    auto changed = [this, next]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || sweep_wanted_ ||
             (!entries_.empty() && entries_.begin()->first.first < next);
    };
    clock_->AwaitWithDeadline(mu_, absl::Condition(&changed), next);
  }
}

}  // namespace parley::base
