#pragma once

// What the KB tests share: status assertions, a fresh directory per test, snapshots of a
// directory (a refused open must not change it).

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"
#include "kb/kb.h"
#include "kb/store.h"

namespace parley::kb {

// Test names and failure messages say "kSync" rather than "4-byte object <00-00 00-00>".
inline void PrintTo(Durability d, std::ostream* os) {
  *os << (d == Durability::kSync ? "kSync" : "kGroupCommit");
}

namespace fs = std::filesystem;

inline const absl::Status& ToStatus(const absl::Status& s) { return s; }
template <typename T>
inline absl::Status ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

#define ASSERT_OK(expr)                     \
  do {                                      \
    const absl::Status _s = ToStatus(expr); \
    ASSERT_TRUE(_s.ok()) << _s;             \
  } while (0)

#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL(PARLEY_CONCAT(_statusor_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  ASSERT_TRUE(tmp.ok()) << tmp.status();          \
  lhs = std::move(*tmp)

using Entries = std::vector<std::pair<std::string, std::string>>;

// Everything a Kb or a Txn yields for `prefix`, in scan order.
template <typename Reader>
absl::StatusOr<Entries> ScanAll(const Reader& reader, Space space, absl::string_view prefix) {
  Entries out;
  RETURN_IF_ERROR(reader.Scan(space, prefix, [&](absl::string_view k, absl::string_view v) {
    out.emplace_back(std::string(k), std::string(v));
    return true;
  }));
  return out;
}

inline StoreOptions Options(Durability durability) {
  StoreOptions o;
  o.durability = durability;
  return o;
}

// The schema key as Store writes it: store-wide metadata sorts before every agent.
inline std::string SchemaKey() { return std::string("\0", 1) + "schema"; }

// Name -> (size, FNV-1a of the content) of everything under a directory; directories have size
// and hash 0. A failed open must leave this exactly as it was.
using DirSnapshot = std::map<std::string, std::pair<uintmax_t, uint64_t>>;

inline DirSnapshot Snapshot(const std::string& dir) {
  DirSnapshot out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = fs::relative(e.path(), dir).string();
    if (e.is_directory()) {
      out[name + "/"] = {0, 0};
      continue;
    }
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream content;
    content << in.rdbuf();
    uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char c : content.str()) {
      h ^= c;
      h *= 0x100000001b3ULL;
    }
    out[name] = {content.str().size(), h};
  }
  return out;
}

inline void WriteFile(const fs::path& p, const std::string& content) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << content;
}

class KbTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "parley_kb_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << "mkdtemp " << tmpl;
    root_ = tmpl;
    path_ = root_ + "/kb";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // Puts `entries` into `space` of `kb` in one committed transaction.
  void CommitAll(Kb& kb, Space space, const Entries& entries) {
    auto txn = kb.Begin();
    for (const auto& [k, v] : entries) txn->Put(space, k, v);
    ASSERT_OK(kb.Commit(*txn));
  }

  std::string root_;
  std::string path_;
};

}  // namespace parley::kb
