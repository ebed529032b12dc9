#include "engine/relations.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/key_layout.h"

namespace parley::engine {

using kb::Space;

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

absl::Status Relations::Load(const kb::Kb& kb) {
  run_ = {};
  records_.clear();
  absl::Status parse_status;
  RETURN_IF_ERROR(
      kb.Scan(Space::kRelation, "", [&](absl::string_view key, absl::string_view value) {
        v1::RelationRecord rec;
        parse_status = ParseRecord(kb, "relation", key, value, rec);
        if (!parse_status.ok()) return false;
        records_.emplace(std::string(key), std::move(rec));
        return true;
      }));
  return parse_status;
}

absl::StatusOr<bool> Relations::Apply(const v1::Event& event, kb::Txn& txn) {
  const auto& rc = event.relation();
  const bool creates =
      rc.kind() == v1::RELATION_EVENT_KIND_JOINED || rc.kind() == v1::RELATION_EVENT_KIND_CREATED;
  auto it = records_.find(rc.relation_id());
  if (it == records_.end()) {
    // Only relating or a remote unit joining creates a relation; anything else about an unknown
    // relation is stale (it arrived after we broke the relation) and changes nothing.
    if (!creates) return false;
    v1::RelationRecord rec;
    rec.set_relation_id(rc.relation_id());
    rec.set_endpoint(rc.endpoint());
    rec.set_remote_service(rc.remote_service());
    rec.set_remote_endpoint(rc.remote_endpoint());
    rec.set_interface(rc.interface());
    it = records_.emplace(rc.relation_id(), std::move(rec)).first;
  } else if (it->second.gone()) {
    return false;
  } else if (it->second.endpoint() != rc.endpoint()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "event ", event.id(), " '", event.name(), "': relation '", rc.relation_id(),
        "' is attached to endpoint '", it->second.endpoint(), "', not '", rc.endpoint(), "'"));
  }
  v1::RelationRecord& rel = it->second;
  const std::string& unit = rc.remote_unit();
  auto apply = [&](absl::string_view bag, const auto& changes) {
    const std::string prefix = keys::Bag(rc.relation_id(), bag);
    for (const auto& c : changes) {
      if (c.deleted()) {
        txn.Delete(Space::kBag, absl::StrCat(prefix, c.key()));
      } else {
        txn.Put(Space::kBag, absl::StrCat(prefix, c.key()), c.value());
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
      if (!unit.empty() && !member) return false;  // departed meanwhile: stale
      if (!unit.empty()) apply(absl::StrCat("ru:", unit), rc.unit_changes());
      if (rc.service_changes_size() > 0) {
        ASSIGN_OR_RETURN(const bool current, AcceptServiceTerm(txn, rc));
        if (current) apply("rs", rc.service_changes());
      }
      break;
    }
    case v1::RELATION_EVENT_KIND_DEPARTED:
      EraseSorted(rel.mutable_remote_units(), unit);
      if (EraseSorted(rel.mutable_targets(), unit) && rc.local()) {
        run_.departs.emplace_back(rc.relation_id(), unit);
      }
      if (!rc.local() && !unit.empty()) run_.left.emplace_back(rc.relation_id(), unit);
      RETURN_IF_ERROR(
          txn.DeletePrefix(Space::kBag, keys::Bag(rc.relation_id(), absl::StrCat("ru:", unit))));
      if (rel.remote_units().empty() && rel.targets().empty()) {
        run_.follow_up_broken.insert(rc.relation_id());
      }
      break;
    case v1::RELATION_EVENT_KIND_BROKEN:
      rel.clear_remote_units();
      rel.clear_targets();
      run_.broken.insert(rc.relation_id());
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("event ", event.id(), " '", event.name(), "': unspecified relation kind"));
  }
  run_.changed.insert(rc.relation_id());
  return true;
}

