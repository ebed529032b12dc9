#pragma once

// The `container` action kind: a handler converges one container per unit through the Docker
// Engine API (Docker, or Podman's Docker-compatible `podman system service`) on a unix socket, so
// that an image is integrated behind the same relationship interface as a script or a playbook.
//
// The unit's container is named ContainerName(unit), "parley-<service>-<unit number>". Its desired
// spec is the action's image, command, env and ports, expanded for the run (relation data reaches
// it through templates such as {{fact.db.remote.host}}); a label (kSpecLabel) holds a hash of it.
// Each run, by the action's `state`:
//  - running (default): the container is created if missing; if it exists with another spec hash
//    it is stopped, removed and created again (an "update": a new id); it is started if it is not
//    running;
//  - stopped: the same, except that it is stopped (or left created) rather than started;
//  - absent: it is removed (killed first) if it exists.
// Then, for running and stopped, facts are set from the daemon's inspection of the container:
// `container.id`, `container.state` (the daemon's word: running, created, exited, ...),
// `container.ip` (empty without a network address) and `container.port.<container port>` = the
// published host port, for each published TCP port (stale port facts are cleared). For absent, all
// `container.*` facts are cleared.
//
// Images are not pulled: the image must be on the daemon already (docker/podman pull, load or
// import), else the handler fails with the daemon's message. Every API call is bounded by what is
// left of the handler's timeout; stopping gives the container ContainerOptions::stop_grace
// before it is killed. A failure (daemon unreachable, an API error, a timeout) fails the handler
// (and rolls its run back) with an error naming the handler, the API call and the daemon's
// message. The daemon's state is not transactional: what was done before a failure stays done,
// and the retried run converges from there.

#include <memory>
#include <string>

#include "absl/time/time.h"

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/spec.h"
#include "services/definition/service.h"
#include "services/backends/common/backend_log.h"

namespace parley::services {

struct ContainerOptions {
  // The Docker Engine API socket (Docker, or `podman system service`). Empty:
  // DefaultContainerSocket().
  std::string socket;
  // How long a container is given to stop before it is killed.
  absl::Duration stop_grace = absl::Seconds(10);
};

// The label that holds the hash of a container's desired spec.
inline constexpr char kSpecLabel[] = "parley.spec";

// The socket used when ContainerOptions::socket is empty: the path of $DOCKER_HOST when it is
// a unix:// URL, else /run/podman/podman.sock.
std::string DefaultContainerSocket();

// "parley-<service>-<number>" for unit "<service>/<number>", characters other than letters,
// digits, '_', '.' and '-' replaced by '-'.
std::string ContainerName(absl::string_view unit);

// Makes the action of `handler`, whose action must be of kind container. The action keeps copies
// of what it needs.
absl::StatusOr<std::unique_ptr<engine::Action>> MakeContainerAction(const ServiceDefinition& def,
                                                                    const HandlerDef& handler,
                                                                    const ContainerOptions& options,
                                                                    BackendLog log);

}  // namespace parley::services
