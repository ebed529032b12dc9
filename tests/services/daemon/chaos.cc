#include "tests/services/daemon/chaos.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "tests/services/daemon/process_util.h"
#include "tests/testing/tcp_proxy.h"

namespace parley::services::testing {
namespace {

namespace fs = std::filesystem;

// Values fired per fault: they flow while the fault happens.
constexpr int kValuesPerFault = 8;

struct Node {
  std::string agent;
  ParleydOptions options;
  std::unique_ptr<parley::testing::TcpProxy> proxy;  // what peers dial: advertised
  std::unique_ptr<Parleyd> process;
};

class Campaign {
 public:
  Campaign(const ChaosOptions& options, uint64_t seed, fs::path work)
      : options_(options), random_(seed), work_(std::move(work)) {
    result_.seed = seed;
    result_.work_dir = work_.string();
  }

  absl::StatusOr<ChaosResult> Run() {
    const absl::Time begin = absl::Now();
    RETURN_IF_ERROR(Setup());
    std::vector<char> faults;
    faults.insert(faults.end(), options_.kills, 'k');
    faults.insert(faults.end(), options_.down_up, 'd');
    faults.insert(faults.end(), options_.link_faults, 'l');
    faults.insert(faults.end(), options_.stops, 's');
    std::shuffle(faults.begin(), faults.end(), random_);
    const int total = static_cast<int>(faults.size()) * kValuesPerFault + kValuesPerFault;
    firer_ = std::make_unique<Firer>(nodes_[0].process->api_address(), nodes_[0].agent, 1, total, 2,
                                     absl::Milliseconds(5));
    int allowed = kValuesPerFault;
    firer_->Allow(allowed);
    int links = 0;
    for (char kind : faults) {
      allowed += kValuesPerFault;
      firer_->Allow(allowed);
      // Somewhere while this fault's values flow.
      absl::SleepFor(absl::Milliseconds(std::uniform_int_distribution<int>(0, 120)(random_)));
      RETURN_IF_ERROR(Inject(kind, links));
      ++result_.faults;
      AwaitSettled();
    }
    firer_->Allow(total);
    if (absl::Status fired = firer_->Wait(absl::Seconds(120)); !fired.ok()) {
      result_.notes.push_back(absl::StrCat("firing did not finish: ", fired.message()));
    }
    result_.values_fired = firer_->next() - 1;
    firer_.reset();
    Account();
    result_.elapsed_s = absl::ToDoubleSeconds(absl::Now() - begin);
    return result_;
  }

  ~Campaign() {
    firer_.reset();
    for (Node& n : nodes_) n.process.reset();  // SIGKILL whatever still runs
    const bool clean = result_.lost == 0 && result_.duplicated == 0 && result_.out_of_order == 0 &&
                       result_.stale_units == 0 && result_.notes.empty();
    std::error_code ec;
    if (!options_.keep && clean) fs::remove_all(work_, ec);
  }

 private:
  absl::Status Setup() {
    fs::create_directories(work_);
    nodes_.reserve(3);
    const std::vector<std::pair<std::string, std::string>> units = {
        {"a/0", "relay"}, {"b/0", "relay"}, {"c/0", "recorder"}};
    for (const auto& [agent, kind] : units) {
      Node& n = nodes_.emplace_back();
      n.agent = agent;
      const std::string name = agent.substr(0, 1);
      n.options.data = (work_ / name).string();
      n.options.agents = absl::StrCat(agent, "=", kind);
      n.options.log = (work_ / (name + ".log")).string();
      auto proxy = parley::testing::TcpProxy::Start("127.0.0.1:1");
      if (!proxy.ok()) return proxy.status();
      n.proxy = std::move(*proxy);
      RETURN_IF_ERROR(StartNode(n));
    }
    for (int i = 0; i + 1 < static_cast<int>(nodes_.size()); ++i) {
      v1::RelateRequest r;
      r.set_agent(nodes_[i].agent);
      r.set_relation_id(absl::StrCat("r:", i + 1));
      r.set_endpoint("out");
      r.set_remote_agent(nodes_[i + 1].agent);
      r.set_remote_address(nodes_[i + 1].proxy->address());
      r.set_remote_endpoint("in");
      RETURN_IF_ERROR(Relate(*nodes_[i].process, r));
    }
    return absl::OkStatus();
  }

  // On the same data, on a new port behind the same proxy: peers never learn it moved.
  absl::Status StartNode(Node& n) {
    n.options.listen = absl::StrCat("127.0.0.1:", PickFreePort());
    n.options.advertise = n.proxy->address();
    auto p = Parleyd::Start(n.options, absl::Seconds(30));
    if (!p.ok()) {
      return absl::Status(p.status().code(),
                          absl::StrCat(n.agent, "'s parleyd: ", p.status().message()));
    }
    n.process = std::move(*p);
    n.proxy->SetUpstream(n.options.listen);
    if (&n == &nodes_[0] && firer_) firer_->SetAddress(n.process->api_address());
    return absl::OkStatus();
  }

