// Campaigners of one service against a real etcd (Debian etcd-server): one leader, failover
// within the lease TTL when the leader is cut off, the term grows, a stopped leader is replaced.

#include "services/coord/leadership.h"

#include <atomic>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "services/coord/etcd_coordinator.h"
#include "tests/services/coord/etcd_ready.h"
#include "tests/testing/etcd_process.h"

namespace parley::coord {
namespace {

using ::parley::testing::EtcdProcess;
using ::parley::testing::WaitFor;

// A real coordinator whose unit can be cut off from etcd (a partition, or a frozen or killed
// agent as etcd sees it): once cut, every call fails as an unreachable store's would.
class CuttableCoordinator : public Coordinator {
 public:
  CuttableCoordinator(std::unique_ptr<Coordinator> real, std::shared_ptr<std::atomic<bool>> cut)
      : real_(std::move(real)), cut_(std::move(cut)) {}
  absl::StatusOr<LeaseId> GrantLease(absl::Duration ttl) override {
    if (*cut_) return Cut();
    return real_->GrantLease(ttl);
  }
  absl::StatusOr<absl::Duration> KeepAlive(LeaseId lease) override {
    if (*cut_) return Cut();
    return real_->KeepAlive(lease);
  }
  absl::Status RevokeLease(LeaseId lease) override {
    if (*cut_) return Cut();
    return real_->RevokeLease(lease);
  }
  absl::StatusOr<LeaderKey> Campaign(const std::string& e, const std::string& v, LeaseId lease,
                                     absl::Time deadline) override {
    if (*cut_) return Cut();
    return real_->Campaign(e, v, lease, deadline);
  }
  absl::StatusOr<std::optional<Leader>> CurrentLeader(const std::string& e) override {
    if (*cut_) return Cut();
    return real_->CurrentLeader(e);
  }
  absl::StatusOr<Leader> WaitForLeader(const std::string& e, int64_t after,
                                       absl::Time deadline) override {
    if (*cut_) return Cut();
    return real_->WaitForLeader(e, after, deadline);
  }
  absl::StatusOr<bool> StillLeads(const LeaderKey& key) override {
    if (*cut_) return Cut();
    return real_->StillLeads(key);
  }
  absl::Status Resign(const LeaderKey& key) override {
    if (*cut_) return Cut();
    return real_->Resign(key);
  }
  absl::StatusOr<std::optional<std::string>> Get(const std::string& key) override {
    if (*cut_) return Cut();
    return real_->Get(key);
  }
  absl::StatusOr<int64_t> Put(const std::string& k, const std::string& v, LeaseId l) override {
    if (*cut_) return Cut();
    return real_->Put(k, v, l);
  }
  absl::StatusOr<LockKey> Lock(const std::string& n, LeaseId l, absl::Time d) override {
    if (*cut_) return Cut();
    return real_->Lock(n, l, d);
  }
  absl::Status Unlock(const LockKey& key) override {
    if (*cut_) return Cut();
    return real_->Unlock(key);
  }
  void Close() override { real_->Close(); }

 private:
  static absl::Status Cut() { return absl::UnavailableError("cut off from etcd"); }
  std::unique_ptr<Coordinator> real_;
  std::shared_ptr<std::atomic<bool>> cut_;
};

struct Unit {
  std::string name;
  std::shared_ptr<std::atomic<bool>> cut = std::make_shared<std::atomic<bool>>(false);
  absl::Mutex mu;
  std::vector<LeadershipView> seen ABSL_GUARDED_BY(mu);
  // Last: it goes first, so its callback never sees `seen` gone.
  std::unique_ptr<Campaigner> campaigner;
};

class LeadershipTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(etcd_.Start(), "");
    ASSERT_EQ(parley::testing::WaitUntilEtcdAnswers(etcd_), "");
  }

  std::unique_ptr<Coordinator> Real(absl::Duration timeout = absl::Seconds(1)) {
    EtcdOptions options;
    options.endpoints = {etcd_.endpoint()};
    options.call_timeout = timeout;
    return std::move(NewEtcdCoordinator(options).value());
  }

  // Starts units svc/0 .. svc/n-1, one after the other.
  void StartUnits(int n, LeadershipOptions options) {
    for (int i = 0; i < n; ++i) {
      auto unit = std::make_unique<Unit>();
      unit->name = "svc/" + std::to_string(i);
      options.election = "parley/m/leader/svc";
      options.candidate = unit->name;
      ASSERT_TRUE(ValidateLeadershipOptions(options).ok());
      Unit* u = unit.get();
      u->campaigner =
          std::make_unique<Campaigner>(std::make_unique<CuttableCoordinator>(Real(), u->cut),
                                       options, [u](const LeadershipView& view) {
                                         absl::MutexLock l(&u->mu);
                                         u->seen.push_back(view);
                                       });
      u->campaigner->Start();
      units_.push_back(std::move(unit));
    }
  }

  // The units that report leading now.
  std::vector<Unit*> Leaders() {
    std::vector<Unit*> out;
    for (auto& u : units_) {
      if (u->campaigner->View().leads) out.push_back(u.get());
    }
    return out;
  }

