#include "services/builtin_services.h"

#include <atomic>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/engine.h"
#include "base/status_macros.h"

namespace parley::services {
namespace {

using engine::RunContext;

void Add(engine::ServiceSpec& spec, std::string name, std::vector<std::string> when,
         std::vector<std::string> when_not, std::vector<std::string> on,
         std::function<absl::Status(RunContext&)> fn) {
  spec.handlers.push_back({std::move(name), std::move(when), std::move(when_not), std::move(on),
                           engine::MakeAction(std::move(fn))});
}

// Writes `key` = `value` on every relation of `endpoint`.
absl::Status Publish(RunContext& ctx, absl::string_view endpoint, absl::string_view key,
                     absl::string_view value) {
  for (const auto* rel : ctx.Relations(endpoint)) {
    RETURN_IF_ERROR(ctx.SetData(rel->relation_id(), key, value));
  }
  return absl::OkStatus();
}

void RelayHandlers(engine::ServiceSpec& spec, std::shared_ptr<std::atomic<int>> failures) {
  spec.endpoints.push_back({"in", engine::Role::kRequires, "relay", {"value"}});
  spec.endpoints.push_back({"out", engine::Role::kProvides, "relay", {}});
  Add(spec, "forward", {"in.ready"}, {}, {}, [failures](RunContext& ctx) -> absl::Status {
    if (failures) {
      int limit = 2;
      if (auto v = ctx.Config("fail_times")) (void)absl::SimpleAtoi(*v, &limit);
      if (failures->fetch_add(1) < limit) {
        return absl::UnavailableError(
            absl::StrCat("simulated failure ", failures->load(), " of ", limit));
      }
    }
    const std::string value = ctx.Value("in.remote.value").value_or("");
    RETURN_IF_ERROR(ctx.Set("value", value));
    return Publish(ctx, "out", "value", value);
  });
  Add(spec, "set", {}, {}, {"action.set"}, [](RunContext& ctx) -> absl::Status {
    auto it = ctx.event().params().find("value");
    if (it == ctx.event().params().end()) {
      return absl::InvalidArgumentError("action set needs a 'value' parameter");
    }
    RETURN_IF_ERROR(ctx.Set("value", it->second));
    return Publish(ctx, "out", "value", it->second);
  });
  // A relation that joins after the value was set gets it too.
  Add(spec, "catch-up", {"out.joined", "value"}, {}, {}, [](RunContext& ctx) {
    return Publish(ctx, "out", "value", ctx.Value("value").value_or(""));
  });
  Add(spec, "ready", {}, {"announced"}, {}, [](RunContext& ctx) -> absl::Status {
    RETURN_IF_ERROR(ctx.SetStatus(v1::WORKLOAD_STATE_ACTIVE, "relaying"));
    return ctx.Set("announced");
  });
}

engine::ServiceSpec Recorder() {
  engine::ServiceSpec spec;
  spec.endpoints.push_back({"in", engine::Role::kRequires, "relay", {}});
  Add(spec, "record", {}, {}, {"in.changed", "in.joined"}, [](RunContext& ctx) -> absl::Status {
    const auto& rc = ctx.event().relation();
    std::string value;
    for (const auto& c : rc.unit_changes()) {
      if (c.key() == "value" && !c.deleted()) value = c.value();
    }
    if (value.empty()) return absl::OkStatus();
    std::string seen = ctx.Value("seen").value_or("");
    absl::StrAppend(&seen, seen.empty() ? "" : ",", value);
    RETURN_IF_ERROR(ctx.Set("seen", seen));
    int count = 0;
    if (auto c = ctx.Value("count")) (void)absl::SimpleAtoi(*c, &count);
    return ctx.Set("count", absl::StrCat(count + 1));
  });
  return spec;
}

engine::ServiceSpec Proposer() {
  engine::ServiceSpec spec;
  spec.endpoints.push_back({"negotiate", engine::Role::kRequires, "negotiate", {}});
  auto propose = [](RunContext& ctx) -> absl::Status {
    const std::string port = ctx.Config("port").value_or("80");
    RETURN_IF_ERROR(ctx.Set("proposed", port));
    RETURN_IF_ERROR(ctx.Clear("agreed"));
    RETURN_IF_ERROR(
        ctx.SetStatus(v1::WORKLOAD_STATE_WAITING, absl::StrCat("proposed port ", port)));
    return Publish(ctx, "negotiate", "proposal", port);
  };
  Add(spec, "propose", {"negotiate.joined"}, {"proposed"}, {}, propose);
  Add(spec, "repropose", {"negotiate.joined"}, {}, {"config.changed"}, propose);
  Add(spec, "settle", {"negotiate.remote.accepted", "negotiate.remote.answer_to", "proposed"}, {},
      {}, [](RunContext& ctx) -> absl::Status {
        // An answer to an earlier proposal is stale: wait for the answer to this one.
        if (ctx.Value("negotiate.remote.answer_to") != ctx.Value("proposed")) {
          return absl::OkStatus();
        }
        const std::string accepted = *ctx.Value("negotiate.remote.accepted");
        if (accepted == ctx.Value("proposed")) {
          RETURN_IF_ERROR(ctx.Set("agreed", accepted));
          return ctx.SetStatus(v1::WORKLOAD_STATE_ACTIVE,
                               absl::StrCat("agreed on port ", accepted));
        }
        // A counter-proposal: the acceptor already accepts it, so adopt it and agree.
        RETURN_IF_ERROR(ctx.Set("proposed", accepted));
        RETURN_IF_ERROR(ctx.Set("agreed", accepted));
        RETURN_IF_ERROR(ctx.SetStatus(v1::WORKLOAD_STATE_ACTIVE,
                                      absl::StrCat("agreed on port ", accepted, " (countered)")));
        return Publish(ctx, "negotiate", "proposal", accepted);
      });
  return spec;
}

engine::ServiceSpec Acceptor() {
  engine::ServiceSpec spec;
  spec.endpoints.push_back({"negotiate", engine::Role::kProvides, "negotiate", {"proposal"}});
  Add(spec, "answer", {"negotiate.ready"}, {}, {}, [](RunContext& ctx) -> absl::Status {
    const std::string proposal = ctx.Value("negotiate.remote.proposal").value_or("");
    int port = 0;
    if (!absl::SimpleAtoi(proposal, &port) || port <= 0 || port > 65535) {
      RETURN_IF_ERROR(ctx.SetStatus(v1::WORKLOAD_STATE_BLOCKED,
                                    absl::StrCat("proposal '", proposal, "' is not a port")));
      return absl::OkStatus();
    }
    const int answer = port < 1024 ? port + 8000 : port;
    RETURN_IF_ERROR(ctx.Set("port", absl::StrCat(answer)));
    RETURN_IF_ERROR(ctx.SetStatus(v1::WORKLOAD_STATE_ACTIVE, absl::StrCat("serving on ", answer)));
    RETURN_IF_ERROR(Publish(ctx, "negotiate", "answer_to", proposal));
    return Publish(ctx, "negotiate", "accepted", absl::StrCat(answer));
  });
  return spec;
}

}  // namespace

std::vector<std::string> BuiltinKinds() {
  return {"relay", "recorder", "flaky", "proposer", "acceptor"};
}

absl::StatusOr<engine::ServiceSpec> BuiltinService(absl::string_view kind, absl::string_view unit) {
  engine::ServiceSpec spec;
  if (kind == "relay") {
    RelayHandlers(spec, nullptr);
  } else if (kind == "flaky") {
    RelayHandlers(spec, std::make_shared<std::atomic<int>>(0));
  } else if (kind == "recorder") {
    spec = Recorder();
  } else if (kind == "proposer") {
    spec = Proposer();
  } else if (kind == "acceptor") {
    spec = Acceptor();
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown builtin service kind '", kind,
                     "' (known: relay, recorder, flaky, proposer, acceptor)"));
  }
  if (unit.empty() || unit.find('/') == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("unit name '", unit, "' must look like <service>/<number>"));
  }
  spec.unit = std::string(unit);
  spec.service = std::string(unit.substr(0, unit.find('/')));
  return spec;
}

}  // namespace parley::services
