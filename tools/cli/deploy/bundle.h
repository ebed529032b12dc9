#pragma once

// A directory as a flat set of named texts: what a Kubernetes ConfigMap can hold. A ConfigMap's
// keys cannot contain '/' and a mounted ConfigMap's files lose their modes (podman does not even
// create the subdirectories `items` ask for), so a service definition travels as one key per file
// plus an index, `parley-files.json`, that says where each file goes and whether it is executable;
// the unit's container writes the directory back (RestoreBundle) before parleyd loads it.
// Symbolic links are followed: the bundle holds what they point to.

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace parley::cli {

inline constexpr char kBundleIndex[] = "parley-files.json";

struct Bundle {
  // ConfigMap key -> the file's text. The index is one of them.
  std::map<std::string, std::string> files;
};

// Reads every regular file under `dir` (skipping __pycache__ and *.pyc). Fails on a file that is
// not UTF-8 text (ConfigMap data must be) or a bundle over `max_bytes`.
absl::StatusOr<Bundle> MakeBundle(const std::string& dir, size_t max_bytes = 900 * 1024);

// Writes the bundle mounted at `mounted` (a directory of keys, as a ConfigMap volume shows them)
// to `dir`, replacing what was there.
absl::Status RestoreBundle(const std::string& mounted, const std::string& dir);

}  // namespace parley::cli
