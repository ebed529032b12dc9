#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace parley::engine {
namespace {

using kb::Space;

constexpr absl::string_view kMetaClock = "clock";
constexpr absl::string_view kMetaRun = "run";
constexpr absl::string_view kMetaNextEvent = "next_event";
constexpr absl::string_view kMetaNextOutbox = "next_outbox";
constexpr absl::string_view kMetaFailure = "failure";
constexpr absl::string_view kMetaStatus = "status";

std::string MetaKey(absl::string_view kind, absl::string_view name) {
  return absl::StrCat(kind, absl::string_view("\0", 1), name);
}
// Config values and timers live in the meta keyspace under these prefixes.
const std::string kConfigPrefix = MetaKey("cfg", "");
const std::string kTimerPrefix = MetaKey("timer", "");

std::string CursorKey(absl::string_view direction, absl::string_view relation,
                      absl::string_view unit) {
  return absl::StrCat(direction, absl::string_view("\0", 1), relation, absl::string_view("\0", 1),
                      unit);
}

std::string OutboxKey(absl::string_view destination, uint64_t id) {
  return absl::StrCat(destination, absl::string_view("\0", 1), kb::EncodeU64(id));
}

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

class FunctionAction : public Action {
 public:
  explicit FunctionAction(std::function<absl::Status(RunContext&)> fn) : fn_(std::move(fn)) {}
  absl::Status Run(RunContext& ctx) override { return fn_(ctx); }

