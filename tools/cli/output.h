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
// Indented JSON with the proto field names.
std::string ToJson(const google::protobuf::Message& m);

}  // namespace parley::cli
