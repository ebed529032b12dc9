#include "tools/cli/common/find_binary.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

namespace parley::cli {

namespace fs = std::filesystem;

std::string FindBinary(const std::string& name) {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = self.parent_path() / name;
    if (access(beside.c_str(), X_OK) == 0) return beside.string();
  }
  const char* path = getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
  std::string d;
  while (std::getline(dirs, d, ':')) {
    const fs::path p = fs::path(d) / name;
    if (!d.empty() && access(p.c_str(), X_OK) == 0) return p.string();
  }
  return name;
}

}  // namespace parley::cli
