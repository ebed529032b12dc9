#pragma once

// The state of one run while it is in progress. Internal to engine/.

#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"

namespace parley::engine {

// Why a step happened. Reasons are formatted only when the trace is built.
enum class Reason { kNone, kOnEvent, kNeverRan, kFactChanged, kText };

struct Engine::StepRecord {
  v1::TraceStep::Kind kind;
  const Handler* handler = nullptr;
  Reason reason = Reason::kNone;
  const FactState* fact = nullptr;
  std::string text;  // event name (kOnEvent, FIRED) or a formatted reason (kText)
  std::vector<v1::FactChange> changes;
  std::vector<std::string> fired;
  int64_t duration_ns = 0;
  std::string error;
};

struct Engine::Run {
  explicit Run(Engine* engine, const v1::Event& e) : event(e), ctx(engine) {}
  const v1::Event& event;
  RunContext ctx;
  Handler* current = nullptr;
  std::deque<std::pair<Handler*, uint32_t>> queue;
  // RunContext::Output, for the trace.
  std::map<std::string, std::string> outputs;
  std::vector<FactState*> changed;  // since the last retest
  std::vector<std::string> fired;   // by the current handler
  std::vector<v1::FactChange>* current_changes = nullptr;
  std::vector<FactState*> touched;
  std::vector<Handler*> ran;       // fact-only handlers whose bookkeeping changes
  std::vector<Handler*> executed;  // every handler run at least once
  std::vector<StepRecord> steps;
  // Relation id -> key -> new value (nullopt: deleted), for the unit and the service bag.
  std::map<std::string, std::map<std::string, std::optional<std::string>>> local_unit;
  std::map<std::string, std::map<std::string, std::optional<std::string>>> local_service;
  std::set<std::string> relations_changed;
  std::set<std::string> broken;
  // Relations left without remote units by a departed event: a broken event follows.
  std::set<std::string> follow_up_broken;
  // (relation, unit) this agent unrelated from: the unit is told with a DEPARTED event.
  std::vector<std::pair<std::string, std::string>> departs;
  // Outbox entries staged by this run.
  struct Staged {
    std::string destination, relation;
    uint64_t sequence, id;
  };
  std::vector<Staged> staged;
  uint32_t executions = 0;
};

}  // namespace parley::engine
