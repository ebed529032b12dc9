#include "tools/cli/model/plan.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace parley::cli {
namespace {

using services::Model;
using services::ModelService;
using services::RelationEnd;
using Kind = PlanStep::Kind;

v1::ServiceRecord* Find(v1::ModelState& state, const std::string& name) {
  for (auto& svc : *state.mutable_services()) {
    if (svc.name() == name) return &svc;
  }
  return nullptr;
}

RelationEnd End(const std::string& service, const std::string& endpoint) {
  return RelationEnd{service, endpoint};
}

std::string Describe(const RelationEnd& a, const RelationEnd& b) {
  if (a.service == b.service && a.endpoint == b.endpoint) {
    return absl::StrCat(a.service, ":", a.endpoint, " (peers)");
  }
  return absl::StrCat(a.service, ":", a.endpoint, " - ", b.service, ":", b.endpoint);
}

// The units of `svc`, newest first, until `keep` are left.
std::vector<std::string> NewestFirst(const v1::ServiceRecord& svc, int keep) {
  std::vector<std::string> out;
  for (int i = svc.units_size() - 1; i >= std::max(keep, 0); --i)
    out.push_back(svc.units(i).name());
  return out;
}

void DropUnits(v1::ServiceRecord& svc, int keep) {
  while (svc.units_size() > std::max(keep, 0)) svc.mutable_units()->RemoveLast();
}

}  // namespace

bool SameEnds(const v1::RelationRecordState& r, const RelationEnd& a, const RelationEnd& b) {
  auto eq = [](const std::string& service, const std::string& endpoint, const RelationEnd& end) {
    return service == end.service && endpoint == end.endpoint;
  };
  return (eq(r.a_service(), r.a_endpoint(), a) && eq(r.b_service(), r.b_endpoint(), b)) ||
         (eq(r.a_service(), r.a_endpoint(), b) && eq(r.b_service(), r.b_endpoint(), a));
}

size_t ModelPlan::changes() const {
  return std::count_if(steps.begin(), steps.end(), [](const PlanStep& s) { return s.Changes(); });
}

