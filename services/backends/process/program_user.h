#pragma once

// Who a unit's programs run as (docs/service-definitions.md, "The user programs run as"): a user
// of this machine's user database with its primary group and supplementary groups, and the checks
// that it can reach the directories a run uses. Internal to the process-based backends.

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace parley::services {

struct ProgramUser {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
  // Supplementary groups (the group database's, the primary group included).
  std::vector<gid_t> groups;
  // Whether programs must change to this user: it is not the one this process runs as.
  bool switches = false;
};

// `name` from the user database, with its groups. NOT_FOUND "no user '<name>' on this machine".
absl::StatusOr<ProgramUser> LookupUser(const std::string& name);

// The user this process runs as (its effective uid), `switches` false.
absl::StatusOr<ProgramUser> CurrentUser();

// Whether `user` can search every directory from / down to `dir` (inclusive), by the permission
// bits (owner, then group, then others; root always can). FAILED_PRECONDITION naming `what`, the
// first directory it cannot enter, its mode and owner.
absl::Status CheckReachable(const ProgramUser& user, const std::string& dir,
                            const std::string& what);

// Gives `path` and, when `recursive`, everything under it (symlinks themselves, not followed) to
// `user` and its primary group.
absl::Status Chown(const ProgramUser& user, const std::string& path, bool recursive);

}  // namespace parley::services
