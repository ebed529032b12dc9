#include "services/backends/process/program_user.h"

#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace parley::services {
namespace {

namespace fs = std::filesystem;

// getpwnam_r / getpwuid_r into `pw`, growing the buffer as needed; false when there is none.
template <typename Lookup>
absl::StatusOr<bool> ReadPasswd(Lookup lookup, passwd& pw, std::vector<char>& buf,
                                const std::string& what) {
  buf.resize(1024);
  for (;;) {
    passwd* found = nullptr;
    const int rc = lookup(&pw, buf.data(), buf.size(), &found);
    if (rc == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (rc != 0 && rc != ENOENT && rc != ESRCH) {
      return absl::InternalError(absl::StrCat("looking up ", what, ": ", strerror(rc)));
    }
    return found != nullptr;
  }
}

ProgramUser FromPasswd(const passwd& pw) {
  ProgramUser u;
  u.name = pw.pw_name;
  u.uid = pw.pw_uid;
  u.gid = pw.pw_gid;
  int n = 32;
  std::vector<gid_t> groups(n);
  while (getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) < 0) groups.resize(n);
  groups.resize(n);
  u.groups = std::move(groups);
  u.switches = u.uid != geteuid();
  return u;
}

std::string GroupName(gid_t gid) {
  group gr;
  group* found = nullptr;
  std::vector<char> buf(4096);
  if (getgrgid_r(gid, &gr, buf.data(), buf.size(), &found) == 0 && found != nullptr) {
    return gr.gr_name;
  }
  return absl::StrCat(gid);
}

std::string UserName(uid_t uid) {
  passwd pw;
  std::vector<char> buf;
  auto found = ReadPasswd(
      [uid](passwd* p, char* b, size_t n, passwd** r) { return getpwuid_r(uid, p, b, n, r); }, pw,
      buf, "a uid");
  return found.ok() && *found ? std::string(pw.pw_name) : absl::StrCat(uid);
}

}  // namespace

absl::StatusOr<ProgramUser> LookupUser(const std::string& name) {
  passwd pw;
  std::vector<char> buf;
  auto found = ReadPasswd([&name](passwd* p, char* b, size_t n,
                                  passwd** r) { return getpwnam_r(name.c_str(), p, b, n, r); },
                          pw, buf, absl::StrCat("user '", name, "'"));
  if (!found.ok()) return found.status();
  if (!*found) return absl::NotFoundError(absl::StrCat("no user '", name, "' on this machine"));
  return FromPasswd(pw);
}

absl::StatusOr<ProgramUser> CurrentUser() {
  const uid_t uid = geteuid();
  passwd pw;
  std::vector<char> buf;
  auto found = ReadPasswd(
      [uid](passwd* p, char* b, size_t n, passwd** r) { return getpwuid_r(uid, p, b, n, r); }, pw,
      buf, "this process's user");
  if (!found.ok()) return found.status();
  ProgramUser u;
  if (*found) {
    u = FromPasswd(pw);
  } else {
    // A uid without a name (a container's arbitrary uid): itself, with its current groups.
    u.name = absl::StrCat(uid);
    u.uid = uid;
    u.gid = getegid();
    u.groups = {u.gid};
  }
  u.switches = false;
  return u;
}

namespace {

// Whether `path`'s POSIX access ACL (when it has one) lets `user` search it: a named-user entry
// or a group entry (named or the owning group) of the user's with x, within the mask. The
// kernel's rule, for the entries `setfacl -m u:NAME:x` writes; the mode bits alone do not show
// them (the group bits are the mask then).
bool AclLetsSearch(const ProgramUser& user, const std::string& path, const struct stat& st) {
  uint8_t buf[4 + 8 * 64];
  const ssize_t n = getxattr(path.c_str(), "system.posix_acl_access", buf, sizeof buf);
  if (n < 4 || (n - 4) % 8 != 0) return false;
  auto u16 = [&](size_t at) { return static_cast<uint16_t>(buf[at] | (buf[at + 1] << 8)); };
  auto u32 = [&](size_t at) {
    return static_cast<uint32_t>(buf[at] | (buf[at + 1] << 8) | (buf[at + 2] << 16) |
                                 (static_cast<uint32_t>(buf[at + 3]) << 24));
  };
  constexpr uint16_t kUser = 0x02, kGroupObj = 0x04, kGroup = 0x08, kMask = 0x10, kExecute = 1;
  uint16_t mask = 7;
  bool named = false, named_x = false, in_group = false, group_x = false;
  auto member = [&](uint32_t gid) {
    return gid == user.gid ||
           std::find(user.groups.begin(), user.groups.end(), gid) != user.groups.end();
  };
  for (ssize_t at = 4; at + 8 <= n; at += 8) {
    const uint16_t tag = u16(at), perm = u16(at + 2);
    const uint32_t id = u32(at + 4);
    if (tag == kMask) mask = perm;
    if (tag == kUser && id == user.uid) {
      named = true;
      named_x = (perm & kExecute) != 0;
    }
    if ((tag == kGroupObj && member(st.st_gid)) || (tag == kGroup && member(id))) {
      in_group = true;
      group_x = group_x || (perm & kExecute) != 0;
    }
  }
  if (named) return named_x && (mask & kExecute) != 0;
  return in_group && group_x && (mask & kExecute) != 0;
}

}  // namespace

absl::Status CheckReachable(const ProgramUser& user, const std::string& dir,
                            const std::string& what) {
  if (user.uid == 0) return absl::OkStatus();
  fs::path path = fs::absolute(dir).lexically_normal();
  fs::path at;
  for (const fs::path& part : path) {
    at /= part;
    struct stat st;
    if (stat(at.c_str(), &st) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot stat ", at.string(), " (", what, "): ", strerror(errno)));
    }
    mode_t need = S_IXOTH;
    if (st.st_uid == user.uid) {
      need = S_IXUSR;
    } else if (st.st_gid == user.gid ||
               std::find(user.groups.begin(), user.groups.end(), st.st_gid) != user.groups.end()) {
      need = S_IXGRP;
    }
    if ((st.st_mode & need) == 0 && !(st.st_uid != user.uid && AclLetsSearch(user, at, st))) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "user '%s' cannot reach %s: %s is mode %04o, owned by %s:%s", user.name, what,
          at.string(), st.st_mode & 07777, UserName(st.st_uid), GroupName(st.st_gid)));
    }
  }
  return absl::OkStatus();
}

absl::Status Chown(const ProgramUser& user, const std::string& path, bool recursive) {
  auto one = [&](const fs::path& p) -> absl::Status {
    if (lchown(p.c_str(), user.uid, user.gid) != 0) {
      return absl::InternalError(absl::StrCat("cannot give ", p.string(), " to user '", user.name,
                                              "': ", strerror(errno)));
    }
    return absl::OkStatus();
  };
  if (absl::Status s = one(path); !s.ok()) return s;
  if (!recursive) return absl::OkStatus();
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (absl::Status s = one(it->path()); !s.ok()) return s;
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot walk ", path, ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace parley::services