 private:
  std::function<absl::Status(RunContext&)> fn_;
};

// Relation data keys: relation id, NUL, bag, NUL, key.
std::string BagPrefix(absl::string_view relation_id, absl::string_view bag) {
  return absl::StrCat(relation_id, absl::string_view("\0", 1), bag, absl::string_view("\0", 1));
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

absl::StatusOr<uint64_t> ReadCounter(const kb::Kb& kb, absl::string_view key, uint64_t dflt) {
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

// Prefixes of internal events (config.changed, timer.<name>, file.changed.<path>,
// action.<name>); no endpoint may take these names.
bool IsInternalNamespace(absl::string_view prefix) {
  return prefix == "config" || prefix == "timer" || prefix == "file" || prefix == "action";
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

std::unique_ptr<Action> MakeAction(std::function<absl::Status(RunContext&)> fn) {
  return std::make_unique<FunctionAction>(std::move(fn));
}

// Why a step happened. Reasons are formatted only when the trace is built.
enum class Reason { kNone, kOnEvent, kNeverRan, kFactChanged, kText };

struct Engine::StepRecord {
  v1::TraceStep::Kind kind;
  const Handler* handler = nullptr;
  Reason reason = Reason::kNone;
  const FactState* fact = nullptr;
  std::string text;  // event name (kOnEvent, FIRED) or a formatted reason (kText)
  std::vector<v1::FactChange> changes;
  std::vector<std::string> fired;
  int64_t duration_ns = 0;
  std::string error;
};

struct Engine::Run {
  explicit Run(Engine* engine, const v1::Event& e) : event(e), ctx(engine) {}
  const v1::Event& event;
  RunContext ctx;
  Handler* current = nullptr;
  std::deque<std::pair<Handler*, uint32_t>> queue;
  // RunContext::Output, for the trace.
  std::map<std::string, std::string> outputs;
  std::vector<FactState*> changed;  // since the last retest
  std::vector<std::string> fired;   // by the current handler
  std::vector<v1::FactChange>* current_changes = nullptr;
  std::vector<FactState*> touched;
  std::vector<Handler*> ran;       // fact-only handlers whose bookkeeping changes
  std::vector<Handler*> executed;  // every handler run at least once
  std::vector<StepRecord> steps;
  // Relation id -> key -> new value (nullopt: deleted), for the unit and the service bag.
  std::map<std::string, std::map<std::string, std::optional<std::string>>> local_unit;
  std::map<std::string, std::map<std::string, std::optional<std::string>>> local_service;
  std::set<std::string> relations_changed;
  std::set<std::string> broken;
  // Relations left without remote units by a departed event: a broken event follows.
  std::set<std::string> follow_up_broken;
  // (relation, unit) this agent unrelated from: the unit is told with a DEPARTED event.
  std::vector<std::pair<std::string, std::string>> departs;
  // Outbox entries staged by this run.
  struct Staged {
    std::string destination, relation;
    uint64_t sequence, id;
  };
  std::vector<Staged> staged;
  uint32_t executions = 0;
};

Engine::Engine(ServiceSpec spec, kb::Kb* kb, base::Clock* clock, EngineOptions options)
    : spec_(std::move(spec)),
      kb_(kb),
      clock_(clock),
      options_(options),
      random_(options.random_seed),
      txn_(kb->Begin()) {}

Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(ServiceSpec spec, kb::Kb* kb, base::Clock* clock,
                                                       EngineOptions options) {
  std::unique_ptr<Engine> engine(new Engine(std::move(spec), kb, clock, options));
  RETURN_IF_ERROR(engine->Build());
  RETURN_IF_ERROR(engine->Load());
  return engine;
}

const EndpointSpec* Engine::EndpointOf(absl::string_view name) const {
  size_t dot = name.find('.');
  if (dot == absl::string_view::npos) return nullptr;
  auto it = endpoints_.find(name.substr(0, dot));
  return it == endpoints_.end() ? nullptr : it->second;
}

absl::Status Engine::ValidateName(absl::string_view handler, absl::string_view what,
                                  absl::string_view name, bool is_event) const {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("service '", spec_.service, "', handler '",
                                                   handler, "', ", what, " '", name, "': ", why));
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

Engine::FactState& Engine::Intern(absl::string_view name) {
  auto [it, inserted] = facts_.try_emplace(name);
  if (inserted) {
    it->second.name = std::string(name);
    it->second.derived = EndpointOf(name) != nullptr;
  }
  return it->second;
}

absl::Status Engine::Build() {
  if (spec_.unit.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("service '", spec_.service, "': the unit name is empty"));
  }
  for (const auto& ep : spec_.endpoints) {
    if (ep.name.empty() || ep.name.find('.') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("service '", spec_.service, "': endpoint '",
                                                     ep.name, "' must be non-empty without '.'"));
    }
    if (IsInternalNamespace(ep.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("service '", spec_.service, "': endpoint '", ep.name,
                       "' takes a name reserved for internal events"));
    }
    if (!endpoints_.emplace(ep.name, &ep).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("service '", spec_.service, "': endpoint '", ep.name, "' declared twice"));
    }
  }
  absl::flat_hash_map<std::string, int> names;
  for (auto& hs : spec_.handlers) {
    const int index = static_cast<int>(handlers_.size());
    if (hs.name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("service '", spec_.service, "': handler #", index + 1, " has no name"));
    }
    if (!names.emplace(hs.name, index).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("service '", spec_.service, "': handler '", hs.name, "' declared twice"));
    }
    if (!hs.action) {
      return absl::InvalidArgumentError(
          absl::StrCat("service '", spec_.service, "': handler '", hs.name, "' has no action"));
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
        return absl::InvalidArgumentError(absl::StrCat("service '", spec_.service, "', handler '",
                                                       hs.name, "': fact '", f,
                                                       "' is in both when and when_not"));
      }
      if (!seen.insert(absl::string_view(f)).second) continue;
      h->when_not.push_back(&Intern(f));
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

absl::Status Engine::Load() {
  for (auto& [name, f] : facts_) {
    f.set = false;
    f.value.clear();
    f.version = 0;
    f.touched = false;
    f.changed_since_retest = false;
  }
  absl::Status parse_status;
  RETURN_IF_ERROR(kb_->Scan(Space::kFact, "", [&](absl::string_view key, absl::string_view value) {
    v1::FactRecord rec;
    parse_status = Parse(*kb_, "fact", key, value, rec);
    if (!parse_status.ok()) return false;
    FactState& f = Intern(key);
    f.set = rec.set();
    f.value = rec.value();
    f.version = rec.version();
    return true;
  }));
  RETURN_IF_ERROR(parse_status);

  ASSIGN_OR_RETURN(change_clock_, ReadCounter(*kb_, kMetaClock, 0));
  ASSIGN_OR_RETURN(run_counter_, ReadCounter(*kb_, kMetaRun, 0));
  ASSIGN_OR_RETURN(next_event_id_, ReadCounter(*kb_, kMetaNextEvent, 1));
  ASSIGN_OR_RETURN(next_outbox_id_, ReadCounter(*kb_, kMetaNextOutbox, 1));

  failure_.reset();
  ASSIGN_OR_RETURN(auto failure, kb_->Get(Space::kMeta, kMetaFailure));
  if (failure) {
    v1::RunFailure f;
    RETURN_IF_ERROR(Parse(*kb_, "run failure", kMetaFailure, *failure, f));
    failure_ = f;
  }
  status_.Clear();
  ASSIGN_OR_RETURN(auto status, kb_->Get(Space::kMeta, kMetaStatus));
  if (status) RETURN_IF_ERROR(Parse(*kb_, "status", kMetaStatus, *status, status_));

  relations_.clear();
  RETURN_IF_ERROR(
      kb_->Scan(Space::kRelation, "", [&](absl::string_view key, absl::string_view value) {
        v1::RelationRecord rec;
        parse_status = Parse(*kb_, "relation", key, value, rec);
        if (!parse_status.ok()) return false;
        relations_.emplace(std::string(key), std::move(rec));
        return true;
      }));
  RETURN_IF_ERROR(parse_status);

  config_.clear();
  RETURN_IF_ERROR(
      kb_->Scan(Space::kMeta, kConfigPrefix, [&](absl::string_view k, absl::string_view v) {
        config_.emplace(std::string(k), std::string(v));
        return true;
      }));
  timers_.clear();
  RETURN_IF_ERROR(
      kb_->Scan(Space::kMeta, kTimerPrefix, [&](absl::string_view k, absl::string_view v) {
        auto ms = kb::DecodeU64(v);
        parse_status = ms.status();
        if (!ms.ok()) return false;
        timers_.emplace(std::string(k), absl::FromUnixMillis(static_cast<int64_t>(*ms)));
        return true;
      }));
  RETURN_IF_ERROR(parse_status);
  outbox_size_ = 0;
  unacked_.clear();
  RETURN_IF_ERROR(
      kb_->Scan(Space::kOutbox, "", [&](absl::string_view key, absl::string_view value) {
        v1::OutboxEntry e;
        parse_status = Parse(*kb_, "outbox entry", key, value, e);
        if (!parse_status.ok()) return false;
        unacked_[{e.destination(), e.relation_id()}].emplace_back(e.sequence(), e.id());
        ++outbox_size_;
        return true;
      }));
  RETURN_IF_ERROR(parse_status);

  inbox_head_ = next_event_id_;
  RETURN_IF_ERROR(kb_->Scan(Space::kInbox, "", [&](absl::string_view key, absl::string_view) {
    auto id = kb::DecodeU64(key);
    if (id.ok()) inbox_head_ = *id;
    parse_status = id.status();
    return false;
  }));
  RETURN_IF_ERROR(parse_status);
  inbox_depth_ = next_event_id_ - inbox_head_;

  absl::flat_hash_map<std::string, uint64_t> last_ran;
  RETURN_IF_ERROR(
      kb_->Scan(Space::kHandler, "", [&](absl::string_view key, absl::string_view value) {
        auto v = kb::DecodeU64(value);
        if (!v.ok()) {
          parse_status = absl::DataLossError(
              absl::StrCat("knowledge base ", kb_->store()->path(), ", agent ", kb_->agent(),
                           ": handler '", key, "' bookkeeping: ", v.status().message()));
          return false;
        }
        last_ran.emplace(std::string(key), *v);
        return true;
      }));
  RETURN_IF_ERROR(parse_status);

  pending_.clear();
  for (auto& h : handlers_) {
    h->in_queue = false;
    h->executions = 0;
    h->ran_in_run = false;
    h->unsatisfied = 0;
    for (FactState* f : h->when) h->unsatisfied += f->set ? 0 : 1;
    for (FactState* f : h->when_not) h->unsatisfied += f->set ? 1 : 0;
    auto it = last_ran.find(h->name);
    h->ran = it != last_ran.end();
    h->last_ran = h->ran ? it->second : 0;
    h->dirty = !h->ran;
    h->dirty_cause = nullptr;
    if (h->ran) {
      for (auto* list : {&h->when, &h->when_not}) {
        for (FactState* f : *list) {
          if (f->version > h->last_ran &&
              (h->dirty_cause == nullptr || f->version > h->dirty_cause->version)) {
            h->dirty = true;
            h->dirty_cause = f;
          }
        }
      }
    }
    if (h->fact_only && h->dirty && h->unsatisfied == 0) pending_.push_back(h.get());
  }
  return absl::OkStatus();
}

bool Engine::IsSet(absl::string_view fact) const {
  auto it = facts_.find(fact);
  return it != facts_.end() && it->second.set;
}

std::optional<std::string> Engine::FactValue(absl::string_view fact) const {
  auto it = facts_.find(fact);
  if (it == facts_.end() || !it->second.set) return std::nullopt;
  return it->second.value;
}

std::map<std::string, std::string> Engine::Facts() const {
  std::map<std::string, std::string> out;
  for (const auto& [name, f] : facts_) {
    if (f.set) out.emplace(name, f.value);
  }
  return out;
}

absl::Status Engine::ValidateEvent(const v1::Event& event) const {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("event '", event.name(), "' for agent ", kb_->agent(), ": ", why));
  };
  if (event.name().empty()) return bad("the event has no name");
  if (event.has_relation()) {
    const auto& rc = event.relation();
    auto ep = endpoints_.find(rc.endpoint());
    if (ep == endpoints_.end()) {
      return bad(absl::StrCat("endpoint '", rc.endpoint(), "' is not declared by service '",
                              spec_.service, "'"));
    }
    if (rc.relation_id().empty()) return bad("relation id is empty");
    absl::string_view kind = RelationKindName(rc.kind());
    if (kind.empty()) return bad("relation event kind is unspecified");
    if (event.name() != absl::StrCat(rc.endpoint(), ".", kind)) {
      return bad(absl::StrCat("a ", kind, " event on endpoint '", rc.endpoint(),
                              "' must be named '", rc.endpoint(), ".", kind, "'"));
    }
    if ((rc.kind() == v1::RELATION_EVENT_KIND_JOINED ||
         rc.kind() == v1::RELATION_EVENT_KIND_DEPARTED ||
         rc.kind() == v1::RELATION_EVENT_KIND_CREATED) &&
        rc.remote_unit().empty()) {
      return bad("joined, departed and created events name the remote unit");
    }
    for (const auto* changes : {&rc.unit_changes(), &rc.service_changes()}) {
      for (const auto& c : *changes) {
        if (c.key().empty() || c.key().find('\0') != std::string::npos) {
          return bad("a relation data change has an empty or invalid key");
        }
      }
    }
  } else if (EndpointOf(event.name()) != nullptr) {
    return bad("relationship events must carry their relation");
  }
  for (const auto& c : event.config_changes()) {
    if (c.key().empty() || c.key().find('\0') != std::string::npos) {
      return bad("a config change has an empty or invalid key");
    }
  }
  return absl::OkStatus();
}

