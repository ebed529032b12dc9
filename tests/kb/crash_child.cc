// The process that crash_test.cc SIGKILLs: an agent applying "tick" events.
//
//   kb_crash_child DIR MODE TOTAL      (MODE: sync | group)
//
// Opens the KB at DIR (agent "crash/0") and an engine whose one handler, `apply`, sets the facts
// k0..k9 to the event's parameter n and `count` to its previous value plus one, so that a run
// applied twice, lost or torn is visible afterwards. Events tick n=1..TOTAL are enqueued in order
// (event id == n) a few at a time ahead of the runs, as a live agent receives them; since every
// enqueued event is either applied or still in the inbox, the next n to enqueue is
// count + inbox depth + 1, which also holds after a kill in the middle of an Enqueue.
//
// Stdout, one line per write(2) so that a kill never leaves half a line:
//   "ready"        the KB is open and the engine loaded; the run loop starts
//   "committed N"  the run that applied tick N is durable (written only once it is)
//   "done"         all TOTAL events (or more) are applied and durable; exit status 0
// Errors go to stderr with exit status 2.

#include <stdio.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "engine/engine.h"
#include "engine/spec.h"
#include "kb/kb.h"
#include "kb/store.h"

namespace {

using parley::engine::Engine;
using parley::engine::RunContext;
using parley::engine::RunOutcome;

// Events enqueued ahead of the run loop.
constexpr size_t kWindow = 4;

void Say(const std::string& line) {
  const std::string out = line + "\n";
  // A pipe write below PIPE_BUF is atomic; the parent reads whole lines.
  ssize_t n = write(STDOUT_FILENO, out.data(), out.size());
  if (n != static_cast<ssize_t>(out.size())) _exit(3);
}

[[noreturn]] void Die(absl::string_view what, const absl::Status& s) {
  const std::string msg = absl::StrCat("kb_crash_child: ", what, ": ", s.ToString(), "\n");
  ssize_t ignored = write(STDERR_FILENO, msg.data(), msg.size());
  (void)ignored;
  _exit(2);
}

absl::Status Apply(RunContext& ctx) {
  auto it = ctx.event().params().find("n");
  if (it == ctx.event().params().end()) return absl::InvalidArgumentError("tick without n");
  uint64_t count = 0;
  if (auto prev = ctx.Value("count"); prev && !absl::SimpleAtoi(*prev, &count)) {
    return absl::DataLossError(absl::StrCat("count '", *prev, "' is not a number"));
  }
  for (int k = 0; k < 10; ++k) {
    if (auto s = ctx.Set(absl::StrCat("k", k), it->second); !s.ok()) return s;
  }
  return ctx.Set("count", absl::StrCat(count + 1));
}

uint64_t Count(const Engine& engine) {
  uint64_t count = 0;
  if (auto v = engine.FactValue("count"); v && !absl::SimpleAtoi(*v, &count)) {
    Die("reading count", absl::DataLossError(*v));
  }
  return count;
}

int Main(int argc, char** argv) {
  uint64_t total = 0;
  const std::string mode = argc == 4 ? argv[2] : "";
  if (argc != 4 || (mode != "sync" && mode != "group") || !absl::SimpleAtoi(argv[3], &total)) {
    fprintf(stderr, "usage: kb_crash_child DIR sync|group TOTAL\n");
    return 1;
  }
  parley::kb::StoreOptions options;
  options.durability =
      mode == "sync" ? parley::kb::Durability::kSync : parley::kb::Durability::kGroupCommit;
  auto store = parley::kb::Store::Open(argv[1], options);
  if (!store.ok()) Die("open store", store.status());
  auto kb = parley::kb::Kb::Open(store->get(), "crash/0");
  if (!kb.ok()) Die("open kb", kb.status());

  parley::engine::ServiceSpec spec;
  spec.service = "crash";
  spec.unit = "crash/0";
  parley::engine::HandlerSpec apply;
  apply.name = "apply";
  apply.on = {"tick"};
  apply.action = parley::engine::MakeAction(Apply);
  spec.handlers.push_back(std::move(apply));
  auto engine = Engine::Create(std::move(spec), kb->get(), parley::base::SystemClock::Get(), {});
  if (!engine.ok()) Die("create engine", engine.status());
  Engine& e = **engine;
  Say("ready");

  uint64_t last_ticket = 0;
  for (;;) {
    // Top up the inbox: ticks count+depth+1 .. up to kWindow ahead, never beyond TOTAL.
    for (uint64_t next = Count(e) + e.inbox_depth() + 1; next <= total && e.inbox_depth() < kWindow;
         ++next) {
      parley::v1::Event tick;
      tick.set_name("tick");
      tick.set_source("crash_test");
      (*tick.mutable_params())["n"] = absl::StrCat(next);
      auto r = e.Enqueue(std::move(tick));
      if (!r.ok()) Die("enqueue", r.status());
      if (r->event_id != next) {
        Die("enqueue", absl::InternalError(absl::StrCat("tick ", next, " got id ", r->event_id)));
      }
    }
    auto r = e.RunOnce();
    if (!r.ok()) Die("run", r.status());
    if (r->outcome == RunOutcome::kIdle) break;
    if (r->outcome != RunOutcome::kCommitted) {
      Die("run", absl::InternalError(absl::StrCat(
                     "outcome ", static_cast<int>(r->outcome), ": ",
                     e.failure() ? e.failure()->ShortDebugString() : std::string("no failure"))));
    }
    last_ticket = r->ticket;
    // Report the run only once it is durable: at once in sync mode, from the syncer otherwise.
    const uint64_t n = Count(e);
    (*store)->WhenDurable(r->ticket, [n](absl::Status s) {
      if (!s.ok()) Die("sync", s);
      Say(absl::StrCat("committed ", n));
    });
  }
  // More than TOTAL is fine: an earlier life may have been started with a larger one.
  if (Count(e) < total) {
    Die("finish", absl::InternalError(absl::StrCat("idle at count ", Count(e), " of ", total)));
  }
  if (last_ticket != 0) {
    if (auto s = (*store)->WaitDurable(last_ticket); !s.ok()) Die("sync", s);
  }
  // Closing the store joins the syncer, so every "committed" line is out before "done".
  engine->reset();
  kb->reset();
  store->reset();
  Say("done");
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
