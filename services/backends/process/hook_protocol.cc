#include "services/backends/process/hook_protocol.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace parley::services {
namespace {

// A hook request with more arguments than this is refused.
constexpr size_t kMaxArgs = 64;

}  // namespace

std::string EncodeHookRequest(const std::vector<std::string>& args) {
  std::string out;
  for (const std::string& a : args) absl::StrAppend(&out, a.size(), ":", a, ",");
  return out;
}

absl::StatusOr<std::vector<std::string>> DecodeHookRequest(absl::string_view data) {
  std::vector<std::string> args;
  const absl::string_view all = data;
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed hook request at byte ", data.data() - all.data(), ": ", why));
  };
  while (!data.empty()) {
    if (args.size() == kMaxArgs) return bad(absl::StrCat("more than ", kMaxArgs, " arguments"));
    size_t colon = data.find(':');
    if (colon == absl::string_view::npos || colon == 0 || colon > 7) {
      return bad("expected <length>:<bytes>,");
    }
    size_t len = 0;
    for (char c : data.substr(0, colon)) {
      if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
        return bad("expected <length>:<bytes>,");
      }
      len = len * 10 + (c - '0');
    }
    data.remove_prefix(colon + 1);
    if (data.size() < len + 1 || data[len] != ',') return bad("argument shorter than its length");
    args.emplace_back(data.substr(0, len));
    data.remove_prefix(len + 1);
  }
  if (args.empty()) return bad("empty request");
  return args;
}

}  // namespace parley::services
