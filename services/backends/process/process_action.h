#pragma once

// What every process-based action kind (`exec`, `ansible`) shares: one run of one program as a
// child of the agent, acting on the run through hook tools. Internal to the backends; users see
// MakeExecAction (services/backends/exec/exec_backend.h), which describes the behaviour in full.
//
// ProcessAction::Run, for each run:
//  - makes a private temp dir (mode 0700) with the JSON context file and the hook socket, and the
//    unit's persistent state dir when ProcessOptions::state_root is set;
//  - asks the kind (Prepare) for the program, its arguments and environment variables of its own;
//  - spawns it without a shell, from the definition directory, in its own process group, with a
//    clean environment: PATH, the kind's variables, then HOME (the temp dir),
//    PARLEY_HOOK_SOCKET, PARLEY_CONTEXT, PARLEY_STATE_DIR (with a state root), PARLEY_UNIT_HOST,
//    PARLEY_UNIT, PARLEY_SERVICE, PARLEY_EVENT, PARLEY_HANDLER and, with
//    ProcessOptions::unit_cookie, PARLEY_UNIT_COOKIE, which the kind cannot override;
//  - labels it with the unit's cookie (base/process_reaper.h), so that whatever it starts, even
//    detached, is found and stopped when the unit is removed;
//  - serves hook requests on the calling thread while the program runs, enforces the handler's
//    timeout (SIGKILL to the process group), captures bounded stdout and stderr;
//  - turns a non-zero exit, a signal or a timeout into an error naming the handler, the program
//    and what the kind's FailureDetail quotes of the output (by default the tail of stderr).
// The temp dir is removed when Run returns.
//
// The pieces (all but hook_protocol.h internal to this folder): child.h (spawning, waiting,
// killing, capturing output), hook_server.h (the socket), hook_handler.h (what each request does),
// hook_protocol.h (the wire format parley-hook speaks) and context_file.h (the JSON context file).

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/spec.h"
#include "services/backends/common/backend_log.h"
#include "services/backends/process/program_user.h"
#include "services/backends/process/tail_buffer.h"
#include "services/definition/service.h"

namespace parley::services {

// What process-based kinds (exec, ansible) may use on this machine.
struct ProcessOptions {
  // Where per-run temp dirs are made; empty: $TMPDIR, else /tmp.
  std::string temp_root;
  // When not empty, each unit has a persistent state dir `<state_root>/<unit, '/' replaced by
  // '-'>` (web/0: web-0), owned by the user its programs run as and its primary group, mode 0700,
  // made on its first run and kept across runs, restarts and failed runs (files are not
  // transactional: only KB changes roll back). The root is made with mode 0755 when missing.
  // Programs find it in PARLEY_STATE_DIR and keep their data and config files there.
  std::string state_root;
  // The user programs run as when their definition names none (`user:`), if this process runs
  // as root; it must exist then. Empty, or this process not root: its own user. parleyd sets
  // "parley" (--program_user). docs/service-definitions.md, "The user programs run as".
  std::string default_user;
  // The address this unit's peers reach it at, for programs that bind or publish one: in
  // PARLEY_UNIT_HOST. 127.0.0.1 when every unit runs on this machine; the container's address
  // when each unit has a container of its own (`parley up --runtime`).
  std::string unit_host = "127.0.0.1";
  // Directories put before /usr/local/bin:/usr/bin:/bin in the program's PATH (for example where
  // parley-hook is installed).
  std::vector<std::string> extra_path;
  // Bytes kept of each of stdout and stderr (the last ones).
  size_t output_limit = 64 * 1024;
  // Bytes of stderr quoted in an error.
  size_t error_tail = 2048;
  // After the program exits, how long its output is still read (a background process it started
  // may keep the pipes open); then whatever is left of its process group is killed. Daemons must
  // leave the group (setsid) or, better, be started by the service manager.
  absl::Duration drain_grace = absl::Seconds(1);
  // The cookie that tags the processes of `unit` (Host::UnitCookie). Every program gets it in
  // PARLEY_UNIT_COOKIE and as its RLIMIT_LOCKS label; whatever it starts inherits both, so that
  // removing the unit finds and stops them (base/process_reaper.h). An error (the unit is being
  // removed) fails the handler before its program starts. Unset: programs are not tagged.
  std::function<absl::StatusOr<std::string>(const std::string& unit)> unit_cookie;
};

// What a kind is told about the run when it prepares its program.
struct ProcessRun {
  // The private temp dir; removed when the run ends.
  std::string temp_dir;
  // The JSON context file in it.
  std::string context_file;
  // The unit's persistent state dir; empty without ProcessOptions::state_root.
  std::string state_dir;
  std::string service;
  // The run's config with defaults filled in.
  std::map<std::string, std::string> config;
};

// The program a kind runs.
struct Invocation {
  // The path run, and the arguments (argv[0] as the definition names the program; errors quote
  // it).
  std::string program;
  std::vector<std::string> argv;
  // Set after PATH and before the variables every run gets (which win).
  std::map<std::string, std::string> env;
  // What errors call the program; empty: argv[0].
  std::string name;
};

// Where a process-based action comes from and what it may take.
struct ProcessActionSetup {
  // The definition directory (absolute): the program's working directory.
  std::string dir;
  // Who the program runs as (ResolveProgramUser).
  ProgramUser user;
  // "<service.yaml>:<line>" of the action, for errors.
  std::string origin;
  absl::Duration timeout;
  std::map<std::string, std::string> config_defaults;
  std::map<std::string, EndpointContract> endpoints;
  ProcessOptions options;
  BackendLog log;
};

// The user the programs of `def` run as on this machine:
//  - `user:` of the definition when it names one: this process must run as root, or as that user;
//  - else ProcessOptions::default_user when this process runs as root;
//  - else this process's own user (no switch).
// A user that does not exist, or one this process cannot become, is an error naming the
// definition's file and the line of `user:` (or the definition file, for the default) and the user.
absl::StatusOr<ProgramUser> ResolveProgramUser(const ServiceDefinition& def,
                                               const ProcessOptions& options);

// The setup of `handler`'s action; the errors of ResolveProgramUser.
absl::StatusOr<ProcessActionSetup> MakeProcessActionSetup(const ServiceDefinition& def,
                                                          const HandlerDef& handler,
                                                          const ProcessOptions& options,
                                                          BackendLog log);

class ProcessAction : public engine::Action {
 public:
  explicit ProcessAction(ProcessActionSetup setup);

  absl::Status Run(engine::RunContext& ctx) final;

 protected:
  // The program to run for `ctx`, once the temp dir and the context file exist. An error fails
  // the handler.
  virtual absl::StatusOr<Invocation> Prepare(engine::RunContext& ctx, const ProcessRun& run) = 0;

  // What a failure's error quotes of the output, after "<program> exited with status 2; ".
  // `exited` is false for a timeout or a signal. By default the tail of stderr (and whether
  // stdout was truncated).
  virtual std::string FailureDetail(const TailBuffer& out, const TailBuffer& err,
                                    bool exited) const;

  // A program looked up like the shell would, in ProcessOptions::extra_path then the standard PATH,
  // or a path (relative to the definition directory) when `name` contains '/'.
  absl::StatusOr<std::string> ResolveProgram(const std::string& name) const;

  const ProcessActionSetup& setup() const { return setup_; }

 private:
  absl::Status RunProgram(engine::RunContext& ctx);
  absl::StatusOr<std::string> StateDir(absl::string_view unit) const;

  const ProcessActionSetup setup_;
};

}  // namespace parley::services
