#pragma once

// Every action kind Parley ships, composed into one registry: exec and ansible (a program run
// with hook tools, services/backends/exec, services/backends/ansible), http (an HTTP API call,
// services/backends/http), container (a container through the Docker Engine API,
// services/backends/container) and builtin (inline steps, services/backends/builtin). parleyd,
// the benchmarks and the tests that run definitions of any kind use it.

#include <memory>

#include "services/backends/common/backend_log.h"
#include "services/backends/container/container_action.h"
#include "services/backends/http/http_action.h"
#include "services/backends/process/process_action.h"
#include "services/backends/registry.h"

namespace parley::services {

// Each kind's options, and where every kind's output and logs go.
struct BackendOptions {
  ProcessOptions process;  // exec and ansible
  HttpOptions http;
  ContainerOptions container;
  BackendLog log;
};

// A registry with every kind registered. The actions it makes keep copies of what they need.
std::unique_ptr<BackendRegistry> MakeBackends(BackendOptions options);

}  // namespace parley::services
