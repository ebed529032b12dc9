#pragma once

// Waiting for a test's etcd (tests/testing/etcd_process.h) to answer, for the tests that talk to
// it through the Coordinator.

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "services/coord/etcd_coordinator.h"
#include "tests/testing/etcd_process.h"

namespace parley::testing {

// "" once `etcd` answers a linearizable read within `timeout`; else the last error and its log.
// Each probe has a client of its own: a channel that failed while etcd started backs off for
// seconds.
inline std::string WaitUntilEtcdAnswers(const EtcdProcess& etcd,
                                        absl::Duration timeout = absl::Seconds(30)) {
  coord::EtcdOptions options;
  options.endpoints = {etcd.endpoint()};
  options.call_timeout = absl::Milliseconds(500);
  absl::Status last;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    auto c = coord::NewEtcdCoordinator(options);
    last = c.ok() ? (*c)->Get("probe").status() : c.status();
    if (last.ok()) return "";
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::StrCat("etcd did not answer: ", last.ToString(), "; its log:\n", etcd.ReadLog());
}

}  // namespace parley::testing
