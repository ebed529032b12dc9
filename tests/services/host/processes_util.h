// Files and processes for the tests that run real handler programs and daemons (removal,
// a unit's death): write a definition's files, read what its programs wrote, and look at and
// clean up the processes they left.
#pragma once

#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace parley::services::testing {

inline void Write(const std::filesystem::path& path, const std::string& text, bool executable = false) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path) << text;
  if (executable) std::filesystem::permissions(path, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add);
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// The pid in `path`, once a process wrote it.
inline int PidIn(const std::string& path) {
  int pid = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFile(path)), &pid)) return 0;
  return pid;
}

// Running (a zombie no longer counts: it holds nothing).
inline bool Alive(int pid) {
  const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  const size_t close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

inline std::string CommandLine(int pid) {
  std::string c = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
  while (!c.empty() && c.back() == '\0') c.pop_back();
  std::replace(c.begin(), c.end(), '\0', ' ');
  return c;
}

// Kills what a failing test left behind.
struct KillOnExit {
  std::vector<int> pids;
  ~KillOnExit() {
    for (int pid : pids) {
      if (pid > 0 && Alive(pid)) kill(pid, SIGKILL);
    }
  }
};

}  // namespace parley::services::testing
