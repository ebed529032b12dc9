#pragma once

// The agents' log: a bounded ring of records that the agent API streams (with filters, and
// following new records), also echoed to stderr when asked. Thread-safe.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "parley/v1/agent.pb.h"

namespace parley::services {

class LogBuffer {
 public:
  explicit LogBuffer(size_t capacity = 10000, bool echo = false)
      : capacity_(capacity), echo_(echo) {}

  void set_echo(bool echo);
  void Add(v1::LogRecord record);
  // Records matching `filter` (its agent, min_level and contains), the newest `filter.last`.
  std::vector<v1::LogRecord> Snapshot(const v1::StreamLogsRequest& filter) const;
  static bool Matches(const v1::StreamLogsRequest& filter, const v1::LogRecord& record);

  using Subscriber = std::function<void(const v1::LogRecord&)>;
  // `fn` is called (under no lock of ours, on the adding thread) for every new record.
  uint64_t Subscribe(Subscriber fn);
  void Unsubscribe(uint64_t id);

 private:
  const size_t capacity_;
  mutable absl::Mutex mu_;
  bool echo_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::LogRecord> records_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::shared_ptr<Subscriber>> subscribers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace parley::services
