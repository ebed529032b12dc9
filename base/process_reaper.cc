#include "base/process_reaper.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace parley::base {
namespace {

constexpr char kHex[] = "0123456789abcdef";

// FNV-1a over `parts` (each followed by a zero byte), from `basis`, then a final mix (the
// SplitMix64 finalizer) so that close inputs give unrelated outputs.
uint64_t Hash64(uint64_t basis, std::initializer_list<absl::string_view> parts) {
  uint64_t h = basis;
  for (absl::string_view p : parts) {
    for (unsigned char c : p) {
      h ^= c;
      h *= 0x100000001b3ULL;
    }
    h *= 0x100000001b3ULL;  // the zero byte between parts (x ^ 0 == x)
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

void AppendHex(std::string& out, uint64_t v) {
  for (int shift = 60; shift >= 0; shift -= 4) out += kHex[(v >> shift) & 0xf];
}

// A whole /proc file (they report size 0, so read until EOF), at most `limit` bytes.
std::optional<std::string> ReadProcFile(const std::string& path, size_t limit = 1 << 20) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string data;
  char buf[8192];
  while (data.size() < limit) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    data.append(buf, n);
  }
  close(fd);
  return data;
}

struct Stat {
  char state = '?';
  uint64_t flags = 0;
  uint64_t start_ticks = 0;
  int64_t pgrp = 0;
  int64_t session = 0;
  std::string comm;
};

// /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
std::optional<Stat> ReadStat(int pid) {
  std::optional<std::string> text = ReadProcFile(absl::StrCat("/proc/", pid, "/stat"));
  if (!text) return std::nullopt;
  const size_t open = text->find('(');
  const size_t close = text->rfind(')');
  if (open == std::string::npos || close == std::string::npos || close < open) return std::nullopt;
  Stat st;
  st.comm = text->substr(open + 1, close - open - 1);
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(*text).substr(close + 1), ' ', absl::SkipEmpty());
  // fields[0] is field 3 (state); starttime is field 22.
  if (fields.size() < 20 || fields[0].empty()) return std::nullopt;
  st.state = fields[0][0];
  // pgrp and session are fields 5 and 6.
  if (!absl::SimpleAtoi(fields[6], &st.flags) || !absl::SimpleAtoi(fields[19], &st.start_ticks) ||
      !absl::SimpleAtoi(fields[2], &st.pgrp) || !absl::SimpleAtoi(fields[3], &st.session)) {
    return std::nullopt;
  }
  return st;
}

bool Gone(char state) { return state == 'Z' || state == 'X' || state == 'x'; }

// The soft "Max file locks" of /proc/PID/limits, when it is a number.
std::optional<uint64_t> LocksSoftLimit(int pid) {
  std::optional<std::string> text = ReadProcFile(absl::StrCat("/proc/", pid, "/limits"));
  if (!text) return std::nullopt;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    if (!absl::ConsumePrefix(&line, "Max file locks")) continue;
    std::vector<absl::string_view> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
    uint64_t v = 0;
    if (!words.empty() && absl::SimpleAtoi(words[0], &v)) return v;
    return std::nullopt;
  }
  return std::nullopt;
}

constexpr uint64_t kKernelThread = 0x00200000;  // PF_KTHREAD in /proc/PID/stat flags

enum class Verdict { kTagged, kNotTagged, kUndecided };

// Whether `pid` carries the tag. Undecided: its environment reads empty, which a process in the
// middle of an exec shows for a moment (the new image's environment is not mapped yet).
Verdict Judge(int pid, const Stat& st, absl::string_view entry, uint64_t label) {
  if (st.flags & kKernelThread) return Verdict::kNotTagged;
  if (LocksSoftLimit(pid) == label) return Verdict::kTagged;
  std::optional<std::string> env = ReadProcFile(absl::StrCat("/proc/", pid, "/environ"));
  if (!env) return Verdict::kNotTagged;  // not ours to read
  if (env->empty()) return Verdict::kUndecided;
  for (absl::string_view e : absl::StrSplit(*env, '\0')) {
    if (e == entry) return Verdict::kTagged;
  }
  return Verdict::kNotTagged;
}

