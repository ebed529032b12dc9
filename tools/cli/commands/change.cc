// The commands that change a running model piece by piece: relate, unrelate, config, add-unit,
// remove-unit (docs/cli.md). `parley up` undoes what they changed unless the model file says it.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "services/definition/definition.h"
#include "tools/cli/commands/commands.h"
#include "tools/cli/commands/output.h"

namespace parley::cli {
namespace {

using services::LoadServiceDefinition;

}  // namespace

namespace {

// Checks both ends against the definitions and returns the interface.
absl::StatusOr<std::string> CheckEnds(Session& s, const std::pair<std::string, std::string>& a,
                                      const std::pair<std::string, std::string>& b) {
  std::string interface;
  std::vector<engine::Role> roles;
  for (const auto& end : {a, b}) {
    v1::ServiceRecord* svc = s.FindService(end.first);
    if (svc == nullptr) {
      return absl::NotFoundError(absl::StrCat("no service '", end.first, "' in the model"));
    }
    ASSIGN_OR_RETURN(services::ServiceDefinition def,
                     LoadServiceDefinition(svc->definition_dir(), s.state().interfaces_dir()));
    const auto* ep = def.FindEndpoint(end.second);
    if (ep == nullptr) {
      std::vector<std::string> names;
      for (const auto& e : def.endpoints) names.push_back(e.name);
      return absl::InvalidArgumentError(
          absl::StrCat("service ", end.first, " has no endpoint '", end.second,
                       "' (it has: ", absl::StrJoin(names, ", "), ")"));
    }
    if (!interface.empty() && interface != ep->interface) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot relate ", a.first, ":", a.second, " (interface ", interface, ") to ",
                       b.first, ":", b.second, " (interface ", ep->interface, ")"));
    }
    interface = ep->interface;
    roles.push_back(ep->role);
  }
  const bool ok = (roles[0] == engine::Role::kPeers) == (roles[1] == engine::Role::kPeers) &&
                  (roles[0] == engine::Role::kPeers || roles[0] != roles[1]);
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot relate ", a.first, ":", a.second, " (", engine::RoleName(roles[0]),
                     ") to ", b.first, ":", b.second, " (", engine::RoleName(roles[1]),
                     "): roles must be provides/requires or peers/peers"));
  }
  return interface;
}

}  // namespace

absl::Status Relate(Session& s, const Args& args, bool relate) {
  ASSIGN_OR_RETURN(auto a, ParseEnd(args.positional[0]));
  ASSIGN_OR_RETURN(auto b, ParseEnd(args.positional[1]));
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  services::ModelRelation want{{a.first, a.second}, {b.first, b.second}, 0};
  for (const auto& rel : s.state().relations()) {
    if (!SameRelation(rel, want)) continue;
    if (relate) {
      return absl::AlreadyExistsError(absl::StrCat("already related as ", rel.id()));
    }
    const std::string id = rel.id();  // DropRelation removes the record `rel` refers to
    return s.DropRelation(id);
  }
  if (!relate) {
    return absl::NotFoundError(
        absl::StrCat(args.positional[0], " and ", args.positional[1], " are not related"));
  }
  ASSIGN_OR_RETURN(std::string interface, CheckEnds(s, a, b));
  ASSIGN_OR_RETURN(std::string id, s.AddRelation(a.first, a.second, b.first, b.second, interface));
  for (const auto& rel : s.state().relations()) {
    if (rel.id() == id) RETURN_IF_ERROR(s.RelateUnits(rel));
  }
  std::fprintf(stderr, "related %s (interface %s)\n", id.c_str(), interface.c_str());
  return absl::OkStatus();
}

absl::Status Config(Session& s, const Args& args) {
  const std::string service = args.positional[0];
  const std::vector<std::string> items(args.positional.begin() + 1, args.positional.end());
  ASSIGN_OR_RETURN(auto assignments, ParseAssignments(items));
  if (!items.empty()) RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  v1::ServiceRecord* svc = s.FindService(service);
  if (svc == nullptr) {
    return absl::NotFoundError(absl::StrCat("no service '", service, "' in the model"));
  }
  ASSIGN_OR_RETURN(services::ServiceDefinition def,
                   LoadServiceDefinition(svc->definition_dir(), s.state().interfaces_dir()));
  if (items.empty()) {
    std::map<std::string, std::string> current;
    if (svc->units_size() > 0) {
      v1::GetConfigRequest req;
      req.set_agent(svc->units(0).name());
      v1::GetConfigResponse resp;
      RETURN_IF_ERROR(
          s.Client(svc->units(0).address()).Call(&v1::Agent::Stub::GetConfig, req, &resp));
      current.insert(resp.config().begin(), resp.config().end());
    }
    Table t({"Option", "Type", "Value", "Default", "Description"});
    for (const auto& o : def.config) {
      auto it = current.find(o.name);
      t.Add({o.name, std::string(services::ValueTypeName(o.type)),
             it == current.end() ? "" : it->second, o.default_value.value_or(""), o.description});
    }
    std::printf("%s", t.Render().c_str());
    return absl::OkStatus();
  }
  std::map<std::string, std::string> want(svc->config().begin(), svc->config().end());
  const engine::ServiceSpec config_spec = services::ConfigSpec(def, service);
  for (const auto& [k, v] : assignments) {
    RETURN_IF_ERROR(engine::CheckConfig(config_spec, k, v));
    if (v.empty()) {
      want.erase(k);
    } else {
      want[k] = v;
    }
  }
  return s.ApplyConfig(*svc, want);
}

absl::Status AddUnit(Session& s, const Args& args) {
  int n = 1;
  if (args.Has("-n") && (!absl::SimpleAtoi(args.Get("-n"), &n) || n < 1 || n > 1000)) {
    return absl::InvalidArgumentError(
        absl::StrCat("-n: expected a number from 1 to 1000, got '", args.Get("-n"), "'"));
  }
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  v1::ServiceRecord* svc = s.FindService(args.positional[0]);
  if (svc == nullptr) {
    return absl::NotFoundError(absl::StrCat("no service '", args.positional[0], "' in the model"));
  }
  for (int i = 0; i < n; ++i) RETURN_IF_ERROR(s.AddUnit(*svc));
  for (const auto& rel : s.state().relations()) RETURN_IF_ERROR(s.RelateUnits(rel));
  return absl::OkStatus();
}

absl::Status RemoveUnit(Session& s, const Args& args) {
  RETURN_IF_ERROR(s.dir().Lock(absl::Seconds(30)));
  RETURN_IF_ERROR(s.LoadState());
  for (const auto& unit : args.positional) RETURN_IF_ERROR(s.RequireUnit(unit).status());
  for (const auto& unit : args.positional) RETURN_IF_ERROR(s.RemoveUnit(unit));
  return absl::OkStatus();
}

}  // namespace parley::cli
