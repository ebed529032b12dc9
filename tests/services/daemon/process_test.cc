// Real `parleyd` processes on 127.0.0.1: a relay (a/0) streams values to a recorder (c/0) while
// the test SIGKILLs and restarts either process, cuts and blackholes the link through a TCP
// proxy, or stops them with SIGTERM. Whatever happens, the recorder must end up with every value
// exactly once and in order, and the sender with nothing unacknowledged.
//
// PARLEY_PROCESS_SEED=<n> replays the random kill moments of a run (the seed is printed).
// PARLEY_TEST_LOG=1 prints the daemons' logs even when the test passes. PARLEYD_BINARY=<path>
// tests another parleyd build (for example one with sanitizers).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "tests/services/daemon/process_util.h"
#include "tests/testing/tcp_proxy.h"
#include "tests/testing/temp_dir.h"

namespace parley::services {
namespace {

using testing::AgentRef;
using testing::FactOr;
using ::testing::HasSubstr;
using testing::Parleyd;
using testing::ParleydOptions;
using testing::PollFor;

constexpr char kSender[] = "a/0";
constexpr char kReceiver[] = "c/0";

// "1,2,...,n": what the recorder's `seen` must be after values 1..n.
std::string Values(int n) {
  std::string out;
  for (int i = 1; i <= n; ++i) absl::StrAppend(&out, i == 1 ? "" : ",", i);
  return out;
}

int Count(Parleyd& p) {
  int n = 0;
  return absl::SimpleAtoi(FactOr(p, kReceiver, "count"), &n) ? n : 0;
}

double Metric(Parleyd& p, const std::string& series) {
  auto text = p.Metrics();
  if (!text.ok()) return -1;
  return testing::MetricValue(*text, series).value_or(0);
}

// The receiver has a live stream from the sender: the server side of a stream is only up once
// the sender's Hello arrived, unlike the dialing side, which counts attempts.
bool ReceiverStreamUp(Parleyd& c) {
  return Metric(c, absl::StrCat("parley_peer_stream_up{agent=\"", kReceiver, "\",peer=\"", kSender,
                                "\"}")) == 1;
}

using testing::Firer;

class ProcessTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (!HasFailure() && getenv("PARLEY_TEST_LOG") == nullptr) return;
    for (const auto& log : logs_) {
      std::cerr << "---- last lines of " << log << "\n"
                << testing::Tail(testing::ReadFile(log), 60) << "\n";
    }
  }

  ParleydOptions Options(const std::string& name, const std::string& agents) {
    ParleydOptions o;
    o.data = dir_.Sub(name);
    o.agents = agents;
    o.log = dir_.Sub(name + ".log");
    logs_.insert(o.log);
    return o;
  }

  std::unique_ptr<Parleyd> Start(const ParleydOptions& options) {
    auto p = Parleyd::Start(options);
    EXPECT_TRUE(p.ok()) << options.agents << ": " << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  }

  // Relates the sender's `out` to the receiver's `in`, the receiver being at `address`.
  absl::Status RelateSenderToReceiver(Parleyd& a, const std::string& address) {
    v1::RelateRequest r;
    r.set_agent(kSender);
    r.set_relation_id("r:1");
    r.set_endpoint("out");
    r.set_remote_agent(kReceiver);
    r.set_remote_address(address);
    r.set_remote_endpoint("in");
    return testing::Relate(a, r);
  }

  uint64_t Seed() {
    uint64_t seed = 0;
    const char* env = getenv("PARLEY_PROCESS_SEED");
    if (env == nullptr || !absl::SimpleAtoi(env, &seed)) seed = std::random_device{}();
    std::cout << "PARLEY_PROCESS_SEED=" << seed << "\n";
    RecordProperty("seed", std::to_string(seed));
    return seed;
  }

