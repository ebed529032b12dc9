#pragma once

// A model (`model.yaml`): which services to run from which definitions, with how many units,
// which config and on which hosts, and which endpoints to relate (docs/service-definitions.md).
//
// LoadModel reads the model and every definition it names and checks them together; errors are
// INVALID_ARGUMENT "<file>:<line>: <field>: <what>". Loading only reads files: a caller that
// applies a model once LoadModel succeeded never half-applies one. Plain data; thread-compatible.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "services/definition/service.h"

namespace parley::services {

struct ModelService {
  std::string name;
  // As written in the model, relative to the model file, and resolved.
  std::string definition_path;
  std::string definition_dir;
  int units = 1;
  // Config values set by the model (normalized text), checked against the definition's options.
  std::map<std::string, std::string> config;
  ServiceDefinition definition;
  // Where its units run: "local" (the parleyd `parley up` starts) or a name under `hosts`.
  std::string host = "local";
  int line = 0;
};

struct RelationEnd {
  std::string service;
  std::string endpoint;
};

struct ModelRelation {
  RelationEnd a;
  RelationEnd b;
  int line = 0;
};

// A machine (a parleyd) the model places services on, besides the local one `parley up` starts.
struct ModelHost {
  std::string name;
  // host:port of its parleyd.
  std::string address;
  // Where the model's directory is on that machine; empty: the same path as here.
  std::string model_root;
  int line = 0;
};

struct Model {
  std::string file;
  std::string description;
  // The shared interfaces directory (resolved), empty when the model names none.
  std::string interfaces_dir;
  // In declaration order.
  std::vector<ModelService> services;
  std::vector<ModelRelation> relations;
  // Hosts other than "local", in declaration order.
  std::vector<ModelHost> hosts;
  // `coordinator: {etcd: [...]}`: "host:port" of the etcd members its units of services that
  // declare leadership campaign through; empty when the model names none.
  std::vector<std::string> etcd;

  const ModelService* FindService(absl::string_view name) const;
  const ModelHost* FindHost(absl::string_view name) const;
};

// Reads a model and every definition it names; checks config values, relation ends, interfaces
// and roles.
absl::StatusOr<Model> LoadModel(const std::string& path);

}  // namespace parley::services
