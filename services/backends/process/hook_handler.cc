#include "services/backends/process/hook_handler.h"

#include <optional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "engine/run_context.h"
#include "parley/v1/kb.pb.h"
#include "services/backends/common/json.h"
#include "services/backends/process/context_file.h"
#include "services/backends/process/tail_buffer.h"

namespace parley::services::process {
namespace {

using Reply = HookReply;

Reply Ok(std::string text = "") { return {true, std::move(text)}; }
Reply Refused(std::string text) { return {false, std::move(text)}; }
Reply FromStatus(const absl::Status& s) {
  return s.ok() ? Ok() : Refused(std::string(s.message()));
}

std::map<std::string, std::string> MergedConfig(const HookEnv& env) {
  std::map<std::string, std::string> config = *env.defaults;
  for (const auto& [k, v] : env.ctx->config()) config[k] = v;
  return config;
}

// The relations `name` designates: a relation id, or every relation of an endpoint.
absl::StatusOr<std::vector<const v1::RelationRecord*>> RelationsNamed(const HookEnv& env,
                                                                      absl::string_view name) {
  for (const v1::RelationRecord* r : env.ctx->Relations()) {
    if (r->relation_id() == name) return std::vector<const v1::RelationRecord*>{r};
  }
  if (env.endpoints->find(std::string(name)) == env.endpoints->end()) {
    return absl::NotFoundError(
        absl::StrCat("'", name, "' is neither an endpoint nor the id of a current relation"));
  }
  return env.ctx->Relations(name);
}

absl::StatusOr<const v1::RelationRecord*> OneRelation(const HookEnv& env, absl::string_view name) {
  ASSIGN_OR_RETURN(auto rels, RelationsNamed(env, name));
  if (rels.empty())
    return absl::NotFoundError(absl::StrCat("endpoint '", name, "' has no relation"));
  if (rels.size() > 1) {
    std::vector<std::string> ids;
    for (const auto* r : rels) ids.push_back(r->relation_id());
    return absl::FailedPreconditionError(
        absl::StrCat("endpoint '", name, "' has ", rels.size(),
                     " relations; name one of: ", absl::StrJoin(ids, ", ")));
  }
  return rels[0];
}

Reply RelationGet(const HookEnv& env, const std::vector<std::string>& a) {
  if (a.size() < 3 || a.size() > 5) {
    return Refused("usage: relation get ENDPOINT|RELATION_ID [UNIT] [KEY]");
  }
  auto rel = OneRelation(env, a[2]);
  if (!rel.ok()) return FromStatus(rel.status());
  std::string unit = a.size() >= 4 ? a[3] : "";
  if (unit.empty() || unit == "-") {
    const v1::Event& e = env.ctx->event();
    if (e.has_relation() && e.relation().relation_id() == (*rel)->relation_id() &&
        !e.relation().remote_unit().empty()) {
      unit = e.relation().remote_unit();
    } else if ((*rel)->remote_units_size() == 1) {
      unit = (*rel)->remote_units(0);
    } else {
      return Refused(absl::StrCat("relation '", (*rel)->relation_id(), "' has ",
                                  (*rel)->remote_units_size(),
                                  " remote units and the event is not about one of them; name "
                                  "the unit"));
    }
  }
  std::string bag;
  if (unit == env.ctx->unit()) {
    bag = "lu";
  } else if (unit == (*rel)->remote_service()) {
    bag = "rs";
  } else {
    bag = absl::StrCat("ru:", unit);
  }
  auto data = env.ctx->Bag((*rel)->relation_id(), bag);
  if (!data.ok()) return FromStatus(data.status());
  if (a.size() == 5) {
    auto it = data->find(a[4]);
    if (it == data->end()) {
      return Refused(absl::StrCat("relation '", (*rel)->relation_id(), "': unit '", unit,
                                  "' has no key '", a[4], "'"));
    }
    return Ok(it->second);
  }
  std::string out;
  JsonMap(out, *data);
  return Ok(out + "\n");
}

Reply RelationSet(const HookEnv& env, const std::vector<std::string>& a) {
  if (a.size() != 5) return Refused("usage: relation set ENDPOINT|RELATION_ID KEY VALUE");
  auto rels = RelationsNamed(env, a[2]);
  if (!rels.ok()) return FromStatus(rels.status());
  for (const v1::RelationRecord* r : *rels) {
    auto ep = env.endpoints->find(r->endpoint());
    if (ep == env.endpoints->end()) {
      return Refused(absl::StrCat("relation '", r->relation_id(), "': endpoint '", r->endpoint(),
                                  "' is not declared"));
    }
    absl::Status s = ValidateRelationData(ep->second.schema, a[3], a[4], ep->second.role);
    if (!s.ok()) return FromStatus(s);
    s = env.ctx->SetData(r->relation_id(), a[3], a[4]);
    if (!s.ok()) return FromStatus(s);
  }
  return Ok();
}

// Removes a key this unit published; peers receive the deletion once the run commits.
Reply RelationUnset(const HookEnv& env, const std::vector<std::string>& a) {
  if (a.size() != 4) return Refused("usage: relation unset ENDPOINT|RELATION_ID KEY");
  auto rels = RelationsNamed(env, a[2]);
  if (!rels.ok()) return FromStatus(rels.status());
  for (const v1::RelationRecord* r : *rels) {
    auto ep = env.endpoints->find(r->endpoint());
    if (ep == env.endpoints->end()) {
      return Refused(absl::StrCat("relation '", r->relation_id(), "': endpoint '", r->endpoint(),
                                  "' is not declared"));
    }
    absl::Status s = ValidateRelationKey(ep->second.schema, a[3], ep->second.role);
    if (!s.ok()) return FromStatus(s);
    s = env.ctx->DeleteData(r->relation_id(), a[3]);
    if (!s.ok()) return FromStatus(s);
  }
  return Ok();
}

Reply RelationList(const HookEnv& env, const std::vector<std::string>& a) {
  if (a.size() > 3) return Refused("usage: relation list [ENDPOINT]");
  if (a.size() == 3 && env.endpoints->find(a[2]) == env.endpoints->end()) {
    return Refused(absl::StrCat("'", a[2], "' is not an endpoint of this service"));
  }
  std::string out = "[";
  bool first = true;
  for (const v1::RelationRecord* r : env.ctx->Relations(a.size() == 3 ? a[2] : "")) {
    if (!first) out += ',';
    first = false;
    out += '{';
    AppendRelationFields(out, *r, /*with_interface=*/false);
    out += '}';
  }
  return Ok(out + "]\n");
}

std::optional<v1::WorkloadState> ParseState(absl::string_view s) {
  if (s == "maintenance") return v1::WORKLOAD_STATE_MAINTENANCE;
  if (s == "blocked") return v1::WORKLOAD_STATE_BLOCKED;
  if (s == "waiting") return v1::WORKLOAD_STATE_WAITING;
  if (s == "active") return v1::WORKLOAD_STATE_ACTIVE;
  if (s == "error") return v1::WORKLOAD_STATE_ERROR;
  return std::nullopt;
}

}  // namespace

HookReply HandleHookRequest(const HookEnv& env, const std::vector<std::string>& a) {
  const std::string verb = a.size() >= 2 ? absl::StrCat(a[0], " ", a[1]) : (a.empty() ? "" : a[0]);
  engine::RunContext& ctx = *env.ctx;
  if (verb == "fact set") {
    if (a.size() != 3 && a.size() != 4) return Refused("usage: fact set NAME [VALUE]");
    return FromStatus(ctx.Set(a[2], a.size() == 4 ? a[3] : ""));
  }
  if (verb == "fact clear") {
    if (a.size() != 3) return Refused("usage: fact clear NAME");
    return FromStatus(ctx.Clear(a[2]));
  }
  if (verb == "fact get") {
    if (a.size() != 3) return Refused("usage: fact get NAME");
    std::optional<std::string> v = ctx.Value(a[2]);
    if (!v) return Refused(absl::StrCat("fact '", a[2], "' is not set"));
    return Ok(*v);
  }
  if (verb == "leader get") {
    // The leadership facts the engine keeps (docs/coordination.md), as one answer: the leading
    // unit and its term, and whether this unit leads.
    if (a.size() > 3 || (a.size() == 3 && a[2] != "unit" && a[2] != "term")) {
      return Refused("usage: leader get [unit|term]");
    }
    std::optional<std::string> unit = ctx.Value(engine::kLeaderUnitFact);
    std::optional<std::string> term = ctx.Value(engine::kLeaderTermFact);
    if (a.size() == 3) {
      std::optional<std::string>& v = a[2] == "unit" ? unit : term;
      if (!v) return Refused("no leader is known (no leader.changed applied yet)");
      return Ok(*v);
    }
    std::string out;
    JsonMap(out, {{"unit", unit.value_or("")},
                  {"term", term.value_or("0")},
                  {"leads", ctx.Value(engine::kLeaderFact) ? "true" : "false"}});
    return Ok(out + "\n");
  }
  if (verb == "relation get") return RelationGet(env, a);
  if (verb == "relation set") return RelationSet(env, a);
  if (verb == "relation unset") return RelationUnset(env, a);
  if (verb == "relation list") return RelationList(env, a);
  if (verb == "config get") {
    if (a.size() > 3) return Refused("usage: config get [KEY]");
    std::map<std::string, std::string> config = MergedConfig(env);
    if (a.size() == 3) {
      auto it = config.find(a[2]);
      if (it == config.end()) {
        return Refused(absl::StrCat("config option '", a[2], "' has no value and no default"));
      }
      return Ok(it->second);
    }
    std::string out;
    JsonMap(out, config);
    return Ok(out + "\n");
  }
  if (verb == "status set") {
    if (a.size() != 4) return Refused("usage: status set STATE MESSAGE");
    std::optional<v1::WorkloadState> state = ParseState(a[2]);
    if (!state) {
      return Refused(absl::StrCat("unknown state '", a[2],
                                  "' (expected maintenance, blocked, waiting, active or error)"));
    }
    return FromStatus(ctx.SetStatus(*state, a[3]));
  }
  if (!a.empty() && a[0] == "log") {
    if (a.size() != 2) return Refused("usage: log MESSAGE");
    if (*env.log) (*env.log)(ctx.unit(), ctx.handler(), "log", a[1]);
    return Ok();
  }
  if (verb == "event fire") {
    if (a.size() != 3) return Refused("usage: event fire NAME");
    return FromStatus(ctx.Fire(a[2]));
  }
  if (verb == "timer set") {
    if (a.size() != 4) return Refused("usage: timer set NAME SECONDS");
    double seconds = 0;
    if (!absl::SimpleAtod(a[3], &seconds) || !(seconds >= 0) || seconds > 1e9) {
      return Refused(absl::StrCat("timer set: expected a number of seconds, got '", a[3], "'"));
    }
    return FromStatus(ctx.SetTimer(a[2], absl::Seconds(seconds)));
  }
  if (!a.empty() && a[0] == "retry-later") {
    if (a.size() != 2) return Refused("usage: retry-later DURATION");
    absl::Duration delay;
    int64_t seconds = 0;
    if (absl::SimpleAtoi(a[1], &seconds)) {
      delay = absl::Seconds(seconds);
    } else if (!absl::ParseDuration(a[1], &delay)) {
      delay = absl::ZeroDuration();
    }
    if (delay <= absl::ZeroDuration() || delay == absl::InfiniteDuration()) {
      return Refused(
          absl::StrCat("retry-later: expected a positive duration such as 30 (seconds), "
                       "30s, 5m or 1h30m, got '",
                       Printable(a[1].substr(0, 100)), "'"));
    }
    return FromStatus(ctx.RetryLater(delay));
  }
  if (verb == "action output") {
    if (a.size() != 4) return Refused("usage: action output KEY VALUE");
    if (a[2].empty()) return Refused("action output: the key is empty");
    return FromStatus(ctx.Output(a[2], a[3]));
  }
  return Refused(absl::StrCat(
      "unknown request '", Printable(verb.substr(0, 100)),
      "' (expected fact set|clear|get, leader get, relation get|set|unset|list, config get, "
      "status set, log, "
      "event fire, timer set, retry-later or action output)"));
}

}  // namespace parley::services::process