ModelPlan Plan(const v1::ModelState& applied, const Model& model) {
  ModelPlan plan;
  for (const ModelService& m : model.services) plan.service_order.push_back(m.name);
  // The record as the steps so far leave it.
  v1::ModelState state = applied;
  std::set<std::string> old_units;
  for (const auto& svc : state.services()) {
    for (const auto& u : svc.units()) old_units.insert(u.name());
  }

  // Services that leave: not in the model, or with another definition directory or host.
  std::vector<std::string> leaving;
  for (const auto& svc : state.services()) {
    const ModelService* m = model.FindService(svc.name());
    if (m == nullptr || m->definition_dir != svc.definition_dir() || m->host != svc.host()) {
      leaving.push_back(svc.name());
    }
  }
  auto is_leaving = [&](const std::string& name) {
    return std::find(leaving.begin(), leaving.end(), name) != leaving.end();
  };

  // 1. Relations to drop.
  auto* relations = state.mutable_relations();
  for (int i = 0; i < relations->size();) {
    const v1::RelationRecordState& rel = relations->Get(i);
    bool keep = !is_leaving(rel.a_service()) && !is_leaving(rel.b_service());
    if (keep && rel.a_service() != rel.b_service()) {
      keep =
          std::any_of(model.relations.begin(), model.relations.end(),
                      [&](const services::ModelRelation& mr) { return SameEnds(rel, mr.a, mr.b); });
    }
    if (keep) {
      ++i;
      continue;
    }
    PlanStep step(Kind::kUnrelate);
    step.relation_id = rel.id();
    step.a = End(rel.a_service(), rel.a_endpoint());
    step.b = End(rel.b_service(), rel.b_endpoint());
    plan.steps.push_back(std::move(step));
    relations->DeleteSubrange(i, 1);
  }

  // 2. Services that leave lose their units, then their record.
  for (const std::string& name : leaving) {
    v1::ServiceRecord* svc = Find(state, name);
    if (svc->units_size() > 0) {
      PlanStep step(Kind::kRemoveUnits);
      step.service = name;
      step.units = NewestFirst(*svc, 0);
      plan.steps.push_back(std::move(step));
    }
    (*state.mutable_next_units())[name] = svc->next_unit();
    PlanStep step(Kind::kRemoveService);
    step.service = name;
    plan.steps.push_back(std::move(step));
    auto* services = state.mutable_services();
    for (int i = 0; i < services->size(); ++i) {
      if (services->Get(i).name() == name) {
        services->DeleteSubrange(i, 1);
        break;
      }
    }
  }

  // 3. Each service of the model: its record, config, units and peer relations.
  std::set<int> new_relations;  // indexes into state.relations()
  for (const ModelService& m : model.services) {
    v1::ServiceRecord* svc = Find(state, m.name);
    if (svc == nullptr) {
      svc = state.add_services();
      svc->set_name(m.name);
      svc->set_definition_dir(m.definition_dir);
      svc->set_definition_name(m.definition.name);
      svc->set_host(m.host);
      if (auto it = state.next_units().find(m.name); it != state.next_units().end()) {
        svc->set_next_unit(it->second);
      }
      PlanStep step(Kind::kAddService);
      step.service = m.name;
      step.definition_dir = m.definition_dir;
      step.definition_name = m.definition.name;
      step.host = m.host;
      plan.steps.push_back(std::move(step));
    }
    PlanStep configure(Kind::kConfigure);
    configure.service = m.name;
    configure.config = m.config;
    for (const auto& [k, v] : m.config) {
      auto it = svc->config().find(k);
      if (it == svc->config().end() || it->second != v) configure.set[k] = v;
    }
    for (const auto& [k, v] : svc->config()) {
      if (!m.config.contains(k)) configure.unset.push_back(k);
    }
    std::sort(configure.unset.begin(), configure.unset.end());
    if (!configure.set.empty() || !configure.unset.empty()) {
      svc->mutable_config()->clear();
      for (const auto& [k, v] : m.config) (*svc->mutable_config())[k] = v;
      plan.steps.push_back(std::move(configure));
    }
    if (svc->units_size() < m.units) {
      PlanStep step(Kind::kAddUnits);
      step.service = m.name;
      while (svc->units_size() < m.units) {
        const std::string unit = absl::StrCat(m.name, "/", svc->next_unit());
        svc->set_next_unit(svc->next_unit() + 1);
        svc->add_units()->set_name(unit);
        step.units.push_back(unit);
      }
      plan.steps.push_back(std::move(step));
    } else if (svc->units_size() > m.units) {
      PlanStep step(Kind::kRemoveUnits);
      step.service = m.name;
      step.units = NewestFirst(*svc, m.units);
      DropUnits(*svc, m.units);
      plan.steps.push_back(std::move(step));
    }
    // Peer endpoints relate a service's units among themselves, without a line in the model.
    for (const auto& ep : m.definition.endpoints) {
      if (ep.role != engine::Role::kPeers) continue;
      const bool known =
          std::any_of(state.relations().begin(), state.relations().end(), [&](const auto& r) {
            return r.a_service() == m.name && r.b_service() == m.name && r.a_endpoint() == ep.name;
          });
      if (known) continue;
      PlanStep step(Kind::kAddRelation);
      step.a = step.b = End(m.name, ep.name);
      step.interface = ep.interface;
      new_relations.insert(state.relations_size());
      v1::RelationRecordState* rel = state.add_relations();
      rel->set_a_service(m.name);
      rel->set_a_endpoint(ep.name);
      rel->set_b_service(m.name);
      rel->set_b_endpoint(ep.name);
      rel->set_interface(ep.interface);
      plan.steps.push_back(std::move(step));
    }
  }

  // 4. The model's relations that are not recorded.
  for (const services::ModelRelation& mr : model.relations) {
    const bool known = std::any_of(state.relations().begin(), state.relations().end(),
                                   [&](const auto& r) { return SameEnds(r, mr.a, mr.b); });
    if (known) continue;
    const ModelService* a = model.FindService(mr.a.service);
    const services::EndpointDef* ep =
        a == nullptr ? nullptr : a->definition.FindEndpoint(mr.a.endpoint);
    PlanStep step(Kind::kAddRelation);
    step.a = mr.a;
    step.b = mr.b;
    step.interface = ep == nullptr ? "" : ep->interface;
    new_relations.insert(state.relations_size());
    v1::RelationRecordState* rel = state.add_relations();
    rel->set_a_service(mr.a.service);
    rel->set_a_endpoint(mr.a.endpoint);
    rel->set_b_service(mr.b.service);
    rel->set_b_endpoint(mr.b.endpoint);
    rel->set_interface(step.interface);
    plan.steps.push_back(std::move(step));
  }

  // 5. Every unit pair of every relation.
  for (int i = 0; i < state.relations_size(); ++i) {
    const v1::RelationRecordState& rel = state.relations(i);
    PlanStep step(Kind::kRelateUnits);
    step.a = End(rel.a_service(), rel.a_endpoint());
    step.b = End(rel.b_service(), rel.b_endpoint());
    const v1::ServiceRecord* a = Find(state, rel.a_service());
    const v1::ServiceRecord* b = Find(state, rel.b_service());
    if (a != nullptr && b != nullptr) {
      const bool peers = rel.a_service() == rel.b_service() && rel.a_endpoint() == rel.b_endpoint();
      for (int x = 0; x < a->units_size(); ++x) {
        for (int y = peers ? x + 1 : 0; y < b->units_size(); ++y) {
          const std::string& ua = a->units(x).name();
          const std::string& ub = b->units(y).name();
          if (new_relations.contains(i) || !old_units.contains(ua) || !old_units.contains(ub)) {
            step.new_pairs.emplace_back(ua, ub);
          }
        }
      }
    }
    plan.steps.push_back(std::move(step));
  }
  return plan;
}

