#pragma once

// How the engine lays out an agent's state in the KB's keyspaces, and how it reads its records
// back. Internal to engine/.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"
#include "kb/kb.h"

namespace parley::engine {

using kb::Space;

constexpr absl::string_view kMetaClock = "clock";
constexpr absl::string_view kMetaRun = "run";
constexpr absl::string_view kMetaNextEvent = "next_event";
constexpr absl::string_view kMetaNextOutbox = "next_outbox";
constexpr absl::string_view kMetaFailure = "failure";
constexpr absl::string_view kMetaStatus = "status";

inline std::string MetaKey(absl::string_view kind, absl::string_view name) {
  return absl::StrCat(kind, absl::string_view("\0", 1), name);
}
// Config values and timers live in the meta keyspace under these prefixes.
inline const std::string kConfigPrefix = MetaKey("cfg", "");
inline const std::string kTimerPrefix = MetaKey("timer", "");

inline std::string CursorKey(absl::string_view direction, absl::string_view relation,
                             absl::string_view unit) {
  return absl::StrCat(direction, absl::string_view("\0", 1), relation, absl::string_view("\0", 1),
                      unit);
}

inline std::string OutboxKey(absl::string_view destination, uint64_t id) {
  return absl::StrCat(destination, absl::string_view("\0", 1), kb::EncodeU64(id));
}

// Relation data keys: relation id, NUL, bag, NUL, key.
inline std::string BagPrefix(absl::string_view relation_id, absl::string_view bag) {
  return absl::StrCat(relation_id, absl::string_view("\0", 1), bag, absl::string_view("\0", 1));
}

inline absl::StatusOr<uint64_t> ReadCounter(const kb::Kb& kb, absl::string_view key,
                                            uint64_t dflt) {
  ASSIGN_OR_RETURN(auto v, kb.Get(Space::kMeta, key));
  if (!v) return dflt;
  auto n = kb::DecodeU64(*v);
  if (!n.ok()) {
    return absl::DataLossError(absl::StrCat("knowledge base ", kb.store()->path(), ", agent ",
                                            kb.agent(), ": counter '", key,
                                            "': ", n.status().message()));
  }
  return *n;
}

template <typename Message>
absl::Status Parse(const kb::Kb& kb, absl::string_view what, absl::string_view key,
                   absl::string_view bytes, Message& out) {
  if (!out.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError(absl::StrCat("knowledge base ", kb.store()->path(), ", agent ",
                                            kb.agent(), ": ", what, " '", key,
                                            "' does not decode; the KB is corrupt"));
  }
  return absl::OkStatus();
}
}  // namespace parley::engine