void Engine::StageInbox(kb::Txn& txn, v1::Event& event) {
  event.set_id(next_event_id_);
  txn.Put(Space::kInbox, kb::EncodeU64(event.id()), event.SerializeAsString());
  txn.Put(Space::kMeta, kMetaNextEvent, kb::EncodeU64(event.id() + 1));
}

absl::StatusOr<EnqueueResult> Engine::Enqueue(v1::Event event) {
  std::vector<v1::Event> one;
  one.push_back(std::move(event));
  return EnqueueAll(std::move(one));
}

absl::StatusOr<EnqueueResult> Engine::EnqueueAll(std::vector<v1::Event> events) {
  if (run_) return absl::FailedPreconditionError("events cannot be enqueued during a run");
  if (events.empty()) return absl::InvalidArgumentError("no events to enqueue");
  for (const v1::Event& e : events) RETURN_IF_ERROR(ValidateEvent(e));
  kb::Txn txn(kb_);
  const uint64_t first = next_event_id_;
  for (v1::Event& e : events) {
    StageInbox(txn, e);
    ++next_event_id_;
  }
  absl::StatusOr<uint64_t> ticket = kb_->Commit(txn);
  if (!ticket.ok()) {
    next_event_id_ = first;
    return ticket.status();
  }
  inbox_depth_ += events.size();
  return EnqueueResult{events.back().id(), *ticket};
}

absl::StatusOr<EnqueueResult> Engine::ChangeConfig(const std::map<std::string, std::string>& set,
                                                   const std::vector<std::string>& unset) {
  if (run_) return absl::FailedPreconditionError("config cannot change during a run");
  auto bad_key = [](const std::string& k) {
    return k.empty() || k.find('\0') != std::string::npos;
  };
  for (const auto& [k, v] : set) {
    if (bad_key(k)) return absl::InvalidArgumentError("a config key is empty or has a NUL byte");
  }
  for (const auto& k : unset) {
    if (bad_key(k)) return absl::InvalidArgumentError("a config key is empty or has a NUL byte");
  }
  // The queued config.changed events, oldest first, and the config they lead to.
  std::vector<v1::Event> queued;
  std::map<std::string, std::string> pending = config_;
  absl::Status parse;
  RETURN_IF_ERROR(kb_->Scan(Space::kInbox, "", [&](absl::string_view, absl::string_view bytes) {
    v1::Event e;
    if (!e.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
      parse =
          absl::DataLossError(absl::StrCat("agent ", kb_->agent(), ": inbox event does not parse"));
      return false;
    }
    if (e.name() != "config.changed") return true;
    for (const auto& c : e.config_changes()) {
      if (c.deleted()) {
        pending.erase(c.key());
      } else {
        pending[c.key()] = c.value();
      }
    }
    queued.push_back(std::move(e));
    return true;
  }));
  RETURN_IF_ERROR(parse);
  std::map<std::string, std::string> want = pending;
  for (const auto& k : unset) want.erase(k);
  for (const auto& [k, v] : set) want[k] = v;
  if (want == pending) return EnqueueResult{};
  // The whole change from the committed config.
  v1::Event change;
  change.set_name("config.changed");
  change.set_source("api");
  for (const auto& [k, v] : want) {
    auto it = config_.find(k);
    if (it != config_.end() && it->second == v) continue;
    v1::BagChange* c = change.add_config_changes();
    c->set_key(k);
    c->set_value(v);
  }
  for (const auto& [k, v] : config_) {
    if (want.contains(k)) continue;
    v1::BagChange* c = change.add_config_changes();
    c->set_key(k);
    c->set_deleted(true);
  }
  if (queued.empty()) return Enqueue(std::move(change));
  kb::Txn txn(kb_);
  for (size_t i = 0; i < queued.size(); ++i) {
    v1::Event& e = queued[i];
    e.clear_config_changes();
    if (i == 0) *e.mutable_config_changes() = change.config_changes();
    txn.Put(Space::kInbox, kb::EncodeU64(e.id()), e.SerializeAsString());
  }
  const bool retry_now = failure_ && failure_->event_id() == queued[0].id();
  if (retry_now) {
    v1::RunFailure f = *failure_;
    f.set_next_retry_unix_ms(absl::ToUnixMillis(clock_->Now()));
    txn.Put(Space::kMeta, kMetaFailure, f.SerializeAsString());
  }
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  if (retry_now) failure_->set_next_retry_unix_ms(absl::ToUnixMillis(clock_->Now()));
  return EnqueueResult{queued[0].id(), ticket};
}

