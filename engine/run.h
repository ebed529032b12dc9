#pragma once

// The state of the run in progress: the handler queue, what changed since the last retest, the
// steps for its trace. Created when a run starts, dropped when it commits or fails. Internal to
// engine/.

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "engine/handler_graph.h"
#include "engine/run_context.h"
#include "engine/trace.h"
#include "parley/v1/kb.pb.h"

namespace parley::engine {

struct Run {
  Run(RunContext ctx, const v1::Event& e) : event(e), ctx(ctx) {}
  const v1::Event& event;
  RunContext ctx;
  Handler* current = nullptr;
  // Handlers to run, with the queue generation they were queued in (a later one drops them).
  std::deque<std::pair<Handler*, uint32_t>> queue;
  // RunContext::Output, for the trace.
  std::map<std::string, std::string> outputs;
  // RunContext::RetryLater of the handler running.
  std::optional<absl::Duration> retry_later;
  std::vector<FactState*> changed;  // since the last retest
  std::vector<std::string> fired;   // by the current handler
  std::vector<v1::FactChange>* current_changes = nullptr;
  std::vector<FactState*> touched;
  std::vector<Handler*> ran;       // fact-only handlers whose bookkeeping changes
  std::vector<Handler*> executed;  // every handler run at least once
  std::vector<StepRecord> steps;
  uint32_t executions = 0;
  // Leadership: the event made this unit leader (leader.elected fires after it), and the term the
  // run wrote the service bag under (0: it did not).
  bool elected = false;
  int64_t service_term = 0;
};

}  // namespace parley::engine