  // Waits until sender and receiver are settled, then checks exactly-once, in-order delivery of
  // 1..n and that no side holds anything back.
  void ExpectConverged(Parleyd& a, Parleyd& c, int n) {
    const bool settled = PollFor(
        [&] {
          return testing::Settled({AgentRef{&a, kSender}, AgentRef{&c, kReceiver}});
        },
        absl::Seconds(20), absl::Milliseconds(20));
    auto as = testing::GetStatus(a, kSender);
    auto cs = testing::GetStatus(c, kReceiver);
    ASSERT_TRUE(as.ok()) << as.status();
    ASSERT_TRUE(cs.ok()) << cs.status();
    ASSERT_TRUE(settled) << "not settled after 20 s: sender " << as->ShortDebugString()
                         << "; receiver count " << FactOr(c, kReceiver, "count");
    EXPECT_EQ(FactOr(c, kReceiver, "count"), absl::StrCat(n));
    EXPECT_EQ(FactOr(c, kReceiver, "seen"), Values(n));
    EXPECT_EQ(FactOr(a, kSender, "value"), absl::StrCat(n));
    // Sequence accounting: every event the sender produced was acknowledged, and the receiver
    // applied everything it accepted.
    EXPECT_EQ(as->outbox_unacked(), 0u);
    EXPECT_EQ(as->inbox_depth(), 0u);
    EXPECT_EQ(cs->inbox_depth(), 0u);
    EXPECT_EQ(cs->agent_state(), v1::AGENT_STATE_IDLE);
    EXPECT_EQ(Metric(a, absl::StrCat("parley_agent_outbox_unacked{agent=\"", kSender, "\"}")), 0);
    auto metrics = c.Metrics();
    ASSERT_TRUE(metrics.ok()) << metrics.status();
    const std::string label = absl::StrCat("{agent=\"", kReceiver, "\"}");
    std::cout
        << "receiver (last incarnation): events received "
        << testing::MetricValue(*metrics, "parley_peer_events_received_total" + label).value_or(0)
        << ", deduplicated "
        << testing::MetricValue(*metrics, "parley_peer_events_deduplicated_total" + label)
               .value_or(0)
        << "\n";
  }

  parley::testing::TempDir dir_;
  std::set<std::string> logs_;
};

// The sender and the receiver are each SIGKILLed mid-stream, at seeded random moments, and
// restarted on the same data on a new port. A restarted receiver only knows the sender's address
// from its KB: it must get the sender (who dials, "a/0" < "c/0") to dial its new address.
TEST_F(ProcessTest, PeersKilledMidStreamDeliverExactlyOnceInOrder) {
  std::mt19937_64 random(Seed());
  constexpr int kValues = 300;
  std::vector<char> victims = {'c', 'c', 'c', 'a', 'a'};
  std::shuffle(victims.begin(), victims.end(), random);

  std::unique_ptr<Parleyd> a = Start(Options("a", "a/0=relay"));
  std::unique_ptr<Parleyd> c = Start(Options("c", "c/0=recorder"));
  ASSERT_TRUE(a && c);
  ASSERT_TRUE(RelateSenderToReceiver(*a, c->address()).ok());

  Firer firer(a->api_address(), kSender, 1, kValues, 10, absl::Milliseconds(25));
  const int segment = kValues / static_cast<int>(victims.size());
  int mid_stream = 0;
  for (size_t i = 0; i < victims.size(); ++i) {
    // Each kill somewhere in its own part of the stream.
    const int target = std::uniform_int_distribution<int>(
        static_cast<int>(i) * segment + 1, static_cast<int>(i + 1) * segment - 1)(random);
    int count = 0;
    ASSERT_TRUE(PollFor([&] { return (count = Count(*c)) >= target; }, absl::Seconds(30),
                        absl::Milliseconds(1)))
        << "delivery stalled at " << count << " with " << firer.next() - 1 << " fired";
    std::unique_ptr<Parleyd>& p = victims[i] == 'a' ? a : c;
    const std::string old_address = p->address();
    p->Kill();
    const int fired = firer.next() - 1;
    mid_stream += count < fired || fired < kValues;
    const absl::Time restart = absl::Now();
    p = Start(p->options());
    ASSERT_TRUE(p);
    std::cout << "SIGKILLed " << (victims[i] == 'a' ? kSender : kReceiver) << " at count " << count
              << " with " << fired << " fired; restarted at " << p->address() << " (was "
              << old_address << ")\n";
    if (victims[i] == 'a') {
      firer.SetAddress(a->api_address());
      // Before the next kill, the receiver must know the sender's new address (from the new
      // stream's Hello, which the sender's stream only counts as up once answered): a receiver
      // killed before that would come back knowing only the old one, and with both ends on new
      // ports neither could find the other. (Parleyds keep their ports across restarts; only
      // this test moves them.)
      ASSERT_TRUE(PollFor(
          [&] {
            return Metric(*a, absl::StrCat("parley_peer_stream_up{agent=\"", kSender, "\",peer=\"",
                                           kReceiver, "\"}")) == 1;
          },
          absl::Seconds(15), absl::Milliseconds(10)))
          << "the restarted sender at " << a->address() << " never reached the receiver";
    } else {
      // The receiver's new port reaches the sender only through RequestConnect.
      ASSERT_TRUE(
          PollFor([&] { return ReceiverStreamUp(*c); }, absl::Seconds(15), absl::Milliseconds(10)))
          << "the sender never dialed the restarted receiver at " << c->address();
      std::cout << "  sender reconnected to the new receiver after "
                << absl::FormatDuration(absl::Now() - restart) << "\n";
    }
  }
  std::cout << mid_stream << " of " << victims.size() << " kills happened mid-stream\n";
  const absl::Status fired = firer.Wait(absl::Seconds(60));
  ASSERT_TRUE(fired.ok()) << fired;
  ExpectConverged(*a, *c, kValues);
}

