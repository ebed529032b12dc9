#pragma once

// Service definitions and models, as users write them in YAML (docs/service-definitions.md): the
// whole public interface of services/definition/ in one include, for callers that use all of it
// (the CLI, parleyd). Each concept has a header of its own, which narrower callers include:
//
//   values.h       the types of config options, action parameters and relation data keys;
//   template.h     {{config.x}}, {{fact.x}} and {{event.x}} templates, parsed and expanded;
//   interface.h    interface schemas and an endpoint's contract (role and schema);
//   action_spec.h  the actions handlers run, one struct per kind;
//   service.h      a service definition (service.yaml) and what is derived from it;
//   model.h        a model (model.yaml) and the definitions it names;
//   build_spec.h   from a definition to the engine's ServiceSpec of one unit.
//
// Everything here reads files, plain data or is stateless; thread-compatible.

#include "services/definition/action_spec.h"
#include "services/definition/build_spec.h"
#include "services/definition/interface.h"
#include "services/definition/model.h"
#include "services/definition/service.h"
#include "services/definition/template.h"
#include "services/definition/values.h"
