#include "services/host/peer_links.h"

#include <algorithm>
#include <random>

namespace parley::services {

PeerLinks::PeerLinks(PeerLinksOptions options)
    : backoff_(base::BackoffOptions{.initial = options.initial_backoff,
                                    .max = options.max_backoff,
                                    .jitter = options.jitter,
                                    .seed = std::random_device{}()}) {}

PeerLinks::Claim PeerLinks::Begin(const std::string& local, const std::string& remote,
                                  absl::Time now) {
  absl::MutexLock lock(&mu_);
  Link& link = links_[{local, remote}];
  if (link.active) return Claim::kBusy;
  if (now < link.next_attempt) return Claim::kLater;
  link.active = true;
  return Claim::kGo;
}

PeerLinks::Claim PeerLinks::BeginPair(const std::string& a, const std::string& b, absl::Time now) {
  absl::MutexLock lock(&mu_);
  Link& ab = links_[{a, b}];
  Link& ba = links_[{b, a}];
  if (ab.active || ba.active) return Claim::kBusy;
  if (now < ab.next_attempt) return Claim::kLater;
  ab.active = ba.active = true;
  return Claim::kGo;
}

absl::Time PeerLinks::Ended(const std::string& local, const std::string& remote, bool established,
                            absl::Time now, absl::string_view error) {
  absl::MutexLock lock(&mu_);
  Link& link = links_[{local, remote}];
  link.active = false;
  link.last_error = established ? "" : std::string(error);
  link.failures = established ? 0 : link.failures + 1;
  link.next_attempt = now + backoff_.Delay(std::max<uint32_t>(link.failures, 1));
  return link.next_attempt;
}

PeerLinks::View PeerLinks::Get(const std::string& local, const std::string& remote) const {
  absl::MutexLock lock(&mu_);
  auto it = links_.find({local, remote});
  if (it == links_.end()) return {};
  return View{.active = it->second.active,
              .next_attempt = it->second.next_attempt,
              .last_error = it->second.last_error};
}

bool PeerLinks::MarkRetryScheduled(const std::string& local, const std::string& remote) {
  absl::MutexLock lock(&mu_);
  Link& link = links_[{local, remote}];
  if (link.retry_scheduled) return false;
  link.retry_scheduled = true;
  return true;
}

void PeerLinks::RetryFired(const std::string& local, const std::string& remote) {
  absl::MutexLock lock(&mu_);
  links_[{local, remote}].retry_scheduled = false;
}

}  // namespace parley::services