// The link goes through a TCP proxy (the receiver advertises the proxy): connections dropped
// during a burst must resume; a blackholed link must be detected by keepalive and redialed, and
// deliver everything once healed.
TEST_F(ProcessTest, CutAndBlackholedLinkHeals) {
  std::mt19937_64 random(Seed());
  constexpr int kValues = 300;
  const int c_port = testing::PickFreePort();
  auto proxy = parley::testing::TcpProxy::Start(absl::StrCat("127.0.0.1:", c_port));
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  ParleydOptions co = Options("c", "c/0=recorder");
  co.listen = absl::StrCat("127.0.0.1:", c_port);
  co.advertise = (*proxy)->address();
  std::unique_ptr<Parleyd> c = Start(co);
  std::unique_ptr<Parleyd> a = Start(Options("a", "a/0=relay"));
  ASSERT_TRUE(a && c);
  ASSERT_EQ(c->address(), (*proxy)->address());
  ASSERT_TRUE(RelateSenderToReceiver(*a, (*proxy)->address()).ok());
  Firer firer(a->api_address(), kSender, 1, kValues, 5, absl::Milliseconds(10));

  // Cut every connection in the middle of the burst.
  int target = std::uniform_int_distribution<int>(20, 100)(random);
  int count = 0;
  ASSERT_TRUE(PollFor([&] { return (count = Count(*c)) >= target; }, absl::Seconds(20),
                      absl::Milliseconds(1)))
      << "delivery stalled at " << count;
  const int accepted = (*proxy)->connections_accepted();
  EXPECT_GT((*proxy)->open_connections(), 0);
  (*proxy)->DropConnections();
  std::cout << "dropped connections at count " << count << " with " << firer.next() - 1
            << " fired\n";
  ASSERT_TRUE(
      PollFor([&] { return (*proxy)->connections_accepted() > accepted; }, absl::Seconds(20)))
      << "the sender never redialed after the drop";
  const int after_drop = Count(*c);
  ASSERT_TRUE(PollFor([&] { return (count = Count(*c)) > after_drop; }, absl::Seconds(20)))
      << "the stream did not resume after the drop: count " << count;

  // Blackhole the link later in the burst; values keep being fired while it is dark.
  target = std::uniform_int_distribution<int>(140, 200)(random);
  ASSERT_TRUE(PollFor([&] { return (count = Count(*c)) >= target; }, absl::Seconds(20),
                      absl::Milliseconds(1)))
      << "delivery stalled at " << count;
  const int before_blackhole = (*proxy)->connections_accepted();
  (*proxy)->Blackhole();
  const absl::Time dark = absl::Now();
  std::cout << "blackholed at count " << count << " with " << firer.next() - 1 << " fired\n";
  // Keepalive (2 s ping, 2 s timeout) declares the stream dead and the sender redials: the proxy
  // accepts the new connection but forwards nothing.
  ASSERT_TRUE(PollFor([&] { return (*proxy)->connections_accepted() > before_blackhole; },
                      absl::Seconds(20), absl::Milliseconds(20)))
      << "the sender did not notice the blackholed stream";
  std::cout << "dead stream detected and redialed after "
            << absl::FormatDuration(absl::Now() - dark) << " with " << firer.next() - 1
            << " fired\n";
  EXPECT_GT((*proxy)->bytes_discarded(), 0u);
  const absl::Status fired = firer.Wait(absl::Seconds(30));
  ASSERT_TRUE(fired.ok()) << fired;
  EXPECT_LT(Count(*c), kValues) << "every value got through the blackhole";
  (*proxy)->Heal();
  const absl::Time healed = absl::Now();
  ExpectConverged(*a, *c, kValues);
  std::cout << "converged " << absl::FormatDuration(absl::Now() - healed) << " after healing\n";
}