absl::StatusOr<EnqueueResult> Engine::EnqueueFromPeer(v1::Event event, uint64_t sequence) {
  if (run_) return absl::FailedPreconditionError("events cannot be enqueued during a run");
  if (!event.has_relation() || event.relation().remote_unit().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("agent ", kb_->agent(), ": a peer event must name its relation and sender"));
  }
  RETURN_IF_ERROR(ValidateEvent(event));
  const auto& rc = event.relation();
  const std::string cursor = CursorKey("in", rc.relation_id(), rc.remote_unit());
  ASSIGN_OR_RETURN(auto bytes, kb_->Get(Space::kCursor, cursor));
  uint64_t last = 0;
  if (bytes) {
    ASSIGN_OR_RETURN(last, kb::DecodeU64(*bytes));
  }
  if (sequence <= last) return EnqueueResult{0, 0, true};
  if (sequence != last + 1) {
    return absl::OutOfRangeError(absl::StrCat(
        "agent ", kb_->agent(), ": relation ", rc.relation_id(), " from ", rc.remote_unit(),
        ": sequence ", sequence, " leaves a gap; expected ", last + 1));
  }
  kb::Txn txn(kb_);
  StageInbox(txn, event);
  txn.Put(Space::kCursor, cursor, kb::EncodeU64(sequence));
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  ++next_event_id_;
  ++inbox_depth_;
  return EnqueueResult{event.id(), ticket, false};
}

absl::StatusOr<EnqueueResult> Engine::EnqueueTimer(absl::string_view name) {
  if (run_) return absl::FailedPreconditionError("events cannot be enqueued during a run");
  v1::Event event;
  event.set_name(absl::StrCat("timer.", name));
  event.set_source("timer");
  kb::Txn txn(kb_);
  StageInbox(txn, event);
  txn.Delete(Space::kMeta, MetaKey("timer", name));
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  timers_.erase(std::string(name));
  ++next_event_id_;
  ++inbox_depth_;
  return EnqueueResult{event.id(), ticket};
}

absl::StatusOr<uint64_t> Engine::Acknowledge(absl::string_view destination,
                                             absl::string_view relation_id, uint64_t sequence) {
  if (run_) return absl::FailedPreconditionError("acknowledgements are applied between runs");
  auto it = unacked_.find({std::string(destination), std::string(relation_id)});
  if (it == unacked_.end()) return 0;
  auto& pending = it->second;
  size_t removed = 0;
  kb::Txn txn(kb_);
  for (auto e = pending.begin(); e != pending.end() && e->first <= sequence; ++e, ++removed) {
    txn.Delete(Space::kOutbox, OutboxKey(destination, e->second));
  }
  if (removed == 0) return 0;
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  pending.erase(pending.begin(), pending.begin() + static_cast<ptrdiff_t>(removed));
  if (pending.empty()) unacked_.erase(it);
  outbox_size_ -= removed;
  return ticket;
}

std::set<std::string> Engine::OutboxDestinations() const {
  std::set<std::string> out;
  for (const auto& [key, pending] : unacked_) out.insert(key.first);
  return out;
}

absl::StatusOr<RunResult> Engine::RunOnce() {
  RunResult result;
  if (inbox_depth_ == 0) return result;
  const std::string key = kb::EncodeU64(inbox_head_);
  ASSIGN_OR_RETURN(auto bytes, kb_->Get(Space::kInbox, key));
  if (!bytes) {
    return absl::DataLossError(absl::StrCat("knowledge base ", kb_->store()->path(), ", agent ",
                                            kb_->agent(), ": inbox event ", inbox_head_,
                                            " is missing"));
  }
  uint32_t attempt = 1;
  if (failure_ && failure_->event_id() == inbox_head_) {
    attempt = failure_->attempt() + 1;
    absl::Time due = absl::FromUnixMillis(failure_->next_retry_unix_ms());
    if (clock_->Now() < due) {
      result.outcome = RunOutcome::kNotDue;
      result.next_attempt = due;
      return result;
    }
  }
  v1::Event event;
  RETURN_IF_ERROR(Parse(*kb_, "inbox event", absl::StrCat(inbox_head_), *bytes, event));
  return Execute(event, attempt);
}

absl::StatusOr<RunResult> Engine::RunUntilIdle() {
  RunResult last;
  uint64_t ticket = 0;
  for (;;) {
    ASSIGN_OR_RETURN(RunResult r, RunOnce());
    if (r.ticket) ticket = r.ticket;
    if (r.outcome == RunOutcome::kIdle || r.outcome == RunOutcome::kNotDue ||
        r.outcome == RunOutcome::kFailed) {
      if (r.outcome != RunOutcome::kIdle || last.outcome == RunOutcome::kIdle) last = r;
      break;
    }
    last = r;
  }
  if (ticket) RETURN_IF_ERROR(kb_->store()->WaitDurable(ticket));
  return last;
}

absl::StatusOr<RunResult> Engine::Execute(const v1::Event& event, uint32_t attempt) {
  const absl::Time start = clock_->Now();
  const uint64_t run_number = run_counter_ + 1;
  txn_->Clear();
  run_ = std::make_unique<Run>(this, event);
  v1::Trace trace;
  trace.set_run(run_number);
  *trace.mutable_trigger() = event;
  trace.set_attempt(attempt);
  trace.set_started_unix_ns(absl::ToUnixNanos(start));

  auto fail = [&](std::string handler, std::string message) {
    trace.set_duration_ns(absl::ToInt64Nanoseconds(clock_->Now() - start));
    return FailRun(event, attempt, std::move(handler), std::move(message), trace);
  };

  absl::Status applied = ApplyConfigChange(event);
  if (applied.ok()) applied = ApplyRelationChange(event);
  if (absl::Status s = applied; !s.ok()) {
    if (absl::IsInvalidArgument(s) || absl::IsNotFound(s))
      return fail("", std::string(s.message()));
    run_.reset();
    RETURN_IF_ERROR(Load());
    return s;
  }
  FireEvent(event.name(), nullptr);
  Retest();
  while (!run_->queue.empty()) {
    auto [h, gen] = run_->queue.front();
    run_->queue.pop_front();
    if (!h->in_queue || h->queue_gen != gen) continue;
    h->in_queue = false;
    if (run_->executions >= options_.max_handler_executions) {
      // About to exceed the bound: the run does not converge.
      std::vector<const Handler*> cycled;
      for (const auto& hp : handlers_) {
        if (hp->executions > 1) cycled.push_back(hp.get());
      }
      std::stable_sort(cycled.begin(), cycled.end(), [](const Handler* a, const Handler* b) {
        return a->executions > b->executions;
      });
      if (cycled.size() > 10) cycled.resize(10);
      std::string names = absl::StrJoin(cycled, ", ", [](std::string* out, const Handler* c) {
        absl::StrAppend(out, c->name, " (", c->executions, " runs)");
      });
      return fail("", absl::StrCat("run exceeded ", options_.max_handler_executions,
                                   " handler executions without converging; handlers that cycled: ",
                                   names.empty() ? "none repeated" : names));
    }
    if (absl::Status s = RunHandler(h); !s.ok()) return fail(h->name, std::string(s.message()));
    Retest();
  }
  RunResult result;
  result.handler_time = clock_->Now() - start;
  result.handlers_run = run_->executions;
  // The stored trace says how long the run took up to its commit (the commit itself is written
  // with it, so it cannot count itself).
  trace.set_duration_ns(absl::ToInt64Nanoseconds(result.handler_time));
  auto ticket = CommitRun(event, trace);
  if (!ticket.ok()) {
    run_.reset();
    txn_->Clear();
    RETURN_IF_ERROR(Load());
    return ticket.status();
  }
  trace.set_duration_ns(absl::ToInt64Nanoseconds(clock_->Now() - start));
  result.outcome = RunOutcome::kCommitted;
  result.run = run_number;
  result.ticket = *ticket;
  result.trace = std::make_shared<const v1::Trace>(std::move(trace));
  return result;
}

