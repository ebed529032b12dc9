// The Coordinator's semantics against a real etcd (Debian etcd-server) started by each test.

#include "services/coord/etcd_coordinator.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/services/coord/etcd_ready.h"
#include "tests/testing/etcd_process.h"

namespace parley::coord {
namespace {

using ::parley::testing::EtcdProcess;
using ::parley::testing::WaitFor;

class EtcdCoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(etcd_.Start(), "");
    ASSERT_EQ(parley::testing::WaitUntilEtcdAnswers(etcd_), "");
    coordinator_ = NewCoordinator();
  }

  std::unique_ptr<Coordinator> NewCoordinator(absl::Duration timeout = absl::Seconds(3)) {
    EtcdOptions options;
    options.call_timeout = timeout;
    options.endpoints = {etcd_.endpoint()};
    auto c = NewEtcdCoordinator(options);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }

  LeaseId Lease(absl::Duration ttl = absl::Seconds(30)) {
    auto lease = coordinator_->GrantLease(ttl);
    EXPECT_TRUE(lease.ok()) << lease.status();
    return lease.value_or(0);
  }

  EtcdProcess etcd_;
  std::unique_ptr<Coordinator> coordinator_;
};

// A candidate campaigning on a thread of its own.
class Candidate {
 public:
  Candidate(Coordinator* c, std::string election, std::string name, LeaseId lease)
      : thread_([=, this] {
          auto key = c->Campaign(election, name, lease, absl::Now() + absl::Seconds(60));
          absl::MutexLock l(&mu_);
          result_ = std::move(key);
        }) {}
  ~Candidate() { thread_.join(); }

  bool Won() {
    absl::MutexLock l(&mu_);
    return result_.has_value() && result_->ok();
  }
  bool Done() {
    absl::MutexLock l(&mu_);
    return result_.has_value();
  }
  LeaderKey Key() {
    absl::MutexLock l(&mu_);
    return result_.has_value() && result_->ok() ? **result_ : LeaderKey{};
  }
  absl::Status Status() {
    absl::MutexLock l(&mu_);
    return result_.has_value() ? result_->status() : absl::UnknownError("still campaigning");
  }

