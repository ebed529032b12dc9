#include "tools/cli/deploy/export_kubernetes.h"

#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "tools/cli/deploy/bundle.h"
#include "yaml-cpp/yaml.h"

namespace parley::cli {
namespace {

namespace fs = std::filesystem;

constexpr char kInterfacesBundle[] = "interfaces";
constexpr char kPlanConfigMap[] = "parley-plan";

// Labels and names: the model is its directory's name, made a DNS label.
std::string ModelName(const services::Model& model) {
  std::string name;
  for (char c : fs::absolute(model.file).parent_path().filename().string()) {
    name += absl::ascii_isalnum(c) ? absl::ascii_tolower(c) : '-';
  }
  return name.empty() ? "model" : name;
}

void Metadata(YAML::Emitter& y, const std::string& name, const KubernetesOptions& o,
              const std::string& model, const std::string& service) {
  y << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "name" << YAML::Value << name;
  if (!o.name_space.empty()) y << YAML::Key << "namespace" << YAML::Value << o.name_space;
  y << YAML::Key << "labels" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "app.kubernetes.io/part-of" << YAML::Value << "parley";
  y << YAML::Key << "parley.dev/model" << YAML::Value << model;
  if (!service.empty()) y << YAML::Key << "parley.dev/service" << YAML::Value << service;
  y << YAML::EndMap << YAML::EndMap;
}

void ConfigMap(YAML::Emitter& y, const std::string& name,
               const std::map<std::string, std::string>& data, const KubernetesOptions& o,
               const std::string& model, const std::string& service) {
  y << YAML::BeginDoc << YAML::BeginMap;
  y << YAML::Key << "apiVersion" << YAML::Value << "v1";
  y << YAML::Key << "kind" << YAML::Value << "ConfigMap";
  Metadata(y, name, o, model, service);
  y << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  for (const auto& [k, v] : data) {
    y << YAML::Key << k << YAML::Value;
    if (v.find('\n') != std::string::npos) y << YAML::Literal;
    y << v;
  }
  y << YAML::EndMap << YAML::EndMap;
}

void Service(YAML::Emitter& y, const std::string& service, const KubernetesOptions& o,
             const std::string& model) {
  y << YAML::BeginDoc << YAML::BeginMap;
  y << YAML::Key << "apiVersion" << YAML::Value << "v1";
  y << YAML::Key << "kind" << YAML::Value << "Service";
  Metadata(y, service, o, model, service);
  y << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
  // Headless: each pod has its own DNS name, <pod>.<service>. Peers must reach a unit before it
  // is ready (ready means its relations are connected), so not-ready pods are published too.
  y << YAML::Key << "clusterIP" << YAML::Value << "None";
  y << YAML::Key << "publishNotReadyAddresses" << YAML::Value << true;
  y << YAML::Key << "selector" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "parley.dev/model" << YAML::Value << model;
  y << YAML::Key << "parley.dev/service" << YAML::Value << service << YAML::EndMap;
  y << YAML::Key << "ports" << YAML::Value << YAML::BeginSeq;
  y << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << "agent" << YAML::Key
    << "port" << YAML::Value << kAgentPort << YAML::EndMap;
  y << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << "metrics" << YAML::Key
    << "port" << YAML::Value << kMetricsPort << YAML::EndMap;
  y << YAML::EndSeq << YAML::EndMap << YAML::EndMap;
}

void ExecProbe(YAML::Emitter& y, const char* key, std::vector<std::string> command, int delay,
               int period, int failures) {
  y << YAML::Key << key << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "exec" << YAML::Value << YAML::BeginMap << YAML::Key << "command" << YAML::Value
    << YAML::Flow << command << YAML::EndMap;
  y << YAML::Key << "initialDelaySeconds" << YAML::Value << delay;
  y << YAML::Key << "periodSeconds" << YAML::Value << period;
  y << YAML::Key << "timeoutSeconds" << YAML::Value << 5;
  y << YAML::Key << "failureThreshold" << YAML::Value << failures;
  y << YAML::EndMap;
}

void ConfigMapVolume(YAML::Emitter& y, const std::string& volume, const std::string& config_map) {
  y << YAML::BeginMap << YAML::Key << "name" << YAML::Value << volume;
  y << YAML::Key << "configMap" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key
    << "name" << YAML::Value << config_map << YAML::EndMap << YAML::EndMap;
}

void Mount(YAML::Emitter& y, const std::string& volume, const std::string& path, bool read_only) {
  y << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << volume << YAML::Key
    << "mountPath" << YAML::Value << path;
  if (read_only) y << YAML::Key << "readOnly" << YAML::Value << true;
  y << YAML::EndMap;
}

void StatefulSet(YAML::Emitter& y, const services::ModelService& s, bool interfaces,
                 const KubernetesOptions& o, const std::string& model) {
  const std::string def_cm = s.name + "-definition";
  y << YAML::BeginDoc << YAML::BeginMap;
  y << YAML::Key << "apiVersion" << YAML::Value << "apps/v1";
  y << YAML::Key << "kind" << YAML::Value << "StatefulSet";
  Metadata(y, s.name, o, model, s.name);
  y << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "serviceName" << YAML::Value << s.name;
  y << YAML::Key << "replicas" << YAML::Value << s.units;
  // Units become ready together (each waits for its relations), not one after another.
  y << YAML::Key << "podManagementPolicy" << YAML::Value << "Parallel";
  y << YAML::Key << "selector" << YAML::Value << YAML::BeginMap << YAML::Key << "matchLabels"
    << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "parley.dev/model" << YAML::Value << model;
  y << YAML::Key << "parley.dev/service" << YAML::Value << s.name << YAML::EndMap << YAML::EndMap;

  y << YAML::Key << "template" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap << YAML::Key << "labels"
    << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "app.kubernetes.io/part-of" << YAML::Value << "parley";
  y << YAML::Key << "parley.dev/model" << YAML::Value << model;
  y << YAML::Key << "parley.dev/service" << YAML::Value << s.name << YAML::EndMap << YAML::EndMap;
  y << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
  // The image's user (deploy/Dockerfile); fsGroup lets it write the volume.
  y << YAML::Key << "securityContext" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key
    << "runAsNonRoot" << YAML::Value << true << YAML::Key << "runAsUser" << YAML::Value << 10001
    << YAML::Key << "runAsGroup" << YAML::Value << 10001 << YAML::Key << "fsGroup" << YAML::Value
    << 10001 << YAML::EndMap;
  // stop handlers run on SIGTERM before parleyd exits.
  y << YAML::Key << "terminationGracePeriodSeconds" << YAML::Value << 60;
  y << YAML::Key << "containers" << YAML::Value << YAML::BeginSeq << YAML::BeginMap;
  y << YAML::Key << "name" << YAML::Value << "agent";
  y << YAML::Key << "image" << YAML::Value << o.image;
  y << YAML::Key << "command" << YAML::Value << YAML::Flow
    << std::vector<std::string>{"parley", "host-unit", "--plan", kPlanFile};
  // The pod's name is the unit's: app-1 hosts app/1.
  y << YAML::Key << "env" << YAML::Value << YAML::BeginSeq << YAML::BeginMap;
  y << YAML::Key << "name" << YAML::Value << "POD_NAME";
  y << YAML::Key << "valueFrom" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key
    << "fieldRef" << YAML::Value << YAML::BeginMap << YAML::Key << "fieldPath" << YAML::Value
    << "metadata.name" << YAML::EndMap << YAML::EndMap;
  y << YAML::EndMap << YAML::EndSeq;
  y << YAML::Key << "ports" << YAML::Value << YAML::BeginSeq;
  y << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << "agent" << YAML::Key
    << "containerPort" << YAML::Value << kAgentPort << YAML::EndMap;
  y << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << "metrics" << YAML::Key
    << "containerPort" << YAML::Value << kMetricsPort << YAML::EndMap;
  y << YAML::EndSeq;
  // Live: parleyd answers. Ready: the unit is idle (nothing queued, running or unacknowledged)
  // and every relation the plan gives it has all its remote units joined.
  ExecProbe(y, "livenessProbe", {"parley", "probe"}, 10, 10, 3);
  ExecProbe(y, "readinessProbe", {"parley", "probe", "--ready", "--plan", kPlanFile}, 2, 5, 1);
  y << YAML::Key << "resources" << YAML::Value << YAML::BeginMap << YAML::Key << "requests"
    << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "cpu" << YAML::Value
    << o.cpu_request << YAML::Key << "memory" << YAML::Value << o.memory_request << YAML::EndMap
    << YAML::EndMap;
  y << YAML::Key << "volumeMounts" << YAML::Value << YAML::BeginSeq;
  Mount(y, "kb", kUnitDataDir, false);
  Mount(y, "definition", absl::StrCat(kBundlesDir, "/", s.name), true);
  if (interfaces) Mount(y, "interfaces", absl::StrCat(kBundlesDir, "/", kInterfacesBundle), true);
  Mount(y, "plan", fs::path(kPlanFile).parent_path().string(), true);
  y << YAML::EndSeq;
  y << YAML::EndMap << YAML::EndSeq;  // the container
  y << YAML::Key << "volumes" << YAML::Value << YAML::BeginSeq;
  ConfigMapVolume(y, "definition", def_cm);
  if (interfaces) ConfigMapVolume(y, "interfaces", absl::StrCat(model, "-interfaces"));
  ConfigMapVolume(y, "plan", absl::StrCat(model, "-", kPlanConfigMap));
  y << YAML::EndSeq;
  y << YAML::EndMap << YAML::EndMap;  // template.spec, template

  // The unit's knowledge base and state directory outlive its pod.
  y << YAML::Key << "volumeClaimTemplates" << YAML::Value << YAML::BeginSeq << YAML::BeginMap;
  y << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap << YAML::Key << "name"
    << YAML::Value << "kb" << YAML::EndMap;
  y << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "accessModes" << YAML::Value << YAML::Flow
    << std::vector<std::string>{"ReadWriteOnce"};
  y << YAML::Key << "resources" << YAML::Value << YAML::BeginMap << YAML::Key << "requests"
    << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "storage" << YAML::Value
    << o.storage << YAML::EndMap << YAML::EndMap;
  y << YAML::EndMap << YAML::EndMap << YAML::EndSeq;
  y << YAML::EndMap << YAML::EndMap;  // spec, document
}

}  // namespace

v1::ModelState MakePlan(const services::Model& model, const std::string& definitions_root,
                        const std::string& interfaces_dir,
                        const std::function<std::string(const std::string&, int)>& address) {
  v1::ModelState plan;
  plan.set_model_file(fs::absolute(model.file).string());
  plan.set_interfaces_dir(model.interfaces_dir.empty() ? "" : interfaces_dir);
  int next_relation = 0;
  auto add_relation = [&](const std::string& as, const std::string& ae, const std::string& bs,
                          const std::string& be, const std::string& interface) {
    v1::RelationRecordState* r = plan.add_relations();
    const int n = ++next_relation;
    // The ids `parley up` gives (tools/cli/model/session.cc, Session::AddRelation).
    r->set_id(as == bs && ae == be ? absl::StrCat(as, ":", ae, "#", n)
                                   : absl::StrCat(as, ":", ae, "-", bs, ":", be, "#", n));
    r->set_a_service(as);
    r->set_a_endpoint(ae);
    r->set_b_service(bs);
    r->set_b_endpoint(be);
    r->set_interface(interface);
  };
  for (const services::ModelService& m : model.services) {
    v1::ServiceRecord* s = plan.add_services();
    s->set_name(m.name);
    s->set_definition_dir(absl::StrCat(definitions_root, "/", m.name));
    s->set_definition_name(m.definition.name);
    for (const auto& [k, v] : m.config) (*s->mutable_config())[k] = v;
    for (int i = 0; i < m.units; ++i) {
      v1::UnitRecord* u = s->add_units();
      u->set_name(absl::StrCat(m.name, "/", i));
      u->set_address(address(m.name, i));
    }
    s->set_next_unit(m.units);
    for (const auto& ep : m.definition.endpoints) {
      if (ep.role == engine::Role::kPeers)
        add_relation(m.name, ep.name, m.name, ep.name, ep.interface);
    }
  }
  for (const services::ModelRelation& mr : model.relations) {
    const auto* ep = model.FindService(mr.a.service)->definition.FindEndpoint(mr.a.endpoint);
    add_relation(mr.a.service, mr.a.endpoint, mr.b.service, mr.b.endpoint, ep->interface);
  }
  plan.set_next_relation(next_relation);
  return plan;
}

namespace {

absl::Status WriteFile(const fs::path& path, const std::string& text) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  std::ofstream out(path, std::ios::trunc | std::ios::binary);
  out << text;
  out.close();
  if (ec || !out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

absl::Status WriteBundle(const fs::path& dir, const Bundle& bundle) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  for (const auto& [key, text] : bundle.files) RETURN_IF_ERROR(WriteFile(dir / key, text));
  return absl::OkStatus();
}

}  // namespace

absl::Status ExportCompose(const services::Model& model, const std::string& dir,
                           const ComposeOptions& o) {
  const std::string name = ModelName(model);
  const fs::path out(dir);
  v1::ModelState plan = MakePlan(model, absl::StrCat(kUnitDataDir, "/definitions"),
                                 absl::StrCat(kUnitDataDir, "/", kInterfacesBundle),
                                 [](const std::string& service, int n) {
                                   return absl::StrCat(service, "-", n, ":", kAgentPort);
                                 });
  std::string plan_json;
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.add_whitespace = true;
  json_options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(plan, &plan_json, json_options);
  RETURN_IF_ERROR(WriteFile(out / "plan" / "model.json", plan_json));
  if (!model.interfaces_dir.empty()) {
    ASSIGN_OR_RETURN(Bundle bundle, MakeBundle(model.interfaces_dir));
    RETURN_IF_ERROR(WriteBundle(out / "bundles" / kInterfacesBundle, bundle));
  }
  for (const services::ModelService& s : model.services) {
    auto bundle = MakeBundle(s.definition_dir);
    if (!bundle.ok()) {
      return absl::Status(bundle.status().code(),
                          absl::StrCat("service ", s.name, ": ", bundle.status().message()));
    }
    RETURN_IF_ERROR(WriteBundle(out / "bundles" / s.name, *bundle));
  }

  YAML::Emitter y;
  y << YAML::Comment(absl::StrCat("The Parley model ", name, " (", model.file,
                                  "), exported by `parley export compose`: one service per "
                                  "unit, each running `parley host-unit`."));
  y << YAML::BeginMap << YAML::Key << "services" << YAML::Value << YAML::BeginMap;
  std::vector<std::string> volumes;
  for (const services::ModelService& s : model.services) {
    for (int n = 0; n < s.units; ++n) {
      const std::string unit = absl::StrCat(s.name, "-", n);
      volumes.push_back(unit);
      y << YAML::Key << unit << YAML::Value << YAML::BeginMap;
      y << YAML::Key << "image" << YAML::Value << o.image;
      y << YAML::Key << "hostname" << YAML::Value << unit;
      y << YAML::Key << "entrypoint" << YAML::Value << YAML::Flow
        << std::vector<std::string>{"/usr/local/bin/parley"};
      y << YAML::Key << "command" << YAML::Value << YAML::Flow
        << std::vector<std::string>{"host-unit", "--plan", kPlanFile, "--unit",
                                    absl::StrCat(s.name, "/", n)};
      y << YAML::Key << "volumes" << YAML::Value << YAML::BeginSeq
        << absl::StrCat("./plan:", fs::path(kPlanFile).parent_path().string(), ":ro")
        << absl::StrCat("./bundles:", kBundlesDir, ":ro") << absl::StrCat(unit, ":", kUnitDataDir)
        << YAML::EndSeq;
      y << YAML::Key << "healthcheck" << YAML::Value << YAML::BeginMap;
      y << YAML::Key << "test" << YAML::Value << YAML::Flow
        << std::vector<std::string>{"CMD",    "/usr/local/bin/parley", "probe", "--ready", "--plan",
                                    kPlanFile};
      y << YAML::Key << "interval" << YAML::Value << "10s";
      y << YAML::Key << "start_period" << YAML::Value << "5s";
      y << YAML::EndMap;
      y << YAML::Key << "restart" << YAML::Value << "unless-stopped";
      y << YAML::EndMap;
    }
  }
  y << YAML::EndMap;
  y << YAML::Key << "volumes" << YAML::Value << YAML::BeginMap;
  for (const auto& v : volumes)
    y << YAML::Key << v << YAML::Value << YAML::BeginMap << YAML::EndMap;
  y << YAML::EndMap << YAML::EndMap;
  if (!y.good()) return absl::InternalError(absl::StrCat("writing YAML: ", y.GetLastError()));
  return WriteFile(out / "compose.yaml", std::string(y.c_str()) + "\n");
}

absl::StatusOr<std::string> ExportKubernetes(const services::Model& model,
                                             const KubernetesOptions& o) {
  const std::string name = ModelName(model);
  const std::string materialized = absl::StrCat(kUnitDataDir, "/definitions");
  v1::ModelState plan =
      MakePlan(model, materialized, absl::StrCat(kUnitDataDir, "/", kInterfacesBundle),
               [](const std::string& service, int n) {
                 return absl::StrCat(service, "-", n, ".", service, ":", kAgentPort);
               });
  std::string plan_json;
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.add_whitespace = true;
  json_options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(plan, &plan_json, json_options);

  YAML::Emitter y;
  y << YAML::Comment(absl::StrCat("The Parley model ", name, " (", model.file,
                                  "), exported by `parley export kubernetes`."));
  ConfigMap(y, absl::StrCat(name, "-", kPlanConfigMap), {{"model.json", plan_json}}, o, name, "");
  const bool interfaces = !model.interfaces_dir.empty();
  if (interfaces) {
    auto bundle = MakeBundle(model.interfaces_dir);
    if (!bundle.ok()) return bundle.status();
    ConfigMap(y, absl::StrCat(name, "-interfaces"), bundle->files, o, name, "");
  }
  for (const services::ModelService& s : model.services) {
    auto bundle = MakeBundle(s.definition_dir);
    if (!bundle.ok()) {
      return absl::Status(bundle.status().code(),
                          absl::StrCat("service ", s.name, ": ", bundle.status().message()));
    }
    ConfigMap(y, s.name + "-definition", bundle->files, o, name, s.name);
    Service(y, s.name, o, name);
    StatefulSet(y, s, interfaces, o, name);
  }
  if (!y.good()) return absl::InternalError(absl::StrCat("writing YAML: ", y.GetLastError()));
  return std::string(y.c_str()) + "\n";
}

}  // namespace parley::cli