absl::Status Engine::ApplyConfigChange(const v1::Event& event) {
  for (const auto& c : event.config_changes()) {
    if (c.deleted()) {
      config_.erase(c.key());
      txn_->Delete(Space::kMeta, MetaKey("cfg", c.key()));
    } else {
      config_[c.key()] = c.value();
      txn_->Put(Space::kMeta, MetaKey("cfg", c.key()), c.value());
    }
  }
  return absl::OkStatus();
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

void Engine::ChangeFact(FactState& f, bool set, absl::string_view value) {
  if (f.set == set && (!set || f.value == value)) return;
  if (!f.touched) {
    f.touched = true;
    f.old_set = f.set;
    f.old_value = f.value;
    run_->touched.push_back(&f);
  }
  const bool was = f.set;
  f.set = set;
  if (set) {
    f.value.assign(value.data(), value.size());
  } else {
    f.value.clear();
  }
  f.version = ++change_clock_;
  if (was != set) {
    const int d = set ? -1 : 1;
    for (Handler* h : f.when_of) h->unsatisfied += d;
    for (Handler* h : f.when_not_of) h->unsatisfied -= d;
  }
  for (Handler* h : f.fact_only_of) {
    h->dirty = true;
    if (h->ran) h->dirty_cause = &f;  // a handler that never ran stays "never ran"
    pending_.push_back(h);
  }
  if (!f.changed_since_retest) {
    f.changed_since_retest = true;
    run_->changed.push_back(&f);
  }
  if (run_->current_changes != nullptr) {
    v1::FactChange& c = run_->current_changes->emplace_back();
    c.set_name(f.name);
    c.set_set(set);
    if (set) c.set_value(f.value);
  }
}

absl::Status Engine::SetFact(absl::string_view name, absl::string_view value, bool derived) {
  if (!run_) return absl::FailedPreconditionError("facts change only inside a run");
  FactState& f = Intern(name);
  if (f.derived && !derived) {
    return absl::InvalidArgumentError(
        absl::StrCat("fact '", name, "' is a relationship fact, derived from relation data"));
  }
  if (name.empty()) return absl::InvalidArgumentError("fact name is empty");
  ChangeFact(f, true, value);
  return absl::OkStatus();
}

absl::Status Engine::ClearFact(absl::string_view name, bool derived) {
  if (!run_) return absl::FailedPreconditionError("facts change only inside a run");
  auto it = facts_.find(name);
  if (it == facts_.end()) {
    if (!derived && EndpointOf(name) != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("fact '", name, "' is a relationship fact, derived from relation data"));
    }
    return absl::OkStatus();
  }
  if (it->second.derived && !derived) {
    return absl::InvalidArgumentError(
        absl::StrCat("fact '", name, "' is a relationship fact, derived from relation data"));
  }
  ChangeFact(it->second, false, "");
  return absl::OkStatus();
}

void Engine::Queue(Handler* h, int reason_kind, absl::string_view reason_event) {
  h->in_queue = true;
  ++h->queue_gen;
  run_->queue.emplace_back(h, h->queue_gen);
  StepRecord& s = run_->steps.emplace_back();
  s.kind = v1::TraceStep::KIND_QUEUED;
  s.handler = h;
  s.reason = static_cast<Reason>(reason_kind);
  s.fact = h->dirty_cause;
  if (!reason_event.empty()) s.text = std::string(reason_event);
}

std::string Engine::FailedPrecondition(const Handler& h) const {
  for (const FactState* f : h.when) {
    if (!f->set) return absl::StrCat("when ", f->name, ": not set");
  }
  for (const FactState* f : h.when_not) {
    if (f->set) return absl::StrCat("when_not ", f->name, ": set");
  }
  return "preconditions hold";
}

void Engine::FireEvent(absl::string_view event, const Handler* by) {
  StepRecord& fired = run_->steps.emplace_back();
  fired.kind = v1::TraceStep::KIND_FIRED;
  fired.handler = by;
  fired.text = std::string(event);
  auto it = by_event_.find(event);
  if (it == by_event_.end()) return;
  for (Handler* h : it->second) {
    if (h->in_queue) continue;
    if (h->unsatisfied == 0) {
      Queue(h, static_cast<int>(Reason::kOnEvent), event);
    } else {
      StepRecord& s = run_->steps.emplace_back();
      s.kind = v1::TraceStep::KIND_SKIPPED;
      s.handler = h;
      s.reason = Reason::kText;
      s.text = absl::StrCat("on ", event, ", but ", FailedPrecondition(*h));
    }
  }
}

void Engine::Retest() {
  for (FactState* f : run_->changed) {
    f->changed_since_retest = false;
    for (auto* list : {&f->when_of, &f->when_not_of}) {
      for (Handler* h : *list) {
        if (!h->in_queue || h->unsatisfied == 0) continue;
        h->in_queue = false;
        ++h->queue_gen;
        StepRecord& s = run_->steps.emplace_back();
        s.kind = v1::TraceStep::KIND_DROPPED;
        s.handler = h;
        s.reason = Reason::kText;
        s.text = FailedPrecondition(*h);
      }
    }
  }
  run_->changed.clear();
  if (!run_->fired.empty()) {
    std::vector<std::string> fired;
    fired.swap(run_->fired);
    for (const auto& e : fired) FireEvent(e, run_->current);
  }
  if (pending_.empty()) return;
  if (pending_.size() > 1) {
    std::sort(pending_.begin(), pending_.end(),
              [](const Handler* a, const Handler* b) { return a->index < b->index; });
    pending_.erase(std::unique(pending_.begin(), pending_.end()), pending_.end());
  }
  for (Handler* h : pending_) {
    if (h->dirty && h->unsatisfied == 0 && !h->in_queue) {
      Queue(h, static_cast<int>(h->dirty_cause ? Reason::kFactChanged : Reason::kNeverRan), "");
    }
  }
  pending_.clear();
}

