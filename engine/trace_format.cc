#include "engine/trace_format.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"

namespace parley::engine {
namespace {

std::string FormatChange(const v1::FactChange& c) {
  if (!c.set()) return absl::StrCat("-", c.name());
  if (c.value().empty()) return absl::StrCat("+", c.name());
  return absl::StrCat("+", c.name(), "=", c.value());
}

std::string FormatDuration(int64_t ns) {
  if (ns < 10'000) return absl::StrCat(ns, " ns");
  if (ns < 10'000'000) return absl::StrFormat("%.1f us", ns / 1e3);
  return absl::StrFormat("%.1f ms", ns / 1e6);
}

}  // namespace

std::string FormatTrace(const v1::Trace& t) {
  std::string out;
  const auto& e = t.trigger();
  absl::StrAppend(&out, "run ", t.run(), ": event ", e.id(), " '", e.name(), "'");
  if (e.has_relation()) {
    absl::StrAppend(&out, " (relation ", e.relation().relation_id(), ", remote unit ",
                    e.relation().remote_unit().empty() ? "-" : e.relation().remote_unit());
    if (e.relation().sequence() != 0) absl::StrAppend(&out, ", seq ", e.relation().sequence());
    absl::StrAppend(&out, ")");
  }
  if (!e.source().empty()) absl::StrAppend(&out, " from ", e.source());
  if (!e.retry_handler().empty()) {
    absl::StrAppend(&out, ", for ", e.retry_handler(), " (asked in event ", e.retry_of(), ")");
  }
  if (t.result() == v1::Trace::RESULT_SKIPPED) {
    absl::StrAppend(&out, "\n  SKIPPED by ", t.resolved_by().empty() ? "-" : t.resolved_by(),
                    " after ", t.attempt(),
                    t.attempt() == 1 ? " failed attempt" : " failed attempts",
                    ": not applied\n  last error: ", t.error(), "\n");
    return out;
  }
  if (t.result() == v1::Trace::RESULT_CANCELLED) {
    absl::StrAppend(&out, "\n  CANCELLED after ", t.attempt() - 1,
                    t.attempt() == 2 ? " failed attempt" : " failed attempts", "\n  ", t.error(),
                    "\n");
    if (t.steps_size() == 0) return out;
  } else if (t.attempt() > 1) {
    absl::StrAppend(&out, ", attempt ", t.attempt());
  }
  if (e.folded_into() != 0) {
    absl::StrAppend(&out, "\n  folded into the retry of event ", e.folded_into(),
                    ": nothing left to apply\n");
    return out;
  }
  if (t.folded_size() > 0) {
    absl::StrAppend(&out, ", with the newer data of event", t.folded_size() == 1 ? " " : "s ",
                    absl::StrJoin(t.folded(), ", "));
  }
  if (!t.resolved_by().empty()) absl::StrAppend(&out, ", retried at once for ", t.resolved_by());
  if (t.result() != v1::Trace::RESULT_CANCELLED) absl::StrAppend(&out, "\n");
  for (const auto& s : t.steps()) {
    switch (s.kind()) {
      case v1::TraceStep::KIND_FIRED:
        absl::StrAppend(&out, "  fire    ", s.event(), "  (", s.reason(), ")\n");
        break;
      case v1::TraceStep::KIND_QUEUED:
        absl::StrAppend(&out, "  queue   ", s.handler(), "  (", s.reason(), ")\n");
        break;
      case v1::TraceStep::KIND_SKIPPED:
        absl::StrAppend(&out, "  skip    ", s.handler(), "  (", s.reason(), ")\n");
        break;
      case v1::TraceStep::KIND_DROPPED:
        absl::StrAppend(&out, "  drop    ", s.handler(), "  (", s.reason(), ")\n");
        break;
      case v1::TraceStep::KIND_RAN:
      case v1::TraceStep::KIND_FAILED: {
        absl::StrAppend(&out, s.kind() == v1::TraceStep::KIND_RAN ? "  run     " : "  FAIL    ",
                        s.handler(), "  ", FormatDuration(s.duration_ns()));
        if (s.facts_changed_size() > 0) {
          absl::StrAppend(
              &out, "  facts ",
              absl::StrJoin(s.facts_changed(), " ", [](std::string* o, const v1::FactChange& c) {
                o->append(FormatChange(c));
              }));
        }
        if (s.events_fired_size() > 0) {
          absl::StrAppend(&out, "  fires ", absl::StrJoin(s.events_fired(), " "));
        }
        if (s.retry_later_ms() > 0) {
          absl::StrAppend(&out, "  retries later, in ",
                          absl::FormatDuration(absl::Milliseconds(s.retry_later_ms())));
        }
        if (!s.error().empty()) absl::StrAppend(&out, "  error: ", s.error());
        absl::StrAppend(&out, "\n");
        break;
      }
      default:
        break;
    }
  }
  for (const auto& m : t.messages()) {
    const v1::RelationEvent& e = m.event();
    absl::StrAppend(&out, "  send    relation ", e.relation_id(), " seq ", e.sequence(),
                    m.destination().empty() ? "" : " to ", m.destination(), ": ",
                    absl::StrJoin(e.unit_changes(), " ",
                                  [](std::string* o, const v1::BagChange& c) {
                                    absl::StrAppend(o, c.key(), c.deleted() ? " deleted" : "=",
                                                    c.deleted() ? "" : c.value());
                                  }),
                    "\n");
  }
  absl::StrAppend(&out, "  ",
                  t.result() == v1::Trace::RESULT_ROLLED_BACK ? "rolled back" : "committed", ": ",
                  t.handlers_run(), " handlers, ", FormatDuration(t.duration_ns()));
  if (t.facts_changed_size() > 0) {
    absl::StrAppend(
        &out, t.result() == v1::Trace::RESULT_ROLLED_BACK ? ", discarded " : ", facts ",
        absl::StrJoin(t.facts_changed(), " ",
                      [](std::string* o, const v1::FactChange& c) { o->append(FormatChange(c)); }));
  }
  if (t.outputs_size() > 0) {
    std::map<std::string, std::string> outputs(t.outputs().begin(), t.outputs().end());
    absl::StrAppend(&out, ", output ", absl::StrJoin(outputs, " ", absl::PairFormatter("=")));
  }
  if (!t.error().empty() && t.result() == v1::Trace::RESULT_ROLLED_BACK) {
    absl::StrAppend(&out, "\n  error: ", t.error());
  }
  absl::StrAppend(&out, "\n");
  return out;
}

}  // namespace parley::engine
