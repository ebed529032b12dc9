#pragma once

// The entry point of a unit's container when a model runs without the CLI driving it (Kubernetes,
// tools/cli/deploy/export_kubernetes.h): `parley host-unit` and the probes, `parley probe`.

#include <string>

#include "absl/status/status.h"

namespace parley::cli {

struct HostUnitOptions {
  // The plan: the model as `parley up` would apply it (v1::ModelState JSON, MakePlan).
  std::string plan_file;
  // The unit to host; empty: from $POD_NAME, else the host name (app-1 hosts app/1).
  std::string unit;
  // Where the definition and interface bundles are mounted (<dir>/<service>, <dir>/interfaces);
  // they are written out under `data_dir`/definitions and `data_dir`/interfaces.
  std::string bundles_dir;
  // parleyd's knowledge base is <data_dir>/kb, the units' state directories <data_dir>/units.
  std::string data_dir;
  std::string parleyd;
  int port = 7000;
  int metrics_port = 9464;
};

// Starts parleyd, hosts the unit as the plan says (or, when it is hosted already, sets the config
// that differs), relates it to the units at the far end of each relation where its service asks
// (the plan's a side, as `parley up` does; the other side waits to be asked), then waits for
// parleyd, passing SIGTERM and SIGINT on. Returns parleyd's exit code; 1 when setting up failed.
int HostUnit(const HostUnitOptions& options);

// Liveness: parleyd at `address` answers. Readiness (`ready`): besides, it hosts at least one
// agent, every agent is idle (CheckIdle) and every relation it takes part in has remote units;
// with a `plan_file`, every relation the plan gives its service is there with all the remote
// units. OK or why not.
absl::Status Probe(const std::string& address, bool ready, const std::string& plan_file);

}  // namespace parley::cli