absl::Status Engine::RunHandler(Handler* h) {
  run_->current = h;
  if (h->executions++ == 0) run_->executed.push_back(h);
  ++run_->executions;
  std::vector<v1::FactChange> changes;
  run_->current_changes = &changes;
  txn_->SetSavePoint();
  const absl::Time t0 = clock_->Now();
  absl::Status status = h->action->Run(run_->ctx);
  const int64_t ns = absl::ToInt64Nanoseconds(clock_->Now() - t0);
  run_->current_changes = nullptr;
  StepRecord& s = run_->steps.emplace_back();
  s.handler = h;
  s.duration_ns = ns;
  s.changes = std::move(changes);
  s.fired = run_->fired;
  if (!status.ok()) {
    s.kind = v1::TraceStep::KIND_FAILED;
    s.error = std::string(status.message());
    RETURN_IF_ERROR(txn_->RollbackToSavePoint());
    return status;
  }
  s.kind = v1::TraceStep::KIND_RAN;
  RETURN_IF_ERROR(txn_->PopSavePoint());
  if (h->fact_only) {
    h->dirty = false;
    h->dirty_cause = nullptr;
    h->ran = true;
    h->last_ran = change_clock_;
    if (!h->ran_in_run) {
      h->ran_in_run = true;
      run_->ran.push_back(h);
    }
  }
  return absl::OkStatus();
}

void Engine::BuildTrace(v1::Trace& trace) const {
  for (const StepRecord& r : run_->steps) {
    v1::TraceStep* s = trace.add_steps();
    s->set_kind(r.kind);
    if (r.handler) s->set_handler(r.handler->name);
    switch (r.kind) {
      case v1::TraceStep::KIND_FIRED:
        s->set_event(r.text);
        s->set_reason(r.handler ? absl::StrCat("fired by ", r.handler->name) : "trigger");
        break;
      case v1::TraceStep::KIND_QUEUED:
        switch (r.reason) {
          case Reason::kOnEvent:
            s->set_reason(absl::StrCat("on ", r.text));
            break;
          case Reason::kNeverRan:
            s->set_reason("dirty: never ran");
            break;
          case Reason::kFactChanged:
            s->set_reason(absl::StrCat("dirty: ", r.fact->name, " changed"));
            break;
          default:
            s->set_reason(r.text);
        }
        break;
      case v1::TraceStep::KIND_RAN:
      case v1::TraceStep::KIND_FAILED:
        for (const auto& c : r.changes) *s->add_facts_changed() = c;
        for (const auto& e : r.fired) s->add_events_fired(e);
        s->set_duration_ns(r.duration_ns);
        s->set_error(r.error);
        break;
      default:
        s->set_reason(r.text);
    }
  }
  std::vector<const FactState*> net;
  for (const FactState* f : run_->touched) {
    if (f->set != f->old_set || f->value != f->old_value) net.push_back(f);
  }
  std::sort(net.begin(), net.end(),
            [](const FactState* a, const FactState* b) { return a->name < b->name; });
  for (const FactState* f : net) {
    v1::FactChange* c = trace.add_facts_changed();
    c->set_name(f->name);
    c->set_set(f->set);
    c->set_value(f->value);
  }
  trace.set_handlers_run(run_->executions);
  for (const auto& [k, v] : run_->outputs) (*trace.mutable_outputs())[k] = v;
}