absl::StatusOr<std::map<std::string, std::string>> Relations::DerivedFacts(
    const EndpointSpec& endpoint, const kb::Txn& txn) const {
  const std::string& name = endpoint.name;
  std::map<std::string, std::string> want;
  size_t units = 0;
  uint64_t ready_digest = 0xcbf29ce484222325ULL;
  bool ready = false;
  for (const auto& [id, rel] : records_) {
    if (rel.endpoint() != name || !IsLive(id, rel)) continue;
    units += rel.remote_units_size();
    if (rel.remote_units_size() == 0) continue;
    // Each remote unit's view: the remote service's bag overlaid by the unit's own.
    std::map<std::string, std::map<std::string, std::string>> bags;
    RETURN_IF_ERROR(txn.Scan(
        Space::kBag, keys::RelationBags(id), [&](absl::string_view key, absl::string_view value) {
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
      for (const auto& k : endpoint.required_keys) {
        if (!view.contains(k)) {
          unit_ready = false;
          break;
        }
      }
      if (unit_ready) {
        ready = true;
        Mix(ready_digest, id);
        Mix(ready_digest, unit);
        for (const auto& k : endpoint.required_keys) Mix(ready_digest, view[k]);
      }
      for (const auto& [k, v] : view) want.try_emplace(absl::StrCat(name, ".remote.", k), v);
    }
  }
  if (units > 0) want[absl::StrCat(name, ".joined")] = absl::StrCat(units);
  if (ready) want[absl::StrCat(name, ".ready")] = Hex(ready_digest);

  return want;
}

std::vector<const v1::RelationRecord*> Relations::Live(absl::string_view endpoint) const {
  std::vector<const v1::RelationRecord*> out;
  for (const auto& [id, rel] : records_) {
    if (!IsLive(id, rel)) continue;
    if (endpoint.empty() || rel.endpoint() == endpoint) out.push_back(&rel);
  }
  return out;
}

absl::StatusOr<bool> Relations::AcceptServiceTerm(kb::Txn& txn, const v1::RelationChange& rc) {
  // The newest term seen for the remote service's data of this relation, beside its bags (so it
  // goes with them when the relation breaks).
  const std::string key = absl::StrCat(keys::Bag(rc.relation_id(), "rt"), "term");
  ASSIGN_OR_RETURN(auto stored, txn.Get(Space::kBag, key));
  int64_t seen = 0;
  if (stored.has_value() && !absl::SimpleAtoi(*stored, &seen)) {
    return absl::DataLossError(absl::StrCat(
        "relation '", rc.relation_id(), "': stored service term '", *stored, "' is not a number"));
  }
  if (rc.service_term() < seen) {
    ++stale_service_changes_;
    return false;
  }
  if (rc.service_term() > seen) txn.Put(Space::kBag, key, absl::StrCat(rc.service_term()));
  return true;
}

absl::Status Relations::SetLocalData(kb::Txn& txn, absl::string_view relation_id,
                                     absl::string_view key, std::optional<absl::string_view> value,
                                     bool service) {
  auto it = records_.find(std::string(relation_id));
  if (it == records_.end() || !IsLive(it->first, it->second)) {
    return absl::NotFoundError(absl::StrCat("relation '", relation_id, "' does not exist"));
  }
  if (key.empty() || key.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("relation '", relation_id, "': invalid key '", key, "'"));
  }
  const std::string k = absl::StrCat(keys::Bag(relation_id, service ? "ls" : "lu"), key);
  ASSIGN_OR_RETURN(auto current, txn.Get(Space::kBag, k));
  if (current.has_value() == value.has_value() && (!value || *current == *value)) {
    return absl::OkStatus();
  }
  auto& changes = (service ? run_.local_service : run_.local_unit)[it->first];
  if (value) {
    txn.Put(Space::kBag, k, *value);
    changes[std::string(key)] = std::string(*value);
  } else {
    txn.Delete(Space::kBag, k);
    changes[std::string(key)] = std::nullopt;
  }
  return absl::OkStatus();
}

absl::Status Relations::StageMessages(kb::Txn& txn, Outbox& outbox, Sender sender, uint64_t run,
                                      v1::Trace& trace) const {
  auto add_changes = [](const auto& changes, auto* out) {
    for (const auto& [k, v] : changes) {
      v1::BagChange* c = out->Add();
      c->set_key(k);
      if (v) {
        c->set_value(*v);
      } else {
        c->set_deleted(true);
      }
    }
  };
  auto add_bag = [&](const std::string& id, absl::string_view bag, auto* out) {
    return txn.Scan(Space::kBag, keys::Bag(id, bag), [&](absl::string_view k, absl::string_view v) {
      v1::BagChange* c = out->Add();
      c->set_key(std::string(k));
      c->set_value(std::string(v));
      return true;
    });
  };

  std::set<std::string> touched = run_.changed;
  for (const auto& [id, m] : run_.local_unit) touched.insert(id);
  for (const auto& [id, m] : run_.local_service) touched.insert(id);
  for (const auto& id : touched) {
    const v1::RelationRecord& rel = records_.at(id);
    if (!IsLive(id, rel)) continue;
    auto unit_it = run_.local_unit.find(id);
    auto service_it = run_.local_service.find(id);
    const bool changed = unit_it != run_.local_unit.end() || service_it != run_.local_service.end();
    for (const auto& destination : rel.targets()) {
      ASSIGN_OR_RETURN(bool known, Outbox::Introduced(txn, id, destination));
      if (known && !changed) continue;
      RETURN_IF_ERROR(outbox.Stage(
          txn, rel, destination, v1::RELATION_EVENT_KIND_CHANGED, sender, run,
          [&](v1::RelationEvent& e) -> absl::Status {
            if (e.kind() == v1::RELATION_EVENT_KIND_JOINED) {
              // An introduction carries the whole of this unit's data.
              RETURN_IF_ERROR(add_bag(id, "lu", e.mutable_unit_changes()));
              RETURN_IF_ERROR(add_bag(id, "ls", e.mutable_service_changes()));
            } else {
              if (unit_it != run_.local_unit.end()) {
                add_changes(unit_it->second, e.mutable_unit_changes());
              }
              if (service_it != run_.local_service.end()) {
                add_changes(service_it->second, e.mutable_service_changes());
              }
            }
            if (e.service_changes_size() > 0) e.set_service_term(sender.service_term);
            return absl::OkStatus();
          },
          trace));
    }
  }
  for (const auto& [id, unit] : run_.departs) {
    RETURN_IF_ERROR(outbox.Stage(
        txn, records_.at(id), unit, v1::RELATION_EVENT_KIND_DEPARTED, sender, run,
        [](v1::RelationEvent&) { return absl::OkStatus(); }, trace));
  }
  // A remote unit that departed is owed nothing more about the relation: what it did not
  // acknowledge is dropped (it would ignore it, and a unit being removed would wait for its
  // acknowledgement in vain once it is gone).
  for (const auto& [id, unit] : run_.left) outbox.StageForget(txn, id, unit);
  // A broken relation's unacknowledged events stay in the outbox: receivers need every sequence
  // number, and they ignore events about a relation they no longer have.
  return absl::OkStatus();
}

absl::Status Relations::StageRecords(kb::Txn& txn) {
  for (const auto& id : run_.changed) {
    v1::RelationRecord& rel = records_.at(id);
    if (run_.broken.contains(id)) {
      rel.set_gone(true);
      RETURN_IF_ERROR(txn.DeletePrefix(Space::kBag, keys::RelationBags(id)));
    }
    txn.Put(Space::kRelation, id, rel.SerializeAsString());
  }
  return absl::OkStatus();
}

std::vector<v1::Event> Relations::FollowUps() const {
  // A relation left without remote units is broken in a run of its own, queued atomically.
  std::vector<v1::Event> follow_ups;
  for (const auto& id : run_.follow_up_broken) {
    const v1::RelationRecord& rel = records_.at(id);
    if (run_.broken.contains(id)) continue;
    v1::Event& e = follow_ups.emplace_back();
    e.set_name(absl::StrCat(rel.endpoint(), ".broken"));
    e.set_source("engine");
    e.mutable_relation()->set_relation_id(id);
    e.mutable_relation()->set_endpoint(rel.endpoint());
    e.mutable_relation()->set_remote_service(rel.remote_service());
    e.mutable_relation()->set_kind(v1::RELATION_EVENT_KIND_BROKEN);
  }
  return follow_ups;
}

absl::Status Relations::CheckPeerEvent(const kb::Kb& kb, absl::string_view relation_id,
                                       absl::string_view sender, v1::RelationEventKind kind) const {
  if (kind == v1::RELATION_EVENT_KIND_JOINED) return absl::OkStatus();
  auto it = records_.find(std::string(relation_id));
  if (it != records_.end()) {
    const v1::RelationRecord& rel = it->second;
    const std::string unit(sender);
    if (rel.gone() || std::binary_search(rel.targets().begin(), rel.targets().end(), unit) ||
        std::binary_search(rel.remote_units().begin(), rel.remote_units().end(), unit)) {
      return absl::OkStatus();
    }
  }
  // Events accepted from this sender on this relation may still wait in the inbox (its JOINED
  // among them): then the sender is party to it.
  ASSIGN_OR_RETURN(auto received, LastReceived(kb, relation_id, sender));
  if (received) return absl::OkStatus();
  if (it == records_.end()) {
    return absl::NotFoundError(absl::StrCat("agent ", kb.agent(), ": unknown relation '",
                                            relation_id, "' (a relation starts with JOINED)"));
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "agent ", kb.agent(), ": '", sender, "' is not party to relation '", relation_id, "'"));
}

namespace {

template <typename Reader>
absl::StatusOr<std::map<std::string, std::string>> ReadBagFrom(const Reader& reader,
                                                               absl::string_view relation_id,
                                                               absl::string_view bag) {
  std::map<std::string, std::string> out;
  RETURN_IF_ERROR(reader.Scan(Space::kBag, keys::Bag(relation_id, bag),
                              [&](absl::string_view k, absl::string_view v) {
                                out.emplace(k, v);
                                return true;
                              }));
  return out;
}

}  // namespace

absl::StatusOr<std::map<std::string, std::string>> ReadBag(const kb::Kb& kb,
                                                           absl::string_view relation_id,
                                                           absl::string_view bag) {
  return ReadBagFrom(kb, relation_id, bag);
}

absl::StatusOr<std::map<std::string, std::string>> ReadBag(const kb::Txn& txn,
                                                           absl::string_view relation_id,
                                                           absl::string_view bag) {
  return ReadBagFrom(txn, relation_id, bag);
}

}  // namespace parley::engine
