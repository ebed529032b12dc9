#include "engine/key_layout.h"

#include "base/status_macros.h"

namespace parley::engine {

absl::Status DataLoss(const kb::Kb& kb, absl::string_view what) {
  return absl::DataLossError(
      absl::StrCat("knowledge base ", kb.store()->path(), ", agent ", kb.agent(), ": ", what));
}

absl::StatusOr<uint64_t> ReadCounter(const kb::Kb& kb, absl::string_view key, uint64_t dflt) {
  ASSIGN_OR_RETURN(auto v, kb.Get(kb::Space::kMeta, key));
  if (!v) return dflt;
  auto n = kb::DecodeU64(*v);
  if (!n.ok()) return DataLoss(kb, absl::StrCat("counter '", key, "': ", n.status().message()));
  return *n;
}

}  // namespace parley::engine
