#include <algorithm>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/key_layout.h"
#include "engine/run.h"

namespace parley::engine {
namespace {

// Inserts `value` into a sorted repeated field if absent; returns whether it was added.
bool InsertSorted(google::protobuf::RepeatedPtrField<std::string>* field,
                  const std::string& value) {
  auto pos = std::lower_bound(field->begin(), field->end(), value);
  if (pos != field->end() && *pos == value) return false;
  const int index = static_cast<int>(pos - field->begin());
  field->Add(std::string(value));
  for (int i = field->size() - 1; i > index; --i) field->SwapElements(i, i - 1);
  return true;
}

bool EraseSorted(google::protobuf::RepeatedPtrField<std::string>* field, const std::string& value) {
  auto pos = std::lower_bound(field->begin(), field->end(), value);
  if (pos == field->end() || *pos != value) return false;
  field->erase(pos);
  return true;
}

// FNV-1a: a stable digest, so a derived fact's value is the same in every process and build.
void Mix(uint64_t& h, absl::string_view s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  h ^= 0xff;  // separator
  h *= 0x100000001b3ULL;
}

std::string Hex(uint64_t v) {
  static const char* kDigits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[i] = kDigits[v & 0xf];
  return s;
}
}  // namespace

absl::string_view RelationKindName(v1::RelationEventKind kind) {
  switch (kind) {
    case v1::RELATION_EVENT_KIND_JOINED:
      return "joined";
    case v1::RELATION_EVENT_KIND_CHANGED:
      return "changed";
    case v1::RELATION_EVENT_KIND_DEPARTED:
      return "departed";
    case v1::RELATION_EVENT_KIND_BROKEN:
      return "broken";
    case v1::RELATION_EVENT_KIND_CREATED:
      return "created";
    default:
      return "";
  }
}

absl::Status Engine::ApplyRelationChange(const v1::Event& event) {
  if (!event.has_relation()) return absl::OkStatus();
  const auto& rc = event.relation();
  if (EndpointOf(absl::StrCat(rc.endpoint(), ".")) == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("event ", event.id(), " '", event.name(), "': endpoint '", rc.endpoint(),
                     "' is not declared by service '", spec_.service, "'"));
  }
  const bool creates =
      rc.kind() == v1::RELATION_EVENT_KIND_JOINED || rc.kind() == v1::RELATION_EVENT_KIND_CREATED;
  auto it = relations_.find(rc.relation_id());
  if (it == relations_.end()) {
    // Only relating or a remote unit joining creates a relation; anything else about an unknown
    // relation is stale (it arrived after we broke the relation) and changes nothing.
    if (!creates) return absl::OkStatus();
    v1::RelationRecord rec;
    rec.set_relation_id(rc.relation_id());
    rec.set_endpoint(rc.endpoint());
    rec.set_remote_service(rc.remote_service());
    rec.set_remote_endpoint(rc.remote_endpoint());
    rec.set_interface(rc.interface());
    it = relations_.emplace(rc.relation_id(), std::move(rec)).first;
  } else if (it->second.gone()) {
    return absl::OkStatus();
  } else if (it->second.endpoint() != rc.endpoint()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "event ", event.id(), " '", event.name(), "': relation '", rc.relation_id(),
        "' is attached to endpoint '", it->second.endpoint(), "', not '", rc.endpoint(), "'"));
  }
  v1::RelationRecord& rel = it->second;
  const std::string& unit = rc.remote_unit();
  auto apply = [&](absl::string_view bag, const auto& changes) {
    const std::string prefix = BagPrefix(rc.relation_id(), bag);
    for (const auto& c : changes) {
      if (c.deleted()) {
        txn_->Delete(Space::kBag, absl::StrCat(prefix, c.key()));
      } else {
        txn_->Put(Space::kBag, absl::StrCat(prefix, c.key()), c.value());
      }
    }
  };
  switch (rc.kind()) {
    case v1::RELATION_EVENT_KIND_CREATED:
      InsertSorted(rel.mutable_targets(), unit);
      break;
    case v1::RELATION_EVENT_KIND_JOINED:
      InsertSorted(rel.mutable_remote_units(), unit);
      InsertSorted(rel.mutable_targets(), unit);
      [[fallthrough]];
    case v1::RELATION_EVENT_KIND_CHANGED: {
      const bool member =
          std::binary_search(rel.remote_units().begin(), rel.remote_units().end(), unit);
      if (!unit.empty() && !member) return absl::OkStatus();  // departed meanwhile: stale
      if (!unit.empty()) apply(absl::StrCat("ru:", unit), rc.unit_changes());
      apply("rs", rc.service_changes());
      break;
    }
    case v1::RELATION_EVENT_KIND_DEPARTED:
      EraseSorted(rel.mutable_remote_units(), unit);
      if (EraseSorted(rel.mutable_targets(), unit) && rc.local()) {
        run_->departs.emplace_back(rc.relation_id(), unit);
      }
      RETURN_IF_ERROR(
          txn_->DeletePrefix(Space::kBag, BagPrefix(rc.relation_id(), absl::StrCat("ru:", unit))));
      if (rel.remote_units().empty() && rel.targets().empty()) {
        run_->follow_up_broken.insert(rc.relation_id());
      }
      break;
    case v1::RELATION_EVENT_KIND_BROKEN:
      rel.clear_remote_units();
      rel.clear_targets();
      run_->broken.insert(rc.relation_id());
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("event ", event.id(), " '", event.name(), "': unspecified relation kind"));
  }
  run_->relations_changed.insert(rc.relation_id());
  return RecomputeDerived(rc.endpoint());
}

