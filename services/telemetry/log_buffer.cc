#include "services/telemetry/log_buffer.h"

#include <cstdio>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace parley::services {

void LogBuffer::set_echo(bool echo) {
  absl::MutexLock lock(&mu_);
  echo_ = echo;
}

void LogBuffer::Add(v1::LogRecord record) {
  if (record.unix_ms() == 0) record.set_unix_ms(absl::ToUnixMillis(absl::Now()));
  std::vector<std::shared_ptr<Subscriber>> subscribers;
  bool echo;
  {
    absl::MutexLock lock(&mu_);
    echo = echo_;
    records_.push_back(record);
    if (records_.size() > capacity_) records_.pop_front();
    for (const auto& [id, s] : subscribers_) subscribers.push_back(s);
  }
  if (echo) {
    std::fprintf(
        stderr, "%s %s %s: %s\n",
        absl::FormatTime("%H:%M:%E3S", absl::FromUnixMillis(record.unix_ms()), absl::UTCTimeZone())
            .c_str(),
        v1::LogLevel_Name(record.level()).substr(10).c_str(), record.agent().c_str(),
        record.message().c_str());
  }
  for (const auto& s : subscribers) (*s)(record);
}

bool LogBuffer::Matches(const v1::StreamLogsRequest& filter, const v1::LogRecord& record) {
  if (!filter.agent().empty() && filter.agent() != record.agent()) return false;
  if (record.level() < filter.min_level()) return false;
  if (!filter.contains().empty() && !absl::StrContains(record.message(), filter.contains())) {
    return false;
  }
  return true;
}

std::vector<v1::LogRecord> LogBuffer::Snapshot(const v1::StreamLogsRequest& filter) const {
  std::vector<v1::LogRecord> out;
  absl::MutexLock lock(&mu_);
  for (const auto& r : records_) {
    if (Matches(filter, r)) out.push_back(r);
  }
  if (filter.last() > 0 && out.size() > filter.last()) {
    out.erase(out.begin(), out.end() - filter.last());
  }
  return out;
}

uint64_t LogBuffer::Subscribe(Subscriber fn) {
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  subscribers_.emplace(id, std::make_shared<Subscriber>(std::move(fn)));
  return id;
}

void LogBuffer::Unsubscribe(uint64_t id) {
  absl::MutexLock lock(&mu_);
  subscribers_.erase(id);
}

}  // namespace parley::services
