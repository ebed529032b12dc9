#pragma once

// Finding and stopping every process a unit started, however it detached.
//
// A handler program may start a daemon in a session of its own (setsid) so that it outlives the
// handler: then neither its process group nor its parent links it to the unit. So every program a
// unit runs carries two tags, which whatever it starts inherits:
//  - PARLEY_UNIT_COOKIE=<cookie> in its environment (the process backend sets it);
//  - a soft RLIMIT_LOCKS limit derived from the cookie (SpawnLabelled). Linux has not enforced
//    that limit since 2.4.25, so the number only labels the process; unlike the environment it
//    survives daemons that overwrite their environment to change what `ps` shows (setproctitle in
//    redis-server, nginx, PostgreSQL), and like it survives setsid, fork, exec and setuid.
// FindTaggedProcesses reads /proc for either tag, ReapTaggedProcesses stops what it finds.
//
// Known gaps: a process that changes the limit itself and wipes its environment too; a program that
// asks another service manager (systemd, a container engine) to start something. Processes of
// another user are found but only signalled with the rights of this one.
//
// Linux only (/proc, pidfds). No state: every function may be called from any thread.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace parley::base {

// The environment variable that carries the cookie.
inline constexpr char kUnitCookieVariable[] = "PARLEY_UNIT_COOKIE";

// `bytes` random bytes (getrandom) as lowercase hex digits.
absl::StatusOr<std::string> RandomHex(size_t bytes);

// The cookie of `name` (a unit) under `secret` (random, one per host): 32 lowercase hex digits,
// the same for the same inputs and, in practice, different for different ones.
std::string DeriveUnitCookie(absl::string_view secret, absl::string_view name);

// The RLIMIT_LOCKS soft limit that labels the processes of `cookie`: in [2^62, 2^63), so no
// process could ever reach it even were it enforced.
uint64_t LocksLabel(absl::string_view cookie);

// Runs `spawn` (which starts one child process) with this process's soft RLIMIT_LOCKS set to
// LocksLabel(cookie) - or, for an empty cookie, to its usual value - and restores it afterwards,
// so that the child inherits the label from its first instruction: nothing it starts can escape
// it. posix_spawn cannot set a limit in the child, hence the detour through the parent; spawns are
// serialized here because the limit is the process's. Every child this process starts must be
// started through here, labelled or not, or it could inherit another unit's label. Linux does not
// enforce the limit, so the parent loses nothing meanwhile. Fails (without spawning) when the hard
// limit is below the label.
absl::Status SpawnLabelled(absl::string_view cookie, const std::function<absl::Status()>& spawn);

// Labels the running process `pid` with LocksLabel(cookie) (for processes not started through
// SpawnLabelled; racy for a child, which may start others first). Fails when the
// hard limit is below the label or the process is gone.
absl::Status LabelProcess(int pid, absl::string_view cookie);

// A process that carries a unit's tag.
struct TaggedProcess {
  int pid = 0;
  // Field 22 of /proc/PID/stat: tells the process apart from a later one given the same pid.
  uint64_t start_ticks = 0;
  // Its command line, arguments joined by spaces, non-printable bytes as '?', at most
  // kMaxCommandBytes (then ending in "..."); "[name]" when it has none.
  std::string command;
  // Whether it leads, or is in, the group that leads its session (pgid == sid): a daemon that
  // detached (setsid). False for a program a parleyd ran (it starts each in a group of its own in
  // the parleyd's session) and what that runs without detaching.
  bool detached = false;
};
inline constexpr size_t kMaxCommandBytes = 1024;

// Every live (not zombie) process but this one tagged with `cookie`, in pid order. Processes
// whose files this one may not read are judged by what it may read (the limit is world-readable).
std::vector<TaggedProcess> FindTaggedProcesses(absl::string_view cookie);

struct ReapOptions {
  // Between SIGTERM and SIGKILL.
  absl::Duration grace = absl::Seconds(10);
  // After SIGKILL, how long a process may take to go before it counts as surviving (one in
  // uninterruptible sleep, or one this process may not signal).
  absl::Duration kill_wait = absl::Seconds(5);
  // Looks for tagged processes again (stopping ones may start others) at most this many times.
  int rounds = 3;
  // Only processes that did not detach (TaggedProcess::detached false): handlers and what they
  // run in their group, not the daemons they started in sessions of their own.
  bool only_attached = false;
};

enum class ProcessFate {
  kTerminated,  // gone after SIGTERM
  kKilled,      // still there after the grace period: SIGKILL
  kSurvived,    // still there after SIGKILL and kill_wait, or could not be signalled
};

struct ReapedProcess {
  TaggedProcess process;
  ProcessFate fate = ProcessFate::kTerminated;
  // Why it survived (for example "kill: Operation not permitted"), or empty.
  std::string error;
};

// Stops every process tagged with `cookie` (but this one): SIGTERM (and SIGCONT, for stopped
// ones), SIGKILL to those still there after `grace`; then looks again, up to `rounds` times, until
// a look finds no new one. Returns every process it signalled, in the order found. Blocks for up
// to about rounds * (grace + kill_wait); returns at once when nothing carries the tag.
std::vector<ReapedProcess> ReapTaggedProcesses(absl::string_view cookie,
                                               const ReapOptions& options);

}  // namespace parley::base
