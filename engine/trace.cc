#include "engine/trace.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/key_layout.h"
#include "engine/outbox.h"

namespace parley::engine {

void BuildTrace(const std::vector<StepRecord>& steps, const std::vector<FactState*>& touched,
                uint32_t executions, const std::map<std::string, std::string>& outputs,
                v1::Trace& trace) {
  for (const StepRecord& r : steps) {
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
        s->set_retry_later_ms(absl::ToInt64Milliseconds(r.retry_later));
        break;
      default:
        s->set_reason(r.text);
    }
  }
  std::vector<const FactState*> net;
  for (const FactState* f : touched) {
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
  trace.set_handlers_run(executions);
  for (const auto& [k, v] : outputs) (*trace.mutable_outputs())[k] = v;
}

void StageTrace(kb::Txn& txn, uint64_t run, const v1::Trace& trace, uint32_t kept) {
  txn.PutUnindexed(kb::Space::kTrace, keys::Trace(run), trace.SerializeAsString());
  if (run > kept) txn.DeleteUnindexed(kb::Space::kTrace, keys::Trace(run - kept));
}

absl::StatusOr<std::vector<v1::Trace>> ReadTraces(const kb::Kb& kb, size_t n) {
  std::vector<v1::Trace> all;
  absl::Status parse_status;
  RETURN_IF_ERROR(
      kb.Scan(kb::Space::kTrace, "", [&](absl::string_view key, absl::string_view value) {
        v1::Trace t;
        parse_status =
            ParseRecord(kb, "trace", absl::StrCat(kb::DecodeU64(key).value_or(0)), value, t);
        if (!parse_status.ok()) return false;
        for (v1::OutboxEntry& m : *t.mutable_messages()) UpgradeOutboxEntry(m);
        all.push_back(std::move(t));
        return true;
      }));
  RETURN_IF_ERROR(parse_status);
  if (all.size() > n) all.erase(all.begin(), all.end() - static_cast<ptrdiff_t>(n));
  return all;
}

}  // namespace parley::engine