  absl::Status Inject(char kind, int& links) {
    std::uniform_int_distribution<int> which(0, static_cast<int>(nodes_.size()) - 1);
    switch (kind) {
      case 'k': {
        Node& n = nodes_[which(random_)];
        n.process->Kill();
        return StartNode(n);
      }
      case 'd': {
        for (Node& n : nodes_) {
          if (auto st = n.process->Terminate(absl::Seconds(20)); !st.ok() || *st != 0) {
            result_.notes.push_back(absl::StrCat(
                n.agent, "'s parleyd did not exit cleanly on SIGTERM: ",
                st.ok() ? absl::StrCat("status ", *st) : std::string(st.status().message())));
          }
        }
        for (Node& n : nodes_) RETURN_IF_ERROR(StartNode(n));
        return absl::OkStatus();
      }
      case 'l': {
        // The links a/0 -> b/0 and b/0 -> c/0 go through b's and c's proxies.
        Node& n = nodes_[1 + links % 2];
        if (links++ % 2 == 0) {
          n.proxy->DropConnections();
        } else {
          n.proxy->Blackhole();
          absl::SleepFor(absl::Seconds(3));
          n.proxy->Heal();
        }
        return absl::OkStatus();
      }
      case 's': {
        Node& n = nodes_[which(random_)];
        kill(n.process->pid(), SIGSTOP);
        // Longer than the keepalive (2 s ping, 2 s timeout): the peers declare the link dead.
        absl::SleepFor(absl::Seconds(5));
        kill(n.process->pid(), SIGCONT);
        return absl::OkStatus();
      }
    }
    return absl::InvalidArgumentError(absl::StrCat("unknown fault kind ", std::string(1, kind)));
  }

  int Count() {
    int n = 0;
    return absl::SimpleAtoi(FactOr(*nodes_.back().process, nodes_.back().agent, "count"), &n) ? n
                                                                                              : 0;
  }

  // Until everything fired so far has reached the end of the chain.
  void AwaitSettled() {
    const int target = firer_->next() - 1;
    const absl::Time t0 = absl::Now();
    if (PollFor([&] { return Count() >= target; }, options_.settle_bound, absl::Milliseconds(5))) {
      settle_ms_.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
    } else {
      ++result_.unsettled_faults;
      settle_ms_.push_back(absl::ToDoubleMilliseconds(options_.settle_bound));
      result_.notes.push_back(absl::StrCat("fault ", result_.faults, ": c/0 at ", Count(), " of ",
                                           target, " after ",
                                           absl::FormatDuration(options_.settle_bound)));
    }
  }

  void Account() {
    std::vector<AgentRef> refs;
    for (Node& n : nodes_) refs.push_back({n.process.get(), n.agent});
    if (!PollFor([&] { return Settled(refs); }, absl::Seconds(60), absl::Milliseconds(20))) {
      result_.notes.push_back("the chain did not settle within 60 s of the last value");
    }
    const int fired = result_.values_fired;
    std::map<int, int> times;
    int previous = 0;
    for (absl::string_view v : absl::StrSplit(
             FactOr(*nodes_.back().process, nodes_.back().agent, "seen"), ',', absl::SkipEmpty())) {
      int value = 0;
      if (!absl::SimpleAtoi(v, &value)) {
        result_.notes.push_back(absl::StrCat("c/0 saw a value that is not a number: ", v));
        continue;
      }
      if (++times[value] > 1) ++result_.duplicated;
      if (value < previous) ++result_.out_of_order;
      previous = std::max(previous, value);
    }
    for (int v = 1; v <= fired; ++v) result_.lost += times.contains(v) ? 0 : 1;
    for (Node& n : nodes_) {
      auto st = GetStatus(*n.process, n.agent);
      const std::string value = FactOr(*n.process, n.agent, n.agent == "c/0" ? "count" : "value");
      const bool stale = !st.ok() || st->inbox_depth() > 0 || st->outbox_unacked() > 0 ||
                         st->agent_state() != v1::AGENT_STATE_IDLE ||
                         (n.agent != "c/0" && value != absl::StrCat(fired));
      if (stale) {
        ++result_.stale_units;
        result_.notes.push_back(absl::StrCat(
            n.agent, " is stale: ", st.ok() ? st->ShortDebugString() : st.status().ToString(),
            "; value ", value));
      }
    }
    std::sort(settle_ms_.begin(), settle_ms_.end());
    if (!settle_ms_.empty()) {
      result_.settle_ms_p50 = settle_ms_[settle_ms_.size() / 2];
      result_.settle_ms_max = settle_ms_.back();
    }
  }

  const ChaosOptions options_;
  std::mt19937_64 random_;
  const fs::path work_;
  std::vector<Node> nodes_;
  std::unique_ptr<Firer> firer_;
  std::vector<double> settle_ms_;
  ChaosResult result_;
};

}  // namespace

absl::StatusOr<ChaosResult> RunChaos(const ChaosOptions& options) {
  const uint64_t seed = options.seed != 0 ? options.seed : std::random_device{}();
  const fs::path root = options.dir.empty() ? fs::temp_directory_path() : fs::path(options.dir);
  Campaign campaign(options, seed, root / absl::StrCat("parley-chaos-", getpid(), "-", seed));
  return campaign.Run();
}

}  // namespace parley::services::testing
