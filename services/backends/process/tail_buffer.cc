#include "services/backends/process/tail_buffer.h"

#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace parley::services {

std::string Printable(absl::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f)) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

void TailBuffer::Append(absl::string_view data) {
  total_ += data.size();
  if (data.size() >= limit_) {
    data_.assign(data.data() + data.size() - limit_, limit_);
    return;
  }
  data_.append(data.data(), data.size());
  // Trim in chunks so that appending stays linear.
  if (data_.size() > 2 * limit_) data_.erase(0, data_.size() - limit_);
}

absl::string_view TailBuffer::Tail(size_t n) const {
  absl::string_view d = Kept();
  return d.size() <= n ? d : d.substr(d.size() - n);
}

absl::string_view TailBuffer::Kept() const {
  absl::string_view d = data_;
  return d.size() <= limit_ ? d : d.substr(d.size() - limit_);
}

std::string DescribeTail(absl::string_view name, const TailBuffer& b, size_t n) {
  if (b.total() == 0) return absl::StrCat(name, ": (empty)");
  absl::string_view tail = b.Tail(n);
  std::string head = tail.size() == b.total()
                         ? std::string(name)
                         : absl::StrCat(name, " (last ", tail.size(), " of ", b.total(), " bytes",
                                        b.dropped() > 0 ? ", truncated" : "", ")");
  return absl::StrCat(head, ": ", Printable(absl::StripAsciiWhitespace(tail)));
}

}  // namespace parley::services