std::string CommandOf(int pid, const std::string& comm) {
  std::optional<std::string> raw =
      ReadProcFile(absl::StrCat("/proc/", pid, "/cmdline"), kMaxCommandBytes + 1);
  std::string out;
  if (raw) {
    while (!raw->empty() && raw->back() == '\0') raw->pop_back();
    for (unsigned char c : *raw) {
      out += c == '\0' ? ' ' : (c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
    }
  }
  if (out.empty()) return absl::StrCat("[", comm, "]");
  if (out.size() > kMaxCommandBytes) out = absl::StrCat(out.substr(0, kMaxCommandBytes - 3), "...");
  return out;
}

// Whether `p` is still the process found (same pid, same start) and alive.
bool StillThere(const TaggedProcess& p) {
  std::optional<Stat> st = ReadStat(p.pid);
  return st && st->start_ticks == p.start_ticks && !Gone(st->state);
}

// One process being stopped: a pidfd when the kernel has them (signals cannot reach a later
// process given the same pid, and poll() says when it exits), else its pid.
class Target {
 public:
  explicit Target(TaggedProcess p) : process_(std::move(p)) {
    fd_ = static_cast<int>(syscall(SYS_pidfd_open, process_.pid, 0));
    // The pidfd names whatever has the pid now: make sure that is the process found.
    if (!StillThere(process_)) gone_ = true;
  }
  ~Target() {
    if (fd_ >= 0) close(fd_);
  }
  Target(const Target&) = delete;
  Target& operator=(const Target&) = delete;

  // An error text, or empty.
  std::string Signal(int sig) {
    if (gone_) return "";
    int rc = 0;
    if (fd_ >= 0) {
      rc = static_cast<int>(syscall(SYS_pidfd_send_signal, fd_, sig, nullptr, 0));
    } else if (StillThere(process_)) {
      rc = kill(process_.pid, sig);
    } else {
      rc = -1;
      errno = ESRCH;
    }
    if (rc == 0) return "";
    if (errno == ESRCH) {
      gone_ = true;
      return "";
    }
    return absl::StrCat("signal ", sig, ": ", strerror(errno));
  }
  bool gone() {
    if (!gone_ && !StillThere(process_)) gone_ = true;
    return gone_;
  }
  int fd() const { return gone_ ? -1 : fd_; }
  const TaggedProcess& process() const { return process_; }

 private:
  TaggedProcess process_;
  int fd_ = -1;
  bool gone_ = false;
};

// Waits until every target is gone or `deadline` passes.
void WaitGone(std::vector<std::unique_ptr<Target>>& targets, absl::Time deadline) {
  while (true) {
    std::vector<pollfd> fds;
    bool any_without_fd = false;
    for (auto& t : targets) {
      if (t == nullptr || t->gone()) continue;
      if (t->fd() >= 0) {
        fds.push_back({t->fd(), POLLIN, 0});
      } else {
        any_without_fd = true;
      }
    }
    if (fds.empty() && !any_without_fd) return;
    const absl::Time now = absl::Now();
    if (now >= deadline) return;
    absl::Duration wait = deadline - now;
    // A pidfd becomes readable when its process exits; other processes are looked at often.
    if (any_without_fd) wait = std::min(wait, absl::Milliseconds(20));
    wait = std::min(wait, absl::Seconds(1));
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(wait)) + 1;
    poll(fds.data(), fds.size(), ms);
  }
}

}  // namespace

absl::StatusOr<std::string> RandomHex(size_t bytes) {
  std::string raw(bytes, '\0');
  size_t got = 0;
  while (got < bytes) {
    ssize_t n = getrandom(raw.data() + got, bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::InternalError(absl::StrCat("getrandom: ", strerror(errno)));
    got += n;
  }
  std::string out;
  for (unsigned char c : raw) {
    out += kHex[c >> 4];
    out += kHex[c & 0xf];
  }
  return out;
}

std::string DeriveUnitCookie(absl::string_view secret, absl::string_view name) {
  std::string out;
  AppendHex(out, Hash64(0xcbf29ce484222325ULL, {secret, name}));
  AppendHex(out, Hash64(0x84222325cbf29ce4ULL, {name, secret}));
  return out;
}

uint64_t LocksLabel(absl::string_view cookie) {
  return (uint64_t{1} << 62) | (Hash64(0x6c62272e07bb0142ULL, {cookie}) >> 2);
}

absl::Status SpawnLabelled(absl::string_view cookie, const std::function<absl::Status()>& spawn) {
  static absl::Mutex mu(absl::kConstInit);
  absl::MutexLock lock(&mu);
  struct rlimit usual;
  if (getrlimit(RLIMIT_LOCKS, &usual) != 0) {
    return absl::InternalError(absl::StrCat("getrlimit RLIMIT_LOCKS: ", strerror(errno)));
  }
  if (cookie.empty()) return spawn();
  struct rlimit label = usual;
  label.rlim_cur = LocksLabel(cookie);
  if (usual.rlim_max != RLIM_INFINITY && usual.rlim_max < label.rlim_cur) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the hard RLIMIT_LOCKS limit (", usual.rlim_max, ") is below the label ", label.rlim_cur));
  }
  if (setrlimit(RLIMIT_LOCKS, &label) != 0) {
    return absl::InternalError(absl::StrCat("setrlimit RLIMIT_LOCKS: ", strerror(errno)));
  }
  absl::Status spawned = spawn();
  if (setrlimit(RLIMIT_LOCKS, &usual) != 0 && spawned.ok()) {
    spawned = absl::InternalError(absl::StrCat("restoring RLIMIT_LOCKS: ", strerror(errno)));
  }
  return spawned;
}

