#include "services/definition/action_spec.h"

namespace parley::services {

absl::string_view ActionKindName(ActionKind kind) {
  switch (kind) {
    case ActionKind::kExec:
      return "exec";
    case ActionKind::kAnsible:
      return "ansible";
    case ActionKind::kContainer:
      return "container";
    case ActionKind::kHttp:
      return "http";
    case ActionKind::kBuiltin:
      return "builtin";
  }
  return "";
}

}  // namespace parley::services
