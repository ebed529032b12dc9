#include "engine/handler_graph.h"

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace parley::engine {

bool IsInternalNamespace(absl::string_view prefix) {
  return prefix == "config" || prefix == "timer" || prefix == "file" || prefix == "action" ||
         prefix == "leader" || prefix == "workload";
}

const EndpointSpec* HandlerGraph::EndpointOf(absl::string_view name) const {
  size_t dot = name.find('.');
  if (dot == absl::string_view::npos) return nullptr;
  auto it = endpoints_.find(name.substr(0, dot));
  return it == endpoints_.end() ? nullptr : it->second;
}

const EndpointSpec* HandlerGraph::Endpoint(absl::string_view endpoint) const {
  auto it = endpoints_.find(endpoint);
  return it == endpoints_.end() ? nullptr : it->second;
}

FactState* HandlerGraph::Find(absl::string_view name) {
  auto it = facts_.find(name);
  return it == facts_.end() ? nullptr : &it->second;
}

const FactState* HandlerGraph::Find(absl::string_view name) const {
  auto it = facts_.find(name);
  return it == facts_.end() ? nullptr : &it->second;
}

absl::Status HandlerGraph::ValidateName(absl::string_view handler, absl::string_view what,
                                        absl::string_view name, bool is_event) const {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("service '", service_, "', handler '", handler,
                                                   "', ", what, " '", name, "': ", why));
  };
  if (name.empty()) return bad("empty name");
  for (char c : name) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return bad("contains whitespace");
  }
  size_t dot = name.find('.');
  if (dot == absl::string_view::npos) return absl::OkStatus();
  absl::string_view prefix = name.substr(0, dot), rest = name.substr(dot + 1);
  if (IsInternalNamespace(prefix)) return absl::OkStatus();
  const bool relationship_shaped =
      is_event ? (rest == "joined" || rest == "changed" || rest == "departed" || rest == "broken")
               : (rest == "joined" || rest == "ready" || absl::StartsWith(rest, "remote."));
  if (!endpoints_.contains(prefix)) {
    if (relationship_shaped) {
      return bad(absl::StrCat("'", prefix, "' is not an endpoint of this service"));
    }
    return absl::OkStatus();
  }
  if (!relationship_shaped) {
    return bad(is_event ? absl::StrCat("endpoint '", prefix,
                                       "' has events joined, changed, departed and broken")
                        : absl::StrCat("endpoint '", prefix,
                                       "' has facts joined, ready and remote.<key>"));
  }
  return absl::OkStatus();
}

FactState& HandlerGraph::Intern(absl::string_view name) {
  auto [it, inserted] = facts_.try_emplace(name);
  if (inserted) {
    it->second.name = std::string(name);
    it->second.derived = EndpointOf(name) != nullptr;
  }
  return it->second;
}

absl::Status HandlerGraph::Build(ServiceSpec& spec) {
  service_ = spec.service;
  if (spec.unit.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("service '", service_, "': the unit name is empty"));
  }
  for (const auto& ep : spec.endpoints) {
    if (ep.name.empty() || ep.name.find('.') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("service '", service_, "': endpoint '",
                                                     ep.name, "' must be non-empty without '.'"));
    }
    if (IsInternalNamespace(ep.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("service '", service_, "': endpoint '", ep.name,
                       "' takes a name reserved for internal events"));
    }
    if (!endpoints_.emplace(ep.name, &ep).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("service '", service_, "': endpoint '", ep.name, "' declared twice"));
    }
  }
  absl::flat_hash_map<std::string, int> names;
  for (auto& hs : spec.handlers) {
    const int index = static_cast<int>(handlers_.size());
    if (hs.name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("service '", service_, "': handler #", index + 1, " has no name"));
    }
    if (!names.emplace(hs.name, index).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("service '", service_, "': handler '", hs.name, "' declared twice"));
    }
    if (!hs.action) {
      return absl::InvalidArgumentError(
          absl::StrCat("service '", service_, "': handler '", hs.name, "' has no action"));
    }
    auto h = std::make_unique<Handler>();
    h->name = hs.name;
    h->index = index;
    h->action = std::move(hs.action);
    h->on = hs.on;
    h->fact_only = hs.on.empty();
    std::set<absl::string_view> seen;
    for (const auto& f : hs.when) {
      RETURN_IF_ERROR(ValidateName(hs.name, "when", f, false));
      if (!seen.insert(absl::string_view(f)).second) continue;
      h->when.push_back(&Intern(f));
    }
    for (const auto& f : hs.when_not) {
      RETURN_IF_ERROR(ValidateName(hs.name, "when_not", f, false));
      if (std::find(hs.when.begin(), hs.when.end(), f) != hs.when.end()) {
        return absl::InvalidArgumentError(absl::StrCat("service '", service_, "', handler '",
                                                       hs.name, "': fact '", f,
                                                       "' is in both when and when_not"));
      }
      if (!seen.insert(absl::string_view(f)).second) continue;
      h->when_not.push_back(&Intern(f));
    }
    // While the unit is dying only the handlers that say they run then may run.
    const bool names_dying = std::find(hs.when.begin(), hs.when.end(), kDyingFact) != hs.when.end();
    const bool on_stop = std::find(hs.on.begin(), hs.on.end(), "stop") != hs.on.end();
    h->while_dying = hs.while_dying.value_or(on_stop || names_dying);
    if (names_dying && !h->while_dying) {
      return absl::InvalidArgumentError(
          absl::StrCat("service '", service_, "', handler '", hs.name, "': it needs the fact '",
                       kDyingFact, "' but says it does not run while the unit is dying"));
    }
    if (!h->while_dying && seen.insert(kDyingFact).second) {
      h->when_not.push_back(&Intern(kDyingFact));
    }
    std::set<absl::string_view> events;
    for (const auto& e : hs.on) {
      RETURN_IF_ERROR(ValidateName(hs.name, "on", e, true));
      if (events.insert(e).second) by_event_[e].push_back(h.get());
    }
    for (FactState* f : h->when) {
      f->when_of.push_back(h.get());
      if (h->fact_only) f->fact_only_of.push_back(h.get());
    }
    for (FactState* f : h->when_not) {
      f->when_not_of.push_back(h.get());
      if (h->fact_only) f->fact_only_of.push_back(h.get());
    }
    handlers_.push_back(std::move(h));
  }
  return absl::OkStatus();
}

}  // namespace parley::engine