absl::Status Engine::StageOutbox(uint64_t run_number, v1::Trace& trace, uint64_t& next_outbox) {
  auto stage = [&](const v1::RelationRecord& rel, const std::string& destination,
                   v1::RelationEventKind kind, auto fill) -> absl::Status {
    const std::string cursor = CursorKey("out", rel.relation_id(), destination);
    ASSIGN_OR_RETURN(auto seq_bytes, txn_->Get(Space::kCursor, cursor));
    uint64_t seq = 0;
    if (seq_bytes) {
      ASSIGN_OR_RETURN(seq, kb::DecodeU64(*seq_bytes));
    }
    if (kind == v1::RELATION_EVENT_KIND_CHANGED && seq == 0) {
      kind = v1::RELATION_EVENT_KIND_JOINED;  // the first event to a unit introduces this one
    }
    if (kind == v1::RELATION_EVENT_KIND_DEPARTED && seq == 0) {
      return absl::OkStatus();  // never introduced: nothing to take back
    }
    v1::OutboxEntry entry;
    entry.set_id(next_outbox++);
    entry.set_relation_id(rel.relation_id());
    entry.set_endpoint(rel.endpoint());
    entry.set_sequence(++seq);
    entry.set_kind(kind);
    entry.set_sender_unit(spec_.unit);
    entry.set_sender_service(spec_.service);
    entry.set_commit_run(run_number);
    entry.set_destination(destination);
    entry.set_receiver_endpoint(rel.remote_endpoint());
    entry.set_interface(rel.interface());
    RETURN_IF_ERROR(fill(entry));
    txn_->Put(Space::kCursor, cursor, kb::EncodeU64(seq));
    txn_->Put(Space::kOutbox, OutboxKey(destination, entry.id()), entry.SerializeAsString());
    ++outbox_size_;
    run_->staged.push_back({destination, rel.relation_id(), seq, entry.id()});
    *trace.add_messages() = std::move(entry);
    return absl::OkStatus();
  };
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
    return txn_->Scan(Space::kBag, BagPrefix(id, bag),
                      [&](absl::string_view k, absl::string_view v) {
                        v1::BagChange* c = out->Add();
                        c->set_key(std::string(k));
                        c->set_value(std::string(v));
                        return true;
                      });
  };

  std::set<std::string> touched = run_->relations_changed;
  for (const auto& [id, m] : run_->local_unit) touched.insert(id);
  for (const auto& [id, m] : run_->local_service) touched.insert(id);
  for (const auto& id : touched) {
    const v1::RelationRecord& rel = relations_.at(id);
    if (rel.gone() || run_->broken.contains(id)) continue;
    auto unit_it = run_->local_unit.find(id);
    auto service_it = run_->local_service.find(id);
    const bool changed =
        unit_it != run_->local_unit.end() || service_it != run_->local_service.end();
    for (const auto& destination : rel.targets()) {
      ASSIGN_OR_RETURN(auto known, txn_->Get(Space::kCursor, CursorKey("out", id, destination)));
      if (known && !changed) continue;
      RETURN_IF_ERROR(stage(rel, destination, v1::RELATION_EVENT_KIND_CHANGED,
                            [&](v1::OutboxEntry& e) -> absl::Status {
                              if (e.kind() == v1::RELATION_EVENT_KIND_JOINED) {
                                // An introduction carries the whole of this unit's data.
                                RETURN_IF_ERROR(add_bag(id, "lu", e.mutable_unit_changes()));
                                return add_bag(id, "ls", e.mutable_service_changes());
                              }
                              if (unit_it != run_->local_unit.end()) {
                                add_changes(unit_it->second, e.mutable_unit_changes());
                              }
                              if (service_it != run_->local_service.end()) {
                                add_changes(service_it->second, e.mutable_service_changes());
                              }
                              return absl::OkStatus();
                            }));
    }
  }
  for (const auto& [id, unit] : run_->departs) {
    RETURN_IF_ERROR(stage(relations_.at(id), unit, v1::RELATION_EVENT_KIND_DEPARTED,
                          [](v1::OutboxEntry&) { return absl::OkStatus(); }));
  }
  // A broken relation's unacknowledged events stay in the outbox: receivers need every sequence
  // number, and they ignore events about a relation they no longer have.
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Engine::CommitRun(const v1::Event& event, v1::Trace& trace) {
  const uint64_t run_number = run_counter_ + 1;
  for (const FactState* f : run_->touched) {
    v1::FactRecord rec;
    rec.set_set(f->set);
    rec.set_value(f->value);
    rec.set_version(f->version);
    txn_->PutUnindexed(Space::kFact, f->name, rec.SerializeAsString());
  }
  for (Handler* h : run_->ran)
    txn_->PutUnindexed(Space::kHandler, h->name, kb::EncodeU64(h->last_ran));

  uint64_t next_outbox = next_outbox_id_;
  const size_t outbox_before = outbox_size_;
  RETURN_IF_ERROR(StageOutbox(run_number, trace, next_outbox));
  for (const auto& id : run_->relations_changed) {
    v1::RelationRecord& rel = relations_.at(id);
    if (run_->broken.contains(id)) {
      rel.set_gone(true);
      RETURN_IF_ERROR(
          txn_->DeletePrefix(Space::kBag, absl::StrCat(id, absl::string_view("\0", 1))));
    }
    txn_->Put(Space::kRelation, id, rel.SerializeAsString());
  }
  // A relation left without remote units is broken in a run of its own, queued atomically.
  std::vector<v1::Event> follow_ups;
  for (const auto& id : run_->follow_up_broken) {
    const v1::RelationRecord& rel = relations_.at(id);
    if (run_->broken.contains(id)) continue;
    v1::Event& e = follow_ups.emplace_back();
    e.set_name(absl::StrCat(rel.endpoint(), ".broken"));
    e.set_source("engine");
    e.mutable_relation()->set_relation_id(id);
    e.mutable_relation()->set_endpoint(rel.endpoint());
    e.mutable_relation()->set_remote_service(rel.remote_service());
    e.mutable_relation()->set_kind(v1::RELATION_EVENT_KIND_BROKEN);
  }
  const uint64_t first_follow_up = next_event_id_;
  for (auto& e : follow_ups) {
    StageInbox(*txn_, e);
    ++next_event_id_;
  }
  txn_->PutUnindexed(Space::kMeta, kMetaClock, kb::EncodeU64(change_clock_));
  txn_->PutUnindexed(Space::kMeta, kMetaRun, kb::EncodeU64(run_number));
  if (next_outbox != next_outbox_id_) {
    txn_->PutUnindexed(Space::kMeta, kMetaNextOutbox, kb::EncodeU64(next_outbox));
  }
  txn_->DeleteUnindexed(Space::kInbox, kb::EncodeU64(event.id()));
  if (failure_) txn_->Delete(Space::kMeta, kMetaFailure);

  BuildTrace(trace);
  trace.set_result(v1::Trace::RESULT_COMMITTED);
  txn_->PutUnindexed(Space::kTrace, kb::EncodeU64(run_number), trace.SerializeAsString());
  if (run_number > options_.traces_kept) {
    txn_->DeleteUnindexed(Space::kTrace, kb::EncodeU64(run_number - options_.traces_kept));
  }
  absl::StatusOr<uint64_t> committed = kb_->Commit(*txn_);
  if (!committed.ok()) {
    next_event_id_ = first_follow_up;
    outbox_size_ = outbox_before;
    return committed.status();
  }
  const uint64_t ticket = *committed;

  // Committed: the staged state becomes the agent's state.
  for (const auto& e : run_->staged) {
    unacked_[{e.destination, e.relation}].emplace_back(e.sequence, e.id);
  }
  run_counter_ = run_number;
  next_outbox_id_ = next_outbox;
  ++inbox_head_;
  --inbox_depth_;
  inbox_depth_ += follow_ups.size();
  failure_.reset();
  for (FactState* f : run_->touched) f->touched = false;
  for (Handler* h : run_->ran) h->ran_in_run = false;
  for (Handler* h : run_->executed) h->executions = 0;
  run_.reset();
  return ticket;
}

absl::StatusOr<RunResult> Engine::FailRun(const v1::Event& event, uint32_t attempt,
                                          std::string handler, std::string message,
                                          v1::Trace& trace) {
  const uint64_t run_number = run_counter_ + 1;
  BuildTrace(trace);
  trace.set_result(v1::Trace::RESULT_ROLLED_BACK);
  trace.set_error(handler.empty() ? message : absl::StrCat("handler ", handler, ": ", message));
  run_.reset();
  txn_->Clear();
  // Everything the run staged in memory is discarded by reloading the committed state.
  RETURN_IF_ERROR(Load());

  absl::Duration delay = options_.retry_initial;
  for (uint32_t i = 1; i < attempt && delay < options_.retry_max; ++i) delay *= 2;
  delay = std::min(delay, options_.retry_max);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  delay -= delay * (options_.retry_jitter * unit(random_));
  const absl::Time next = clock_->Now() + delay;

  v1::RunFailure failure;
  failure.set_event_id(event.id());
  failure.set_event_name(event.name());
  failure.set_handler(handler);
  failure.set_message(message);
  failure.set_attempt(attempt);
  failure.set_next_retry_unix_ms(absl::ToUnixMillis(next));

  kb::Txn txn(kb_);
  txn.Put(Space::kMeta, kMetaFailure, failure.SerializeAsString());
  txn.Put(Space::kMeta, kMetaRun, kb::EncodeU64(run_number));
  txn.Put(Space::kTrace, kb::EncodeU64(run_number), trace.SerializeAsString());
  if (run_number > options_.traces_kept) {
    txn.Delete(Space::kTrace, kb::EncodeU64(run_number - options_.traces_kept));
  }
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  run_counter_ = run_number;
  failure_ = failure;

  RunResult result;
  result.outcome = RunOutcome::kFailed;
  result.run = run_number;
  result.ticket = ticket;
  result.next_attempt = next;
  result.trace = std::make_shared<const v1::Trace>(std::move(trace));
  return result;
}