absl::Status LabelProcess(int pid, absl::string_view cookie) {
  struct rlimit old;
  if (prlimit(pid, RLIMIT_LOCKS, nullptr, &old) != 0) {
    return absl::InternalError(absl::StrCat("prlimit ", pid, ": ", strerror(errno)));
  }
  struct rlimit label = old;
  label.rlim_cur = LocksLabel(cookie);
  if (old.rlim_max != RLIM_INFINITY && old.rlim_max < label.rlim_cur) {
    return absl::FailedPreconditionError(absl::StrCat("the hard RLIMIT_LOCKS limit (", old.rlim_max,
                                                      ") is below the label ", label.rlim_cur));
  }
  if (prlimit(pid, RLIMIT_LOCKS, &label, nullptr) != 0) {
    return absl::InternalError(absl::StrCat("prlimit ", pid, ": ", strerror(errno)));
  }
  return absl::OkStatus();
}

std::vector<TaggedProcess> FindTaggedProcesses(absl::string_view cookie) {
  std::vector<TaggedProcess> found;
  if (cookie.empty()) return found;
  const std::string entry = absl::StrCat(kUnitCookieVariable, "=", cookie);
  const uint64_t label = LocksLabel(cookie);
  const int self = getpid();
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return found;
  std::vector<int> pids;
  while (dirent* d = readdir(dir)) {
    int pid = 0;
    if (absl::SimpleAtoi(d->d_name, &pid) && pid > 0 && pid != self) pids.push_back(pid);
  }
  closedir(dir);
  std::sort(pids.begin(), pids.end());
  // A process caught in an exec is looked at again a few times, a millisecond apart.
  for (int attempt = 0; attempt < 10 && !pids.empty(); ++attempt) {
    if (attempt > 0) absl::SleepFor(absl::Milliseconds(1));
    std::vector<int> undecided;
    for (int pid : pids) {
      std::optional<Stat> st = ReadStat(pid);
      if (!st || Gone(st->state)) continue;
      switch (Judge(pid, *st, entry, label)) {
        case Verdict::kTagged:
          found.push_back(
              {pid, st->start_ticks, CommandOf(pid, st->comm), st->pgrp == st->session});
          break;
        case Verdict::kUndecided:
          undecided.push_back(pid);
          break;
        case Verdict::kNotTagged:
          break;
      }
    }
    pids = std::move(undecided);
  }
  std::sort(found.begin(), found.end(),
            [](const TaggedProcess& a, const TaggedProcess& b) { return a.pid < b.pid; });
  return found;
}

std::vector<ReapedProcess> ReapTaggedProcesses(absl::string_view cookie,
                                               const ReapOptions& options) {
  std::vector<ReapedProcess> reaped;
  // (pid, start) of every process signalled, so that one that survives is not counted again.
  std::map<std::pair<int, uint64_t>, size_t> seen;
  for (int round = 0; round < options.rounds; ++round) {
    std::vector<std::unique_ptr<Target>> targets;
    std::vector<size_t> index;
    for (TaggedProcess& p : FindTaggedProcesses(cookie)) {
      if (options.only_attached && p.detached) continue;
      const auto key = std::make_pair(p.pid, p.start_ticks);
      if (seen.contains(key)) continue;
      seen.emplace(key, reaped.size());
      index.push_back(reaped.size());
      reaped.push_back({p, ProcessFate::kTerminated, ""});
      targets.push_back(std::make_unique<Target>(std::move(p)));
    }
    if (targets.empty()) break;
    for (size_t i = 0; i < targets.size(); ++i) {
      std::string error = targets[i]->Signal(SIGTERM);
      targets[i]->Signal(SIGCONT);  // a stopped process acts on SIGTERM only once continued
      if (!error.empty()) {
        reaped[index[i]].fate = ProcessFate::kSurvived;
        reaped[index[i]].error = std::move(error);
        targets[i].reset();  // nothing to wait for
      }
    }
    WaitGone(targets, absl::Now() + options.grace);
    bool killed_any = false;
    for (size_t i = 0; i < targets.size(); ++i) {
      if (targets[i] == nullptr || targets[i]->gone()) continue;
      reaped[index[i]].fate = ProcessFate::kKilled;
      killed_any = true;
      if (std::string error = targets[i]->Signal(SIGKILL); !error.empty()) {
        reaped[index[i]].fate = ProcessFate::kSurvived;
        reaped[index[i]].error = std::move(error);
        targets[i].reset();
      }
    }
    if (killed_any) WaitGone(targets, absl::Now() + options.kill_wait);
    for (size_t i = 0; i < targets.size(); ++i) {
      ReapedProcess& r = reaped[index[i]];
      if (targets[i] == nullptr || targets[i]->gone()) continue;
      r.fate = ProcessFate::kSurvived;
      r.error =
          absl::StrCat("still running ", absl::FormatDuration(options.kill_wait), " after SIGKILL");
    }
  }
  return reaped;
}

}  // namespace parley::base
