#include "services/backends/registry.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace parley::services {

BackendRegistry& BackendRegistry::Add(ActionKind kind, Maker make) {
  makers_[kind] = std::move(make);
  return *this;
}

absl::StatusOr<std::unique_ptr<engine::Action>> BackendRegistry::Make(
    const ServiceDefinition& def, const HandlerDef& handler) {
  auto it = makers_.find(handler.action.kind());
  if (it != makers_.end()) return it->second(def, handler);
  std::vector<std::string> kinds;
  for (const auto& [kind, make] : makers_) kinds.emplace_back(ActionKindName(kind));
  return absl::UnimplementedError(absl::StrCat(
      def.file, ":", handler.action.line, ": handler '", handler.name, "': action kind '",
      ActionKindName(handler.action.kind()), "' has no backend here (this one runs ",
      kinds.empty() ? "no kind at all" : absl::StrJoin(kinds, ", "), ")"));
}

}  // namespace parley::services
