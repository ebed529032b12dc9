#pragma once

// The `exec` action backend: runs a handler's program, in any language, as a child process of the
// agent, and lets it act on the run through hook tools (`parley-hook`, tools/hook/parley_hook.cc).
//
// For each run of an exec action:
//  - a private temp dir (mode 0700) holds a unix socket and a JSON context file (the config with
//    defaults, the facts, the data of every relation, the event with its parameters);
//  - the program is spawned without a shell, from the definition directory, in its own process
//    group, with a clean environment: PATH, HOME (the temp dir), PARLEY_HOOK_SOCKET,
//    PARLEY_CONTEXT, PARLEY_STATE_DIR (the unit's persistent state dir, when
//    ExecOptions::state_root is set), PARLEY_UNIT_HOST (where peers reach the unit), PARLEY_UNIT,
//    PARLEY_SERVICE, PARLEY_EVENT, PARLEY_HANDLER and the handler's `env` templates;
//  - hook requests are served on the calling thread (the agent's serial executor) while the
//    program runs, by calling RunContext: every change lands in the run's transaction and only if
//    the run commits;
//  - the handler's timeout is enforced (the process group is killed with SIGKILL); stdout and
//    stderr are captured, keeping only their last `output_limit` bytes;
//  - a non-zero exit, a signal or a timeout fails the handler (and so rolls the run back) with an
//    error naming the handler, the exit status and the tail of stderr.
// The temp dir is removed when the action returns, so a hook tool called later fails with
// "not inside a run".
//
// Hook protocol (one request per connection): the client sends its arguments as netstrings
// ("<decimal length>:<bytes>,", for example "4:fact,3:set,1:x,") and shuts down its writing side;
// the server answers with one status byte, '0' (done) or '1' (refused), followed by the text to
// print, and closes. A malformed or oversized request gets a '1' reply; it never fails the run.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/spec.h"
#include "services/definition/definition.h"

namespace parley::services {

struct ExecOptions {
  // Where per-run temp dirs are made; empty: $TMPDIR, else /tmp.
  std::string temp_root;
  // When not empty, each unit has a persistent state dir `<state_root>/<unit, '/' replaced by
  // '-'>` (web/0: web-0), made with mode 0700 on its first run and kept across runs, restarts and
  // failed runs (files are not transactional: only KB changes roll back). Programs find it in
  // PARLEY_STATE_DIR and keep their data and config files there.
  std::string state_root;
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
  // Receives `parley-hook log` messages and the captured output of each run ("log", "stdout",
  // "stderr", "http", "container"), with the unit and handler that produced them. May be empty.
  // Called on the calling thread.
  std::function<void(absl::string_view unit, absl::string_view handler, absl::string_view source,
                     absl::string_view text)>
      log;

  // `http` actions (services/http_action.h): bytes of response body accepted; a larger body
  // fails the handler.
  size_t http_response_limit = 1 << 20;
  // `container` actions (services/container_action.h): the Docker Engine API socket (Docker, or
  // `podman system service`). Empty: DefaultContainerSocket().
  std::string container_socket;
  // `container` actions: how long a container is given to stop before it is killed.
  absl::Duration container_stop_grace = absl::Seconds(10);
};

// Makes the actions of every kind that acts outside the agent: exec and ansible (a program run
// with hook tools; ansible is the same run with ansible-playbook as the program, see
// services/ansible_backend.h), http (services/http_action.h) and container
// (services/container_action.h); builtin actions are made by BuiltinActionFactory. Stateless apart
// from its options; the actions it makes keep copies of what they need.
class ExecActionFactory : public ActionFactory {
 public:
  explicit ExecActionFactory(ExecOptions options = {});

  absl::StatusOr<std::unique_ptr<engine::Action>> Make(const ServiceDefinition& def,
                                                       const HandlerDef& handler) override;

 private:
  const ExecOptions options_;
  BuiltinActionFactory builtin_;
};

// Netstring encoding of a hook request (shared with parley-hook and tests).
std::string EncodeHookRequest(const std::vector<std::string>& args);
// Parses a whole request; INVALID_ARGUMENT for anything that is not a sequence of netstrings.
absl::StatusOr<std::vector<std::string>> DecodeHookRequest(absl::string_view data);

}  // namespace parley::services
