#pragma once

// What is kept of a program's output: the last bytes of each stream, and how they are quoted in
// errors and logs.

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace parley::services {

// Printable ASCII, tabs and newlines as they are; other bytes as \xNN.
std::string Printable(absl::string_view s);

// The last `limit` bytes written to it, and how many were written in all.
class TailBuffer {
 public:
  explicit TailBuffer(size_t limit) : limit_(limit) {}
  void Append(absl::string_view data);
  // The last `n` bytes kept.
  absl::string_view Tail(size_t n) const;
  absl::string_view Kept() const;
  size_t total() const { return total_; }
  size_t dropped() const { return total_ - Kept().size(); }

 private:
  size_t limit_;
  std::string data_;
  size_t total_ = 0;
};

// "stderr (last 120 of 5000 bytes): ..." or "stderr: (empty)", the text made printable.
std::string DescribeTail(absl::string_view name, const TailBuffer& b, size_t n);

}  // namespace parley::services
