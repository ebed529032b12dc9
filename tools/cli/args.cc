#include "tools/cli/args.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace parley::cli {

absl::StatusOr<Args> ParseArgs(const Command& cmd, const std::vector<std::string>& tokens) {
  Args args;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& t = tokens[i];
    // `config SERVICE -x=1` sets an option that starts with '-'; flags of config are none.
    const bool flag = t.size() > 1 && t[0] == '-' &&
                      !(cmd.name == "config" && t.find('=') != std::string::npos && t[1] != '-');
    if (!flag) {
      args.positional.push_back(t);
      continue;
    }
    std::string name = t, value;
    const size_t eq = t.find('=');
    if (eq != std::string::npos) {
      name = t.substr(0, eq);
      value = t.substr(eq + 1);
    }
    auto spec = std::find_if(cmd.flags.begin(), cmd.flags.end(),
                             [&](const FlagSpec& f) { return f.name == name; });
    if (spec == cmd.flags.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag '", name, "' (see parley ", cmd.name, " --help)"));
    }
    if (spec->takes_value && eq == std::string::npos) {
      if (i + 1 == tokens.size()) return absl::InvalidArgumentError(name + " needs a value");
      value = tokens[++i];
    } else if (!spec->takes_value && eq != std::string::npos) {
      return absl::InvalidArgumentError(name + " takes no value");
    }
    args.flags[name] = value;
  }
  const int n = static_cast<int>(args.positional.size());
  if (n < cmd.min_args || (cmd.max_args >= 0 && n > cmd.max_args)) {
    return absl::InvalidArgumentError(absl::StrCat("usage: parley ", cmd.name, " ", cmd.usage));
  }
  return args;
}

absl::StatusOr<absl::Duration> ParseDuration(const std::string& text) {
  absl::Duration d;
  if (absl::ParseDuration(text, &d) && d > absl::ZeroDuration()) return d;
  double seconds = 0;
  if (absl::SimpleAtod(text, &seconds) && seconds > 0) return absl::Seconds(seconds);
  return absl::InvalidArgumentError(
      absl::StrCat("--timeout: expected a duration such as 90s or 5m, got '", text, "'"));
}

absl::StatusOr<std::map<std::string, std::string>> ParseAssignments(
    const std::vector<std::string>& items) {
  std::map<std::string, std::string> out;
  for (const std::string& item : items) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("expected KEY=VALUE, got '", item, "'"));
    }
    out[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return out;
}

}  // namespace parley::cli
