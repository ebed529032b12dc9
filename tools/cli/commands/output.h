#pragma once

// What the commands print: aligned tables, state names, JSON.

#include <algorithm>
#include <string>
#include <vector>

#include "google/protobuf/message.h"
#include "parley/v1/agent.pb.h"

namespace parley::cli {

// Columns padded to their widest cell, two spaces apart.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  // Rows added (the header not counted).
  size_t size() const { return rows_.size() - 1; }
  std::string Render() const {
    std::vector<size_t> width;
    for (const auto& row : rows_) {
      for (size_t i = 0; i < row.size(); ++i) {
        if (width.size() <= i) width.push_back(0);
        width[i] = std::max(width[i], row[i].size());
      }
    }
    std::string out;
    for (const auto& row : rows_) {
      std::string line;
      for (size_t i = 0; i < row.size(); ++i) {
        line += row[i];
        if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
      }
      out += line + "\n";
    }
    return out;
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string WorkloadName(v1::WorkloadState s);
std::string AgentStateName(v1::AgentState s);
// A unit's stage in its life: installing, active, dying, dead (docs/engine.md, "A unit's life").
std::string StageName(v1::UnitStage s);

// What its probes say of a unit's workload: healthy, unhealthy, checking (probes declared, not
// decided yet) or "-" (no probes: docs/service-definitions.md, "Health").
std::string HealthName(const v1::AgentStatus& s);
// A unit's failed inbox head for operators: "event 7 action.hello failed: <error> (3 attempts,
// next at 12:00:01); `parley resolve web/0` retries it now, `--skip` drops it". The error is cut
// to `max_error` characters (0: whole), the rest always shown.
std::string DescribeFailure(const std::string& unit, const v1::RunFailure& failure,
                            size_t max_error = 0);
// Indented JSON with the proto field names.
std::string ToJson(const google::protobuf::Message& m);

}  // namespace parley::cli
