#pragma once

// The state of every (local agent, remote agent) link of a host: whether an attempt or a session
// is under way, and when the next attempt may start (exponential backoff with jitter). The host
// asks it before every dial, request to dial or in-process pairing, and tells it when each ends.
//
// Every decision is made under one lock hold, for both directions of a pair where they matter:
// two agents of the same host that pair with each other at the same moment (all of them start
// at once after `parley up`) must end with one session, never with both links marked busy and no
// session at all (the "stuck link" of issue 9). Time is passed in, so tests can replay any
// interleaving with made-up times.
//
// Thread-safe.

#include <map>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/backoff.h"
#include "services/agent/agent_env.h"

namespace parley::services {

struct PeerLinksOptions {
  // Backoff after the first failed attempt, doubled after each further one up to `max_backoff`.
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(5);
  // Each wait is shortened by a random fraction of up to this (base::BackoffOptions::jitter).
  double jitter = 0.5;
};

class PeerLinks {
 public:
  enum class Claim {
    kGo,     // the caller owns the attempt: it must call Ended when it is over
    kBusy,   // an attempt or a session of this link is under way; its end schedules the next
    kLater,  // backing off: retry at Get().next_attempt
  };

  explicit PeerLinks(PeerLinksOptions options = {});

  // For a dial or a request to dial (one direction).
  Claim Begin(const std::string& local, const std::string& remote, absl::Time now);
  // For pairing two agents of this host: kGo claims both directions at once. kBusy when either
  // direction is under way: the session being set up or torn down ends with an Ended of each
  // direction, and whichever side still wants the other tries again then.
  Claim BeginPair(const std::string& a, const std::string& b, absl::Time now);
  // The attempt or session from `local` to `remote` is over. `established`: it carried frames,
  // so the next attempt may start after the initial backoff. `error`: why it ended, if it failed
  // (kept for status until an attempt establishes). Returns when the next may start.
  absl::Time Ended(const std::string& local, const std::string& remote, bool established,
                   absl::Time now, absl::string_view error = "");

  // What status shows of one link.
  using View = PeerLinkView;
  View Get(const std::string& local, const std::string& remote) const;

  // Retry timers: at most one per link. MarkRetryScheduled returns false if one is pending.
  bool MarkRetryScheduled(const std::string& local, const std::string& remote);
  void RetryFired(const std::string& local, const std::string& remote);

 private:
  struct Link {
    bool active = false;
    absl::Time next_attempt = absl::InfinitePast();
    // Attempts failed in a row (reset by one that established a stream).
    uint32_t failures = 0;
    bool retry_scheduled = false;
    std::string last_error;
  };
  using Key = std::pair<std::string, std::string>;

  mutable absl::Mutex mu_;
  base::Backoff backoff_ ABSL_GUARDED_BY(mu_);
  std::map<Key, Link> links_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::services
