#pragma once

// A run's trace: the steps the run loop records as it goes (cheap: names are formatted only when
// the trace is built), the v1::Trace built from them, and the traces kept in the KB. Internal to
// engine/.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/handler_graph.h"
#include "kb/kb.h"
#include "parley/v1/kb.pb.h"

namespace parley::engine {

// Why a step happened.
enum class Reason { kNone, kOnEvent, kNeverRan, kFactChanged, kText };

struct StepRecord {
  v1::TraceStep::Kind kind;
  const Handler* handler = nullptr;
  Reason reason = Reason::kNone;
  const FactState* fact = nullptr;
  std::string text;  // event name (kOnEvent, FIRED) or a formatted reason (kText)
  std::vector<v1::FactChange> changes;
  std::vector<std::string> fired;
  int64_t duration_ns = 0;
  std::string error;
  // KIND_RAN: the handler asked to run again after this long (RunContext::RetryLater).
  absl::Duration retry_later = absl::ZeroDuration();
};

// Adds to `trace` the run's steps, the net change of each fact it touched (sorted by name), the
// number of handlers it executed and its outputs.
void BuildTrace(const std::vector<StepRecord>& steps, const std::vector<FactState*>& touched,
                uint32_t executions, const std::map<std::string, std::string>& outputs,
                v1::Trace& trace);

// Writes the trace of run `run` in `txn` and drops the one that falls out of the newest `kept`.
void StageTrace(kb::Txn& txn, uint64_t run, const v1::Trace& trace, uint32_t kept);

// The newest `n` traces of `kb`, oldest first.
absl::StatusOr<std::vector<v1::Trace>> ReadTraces(const kb::Kb& kb, size_t n);

}  // namespace parley::engine
