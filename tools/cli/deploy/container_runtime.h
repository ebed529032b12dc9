#pragma once

// The units of a model in containers (`parley up MODEL --runtime podman|docker`): each unit's
// parleyd runs in a container of its own, on a private network made for the model, with a static
// address there (peers find a restarted unit where it was), its knowledge base and state
// directory on a named volume, the model's definitions mounted read-only at the paths they have
// here and, with TLS, a certificate issued for its address by the model's CA.
//
// Every name derives from the model's prefix (ContainerRuntimeRecord.prefix):
//   <prefix>                     the network
//   <prefix>-<service>-<n>       unit <service>/<n>'s container
//   <prefix>-<service>-<n>-data  its volume (/var/lib/parley: kb/ and units/)
//
// The engine is driven through its command line (`podman ...`, `docker ...`), which both share
// for what is used here. Calls block until the command returns.

#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parley/v1/model.pb.h"

namespace parley::cli {

// The port the units' parleyd processes listen on, in their containers.
inline constexpr int kContainerAgentPort = 7000;

// What a unit's container is started with.
struct UnitContainer {
  std::string unit;       // "web/0"
  std::string container;  // "<prefix>-web-0"
  std::string ip;         // its static address on the model's network
  // Directories bind-mounted read-only at the same path (definitions, interfaces).
  std::vector<std::string> mounts;
  // The unit's certificate directory (cert.pem, key.pem, ca.pem); empty: plaintext.
  std::string tls_dir;
};

class ContainerRuntime {
 public:
  // `record`: the model's runtime (engine, image, network, subnet, prefix).
  explicit ContainerRuntime(v1::ContainerRuntimeRecord record) : record_(std::move(record)) {}

  const v1::ContainerRuntimeRecord& record() const { return record_; }

  // A new model's record: "podman" or "docker", the image, a prefix derived from the model
  // directory's absolute path. INVALID_ARGUMENT for another engine.
  static absl::StatusOr<v1::ContainerRuntimeRecord> NewRecord(const std::string& engine,
                                                              const std::string& image,
                                                              const std::string& model_dir);

  // FAILED_PRECONDITION, saying how to build it, when the engine is missing or lacks the image.
  absl::Status CheckImage() const;

  // Creates the model's network unless it exists, on a free /24 of 10.213.0.0/16; fills
  // record().subnet.
  absl::Status EnsureNetwork();

  // The lowest address of the subnet (after the gateway, .1) not in `used`.
  absl::StatusOr<std::string> AllocateIp(const std::set<std::string>& used) const;

  std::string ContainerName(const std::string& unit) const;
  static std::string VolumeName(const std::string& container) { return container + "-data"; }

  // Creates and starts the unit's container (its volume is created with it).
  absl::Status Run(const UnitContainer& c) const;
  // Starts the container unless it is running. NOT_FOUND when it does not exist.
  absl::Status Start(const std::string& container) const;
  // Stops containers (their volumes stay), waiting up to `grace_s` each before killing them.
  absl::Status Stop(const std::vector<std::string>& containers, int grace_s) const;
  // Removes the container and its volume; OK when they are gone already.
  absl::Status Remove(const std::string& container) const;
  // Removes the model's network; OK when it is gone already.
  absl::Status RemoveNetwork() const;

  // The last lines of a container's output, for error messages.
  std::string LogTail(const std::string& container, int lines = 20) const;

 private:
  struct Result {
    int code = -1;
    std::string output;  // stdout and stderr
  };
  // Runs the engine with `args`; a code of -1 when it could not be started.
  Result Engine(const std::vector<std::string>& args) const;
  absl::Status EngineOk(const std::vector<std::string>& args) const;

  v1::ContainerRuntimeRecord record_;
};

}  // namespace parley::cli
