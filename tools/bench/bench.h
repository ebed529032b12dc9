#pragma once

// parley-bench: scenarios that measure the engine and the knowledge base against the targets of
// the performance issue. Each scenario takes an Options struct (flags are parsed only in main())
// and returns Reports, which main() prints as a table or as one JSON object per line.

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace parley::bench {

struct EngineBenchOptions {
  // Handlers executed by each run: one on the event, then chain-1 fact-only handlers in a row.
  int chain = 50;
  // Fact-only handlers whose facts never hold; they must cost nothing.
  int unrelated = 0;
  // Measured runs; 0: as many as fit in `seconds`, judged from the warm-up.
  int64_t runs = 0;
  double seconds = 1.5;
  // Measure unrelated = 0, 1000 and 10000 in one process instead of `unrelated` alone.
  bool sweep = false;
  // The measured runs are split into rounds, the configurations taking turns round by round,
  // each round ending with a durable wait (the command line uses 10 with `sweep`).
  int rounds = 1;
  // Parent of the temporary KB directories; empty: the system's temporary directory.
  std::string dir;
};

struct KbBenchOptions {
  // Measured time of each side (raw sync, ours sync, ours group commit), split over `rounds`.
  double seconds = 1.5;
  int rounds = 6;
  // Keys written by each commit and the size of each value: a typical run.
  int keys = 10;
  int value_bytes = 32;
  std::string dir;
};

// One result: named values in the order they were added.
class Report {
 public:
  explicit Report(std::string scenario) { AddString("scenario", std::move(scenario)); }

  void AddInt(std::string key, int64_t v) { Add(std::move(key), absl::StrCat(v), absl::StrCat(v)); }
  void AddBool(std::string key, bool v) {
    Add(std::move(key), v ? "true" : "false", v ? "true" : "false");
  }
  void AddDouble(std::string key, double v) {
    if (!std::isfinite(v)) {
      Add(std::move(key), "null", "n/a");
      return;
    }
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.3f", v);
    Add(std::move(key), buf, buf);
  }
  void AddString(std::string key, std::string v) {
    std::string quoted = "\"";
    for (char c : v) {
      if (c == '"' || c == '\\') {
        quoted.push_back('\\');
        quoted.push_back(c);
      } else if (static_cast<unsigned char>(c) < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "\\u%04x", c);
        quoted.append(buf);
      } else {
        quoted.push_back(c);
      }
    }
    quoted.push_back('"');
    Add(std::move(key), std::move(quoted), std::move(v));
  }

  // One line, no trailing newline.
  std::string ToJson() const {
    std::string out = "{";
    for (size_t i = 0; i < fields_.size(); ++i) {
      absl::StrAppend(&out, i ? "," : "", "\"", fields_[i].key, "\":", fields_[i].json);
    }
    out.push_back('}');
    return out;
  }

  // Aligned "key  value" lines.
  std::string ToTable() const {
    size_t width = 0;
    for (const auto& f : fields_) width = std::max(width, f.key.size());
    std::string out;
    for (const auto& f : fields_) {
      absl::StrAppend(&out, "  ", f.key, std::string(width + 2 - f.key.size(), ' '), f.text, "\n");
    }
    return out;
  }

 private:
  struct Field {
    std::string key;
    std::string json;
    std::string text;
  };
  void Add(std::string key, std::string json, std::string text) {
    fields_.push_back({std::move(key), std::move(json), std::move(text)});
  }
  std::vector<Field> fields_;
};

// A directory made with mkdtemp and removed with everything in it when this goes away. Declare
// it before whatever uses the directory, so that it is removed last.
class TempDir {
 public:
  // `parent` empty: the system's temporary directory.
  static absl::StatusOr<TempDir> Create(const std::string& parent) {
    std::error_code ec;
    std::filesystem::path base =
        parent.empty() ? std::filesystem::temp_directory_path(ec) : std::filesystem::path(parent);
    if (ec) return absl::UnavailableError(absl::StrCat("temporary directory: ", ec.message()));
    std::string tmpl = (base / "parley-bench-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      return absl::UnavailableError(
          absl::StrCat("cannot create a directory in ", base.string(), ": ", std::strerror(errno)));
    }
    return TempDir(std::move(tmpl));
  }
  TempDir(TempDir&& other) noexcept : path_(std::exchange(other.path_, "")) {}
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;  // best effort: nothing to report a failed cleanup to
    std::filesystem::remove_all(path_, ec);
  }

  const std::string& path() const { return path_; }
  std::string Sub(absl::string_view name) const { return absl::StrCat(path_, "/", name); }

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// Seconds on the steady clock since an arbitrary epoch.
inline double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

absl::StatusOr<std::vector<Report>> RunEngineBench(const EngineBenchOptions& options);
absl::StatusOr<std::vector<Report>> RunKbBench(const KbBenchOptions& options);

}  // namespace parley::bench