// SIGTERM stops parleyd promptly with status 0, also mid-stream; restarted on the same data and
// ports, the agents have the same facts and carry on.
TEST_F(ProcessTest, SigtermExitsCleanlyAndStateSurvives) {
  std::mt19937_64 random(Seed());
  constexpr int kValues = 100;
  std::unique_ptr<Parleyd> a = Start(Options("a", "a/0=relay"));
  std::unique_ptr<Parleyd> c = Start(Options("c", "c/0=recorder"));
  ASSERT_TRUE(a && c);
  ASSERT_TRUE(RelateSenderToReceiver(*a, c->address()).ok());

  // Restarts keep the port, so that the other side's stored address stays right.
  auto terminate_and_restart = [&](std::unique_ptr<Parleyd>& p) {
    ParleydOptions o = p->options();
    o.listen = p->address();
    const absl::Time start = absl::Now();
    absl::StatusOr<int> status = p->Terminate(absl::Seconds(10));
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
        << testing::DescribeWaitStatus(*status);
    std::cout << o.agents << " exited " << absl::FormatDuration(absl::Now() - start)
              << " after SIGTERM\n";
    p = Start(o);
    ASSERT_TRUE(p);
  };

  {
    Firer firer(a->api_address(), kSender, 1, kValues, 5, absl::Milliseconds(10));
    const int target = std::uniform_int_distribution<int>(10, kValues - 20)(random);
    int count = 0;
    ASSERT_TRUE(PollFor([&] { return (count = Count(*c)) >= target; }, absl::Seconds(20),
                        absl::Milliseconds(1)));
    std::cout << "SIGTERM to " << kReceiver << " at count " << count << " with " << firer.next() - 1
              << " fired\n";
    ASSERT_NO_FATAL_FAILURE(terminate_and_restart(c));
    const absl::Status fired = firer.Wait(absl::Seconds(30));
    ASSERT_TRUE(fired.ok()) << fired;
  }
  ASSERT_NO_FATAL_FAILURE(ExpectConverged(*a, *c, kValues));

  auto a_facts = testing::GetFacts(*a, kSender);
  auto c_facts = testing::GetFacts(*c, kReceiver);
  ASSERT_TRUE(a_facts.ok() && c_facts.ok());
  ASSERT_NO_FATAL_FAILURE(terminate_and_restart(a));
  ASSERT_NO_FATAL_FAILURE(terminate_and_restart(c));
  auto a_after = testing::GetFacts(*a, kSender);
  auto c_after = testing::GetFacts(*c, kReceiver);
  ASSERT_TRUE(a_after.ok() && c_after.ok());
  EXPECT_EQ(*a_after, *a_facts);
  EXPECT_EQ(*c_after, *c_facts);

  // And they carry on.
  ASSERT_TRUE(testing::FireEvent(*a, kSender, "action.set", {{"value", "101"}}).ok());
  ExpectConverged(*a, *c, kValues + 1);
}

// The sender restarts while the receiver is down, so its first dials fail at once; once the
// receiver is back on its old address, the stream must come up and deliver.
TEST_F(ProcessTest, SenderRestartedWhileReceiverIsDownReachesItLater) {
  std::unique_ptr<Parleyd> a = Start(Options("a", "a/0=relay"));
  std::unique_ptr<Parleyd> c = Start(Options("c", "c/0=recorder"));
  ASSERT_TRUE(a && c);
  ASSERT_TRUE(RelateSenderToReceiver(*a, c->address()).ok());
  for (int value = 1; value <= 3; ++value) {
    ParleydOptions co = c->options();
    co.listen = c->address();
    c->Kill();
    a->Kill();
    a = Start(a->options());
    ASSERT_TRUE(a);
    ASSERT_TRUE(
        testing::FireEvent(*a, kSender, "action.set", {{"value", absl::StrCat(value)}}).ok());
    c = Start(co);
    ASSERT_TRUE(c);
    ASSERT_NO_FATAL_FAILURE(ExpectConverged(*a, *c, value)) << "cycle " << value;
  }
}

