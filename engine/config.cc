// Config is a state, not a stream of events: changing it rewrites the queued config.changed
// events (ChangeConfig); a run applies its event's change before handlers run (ApplyConfigChange).

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/engine.h"
#include "engine/inbox.h"
#include "engine/key_layout.h"
#include "engine/run.h"

namespace parley::engine {

absl::Status CheckConfig(const ServiceSpec& spec, absl::string_view key, absl::string_view value) {
  if (!spec.declares_config) return absl::OkStatus();
  std::vector<std::string> names;
  for (const auto& option : spec.config_options) {
    if (option.name != key) {
      names.push_back(option.name);
      continue;
    }
    // An empty value resets an option (unset); only set values are checked.
    if (value.empty() || !option.check) return absl::OkStatus();
    absl::Status st = option.check(value);
    if (st.ok()) return st;
    return absl::InvalidArgumentError(absl::StrCat("service ", spec.service, ": ", st.message()));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("service ", spec.service, " has no config option '", key,
                   "' (it has: ", names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
}

using kb::Space;

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
    Inbox::StageRewrite(txn, e);
  }
  const bool retry_now = failure_ && failure_->event_id() == queued[0].id();
  if (retry_now) {
    v1::RunFailure f = *failure_;
    f.set_next_retry_unix_ms(absl::ToUnixMillis(clock_->Now()));
    txn.Put(Space::kMeta, keys::kFailure, f.SerializeAsString());
  }
  ASSIGN_OR_RETURN(uint64_t ticket, kb_->Commit(txn));
  if (retry_now) failure_->set_next_retry_unix_ms(absl::ToUnixMillis(clock_->Now()));
  return EnqueueResult{queued[0].id(), ticket};
}

absl::Status Engine::ApplyConfigChange(const v1::Event& event) {
  for (const auto& c : event.config_changes()) {
    if (c.deleted()) {
      config_.erase(c.key());
      txn_->Delete(Space::kMeta, keys::Config(c.key()));
    } else {
      config_[c.key()] = c.value();
      txn_->Put(Space::kMeta, keys::Config(c.key()), c.value());
    }
  }
  return absl::OkStatus();
}

}  // namespace parley::engine
