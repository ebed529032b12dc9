#pragma once

// `parley export kubernetes MODEL`: the model as Kubernetes manifests (docs/deploy.md).
//
// Per service: a StatefulSet with one pod per unit (pod app-1 hosts unit app/1) and a volume claim
// per pod for the unit's knowledge base and state directory; a headless Service, so that a pod's
// peers reach it at <pod>.<service>:7000 whether or not it is ready; the definition as a ConfigMap
// (a bundle, tools/cli/deploy/bundle.h). For the model: the interfaces as a ConfigMap and the plan,
// the model as `parley up` would apply it (a v1::ModelState with every unit's DNS address), as a
// ConfigMap too. Each pod runs `parley host-unit` (tools/cli/deploy/unit_host.h), which starts
// parleyd, hosts its unit and relates it; from then on the agents negotiate among themselves.

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "parley/v1/model.pb.h"
#include "services/definition/definition.h"

namespace parley::cli {

// Where the files and ports of a unit's container are; the image's layout (deploy/Dockerfile).
inline constexpr char kUnitDataDir[] = "/var/lib/parley";
inline constexpr char kBundlesDir[] = "/etc/parley/bundles";  // ConfigMaps mounted here
inline constexpr char kPlanFile[] = "/etc/parley/plan/model.json";
inline constexpr int kAgentPort = 7000;
inline constexpr int kMetricsPort = 9464;

// The model as `parley up` would apply it: services with their definitions under
// `definitions_root/<service>`, interfaces at `interfaces_dir` ("" when the model has none),
// config, units named <service>/<n> at `address(service, n)`, and relations with the ids `parley
// up` gives them.
v1::ModelState MakePlan(const services::Model& model, const std::string& definitions_root,
                        const std::string& interfaces_dir,
                        const std::function<std::string(const std::string&, int)>& address);

struct KubernetesOptions {
  // The image the pods run (deploy/Dockerfile).
  std::string image = "parley:latest";
  // Every resource's metadata.namespace; "" leaves it to kubectl.
  std::string name_space;
  // Each unit's volume claim.
  std::string storage = "1Gi";
  // Each unit container's requests.
  std::string cpu_request = "100m";
  std::string memory_request = "128Mi";
};

// The manifests, one YAML stream. Fails when a definition cannot travel in a ConfigMap.
absl::StatusOr<std::string> ExportKubernetes(const services::Model& model,
                                             const KubernetesOptions& options);

// `parley export compose MODEL -o DIR`: the model as a compose project in DIR, for
// `podman-compose` or `docker compose`: DIR/compose.yaml with one service per unit (`web-0` hosts
// web/0, running `parley host-unit` as a pod does), a named volume per unit for its knowledge
// base and state directory, one network on which units find each other by service name
// (`web-0:7000`), a healthcheck that is `parley probe --ready`; DIR/plan/model.json, the plan
// (mounted at kPlanFile; also a model directory for the CLI: `parley --model-dir DIR/plan status`
// from where the unit names resolve); DIR/bundles/<service> and DIR/bundles/interfaces, the
// definitions as bundles (mounted at kBundlesDir). Existing files in DIR are replaced.
struct ComposeOptions {
  std::string image = "parley:latest";
};
absl::Status ExportCompose(const services::Model& model, const std::string& dir,
                           const ComposeOptions& options);

}  // namespace parley::cli