absl::StatusOr<std::vector<v1::Trace>> Engine::Traces(size_t n) const {
  std::vector<v1::Trace> all;
  absl::Status parse_status;
  RETURN_IF_ERROR(kb_->Scan(Space::kTrace, "", [&](absl::string_view key, absl::string_view value) {
    v1::Trace t;
    parse_status = Parse(*kb_, "trace", absl::StrCat(kb::DecodeU64(key).value_or(0)), value, t);
    if (!parse_status.ok()) return false;
    all.push_back(std::move(t));
    return true;
  }));
  RETURN_IF_ERROR(parse_status);
  if (all.size() > n) all.erase(all.begin(), all.end() - static_cast<ptrdiff_t>(n));
  return all;
}

absl::StatusOr<std::vector<v1::OutboxEntry>> Engine::Outbox(absl::string_view destination) const {
  std::vector<v1::OutboxEntry> out;
  absl::Status parse_status;
  const std::string prefix =
      destination.empty() ? "" : absl::StrCat(destination, absl::string_view("\0", 1));
  RETURN_IF_ERROR(
      kb_->Scan(Space::kOutbox, prefix, [&](absl::string_view key, absl::string_view value) {
        v1::OutboxEntry e;
        parse_status = Parse(*kb_, "outbox entry", key, value, e);
        if (!parse_status.ok()) return false;
        out.push_back(std::move(e));
        return true;
      }));
  RETURN_IF_ERROR(parse_status);
  if (destination.empty()) {
    std::sort(out.begin(), out.end(),
              [](const v1::OutboxEntry& a, const v1::OutboxEntry& b) { return a.id() < b.id(); });
  }
  return out;
}

absl::StatusOr<std::vector<v1::OutboxEntry>> Engine::OutboxAfter(absl::string_view destination,
                                                                 uint64_t after, size_t limit,
                                                                 uint64_t through) const {
  std::vector<v1::OutboxEntry> out;
  absl::Status parse_status;
  const std::string prefix = absl::StrCat(destination, absl::string_view("\0", 1));
  RETURN_IF_ERROR(kb_->ScanFrom(Space::kOutbox, prefix, kb::EncodeU64(after + 1),
                                [&](absl::string_view key, absl::string_view value) {
                                  auto id = kb::DecodeU64(key);
                                  if (id.ok() && *id > through) return false;
                                  v1::OutboxEntry e;
                                  parse_status = Parse(*kb_, "outbox entry", key, value, e);
                                  if (!parse_status.ok()) return false;
                                  out.push_back(std::move(e));
                                  return out.size() < limit;
                                }));
  RETURN_IF_ERROR(parse_status);
  return out;
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

// RunContext.

const v1::Event& RunContext::event() const { return engine_->run_->event; }
const std::string& RunContext::handler() const { return engine_->run_->current->name; }

absl::Status RunContext::Set(absl::string_view fact, absl::string_view value) {
  return engine_->SetFact(fact, value, /*derived=*/false);
}

absl::Status RunContext::Clear(absl::string_view fact) {
  return engine_->ClearFact(fact, /*derived=*/false);
}

absl::Status RunContext::Fire(absl::string_view event) {
  RETURN_IF_ERROR(engine_->ValidateName(handler(), "fired event", event, true));
  if (engine_->EndpointOf(event) != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("handler '", handler(), "' cannot fire relationship event '", event, "'"));
  }
  engine_->run_->fired.emplace_back(event);
  return absl::OkStatus();
}

std::vector<const v1::RelationRecord*> RunContext::Relations(absl::string_view endpoint) const {
  std::vector<const v1::RelationRecord*> out;
  for (const auto& [id, rel] : engine_->relations_) {
    if (rel.gone() || engine_->run_->broken.contains(id)) continue;
    if (endpoint.empty() || rel.endpoint() == endpoint) out.push_back(&rel);
  }
  return out;
}

absl::StatusOr<std::map<std::string, std::string>> RunContext::Bag(absl::string_view relation_id,
                                                                   absl::string_view bag) const {
  std::map<std::string, std::string> out;
  RETURN_IF_ERROR(engine_->txn_->Scan(Space::kBag, BagPrefix(relation_id, bag),
                                      [&](absl::string_view k, absl::string_view v) {
                                        out.emplace(k, v);
                                        return true;
                                      }));
  return out;
}

absl::Status RunContext::SetData(absl::string_view relation_id, absl::string_view key,
                                 absl::string_view value, bool service) {
  return engine_->SetLocalData(relation_id, key, value, service);
}

absl::Status RunContext::DeleteData(absl::string_view relation_id, absl::string_view key,
                                    bool service) {
  return engine_->SetLocalData(relation_id, key, std::nullopt, service);
}

std::optional<std::string> RunContext::Config(absl::string_view key) const {
  auto it = engine_->config_.find(std::string(key));
  if (it == engine_->config_.end()) return std::nullopt;
  return it->second;
}

absl::Status RunContext::SetTimer(absl::string_view name, absl::Duration delay) {
  RETURN_IF_ERROR(engine_->ValidateName(handler(), "timer", absl::StrCat("timer.", name), true));
  if (name.empty()) return absl::InvalidArgumentError("timer name is empty");
  const absl::Time due = engine_->clock_->Now() + delay;
  engine_->timers_[std::string(name)] = due;
  engine_->txn_->Put(Space::kMeta, MetaKey("timer", name),
                     kb::EncodeU64(static_cast<uint64_t>(absl::ToUnixMillis(due))));
  return absl::OkStatus();
}

absl::Status RunContext::Output(absl::string_view key, absl::string_view value) {
  if (key.empty() || key.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("handler ", handler(), ": an output key is empty or has a NUL byte"));
  }
  engine_->run_->outputs[std::string(key)] = std::string(value);
  return absl::OkStatus();
}

absl::Status RunContext::SetStatus(v1::WorkloadState state, absl::string_view message) {
  engine_->status_.set_state(state);
  engine_->status_.set_message(std::string(message));
  engine_->txn_->Put(Space::kMeta, kMetaStatus, engine_->status_.SerializeAsString());
  return absl::OkStatus();
}

}  // namespace parley::engine