absl::Status Engine::RecomputeDerived(const std::string& endpoint) {
  const EndpointSpec* ep = endpoints_.at(endpoint);
  std::map<std::string, std::string> want;
  size_t units = 0;
  uint64_t ready_digest = 0xcbf29ce484222325ULL;
  bool ready = false;
  for (const auto& [id, rel] : relations_) {
    if (rel.endpoint() != endpoint || rel.gone() || run_->broken.contains(id)) continue;
    units += rel.remote_units_size();
    if (rel.remote_units_size() == 0) continue;
    // Each remote unit's view: the remote service's bag overlaid by the unit's own.
    std::map<std::string, std::map<std::string, std::string>> bags;
    RETURN_IF_ERROR(
        txn_->Scan(Space::kBag, absl::StrCat(id, absl::string_view("\0", 1)),
                   [&](absl::string_view key, absl::string_view value) {
                     size_t sep = key.find('\0');
                     if (sep == absl::string_view::npos) return true;
                     bags[std::string(key.substr(0, sep))][std::string(key.substr(sep + 1))] =
                         std::string(value);
                     return true;
                   }));
    const auto& service_bag = bags["rs"];
    for (const auto& unit : rel.remote_units()) {
      std::map<std::string, std::string> view = service_bag;
      for (const auto& [k, v] : bags[absl::StrCat("ru:", unit)]) view[k] = v;
      bool unit_ready = true;
      for (const auto& k : ep->required_keys) {
        if (!view.contains(k)) {
          unit_ready = false;
          break;
        }
      }
      if (unit_ready) {
        ready = true;
        Mix(ready_digest, id);
        Mix(ready_digest, unit);
        for (const auto& k : ep->required_keys) Mix(ready_digest, view[k]);
      }
      for (const auto& [k, v] : view) want.try_emplace(absl::StrCat(endpoint, ".remote.", k), v);
    }
  }
  if (units > 0) want[absl::StrCat(endpoint, ".joined")] = absl::StrCat(units);
  if (ready) want[absl::StrCat(endpoint, ".ready")] = Hex(ready_digest);

  const std::string prefix = absl::StrCat(endpoint, ".");
  std::vector<std::string> stale;
  for (const auto& [name, f] : facts_) {
    if (f.set && absl::StartsWith(name, prefix) && !want.contains(name)) stale.push_back(name);
  }
  std::sort(stale.begin(), stale.end());
  for (const auto& name : stale) RETURN_IF_ERROR(ClearFact(name, /*derived=*/true));
  for (const auto& [name, value] : want) RETURN_IF_ERROR(SetFact(name, value, /*derived=*/true));
  return absl::OkStatus();
}

absl::Status Engine::CheckPeerEvent(absl::string_view relation_id, absl::string_view sender,
                                    v1::RelationEventKind kind) const {
  if (kind == v1::RELATION_EVENT_KIND_JOINED) return absl::OkStatus();
  auto it = relations_.find(std::string(relation_id));
  if (it != relations_.end()) {
    const v1::RelationRecord& rel = it->second;
    const std::string unit(sender);
    if (rel.gone() || std::binary_search(rel.targets().begin(), rel.targets().end(), unit) ||
        std::binary_search(rel.remote_units().begin(), rel.remote_units().end(), unit)) {
      return absl::OkStatus();
    }
  }
  // Events accepted from this sender on this relation may still wait in the inbox (its JOINED
  // among them): then the sender is party to it.
  ASSIGN_OR_RETURN(auto cursor, kb_->Get(Space::kCursor, CursorKey("in", relation_id, sender)));
  if (cursor) return absl::OkStatus();
  if (it == relations_.end()) {
    return absl::NotFoundError(absl::StrCat("agent ", kb_->agent(), ": unknown relation '",
                                            relation_id, "' (a relation starts with JOINED)"));
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "agent ", kb_->agent(), ": '", sender, "' is not party to relation '", relation_id, "'"));
}

absl::StatusOr<std::map<std::string, std::string>> Engine::Bag(absl::string_view relation_id,
                                                               absl::string_view bag) const {
  std::map<std::string, std::string> out;
  RETURN_IF_ERROR(kb_->Scan(Space::kBag, BagPrefix(relation_id, bag),
                            [&](absl::string_view k, absl::string_view v) {
                              out.emplace(k, v);
                              return true;
                            }));
  return out;
}

absl::Status Engine::SetLocalData(absl::string_view relation_id, absl::string_view key,
                                  std::optional<absl::string_view> value, bool service) {
  if (!run_) return absl::FailedPreconditionError("relation data changes only inside a run");
  auto it = relations_.find(std::string(relation_id));
  if (it == relations_.end() || it->second.gone() || run_->broken.contains(it->first)) {
    return absl::NotFoundError(absl::StrCat("relation '", relation_id, "' does not exist"));
  }
  if (key.empty() || key.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("relation '", relation_id, "': invalid key '", key, "'"));
  }
  const std::string k = absl::StrCat(BagPrefix(relation_id, service ? "ls" : "lu"), key);
  ASSIGN_OR_RETURN(auto current, txn_->Get(Space::kBag, k));
  if (current.has_value() == value.has_value() && (!value || *current == *value)) {
    return absl::OkStatus();
  }
  auto& changes = (service ? run_->local_service : run_->local_unit)[it->first];
  if (value) {
    txn_->Put(Space::kBag, k, *value);
    changes[std::string(key)] = std::string(*value);
  } else {
    txn_->Delete(Space::kBag, k);
    changes[std::string(key)] = std::nullopt;
  }
  return absl::OkStatus();
}

}  // namespace parley::engine