  EtcdProcess etcd_;
  std::vector<std::unique_ptr<Unit>> units_;
};

TEST(LeadershipOptionsTest, TtlAndLeadingIntervalAreCheckedAgainstEachOther) {
  LeadershipOptions o{.election = "e", .candidate = "c"};
  EXPECT_TRUE(ValidateLeadershipOptions(o).ok());
  EXPECT_EQ(KeepAliveInterval(o), absl::Seconds(1));
  o.leading_interval = absl::Seconds(3);  // more than half of 5 s
  auto bad = ValidateLeadershipOptions(o);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("leading_interval"), std::string::npos) << bad;
  o.leading_interval = absl::Seconds(1);
  o.lease_ttl = absl::Seconds(1);
  EXPECT_NE(ValidateLeadershipOptions(o).message().find("lease_ttl"), std::string::npos);
  o.lease_ttl = absl::Seconds(5);
  o.leading_interval = absl::ZeroDuration();
  EXPECT_FALSE(ValidateLeadershipOptions(o).ok());
}

TEST_F(LeadershipTest, ExactlyOneOfThreeLeadsAndAllKnowWho) {
  StartUnits(3, {});
  ASSERT_TRUE(WaitFor(
      [&] {
        if (Leaders().size() != 1) return false;
        const std::string who = Leaders()[0]->name;
        for (auto& u : units_) {
          if (u->campaigner->View().leader != who) return false;
        }
        return true;
      },
      absl::Seconds(10)));
  // It stays that way: sample for a while.
  const absl::Time end = absl::Now() + absl::Seconds(2);
  while (absl::Now() < end) {
    ASSERT_LE(Leaders().size(), 1u) << "two units lead at once";
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(Leaders().size(), 1u);
}

TEST_F(LeadershipTest, ALeaderCutOffStepsDownAndAnotherLeadsWithinTheTtlWithALargerTerm) {
  LeadershipOptions options;
  options.lease_ttl = absl::Seconds(3);
  options.leading_interval = absl::Seconds(1);
  StartUnits(3, options);
  ASSERT_TRUE(WaitFor([&] { return Leaders().size() == 1; }, absl::Seconds(10)));
  Unit* old = Leaders()[0];
  const int64_t old_term = old->campaigner->View().term;
  const absl::Time cut_at = absl::Now();
  *old->cut = true;
  // The cut-off leader stops leading before its lease can have expired in etcd.
  ASSERT_TRUE(WaitFor([&] { return !old->campaigner->View().leads; }, absl::Seconds(4)));
  EXPECT_LE(absl::Now() - cut_at, options.lease_ttl + absl::Milliseconds(100));
  Unit* next = nullptr;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto leaders = Leaders();
        EXPECT_LE(leaders.size(), 1u) << "two units lead at once";
        if (leaders.size() == 1 && leaders[0] != old) next = leaders[0];
        return next != nullptr;
      },
      options.lease_ttl + absl::Seconds(1)))
      << "no new leader within the TTL plus a second";
  const absl::Duration failover = absl::Now() - cut_at;
  EXPECT_GT(next->campaigner->View().term, old_term);
  // The remaining follower learns of the new leader and its term.
  for (auto& u : units_) {
    if (u.get() == old || u.get() == next) continue;
    ASSERT_TRUE(
        WaitFor([&] { return u->campaigner->View().leader == next->name; }, absl::Seconds(2)));
    EXPECT_EQ(u->campaigner->View().term, next->campaigner->View().term);
  }
  // The old term is no longer current anywhere; the new one is.
  EXPECT_TRUE(next->campaigner->StillLeads(next->campaigner->View().term).value_or(false));
  EXPECT_FALSE(next->campaigner->StillLeads(old_term).value_or(true));
  RecordProperty("failover_ms", static_cast<int>(absl::ToInt64Milliseconds(failover)));
  // Back in reach, the old leader campaigns again and follows.
  *old->cut = false;
  ASSERT_TRUE(
      WaitFor([&] { return old->campaigner->View().leader == next->name; }, absl::Seconds(5)));
  EXPECT_FALSE(old->campaigner->View().leads);
}

TEST_F(LeadershipTest, AStoppedLeaderIsReplacedAtOnce) {
  StartUnits(2, {});
  ASSERT_TRUE(WaitFor([&] { return Leaders().size() == 1; }, absl::Seconds(10)));
  Unit* old = Leaders()[0];
  const int64_t old_term = old->campaigner->View().term;
  const absl::Time stopped = absl::Now();
  old->campaigner->Stop();  // resigns and revokes: no need to wait for the TTL
  EXPECT_FALSE(old->campaigner->View().leads);
  ASSERT_TRUE(WaitFor([&] { return Leaders().size() == 1; }, absl::Seconds(2)));
  EXPECT_LT(absl::Now() - stopped, absl::Seconds(2));
  EXPECT_GT(Leaders()[0]->campaigner->View().term, old_term);
}

}  // namespace
}  // namespace parley::coord