std::string FormatPlan(const ModelPlan& plan) {
  std::string out;
  for (const PlanStep& s : plan.steps) {
    if (!s.Changes()) continue;
    std::string line;
    switch (s.kind) {
      case Kind::kUnrelate:
        line = absl::StrCat("unrelate ", s.relation_id);
        break;
      case Kind::kRemoveUnits:
        line = absl::StrCat(s.units.size() == 1 ? "remove unit " : "remove units ",
                            absl::StrJoin(s.units, ", "));
        break;
      case Kind::kRemoveService:
        line = absl::StrCat("remove service ", s.service);
        break;
      case Kind::kAddService:
        line = absl::StrCat("add service ", s.service, " (definition ", s.definition_dir, ", host ",
                            s.host, ")");
        break;
      case Kind::kConfigure: {
        std::vector<std::string> parts;
        for (const auto& [k, v] : s.set) parts.push_back(absl::StrCat(k, "=", v));
        for (const std::string& k : s.unset) parts.push_back(absl::StrCat("reset ", k));
        line = absl::StrCat("configure ", s.service, ": ", absl::StrJoin(parts, ", "));
        break;
      }
      case Kind::kAddUnits:
        line = absl::StrCat(s.units.size() == 1 ? "add unit " : "add units ",
                            absl::StrJoin(s.units, ", "));
        break;
      case Kind::kAddRelation:
        line = absl::StrCat("add relation ", Describe(s.a, s.b), " (interface ", s.interface, ")");
        break;
      case Kind::kRelateUnits: {
        std::vector<std::string> pairs;
        for (const auto& [x, y] : s.new_pairs) pairs.push_back(absl::StrCat(x, " - ", y));
        line = absl::StrCat("relate ", Describe(s.a, s.b), ": ", absl::StrJoin(pairs, ", "));
        break;
      }
    }
    absl::StrAppend(&out, line, "\n");
  }
  if (out.empty()) return "nothing to change\n";
  return out;
}

}  // namespace parley::cli