// The receiver restarts on a new port while the sender is down, so its request to be dialed
// fails; the sender then comes back on its old port with a backlog. Only the receiver knows both
// addresses: it has to ask again until the sender dials it.
TEST_F(ProcessTest, ReceiverMovedWhileSenderWasDownIsReachedOnceTheSenderIsBack) {
  std::unique_ptr<Parleyd> a = Start(Options("a", "a/0=relay"));
  std::unique_ptr<Parleyd> c = Start(Options("c", "c/0=recorder"));
  ASSERT_TRUE(a && c);
  ASSERT_TRUE(RelateSenderToReceiver(*a, c->address()).ok());
  ASSERT_TRUE(testing::FireEvent(*a, kSender, "action.set", {{"value", "1"}}).ok());
  ASSERT_NO_FATAL_FAILURE(ExpectConverged(*a, *c, 1));

  ParleydOptions ao = a->options();
  ao.listen = a->address();
  a->Kill();
  c->Kill();
  c = Start(c->options());  // a new port; its request to be dialed finds nobody
  ASSERT_TRUE(c);
  a = Start(ao);
  ASSERT_TRUE(a);
  ASSERT_TRUE(testing::FireEvent(*a, kSender, "action.set", {{"value", "2"}}).ok());
  ExpectConverged(*a, *c, 2);
}

// Runs parleyd with `args` to completion (bounded); its wait status and output.
std::pair<int, std::string> RunParleyd(const std::vector<std::string>& args,
                                       const std::string& log) {
  std::vector<std::string> argv = {testing::ParleydBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  const pid_t pid = testing::Spawn(argv, log);
  EXPECT_GT(pid, 0);
  std::optional<int> status = testing::WaitExit(pid, absl::Seconds(15));
  if (!status) {
    kill(pid, SIGKILL);
    testing::WaitExit(pid, absl::Seconds(5));
    ADD_FAILURE() << "parleyd " << absl::StrJoin(args, " ") << " did not exit";
    return {-1, ""};
  }
  return {*status, testing::ReadFile(log)};
}

bool ExitedWithError(int status) { return WIFEXITED(status) && WEXITSTATUS(status) != 0; }

TEST_F(ProcessTest, BadFlagsExitNonZeroNamingTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::vector<std::string> expected;
  };
  const std::string data = "--data=" + dir_.Sub("data");
  const std::vector<Case> cases = {
      {{data, "--agents=a/0=nosuchkind", "--plaintext"}, {"--agents", "nosuchkind"}},
      {{"--agents=a/0=relay", "--plaintext"}, {"--data"}},
      {{data, "--agents=a/0", "--plaintext"}, {"--agents", "a/0"}},
      {{data, "--agents=a/0=relay", "--durability=sometimes", "--plaintext"}, {"--durability"}},
      {{data, "--agents=a/0=relay", "--no_such_flag"}, {"no_such_flag"}},
  };
  int i = 0;
  for (const auto& c : cases) {
    const auto [status, output] = RunParleyd(c.args, dir_.Sub(absl::StrCat("bad", i++, ".log")));
    EXPECT_TRUE(ExitedWithError(status))
        << absl::StrJoin(c.args, " ") << ": " << testing::DescribeWaitStatus(status);
    for (const auto& e : c.expected) {
      EXPECT_THAT(output, HasSubstr(e)) << absl::StrJoin(c.args, " ");
    }
  }
}

// Startup failures that only show once the host starts: an address that cannot be bound, a data
// directory another parleyd holds. They must be reported, not crash.
TEST_F(ProcessTest, StartupFailuresExitWithAMessage) {
  // 192.0.2.0/24 is TEST-NET-1: never a local address, so bind() fails.
  const auto [listen_status, listen_output] = RunParleyd(
      {"--data=" + dir_.Sub("x"), "--listen=192.0.2.1:1", "--agents=a/0=relay", "--plaintext"},
      dir_.Sub("listen.log"));
  EXPECT_TRUE(ExitedWithError(listen_status)) << testing::DescribeWaitStatus(listen_status);
  EXPECT_THAT(listen_output, HasSubstr("192.0.2.1:1"));

  std::unique_ptr<Parleyd> holder = Start(Options("held", "a/0=relay"));
  ASSERT_TRUE(holder);
  const auto [held_status, held_output] =
      RunParleyd({"--data=" + holder->options().data, "--agents=a/0=relay", "--plaintext"},
                 dir_.Sub("held2.log"));
  EXPECT_TRUE(ExitedWithError(held_status)) << testing::DescribeWaitStatus(held_status);
  EXPECT_THAT(held_output, HasSubstr(holder->options().data));
}

}  // namespace
}  // namespace parley::services
