// Reading model.yaml: hosts, services (each with the definition it names, read and checked) and
// relations (ends checked against those definitions).

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "services/definition/model.h"
#include "services/definition/names.h"
#include "services/definition/yaml_fields.h"

namespace parley::services {
namespace definition_internal {
namespace {

namespace fs = std::filesystem;

class ModelReader {
 public:
  explicit ModelReader(Model& model) : model_(model) {}

  absl::Status Read() {
    ASSIGN_OR_RETURN(YAML::Node root, ParseYamlFile(model_.file));
    const At top{&model_.file, root, 1, ""};
    if (!root.IsMap()) {
      return top.Error(absl::StrCat("expected a map of model fields, got ", Describe(root)));
    }
    ASSIGN_OR_RETURN(Fields f, Fields::Read(top, {"description", "interfaces", "coordinator",
                                                  "hosts", "services", "relations"}));
    ASSIGN_OR_RETURN(model_.description, ReadText(f.Get("description")));
    const fs::path base = fs::path(model_.file).parent_path();
    if (const At* at = f.Get("interfaces")) {
      ASSIGN_OR_RETURN(std::string dir, ReadString(*at));
      model_.interfaces_dir = (base / dir).lexically_normal().string();
      std::error_code ec;
      if (!fs::is_directory(model_.interfaces_dir, ec)) {
        return at->Error(absl::StrCat("'", model_.interfaces_dir, "' is not a directory"));
      }
    }
    if (const At* at = f.Get("coordinator")) RETURN_IF_ERROR(ReadCoordinator(*at));
    if (const At* at = f.Get("hosts")) RETURN_IF_ERROR(ReadHosts(*at));
    ASSIGN_OR_RETURN(const At* services, f.Require("services"));
    RETURN_IF_ERROR(ReadServices(*services, base));
    if (const At* at = f.Get("relations")) RETURN_IF_ERROR(ReadRelations(*at));
    return absl::OkStatus();
  }

 private:
  // "<host>:<port>" of `what`.
  static absl::StatusOr<std::string> ReadHostPort(const At& at, absl::string_view what) {
    ASSIGN_OR_RETURN(std::string address, ReadString(at));
    const size_t colon = address.rfind(':');
    int port = 0;
    if (colon == std::string::npos || colon == 0 ||
        !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 1 || port > 65535) {
      return at.Error(absl::StrCat("expected <host>:<port> of ", what, ", got '", address, "'"));
    }
    return address;
  }

  // `coordinator: {etcd: [host:port, ...]}`: the etcd members the model's units of services
  // that declare leadership campaign through (docs/coordination.md).
  absl::Status ReadCoordinator(const At& at) {
    ASSIGN_OR_RETURN(Fields f, Fields::Read(at, {"etcd"}));
    ASSIGN_OR_RETURN(const At* etcd, f.Require("etcd"));
    ASSIGN_OR_RETURN(std::vector<At> items, ReadItems(*etcd, /*scalar_ok=*/true));
    if (items.empty()) return etcd->Error("expected at least one etcd member");
    for (const At& item : items) {
      ASSIGN_OR_RETURN(std::string member, ReadHostPort(item, "an etcd member"));
      model_.etcd.push_back(std::move(member));
    }
    return absl::OkStatus();
  }

  absl::Status ReadHosts(const At& at) {
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    for (const auto& [name, host_at] : entries) {
      RETURN_IF_ERROR(CheckName(host_at, name, NameRule::kService, "host name"));
      if (name == "local") {
        return host_at.Error("'local' is the parleyd `parley up` starts; it is not declared");
      }
      ModelHost host;
      host.name = name;
      host.line = host_at.line;
      ASSIGN_OR_RETURN(Fields f, Fields::Read(host_at, {"address", "model_root"}));
      ASSIGN_OR_RETURN(const At* address, f.Require("address"));
      ASSIGN_OR_RETURN(host.address, ReadHostPort(*address, "a parleyd"));
      if (const At* root = f.Get("model_root")) {
        ASSIGN_OR_RETURN(host.model_root, ReadString(*root));
        if (!fs::path(host.model_root).is_absolute()) {
          return root->Error(
              absl::StrCat("expected an absolute path, got '", host.model_root, "'"));
        }
      }
      model_.hosts.push_back(std::move(host));
    }
    return absl::OkStatus();
  }