 private:
  absl::Mutex mu_;
  std::optional<absl::StatusOr<LeaderKey>> result_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

TEST_F(EtcdCoordinatorTest, ALeaseIsRefreshedUntilRevoked) {
  const LeaseId lease = Lease(absl::Seconds(10));
  auto left = coordinator_->KeepAlive(lease);
  ASSERT_TRUE(left.ok()) << left.status();
  EXPECT_GE(*left, absl::Seconds(9));
  ASSERT_TRUE(coordinator_->Put("k", "v", lease).ok());
  ASSERT_TRUE(coordinator_->RevokeLease(lease).ok());
  EXPECT_EQ(coordinator_->KeepAlive(lease).status().code(), absl::StatusCode::kNotFound);
  auto value = coordinator_->Get("k");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_FALSE(value->has_value()) << "a key under a revoked lease stays";
}

TEST_F(EtcdCoordinatorTest, AtMostOneOfThreeCandidatesLeads) {
  Candidate a(coordinator_.get(), "m/svc", "svc/0", Lease());
  Candidate b(coordinator_.get(), "m/svc", "svc/1", Lease());
  Candidate c(coordinator_.get(), "m/svc", "svc/2", Lease());
  ASSERT_TRUE(WaitFor([&] { return a.Done() || b.Done() || c.Done(); }, absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(500));  // time for a wrong second win to show
  EXPECT_EQ(a.Won() + b.Won() + c.Won(), 1);
  auto leader = coordinator_->CurrentLeader("m/svc");
  ASSERT_TRUE(leader.ok()) << leader.status();
  ASSERT_TRUE(leader->has_value());
  Candidate* winner = a.Won() ? &a : b.Won() ? &b : &c;
  EXPECT_EQ((*leader)->term, winner->Key().term);
  // Let the others finish: revoke everything by closing the coordinator.
  coordinator_->Close();
}

TEST_F(EtcdCoordinatorTest, ARevokedLeaderIsReplacedWithALargerTerm) {
  const LeaseId first_lease = Lease();
  auto first =
      coordinator_->Campaign("m/svc", "svc/0", first_lease, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(first.ok()) << first.status();
  Candidate second(coordinator_.get(), "m/svc", "svc/1", Lease());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(second.Done()) << "two leaders at once";
  ASSERT_TRUE(coordinator_->RevokeLease(first_lease).ok());
  ASSERT_TRUE(WaitFor([&] { return second.Done(); }, absl::Seconds(5)));
  ASSERT_TRUE(second.Won()) << second.Status();
  EXPECT_GT(second.Key().term, first->term);
  auto still = coordinator_->StillLeads(*first);
  ASSERT_TRUE(still.ok());
  EXPECT_FALSE(*still);
  auto now = coordinator_->StillLeads(second.Key());
  ASSERT_TRUE(now.ok());
  EXPECT_TRUE(*now);
}

TEST_F(EtcdCoordinatorTest, ALeaderWhoseLeaseExpiresIsReplacedWithinTheTtl) {
  const LeaseId short_lease = Lease(absl::Seconds(2));  // never refreshed
  auto first =
      coordinator_->Campaign("m/svc", "svc/0", short_lease, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(first.ok()) << first.status();
  const absl::Time granted = absl::Now();
  Candidate second(coordinator_.get(), "m/svc", "svc/1", Lease());
  ASSERT_TRUE(WaitFor([&] { return second.Done(); }, absl::Seconds(2 + 1)));
  ASSERT_TRUE(second.Won()) << second.Status();
  EXPECT_GE(absl::Now() - granted, absl::Milliseconds(1500)) << "the lease ended early";
  EXPECT_GT(second.Key().term, first->term);
}

TEST_F(EtcdCoordinatorTest, AResignedLeaderIsReplacedAndObserversSeeTheNewTerm) {
  auto first = coordinator_->Campaign("m/svc", "svc/0", Lease(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(first.ok()) << first.status();
  auto seen = coordinator_->WaitForLeader("m/svc", 0, absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->value, "svc/0");
  EXPECT_EQ(seen->term, first->term);

  Candidate second(coordinator_.get(), "m/svc", "svc/1", Lease());
  std::optional<absl::StatusOr<Leader>> next;
  std::thread observer([&] {
    next = coordinator_->WaitForLeader("m/svc", first->term, absl::Now() + absl::Seconds(10));
  });
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_TRUE(coordinator_->Resign(*first).ok());
  observer.join();
  ASSERT_TRUE(next.has_value() && next->ok()) << (next ? next->status() : absl::UnknownError(""));
  EXPECT_EQ((*next)->value, "svc/1");
  EXPECT_GT((*next)->term, first->term);
  ASSERT_TRUE(WaitFor([&] { return second.Done(); }, absl::Seconds(5)));
  EXPECT_EQ(second.Key().term, (*next)->term);
}

TEST_F(EtcdCoordinatorTest, NobodyLeadsAnElectionWithoutCandidates) {
  auto leader = coordinator_->CurrentLeader("m/none");
  ASSERT_TRUE(leader.ok()) << leader.status();
  EXPECT_FALSE(leader->has_value());
}

TEST_F(EtcdCoordinatorTest, LockWaitersAreServedInTheOrderTheyAsked) {
  auto held = coordinator_->Lock("m/backup", Lease(), absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(held.ok()) << held.status();
  absl::Mutex mu;
  std::vector<std::string> order;
  std::vector<LockKey> keys(2);
  auto waiter = [&](int i, std::string name) {
    auto key = coordinator_->Lock("m/backup", Lease(), absl::Now() + absl::Seconds(20));
    ASSERT_TRUE(key.ok()) << key.status();
    absl::MutexLock l(&mu);
    order.push_back(name);
    keys[i] = *key;
  };
  std::thread first(waiter, 0, "first");
  absl::SleepFor(absl::Milliseconds(400));  // first's key is created before second's
  std::thread second(waiter, 1, "second");
  absl::SleepFor(absl::Milliseconds(400));
  {
    absl::MutexLock l(&mu);
    EXPECT_TRUE(order.empty()) << "a waiter got a held lock";
  }
  ASSERT_TRUE(coordinator_->Unlock(*held).ok());
  first.join();
  absl::SleepFor(absl::Milliseconds(300));
  {
    absl::MutexLock l(&mu);
    ASSERT_EQ(order, std::vector<std::string>{"first"}) << "only the next waiter is woken";
  }
  ASSERT_TRUE(coordinator_->Unlock(keys[0]).ok());
  second.join();
  EXPECT_EQ(order, (std::vector<std::string>{"first", "second"}));
  EXPECT_GT(keys[0].token, held->token);
  EXPECT_GT(keys[1].token, keys[0].token);
}

TEST_F(EtcdCoordinatorTest, CloseEndsAWaitingCampaign) {
  auto first = coordinator_->Campaign("m/svc", "svc/0", Lease(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(first.ok()) << first.status();
  auto other = NewCoordinator();
  Candidate waiting(other.get(), "m/svc", "svc/1", Lease());
  absl::SleepFor(absl::Milliseconds(300));
  other->Close();
  ASSERT_TRUE(WaitFor([&] { return waiting.Done(); }, absl::Seconds(3)));
  EXPECT_EQ(waiting.Status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(other->Get("k").status().code(), absl::StatusCode::kCancelled);
}

TEST_F(EtcdCoordinatorTest, ReadsAreLinearizableAcrossClients) {
  auto other = NewCoordinator();
  auto revision = coordinator_->Put("m/ready", "yes", 0);
  ASSERT_TRUE(revision.ok()) << revision.status();
  auto value = other->Get("m/ready");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->value_or(""), "yes");
}

TEST(EtcdOptionsTest, BadOptionsNameTheField) {
  auto none = NewEtcdCoordinator({});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("endpoints"), std::string::npos);
  EtcdOptions options;
  options.endpoints = {"http://127.0.0.1:2379"};
  auto url = NewEtcdCoordinator(options);
  EXPECT_NE(url.status().message().find("not host:port"), std::string::npos);
  options.endpoints = {"127.0.0.1:1"};
  options.ca_file = "/nonexistent/ca.pem";
  auto ca = NewEtcdCoordinator(options);
  EXPECT_EQ(ca.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(ca.status().message().find("ca_file"), std::string::npos);
}

}  // namespace
}  // namespace parley::coord
