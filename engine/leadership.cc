// Leadership in the engine (docs/coordination.md): the facts a `leader.changed` event sets, the
// rule that only the leader writes the service bag, and the term check at commit that fences a
// deposed leader's writes. The engine does not know where leadership comes from: the agent queues
// the events and supplies the check (Engine::SetTermCheck).

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/relations.h"
#include "engine/run.h"

namespace parley::engine {

bool IsEngineOwnedFact(absl::string_view fact) {
  return fact == kDyingFact || fact == kWorkloadHealthyFact || fact == kLeaderFact ||
         fact == kLeaderUnitFact || fact == kLeaderTermFact;
}

namespace {

int64_t ParseTerm(const std::optional<std::string>& value) {
  int64_t term = 0;
  if (!value.has_value() || !absl::SimpleAtoi(*value, &term)) return 0;
  return term;
}

}  // namespace

int64_t Engine::LeadingTerm() const {
  if (!spec_.leadership || !IsSet(kLeaderFact)) return 0;
  return ParseTerm(FactValue(kLeaderFact));
}

uint64_t Engine::stale_service_changes() const { return relations_->stale_service_changes(); }

absl::Status Engine::ApplyLeadership(const v1::Event& event) {
  if (!event.has_leadership()) return absl::OkStatus();
  if (!spec_.leadership) {
    return absl::InvalidArgumentError(absl::StrCat("event ", event.id(), " '", event.name(),
                                                   "': service '", spec_.service,
                                                   "' does not declare leadership"));
  }
  const v1::Leadership& news = event.leadership();
  // Terms only grow: news older than what is known changes nothing.
  if (news.term() < ParseTerm(FactValue(kLeaderTermFact))) return absl::OkStatus();
  const int64_t was_leading = LeadingTerm();
  if (news.leader().empty()) {
    RETURN_IF_ERROR(ClearFact(kLeaderUnitFact, /*derived=*/true));
  } else {
    RETURN_IF_ERROR(SetFact(kLeaderUnitFact, news.leader(), /*derived=*/true));
  }
  RETURN_IF_ERROR(SetFact(kLeaderTermFact, absl::StrCat(news.term()), /*derived=*/true));
  if (news.leader() == spec_.unit && news.term() > 0) {
    RETURN_IF_ERROR(SetFact(kLeaderFact, absl::StrCat(news.term()), /*derived=*/true));
    run_->elected = was_leading != news.term();
    return absl::OkStatus();
  }
  return ClearFact(kLeaderFact, /*derived=*/true);
}

absl::Status Engine::CheckServiceWrite() {
  if (!spec_.leadership) {
    return absl::FailedPreconditionError(absl::StrCat(
        "service '", spec_.service,
        "' declares no leadership, and only a service's leader writes its service bag (declare "
        "`leadership: true` in its service.yaml)"));
  }
  const int64_t term = LeadingTerm();
  if (term == 0) {
    const std::optional<std::string> leader = FactValue(kLeaderUnitFact);
    return absl::FailedPreconditionError(
        absl::StrCat("unit '", spec_.unit, "' is not the leader of service '", spec_.service, "' (",
                     leader.has_value() ? absl::StrCat("the leader is ", *leader, ", term ",
                                                       FactValue(kLeaderTermFact).value_or("?"))
                                        : std::string("no leader is known"),
                     "): only the leader writes the service bag"));
  }
  run_->service_term = term;
  return absl::OkStatus();
}

absl::Status Engine::CheckTermAtCommit() {
  const int64_t term = run_->service_term;
  if (term == 0) return absl::OkStatus();
  if (LeadingTerm() != term) {
    return absl::FailedPreconditionError(
        absl::StrCat("the service data this run wrote under leadership term ", term,
                     " is not committed: unit '", spec_.unit, "' no longer leads in that term"));
  }
  if (!term_check_) return absl::OkStatus();
  absl::StatusOr<bool> current = term_check_(term);
  if (!current.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the service data this run wrote under leadership term ", term,
        " is not committed: the term could not be confirmed: ", current.status().message()));
  }
  if (!*current) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the service data this run wrote under leadership term ", term,
        " is not committed: the term is no longer current (another unit leads, or the lease "
        "ended)"));
  }
  return absl::OkStatus();
}

}  // namespace parley::engine