  absl::Status ReadServices(const At& at, const fs::path& base) {
    ASSIGN_OR_RETURN(Entries entries, MapEntries(at));
    if (entries.empty()) return at.Error("a model has at least one service");
    for (const auto& [name, svc_at] : entries) {
      RETURN_IF_ERROR(CheckName(svc_at, name, NameRule::kService, "service name"));
      ModelService svc;
      svc.name = name;
      svc.line = svc_at.line;
      ASSIGN_OR_RETURN(Fields f, Fields::Read(svc_at, {"definition", "units", "config", "host"}));
      if (const At* host = f.Get("host")) {
        ASSIGN_OR_RETURN(svc.host, ReadString(*host));
        if (svc.host != "local" && model_.FindHost(svc.host) == nullptr) {
          std::vector<std::string> names = {"local"};
          for (const auto& h : model_.hosts) names.push_back(h.name);
          return host->Error(absl::StrCat("host '", svc.host, "' is not declared under hosts (",
                                          absl::StrJoin(names, ", "), ")"));
        }
      }
      ASSIGN_OR_RETURN(const At* definition, f.Require("definition"));
      ASSIGN_OR_RETURN(svc.definition_path, ReadString(*definition));
      svc.definition_dir = (base / svc.definition_path).lexically_normal().string();
      auto def = LoadServiceDefinition(svc.definition_dir, model_.interfaces_dir);
      if (!def.ok()) {
        return absl::Status(
            def.status().code(),
            absl::StrCat(def.status().message(), " (the definition of ", definition->path, " at ",
                         model_.file, ":", definition->line, ")"));
      }
      svc.definition = std::move(*def);
      if (const At* units = f.Get("units")) {
        ASSIGN_OR_RETURN(int64_t n, ReadInt(*units, 1, 100000));
        svc.units = static_cast<int>(n);
      }
      if (const At* config = f.Get("config")) {
        ASSIGN_OR_RETURN(Entries values, MapEntries(*config));
        for (const auto& [key, value] : values) {
          const ConfigOption* opt = svc.definition.FindConfig(key);
          if (opt == nullptr) {
            return value.Error(absl::StrCat("'", key, "' is not a config option of definition '",
                                            svc.definition.name,
                                            "' (options: ", NamesOf(svc.definition.config), ")"));
          }
          ASSIGN_OR_RETURN(std::string text, ReadTyped(value, opt->type));
          svc.config.emplace(key, std::move(text));
        }
      }
      model_.services.push_back(std::move(svc));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::pair<RelationEnd, const EndpointDef*>> ReadEnd(const At& at) {
    ASSIGN_OR_RETURN(std::string text, ReadString(at));
    const size_t colon = text.find(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
      return at.Error(absl::StrCat("expected '<service>:<endpoint>', got '", text, "'"));
    }
    RelationEnd end{text.substr(0, colon), text.substr(colon + 1)};
    const ModelService* svc = model_.FindService(end.service);
    if (svc == nullptr) {
      return at.Error(absl::StrCat("service '", end.service, "' is not in this model (services: ",
                                   NamesOf(model_.services), ")"));
    }
    const EndpointDef* ep = svc->definition.FindEndpoint(end.endpoint);
    if (ep == nullptr) {
      return at.Error(absl::StrCat("service '", end.service, "' (definition '",
                                   svc->definition.name, "') has no endpoint '", end.endpoint,
                                   "' (endpoints: ", NamesOf(svc->definition.endpoints), ")"));
    }
    return std::make_pair(std::move(end), ep);
  }

  absl::Status ReadRelations(const At& at) {
    ASSIGN_OR_RETURN(std::vector<At> items, ReadItems(at, false));
    std::map<std::pair<std::string, std::string>, std::string> seen;
    for (const At& item : items) {
      if (!item.node.IsSequence() || item.node.size() != 2) {
        return item.Error(absl::StrCat("expected a pair [<service>:<endpoint>, ",
                                       "<service>:<endpoint>], got ", Describe(item.node)));
      }
      ASSIGN_OR_RETURN(std::vector<At> ends, ReadItems(item, false));
      ASSIGN_OR_RETURN(auto a, ReadEnd(ends[0]));
      ASSIGN_OR_RETURN(auto b, ReadEnd(ends[1]));
      const std::string a_name = absl::StrCat(a.first.service, ":", a.first.endpoint);
      const std::string b_name = absl::StrCat(b.first.service, ":", b.first.endpoint);
      const EndpointDef& ea = *a.second;
      const EndpointDef& eb = *b.second;
      if (ea.interface != eb.interface) {
        return item.Error(absl::StrCat(a_name, " has interface '", ea.interface, "' but ", b_name,
                                       " has interface '", eb.interface, "'"));
      }
      if (engine::RemoteRole(ea.role) != eb.role) {
        return item.Error(
            absl::StrCat(a_name, " (", engine::RoleName(ea.role), ") cannot relate to ", b_name,
                         " (", engine::RoleName(eb.role),
                         "): a relation joins provides to requires, or peers to peers"));
      }
      const InterfaceSchema& sa =
          model_.FindService(a.first.service)->definition.interfaces.at(ea.interface);
      const InterfaceSchema& sb =
          model_.FindService(b.first.service)->definition.interfaces.at(eb.interface);
      if (!sa.SameContract(sb)) {
        return item.Error(absl::StrCat(a_name, " and ", b_name, " both use interface '",
                                       ea.interface, "' but its schemas differ (", sa.file, " and ",
                                       sb.file, ")"));
      }
      const auto key = std::minmax(a_name, b_name);
      auto [first, inserted] = seen.emplace(key, item.path);
      if (!inserted) return item.Error(absl::StrCat("the same relation as ", first->second));
      model_.relations.push_back({std::move(a.first), std::move(b.first), item.line});
    }
    return absl::OkStatus();
  }

  Model& model_;
};

}  // namespace
}  // namespace definition_internal

const ModelService* Model::FindService(absl::string_view name) const {
  return definition_internal::FindByName(services, name);
}

const ModelHost* Model::FindHost(absl::string_view name) const {
  return definition_internal::FindByName(hosts, name);
}

absl::StatusOr<Model> LoadModel(const std::string& path) {
  Model model;
  model.file = path;
  try {
    RETURN_IF_ERROR(definition_internal::ModelReader(model).Read());
  } catch (const YAML::Exception& e) {
    return absl::InternalError(absl::StrCat(path, ": unexpected YAML error: ", e.what()));
  }
  return model;
}

}  // namespace parley::services
