#include "engine/run_context.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/handler_graph.h"
#include "engine/key_layout.h"
#include "engine/relations.h"
#include "engine/run.h"

namespace parley::engine {

const v1::Event& RunContext::event() const { return engine_->run_->event; }
const std::string& RunContext::handler() const { return engine_->run_->current->name; }
const std::string& RunContext::unit() const { return engine_->spec_.unit; }

bool RunContext::IsSet(absl::string_view fact) const { return engine_->IsSet(fact); }

std::optional<std::string> RunContext::Value(absl::string_view fact) const {
  return engine_->FactValue(fact);
}

std::map<std::string, std::string> RunContext::Facts() const { return engine_->Facts(); }

absl::Status RunContext::Set(absl::string_view fact, absl::string_view value) {
  return engine_->SetFact(fact, value, /*derived=*/false);
}

absl::Status RunContext::Clear(absl::string_view fact) {
  return engine_->ClearFact(fact, /*derived=*/false);
}

absl::Status RunContext::Fire(absl::string_view event) {
  RETURN_IF_ERROR(engine_->graph_->ValidateName(handler(), "fired event", event, true));
  if (event == kWorkloadHealthyEvent || event == kWorkloadUnhealthyEvent) {
    return absl::InvalidArgumentError(absl::StrCat(
        "handler '", handler(), "' cannot fire '", event, "': only the health probes do"));
  }
  if (engine_->graph_->EndpointOf(event) != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("handler '", handler(), "' cannot fire relationship event '", event, "'"));
  }
  engine_->run_->fired.emplace_back(event);
  return absl::OkStatus();
}

std::vector<const v1::RelationRecord*> RunContext::Relations(absl::string_view endpoint) const {
  return engine_->relations_->Live(endpoint);
}

absl::StatusOr<std::map<std::string, std::string>> RunContext::Bag(absl::string_view relation_id,
                                                                   absl::string_view bag) const {
  return ReadBag(*engine_->txn_, relation_id, bag);
}

absl::Status RunContext::SetData(absl::string_view relation_id, absl::string_view key,
                                 absl::string_view value, bool service) {
  if (service) RETURN_IF_ERROR(engine_->CheckServiceWrite());
  return engine_->relations_->SetLocalData(*engine_->txn_, relation_id, key, value, service);
}

absl::Status RunContext::DeleteData(absl::string_view relation_id, absl::string_view key,
                                    bool service) {
  if (service) RETURN_IF_ERROR(engine_->CheckServiceWrite());
  return engine_->relations_->SetLocalData(*engine_->txn_, relation_id, key, std::nullopt, service);
}

std::optional<std::string> RunContext::Config(absl::string_view key) const {
  auto it = engine_->config_.find(std::string(key));
  if (it == engine_->config_.end()) return std::nullopt;
  return it->second;
}

const std::map<std::string, std::string>& RunContext::config() const { return engine_->config_; }

absl::Status RunContext::SetTimer(absl::string_view name, absl::Duration delay) {
  RETURN_IF_ERROR(
      engine_->graph_->ValidateName(handler(), "timer", absl::StrCat("timer.", name), true));
  if (name.empty()) return absl::InvalidArgumentError("timer name is empty");
  // A dying unit's timers are gone, and none is set: it would outlive the unit.
  if (engine_->stage_ == v1::UNIT_STAGE_DYING) return absl::OkStatus();
  const absl::Time due = engine_->clock_->Now() + delay;
  engine_->timers_[std::string(name)] = due;
  engine_->txn_->Put(kb::Space::kMeta, keys::Timer(name),
                     kb::EncodeU64(static_cast<uint64_t>(absl::ToUnixMillis(due))));
  return absl::OkStatus();
}

absl::Status RunContext::RetryLater(absl::Duration delay) {
  if (delay <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("retry-later: the delay must be positive, got ", absl::FormatDuration(delay)));
  }
  if (engine_->stage_ == v1::UNIT_STAGE_DYING) {
    return absl::FailedPreconditionError(
        "retry-later: the unit is dying (being removed): nothing is retried later");
  }
  if (absl::StartsWith(event().name(), "action.")) {
    return absl::FailedPreconditionError(
        absl::StrCat("retry-later: '", event().name(),
                     "' is a user action, answered by this run: it cannot "
                     "be retried later"));
  }
  engine_->run_->retry_later = delay;
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
  engine_->txn_->Put(kb::Space::kMeta, keys::kStatus, engine_->status_.SerializeAsString());
  return absl::OkStatus();
}

}  // namespace parley::engine
